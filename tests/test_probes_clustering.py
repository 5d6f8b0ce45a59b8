"""Known answers for NB01 output clustering: exact cosines, the magnitude confound, the member-by-member matched
null, absence (its three conditions, judged against the paper's claim file) and its power, attainable p-values,
the perturbation-specific metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from hypocheck.cases import expand
from hypocheck.probes.clustering import (
    ABSENCE_METRICS,
    OutputAbsenceParams,
    OutputClusteringParams,
    detection_power,
    minimal_detectable_effect,
    noeffect_floor_of,
    output_set_absence,
    output_set_clustering,
)
from hypocheck.probes.setstats import magnitude_matched_sets, magnitude_windows, slot_pair_means
from hypocheck.registry import ProbeResult, get_probe
from hypocheck.schema import hypotheses_from_doc
from hypocheck.stats import compare_to_null, quantile_strata, random_sets
from hypocheck.verdict import judge
from hypocheck.yamlsource import load_yaml
from tools.calibration.clustering import confound_features

ROOT = Path(__file__).resolve().parents[1]

FAST = {"null_sets": 2000, "bootstrap": 500}


def confounded(seed: int = 0, n: int = 200, dim: int = 40, planted: np.ndarray | None = None):
    """features = default + magnitude · own direction + noise; the first 40 KDs have (almost) no effect.

    With ``planted``, those knockdowns get a large magnitude and one shared program direction.
    """
    rng = np.random.default_rng(seed)
    default = rng.normal(size=dim)
    default /= np.linalg.norm(default)
    magnitude = rng.lognormal(0.0, 0.5, n)
    magnitude[:40] = rng.uniform(0.0, 0.05, 40)
    directions = rng.normal(size=(n, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    if planted is not None:
        program = rng.normal(size=dim)
        directions[planted] = program / np.linalg.norm(program) + 0.3 * directions[planted]
        magnitude[planted] = rng.uniform(1.5, 2.0, planted.size)
    features = default + magnitude[:, None] * directions + 0.05 * rng.normal(size=(n, dim))
    return features, magnitude


def run(features, members, magnitude, seed=1, **params):
    return output_set_clustering(features=features, members=np.asarray(members), magnitude=magnitude,
                                 params=OutputClusteringParams(**(FAST | params)), rng=np.random.default_rng(seed))


def test_within_mean_cosine_is_exact() -> None:
    # members 0,1,2: cos(0,1) = 1, cos(0,2) = cos(1,2) = 0 → mean over pairs 1/3; magnitudes interleave the
    # members with the others (ranks 0, 2, 4 of 6), so each member has a non-member among its nearest two
    features = np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 3.0, 0], [0, 0, 1.0], [1.0, 1, 0], [0, 1, 1.0]])
    res = run(features, [0, 1, 2], np.array([1.0, 3, 5, 2, 4, 6]), min_members=3, match_neighbours=1)
    assert res.metrics["within_mean_cosine"] == pytest.approx(1 / 3)
    assert res.metrics["n_members"] == 3 and res.metrics["unmatched_members"] == 0
    assert res.metrics["set_magnitude"] == 3.0  # median of 1, 3, 5


def test_within_mean_matches_loops_and_z_matches_null() -> None:
    features = np.random.default_rng(3).normal(size=(60, 8))
    members = np.array([2, 7, 11, 19, 23, 31, 40])
    res = run(features, members, np.linalg.norm(features, axis=1))
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    pairs = [unit[a] @ unit[b] for a in members for b in members if a != b]
    assert res.metrics["within_mean_cosine"] == pytest.approx(np.mean(pairs))
    for null, z, p in ((res.arrays["uniform_null"], "z", "p"), (res.arrays["matched_null"], "z_matched", "p_matched")):
        assert res.metrics[z] == pytest.approx((np.mean(pairs) - null.mean()) / null.std(ddof=1))
        assert res.metrics[p] == pytest.approx((1 + np.sum(null >= np.mean(pairs))) / (null.size + 1))
    assert res.metrics["delta_cosine"] == pytest.approx(np.mean(pairs) - res.arrays["matched_null"].mean())
    lo, hi = res.cis["delta_cosine"]
    assert lo < res.metrics["delta_cosine"] < hi


def test_no_effect_set_clusters_against_uniform_but_not_matched_sets() -> None:
    features, magnitude = confounded()
    no_effect = np.arange(3, 15)  # 12 of the 40 knockdowns without effect
    res = run(features, no_effect, magnitude)
    assert res.metrics["z"] > 4 and res.metrics["p"] < 0.001  # the confound: "clustered" against uniform sets
    assert abs(res.metrics["z_matched"]) < 2 and res.metrics["p_matched"] > 0.05
    assert res.metrics["match_neighbours"] == 2
    assert res.metrics["magnitude_ratio"] < 2  # the set sits at the no-effect floor
    matched = magnitude[res.arrays["matched_sets"]]  # matched sets: (almost only) no-effect knockdowns
    assert np.mean(matched < 0.06) > 0.95
    assert res.metrics["matched_set_magnitude"] == pytest.approx(res.metrics["set_magnitude"], abs=0.01)
    assert res.cis["delta_cosine"][0] < 0 < res.cis["delta_cosine"][1]


def test_strong_planted_set_stays_clustered_under_both_nulls() -> None:
    planted = np.arange(100, 112)
    features, magnitude = confounded(planted=planted)
    res = run(features, planted, magnitude)
    assert res.metrics["z"] > 4 and res.metrics["z_matched"] > 4
    assert res.metrics["p_matched"] < 0.001
    assert res.cis["delta_cosine"][0] > 0.3
    assert res.metrics["magnitude_ratio"] > 10


def test_noeffect_floor_given_or_computed() -> None:
    features, magnitude = confounded()
    computed = run(features, np.arange(50, 60), magnitude).metrics["noeffect_floor"]
    assert computed == pytest.approx(np.median(np.sort(magnitude)[:20]))
    assert noeffect_floor_of(np.arange(1.0, 11.0), 0.3) == 2.0
    given = output_set_clustering(features=features, members=np.arange(50, 60), magnitude=magnitude,
                                  noeffect_floor=0.5, params=OutputClusteringParams(**FAST),
                                  rng=np.random.default_rng(0))
    assert given.metrics["noeffect_floor"] == 0.5
    assert given.metrics["magnitude_ratio"] == pytest.approx(np.median(magnitude[50:60]) / 0.5)


def test_too_few_members_is_inconclusive_with_every_metric_present() -> None:
    features, magnitude = confounded()
    res = run(features, [1, 2, 3], magnitude)
    assert res.inconclusive is not None and "3 set members" in res.inconclusive
    assert set(res.metrics) == set(get_probe("output_set_clustering").metrics)
    assert math.isnan(res.metrics["z_matched"]) and res.metrics["n_members"] == 3


def test_set_too_large_for_the_matched_null_is_inconclusive() -> None:
    features, magnitude = confounded()
    crowded = run(features, np.arange(0, 30), magnitude)  # 30 of the 40 weakest: matched sets overlap the set
    assert crowded.inconclusive is None and np.isfinite(crowded.metrics["p_matched"])
    too_large = run(features, np.arange(0, 197), magnitude)  # 197 + 2·2 > 200 knockdowns
    assert too_large.inconclusive is not None and "too large" in too_large.inconclusive
    assert too_large.attainable["p_matched"] != too_large.attainable["p_matched"]  # NaN: no test ran


def test_power_and_minimal_detectable_effect_on_a_normal_null() -> None:
    null = stats.norm.ppf((np.arange(100_000) + 0.5) / 100_000)
    mde = minimal_detectable_effect(null, alpha=0.05, power=0.8)
    assert mde == pytest.approx(stats.norm.ppf(0.95) + stats.norm.ppf(0.8), abs=1e-3)
    assert detection_power(null, mde, 0.05) == pytest.approx(0.8, abs=1e-3)
    assert detection_power(null, 0.0, 0.05) == pytest.approx(0.05, abs=1e-3)


def absence(features, members, magnitude, reference, **params):
    return output_set_absence(features=features, members=np.asarray(members), magnitude=magnitude,
                              params=OutputAbsenceParams(reference_effect=reference, **(FAST | params)),
                              rng=np.random.default_rng(2))


def test_absence_reports_its_power_beside_the_ci_and_leaves_the_verdict_to_the_rule() -> None:
    features, magnitude = confounded()
    res = absence(features, np.arange(60, 90), magnitude, reference=0.3)  # 30 unrelated knockdowns
    assert res.inconclusive is None
    assert res.metrics["reference_excluded"] == 1.0 and res.cis["delta_cosine"][1] < 0.3
    assert res.metrics["power"] > 0.99 and res.metrics["minimal_detectable_effect"] < 0.3
    assert set(res.metrics) == set(get_probe("output_set_absence").metrics)
    wide = absence(features, np.arange(120, 126), magnitude, reference=0.01)  # a reference too small to exclude
    assert wide.inconclusive is None and wide.metrics["reference_excluded"] == 0.0  # reported, not deciding
    small = absence(features, [60, 61], magnitude, reference=0.3)  # the data's own reason stays the probe's
    assert small.inconclusive is not None and "2 set members" in small.inconclusive
    assert math.isnan(small.metrics["power"]) and small.metrics["reference_effect"] == 0.3


def weakly_clustered(weight: float = 0.3):
    """40 knockdowns with a small shared program direction (``weight`` of each one's norm): a real but small
    clustering, detected by the matched test."""
    features, magnitude = confounded(seed=5)
    members = np.arange(60, 100)
    program = np.random.default_rng(9).normal(size=features.shape[1])
    features[members] += weight * np.linalg.norm(features[members], axis=1, keepdims=True) * program / np.linalg.norm(
        program)
    return features, magnitude, members


def claim3_cases():
    doc = load_yaml(ROOT / "hypotheses" / "paper" / "claim3_er_no_output_clustering.yaml")
    vocabulary = {"model": ["fewshot", "zeroshot", "perturb_mean", "context_mean", "embed_sum"],
                  "cell_line": ["hepg2", "jurkat"], "gene_set": ["er_golgi"]}
    return [c for hyp, base in hypotheses_from_doc(doc) for c in expand(hyp, doc, base, vocabulary)]


def hand_built(p_matched: float, ci: tuple[float, float], power: float = 0.9, reference: float = 0.1) -> ProbeResult:
    """An absence result with the given test of record, CI and power (other metrics NaN)."""
    metrics = dict.fromkeys(ABSENCE_METRICS, math.nan) | {
        "p_matched": p_matched, "delta_cosine": sum(ci) / 2, "power": power, "reference_effect": reference,
        "reference_excluded": float(ci[1] < reference)}
    return ProbeResult(metrics=metrics, cis={"delta_cosine": ci}, attainable={"p_matched": 1 / 5001})


@pytest.mark.parametrize(
    "p_matched, ci, verdict, why",
    [
        (0.41, (-0.02, 0.03), "pass", "lies below the margin 0.05"),
        (0.0002, (0.0012, 0.0021), "pass", "lies below the margin 0.05"),  # significant but negligible
        (0.0002, (0.06, 0.30), "fail", "lies above the margin 0.05"),
        (0.30, (0.06, 0.30), "fail", "lies above the margin 0.05"),  # the p does not rescue it
        (0.30, (-0.02, 0.12), "inconclusive", "straddles the margin 0.05"),
        (0.0002, (0.04, 0.06), "inconclusive", "straddles the margin 0.05"),
    ],
)
def test_claim3_is_an_equivalence_test_on_the_ci(p_matched, ci, verdict, why) -> None:
    cases = claim3_cases()
    assert len(cases) == 8 and all(c.absence and c.margin == 0.05 for c in cases)  # SAE features and ΔY
    assert cases[0].probe.min_effect == 0.05 and not cases[0].expectations
    judged = judge(cases[0], hand_built(p_matched, ci))
    assert judged.verdict == verdict, judged.reason
    assert why in judged.reason and judged.claim_kind == "absence" and judged.margin == 0.05
    detected = any("detectable but below the margin" in n for n in judged.notes)
    assert detected == (verdict == "pass" and p_matched < 0.05)


def test_claim3_on_the_probes_own_result() -> None:
    case = claim3_cases()[0]
    params = OutputAbsenceParams(**(case.params.model_dump() | FAST))
    features, magnitude, members = weakly_clustered()
    result = output_set_absence(features=features, members=members, magnitude=magnitude, params=params,
                                rng=np.random.default_rng(2))
    judged = judge(case, result)
    low, high = judged.ci
    expected = "pass" if high < 0.05 else "fail" if low >= 0.05 else "inconclusive"
    assert judged.verdict == expected and result.metrics["p_matched"] < 0.01, (judged.ci, judged.reason)
    features, magnitude, members = weakly_clustered(weight=0.0)  # no program at all
    result = output_set_absence(features=features, members=members, magnitude=magnitude, params=params,
                                rng=np.random.default_rng(2))
    assert judge(case, result).verdict == "pass"


# ---------------------------------------------------------------- the member-by-member matched null


def test_matched_sets_draw_each_member_from_its_rank_window() -> None:
    magnitude = np.random.default_rng(0).permutation(40).astype(float)  # rank = magnitude
    members = np.flatnonzero(np.isin(magnitude, [0, 1, 20]))
    mid, low = (int(np.flatnonzero(magnitude[members] == v)[0]) for v in (20, 0))
    sets = magnitude_matched_sets(np.random.default_rng(1), magnitude, members, 3000, neighbours=1)
    assert sets.shape == (3000, 3)
    assert all(len(set(row)) == 3 for row in sets)  # distinct knockdowns per null set
    middle = magnitude[sets[:, mid]]  # ranks 19, 20, 21, a third each: on average as strong as the member
    assert set(middle) == {19.0, 20.0, 21.0}
    np.testing.assert_allclose([np.mean(middle == v) for v in (19, 20, 21)], 1 / 3, atol=0.03)
    assert middle.mean() == pytest.approx(20, abs=0.05)
    # the weakest knockdown's window is itself (no weaker one to balance a stronger one); it gives way only
    # when the member of rank 1 (window ranks 0–2) took it first, and then to the next free one in rank
    weakest = magnitude[sets[:, low]]
    assert set(weakest) == {0.0, 1.0} and 0.5 < np.mean(weakest == 0) < 1
    assert set(magnitude[np.delete(sets, mid, axis=1)].ravel()) == {0.0, 1.0, 2.0, 3.0}
    again = magnitude_matched_sets(np.random.default_rng(1), magnitude, members, 3000, neighbours=1)
    np.testing.assert_array_equal(sets, again)  # seeded
    assert magnitude_matched_sets(np.random.default_rng(1), magnitude, np.arange(35), 10, neighbours=3) is None
    order = magnitude_windows(magnitude, members[[mid]], 5)  # itself, one below, one above, two below, two above
    np.testing.assert_array_equal(magnitude[order[0]], [20, 19, 21, 18, 22])


def test_slot_pair_means_average_the_null_pairs() -> None:
    sim = np.random.default_rng(4).normal(size=(12, 12))
    sim = (sim + sim.T) / 2
    sets = np.array([[0, 1, 2], [3, 4, 5], [0, 4, 8]])
    expected = np.mean([[[sim[s[i], s[j]] for j in range(3)] for i in range(3)] for s in sets], axis=0)
    np.fill_diagonal(expected, np.nan)
    np.testing.assert_allclose(slot_pair_means(sim, sets), expected)


def old_bin_p(sim: np.ndarray, magnitude: np.ndarray, members: np.ndarray, rng: np.random.Generator) -> float:
    """The replaced null: member i of every null set from member i's ‖ΔY‖ decile."""
    strata = quantile_strata(magnitude, 10)
    null = random_sets(rng, np.arange(magnitude.size), members.size, 300, strata[members].tolist(), strata)
    unit = sim[np.ix_(members, members)]
    observed = (unit.sum() - np.trace(unit)) / (members.size * (members.size - 1))
    sub = sim[null[:, :, None], null[:, None, :]]
    values = (sub.sum(axis=(1, 2)) - np.trace(sub, axis1=1, axis2=2)) / (members.size * (members.size - 1))
    return compare_to_null(observed, values).p


def test_low_magnitude_set_off_the_old_bin_edges_holds_alpha() -> None:
    """Null data with the magnitude confound (no set structure); sets of 20 from the weakest 25 % of 200
    knockdowns, which splits a decile: the old decile-matched null rejects far above alpha, the member-by-member
    matched null (rank windows) holds alpha + 2 Monte-Carlo SE."""
    runs, alpha = 150, 0.05
    bound = alpha + 2 * math.sqrt(alpha * (1 - alpha) / runs)
    new, old = 0, 0
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        features, magnitude = confound_features(rng, 200, 32)
        members = rng.choice(np.argsort(magnitude)[:50], 20, replace=False)
        res = run(features, members, magnitude, seed=seed, null_sets=300, bootstrap=100)
        new += res.metrics["p_matched"] < alpha
        old += old_bin_p(res.arrays["similarity"], magnitude, members, rng) < alpha
    assert old / runs > bound  # the leak at the bin edge is real on these data
    assert new / runs <= bound


def test_planted_set_is_still_found_by_the_matched_null() -> None:
    found = 0
    for seed in range(30):
        rng = np.random.default_rng(100 + seed)
        members = rng.choice(200, 10, replace=False)
        features, magnitude = confound_features(rng, 200, 32, members, weight=1.0)
        found += run(features, members, magnitude, seed=seed, null_sets=300, bootstrap=100).metrics["p_matched"] < 0.05
    assert found / 30 >= 0.8


# ---------------------------------------------------------------- attainable p, minimum effect


def test_attainable_p_is_one_over_draws_plus_one() -> None:
    features, magnitude = confounded()
    res = run(features, np.arange(60, 70), magnitude, null_sets=700)
    assert dict(res.attainable) == {"p": 1 / 701, "p_matched": 1 / 701, "p_specific": 1 / 701}
    for name in ("p", "p_matched", "p_specific"):
        assert res.metrics[name] >= res.attainable[name]
    gone = absence(features, np.arange(60, 70), magnitude, reference=0.3, null_sets=400)
    assert dict(gone.attainable) == {"p": 1 / 401, "p_matched": 1 / 401, "p_specific": 1 / 401}


def test_minimum_effect_of_clustering_is_the_margin_of_absence() -> None:
    assert get_probe("output_set_clustering").min_effect == 0.05
    assert get_probe("output_set_absence").min_effect == 0.05  # the default margin of a claim of absence
    assert get_probe("output_set_absence").absence == get_probe("output_set_clustering").absence == "below"


# ---------------------------------------------------------------- perturbation-specific similarity


def test_shared_offset_clusters_raw_cosine_but_not_the_specific_one() -> None:
    """Every knockdown's output is one shift common to all perturbations plus an effect of its own; the set's
    members have little effect of their own (a fifth of the others'), nothing shared beyond the common shift,
    and ordinary ‖ΔY‖ (measured elsewhere), so the matched null does not pair them with like knockdowns. Raw
    cosine: the common shift dominates the members' outputs, they "cluster". The shift removed (the mean over
    all knockdowns subtracted; the own effects balance out over the knockdowns, so that mean is the shift), what
    is left of each member is its own independent effect: no clustering."""
    rng = np.random.default_rng(7)
    n, dim = 200, 30
    shift = rng.normal(size=dim)
    own = rng.normal(size=(n, dim))
    scale = np.ones(n)
    members = np.arange(0, 12)
    scale[members] = 0.2
    own -= (scale[:, None] * own).sum(axis=0) / scale.sum()  # own effects balance out: the mean is the shift
    features = shift / np.linalg.norm(shift) * math.sqrt(dim) + scale[:, None] * own
    magnitude = rng.uniform(1.0, 2.0, n)
    res = run(features, members, magnitude)
    assert res.metrics["p_matched"] < 0.001 and res.cis["delta_cosine"][0] > 0.3
    assert res.metrics["p_specific"] > 0.05
    assert res.cis["delta_cosine_specific"][0] < 0 < res.cis["delta_cosine_specific"][1]


def test_specific_metrics_keep_a_set_specific_program() -> None:
    planted = np.arange(100, 112)
    features, magnitude = confounded(planted=planted)
    res = run(features, planted, magnitude)
    assert res.metrics["p_specific"] < 0.001 and res.cis["delta_cosine_specific"][0] > 0.3
    centred = features - features.mean(axis=0)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    pairs = [unit[a] @ unit[b] for a in planted for b in planted if a != b]
    assert res.metrics["within_cosine_specific"] == pytest.approx(np.mean(pairs))


def test_pert_embedding_clustering_matched_null_attainable_and_minimum_effect() -> None:
    """The pert-embedding probe shares the matched null: a no-effect set clusters against uniform sets only."""
    from hypocheck.probes.embedding import EmbeddingClusteringParams, pert_embedding_clustering

    features, magnitude = confounded()
    params = EmbeddingClusteringParams(null_sets=900, bootstrap=300)
    res = pert_embedding_clustering(embeddings=features, members=np.arange(3, 15), magnitude=magnitude,
                                    params=params, rng=np.random.default_rng(0))
    assert res.metrics["p"] < 0.01 and res.metrics["p_matched"] > 0.05
    assert dict(res.attainable) == {"p": 1 / 901, "p_matched": 1 / 901}
    no_magnitude = pert_embedding_clustering(embeddings=features, members=np.arange(3, 15), params=params,
                                             rng=np.random.default_rng(0))
    assert no_magnitude.inconclusive is not None and math.isnan(no_magnitude.attainable["p_matched"])
    assert get_probe("pert_embedding_clustering").min_effect == 0.05


def test_members_without_a_direction_are_inconclusive_not_unclustered() -> None:
    """Members for which the model predicts no change have no directions to cluster: neither presence nor
    absence can be read from them."""
    features = np.random.default_rng(1).normal(size=(60, 8))
    features[:6] = 0.0  # the set's members: no predicted change
    magnitude = np.linalg.norm(features, axis=1)
    result = output_set_absence(features=features, members=np.arange(6), magnitude=magnitude,
                                params=OutputAbsenceParams(**FAST, reference_effect=0.1), rng=np.random.default_rng(0))
    assert result.inconclusive is not None and "all-zero features" in result.inconclusive


def test_one_change_for_every_knockdown_is_inconclusive() -> None:
    """arc-state's context_mean predicts the same ΔY for every knockdown of a line: presence and absence alike
    cannot be read from it (all cosines are 1; magnitudes tie, so a matched null is arbitrary)."""
    features = np.tile(np.linspace(-1, 1, 8), (60, 1))
    for probe, params in ((output_set_absence, OutputAbsenceParams(**FAST, reference_effect=0.1)),
                          (output_set_clustering, OutputClusteringParams(**FAST))):
        result = probe(features=features, members=np.arange(6), magnitude=np.linalg.norm(features, axis=1),
                       params=params, rng=np.random.default_rng(0))
        assert result.inconclusive is not None and "the same features" in result.inconclusive
