"""Known answers for NB03 targeted Jacobian: per-KD panel means, the one-sided Mann–Whitney test, power floor."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from hypocheck.probes.targeted import TargetedParams, min_attainable_p, targeted_jacobian
from hypocheck.registry import get_probe

REGULATORS = ["HSPA5", "ATF4"]
TARGETS = ["CALR", "PDIA3", "ERO1A"]


def panel(per_kd: list[float], seed: int = 0) -> np.ndarray:
    """Derivatives (KD × regulator × target) whose mean over the panel is exactly ``per_kd``."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(len(per_kd), 2, 3))
    noise -= noise.mean(axis=(1, 2), keepdims=True)
    return np.asarray(per_kd)[:, None, None] + noise


def run(deriv, concordant, control, seed=0, **kw):
    names = [f"kd{i}" for i in range(deriv.shape[0])]
    return targeted_jacobian(derivatives=deriv, kd_names=names, concordant=concordant, control=control,
                             regulators=REGULATORS, targets=TARGETS, params=TargetedParams(**kw),
                             rng=np.random.default_rng(seed))


def test_registered() -> None:
    spec = get_probe("targeted_jacobian")
    assert (spec.effect, spec.p, spec.axes, spec.min_effect) == ("difference", "p", ("model", "cell_line"), 0.01)


def test_min_attainable_p() -> None:
    assert min_attainable_p(2, 2) == pytest.approx(1 / 6)
    assert min_attainable_p(4, 3) == pytest.approx(1 / 35)


def test_mann_whitney_on_per_kd_means_matches_scipy() -> None:
    values = [0.9, 0.1, 0.5, 0.7, 0.2, 0.6, 0.3, 0.05]
    deriv = panel(values)
    conc, ctrl = [0, 2, 3, 5], [1, 4, 6, 7]
    res = run(deriv, conc, ctrl)
    x, y = np.array(values)[conc], np.array(values)[ctrl]
    expected = stats.mannwhitneyu(x, y, alternative="greater", method="exact")
    assert res.metrics["p"] == pytest.approx(expected.pvalue)
    assert res.metrics["p"] == pytest.approx(1 / 70)  # complete separation, 4 vs 4: 1 / C(8, 4)
    assert res.attainable == {"p": pytest.approx(1 / 70)}  # … which is the floor it declares
    assert res.metrics["u_statistic"] == 16 and res.metrics["rank_biserial"] == pytest.approx(1.0)
    assert res.metrics["difference"] == pytest.approx(x.mean() - y.mean())
    lo, hi = res.cis["difference"]
    assert lo <= x.mean() - y.mean() <= hi and lo > 0
    assert res.inconclusive is None
    assert res.metrics["n_concordant"] == 4 and res.metrics["n_control"] == 4 and res.metrics["n_pairs"] == 6


def test_partial_overlap_p_and_rank_biserial() -> None:
    values = [0.3, 0.1, 0.5, 0.2, 0.4, 0.6, 0.0]
    res = run(panel(values, seed=1), [0, 2, 4, 6], [1, 3, 5])
    x, y = np.array([0.3, 0.5, 0.4, 0.0]), np.array([0.1, 0.2, 0.6])
    u = sum((a > b) + 0.5 * (a == b) for a in x for b in y)
    assert res.metrics["u_statistic"] == u == 6
    assert res.metrics["p"] == pytest.approx(stats.mannwhitneyu(x, y, alternative="greater").pvalue)
    assert res.metrics["rank_biserial"] == pytest.approx(2 * 6 / 12 - 1)
    assert res.metrics["p"] > 0.3


def test_two_versus_two_is_inconclusive_whatever_the_data() -> None:
    res = run(panel([5.0, 4.0, 0.0, -1.0]), [0, 1], [2, 3])
    assert res.inconclusive and "0.167" in res.inconclusive
    assert res.metrics["p"] == pytest.approx(1 / 6)


def test_pairs_and_absolute_values() -> None:
    deriv = np.zeros((4, 2, 3))
    deriv[:, 0, 0] = [3.0, -3.0, 1.0, -1.0]  # HSPA5 → CALR
    deriv[:, 1, 2] = 100.0  # ATF4 → ERO1A, outside the chosen pairs
    res = run(deriv, [0, 1], [2, 3], pairs=[["HSPA5", "CALR"]], alpha=0.5)
    np.testing.assert_allclose(res.arrays["per_kd"], [3, -3, 1, -1])
    assert res.metrics["difference"] == pytest.approx(0.0) and res.metrics["n_pairs"] == 1
    res_abs = run(deriv, [0, 1], [2, 3], pairs=[("HSPA5", "CALR")], statistic="mean_abs", alpha=0.5)
    np.testing.assert_allclose(res_abs.arrays["per_kd"], [3, 3, 1, 1])
    assert res_abs.metrics["difference"] == pytest.approx(2.0) and res_abs.inconclusive is None
    all_pairs = run(deriv, [0, 1], [2, 3], alpha=0.5)
    np.testing.assert_allclose(all_pairs.arrays["per_kd"], (deriv[:, 0, 0] + 100) / 6)
    with pytest.raises(ValueError, match="XBP1"):
        run(deriv, [0, 1], [2, 3], pairs=[["XBP1", "CALR"]])


def test_long_table_and_input_checks() -> None:
    deriv = panel([1.0, 2.0, 3.0, 4.0, 5.0])
    res = run(deriv, [3, 4, 2], [0, 1], alpha=0.2)
    table = res.tables["derivatives"]
    assert len(table) == 5 * 2 * 3
    row = table[(table.knockdown == "kd3") & (table.regulator == "ATF4") & (table.target == "ERO1A")]
    assert row.derivative.item() == deriv[3, 1, 2] and row.group.item() == "concordant"
    assert set(table[table.knockdown == "kd0"].group) == {"control"}
    assert math.isfinite(res.metrics["p"])
    with pytest.raises(ValueError, match="both concordant and control"):
        run(deriv, [0, 1], [1, 2])
    with pytest.raises(ValueError, match="expected"):
        run(deriv[:, :, :2], [0, 1], [2, 3])


def test_attainable_floor_of_the_nb03_panel_sizes() -> None:
    """4 concordant vs 3 control knockdowns: p ≥ 1/35 (a hypothesis over 4 cases cannot reach 0.05 after
    correction); with 8 controls, 1/C(12, 4) = 1/495."""
    values = [0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3]
    res = run(panel(values), [0, 1, 2, 3], [4, 5, 6])
    assert res.attainable["p"] == pytest.approx(1 / 35) == res.metrics["p"]
    wide = run(panel([*values, 0.0, 0.05, 0.15, 0.25, 0.35]), [0, 1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11])
    assert wide.attainable["p"] == pytest.approx(1 / 495) == wide.metrics["min_attainable_p"]
    with pytest.warns(RuntimeWarning, match="empty"):  # the control knockdown has no finite derivative
        empty = run(panel([0.5, np.nan]), [0], [1])
    assert empty.attainable == {} and empty.inconclusive is not None
