"""The suite context's Jacobian artifacts on a tiny real arc-state model, checked against autograd.

What the routing probes (NB03, NB05–NB10) receive must be the quantities they
are defined on: ΔY of every knockdown, the Gram of ∂Ȳ/∂r, the one-hot Gram of
∂Ȳ/∂p, the pert representations r_k (input proximity), held Jacobians on other
control sentences, and ∂Ȳ[target]/∂X[regulator].
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hypocheck.errors import HypocheckError, UnknownNameError
from hypocheck.fixtures.config import SuiteConfig
from hypocheck.fixtures.context import SuiteContext
from hypocheck.fixtures.data import SAMPLINGS
from hypocheck.fixtures.routing_inputs import routing_arrays, routing_pair
from hypocheck.fixtures.st_adapter import STAdapter
from hypocheck.models import ModelRef
from hypocheck.probes.kinds import DifferenceInputs, RoutingInputs
from hypocheck.probes.routing import DifferenceParams, RoutingParams
from tests.helpers_tiny import tiny_suite

CELLS = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> SuiteContext:
    return SuiteContext(SuiteConfig.load(tiny_suite(tmp_path_factory.mktemp("routing"), cells=CELLS, seed=3)))


def _mean_prediction(ctx: SuiteContext, onehots: torch.Tensor, line: str = "hepg2") -> torch.Tensor:
    """Ȳ through the whole model (pert_encoder included) for each one-hot row, by plain autograd-able calls."""
    adapter = ctx.suite.model("tiny")
    basal, batch = ctx.suite.control_sentence(line, "tiny")
    return torch.stack([adapter.forward_from_repr(adapter.encode_perturbation(p[None]), basal, batch)[0].mean(0)
                        for p in onehots])


def _autograd_jacobians(ctx: SuiteContext, wrt_onehot: bool) -> torch.Tensor:
    adapter = ctx.suite.model("tiny")
    basal, batch = ctx.suite.control_sentence("hepg2", "tiny")
    onehots = adapter.onehot(ctx.suite.knockdowns("tiny"))
    out = []
    for p in onehots:
        if wrt_onehot:
            def f(q: torch.Tensor) -> torch.Tensor:
                return adapter.forward_from_repr(adapter.encode_perturbation(q[None]), basal, batch)[0].mean(0)
            out.append(torch.autograd.functional.jacobian(f, p))
        else:
            r = adapter.encode_perturbation(p[None])[0].detach()
            out.append(torch.autograd.functional.jacobian(
                lambda v: adapter.forward_from_repr(v[None], basal, batch)[0].mean(0), r))
    return torch.stack(out).double()


def test_delta_y_is_the_cell_mean_difference_to_control(ctx: SuiteContext) -> None:
    adapter = ctx.suite.model("tiny")
    names = ctx.suite.knockdowns("tiny")
    assert names == ["KD00", "KD01", "KD02"]
    with torch.no_grad():
        y = _mean_prediction(ctx, adapter.onehot([*names, adapter.control_pert])).double().numpy()
    np.testing.assert_allclose(ctx.artifacts.outputs.delta_y("tiny", "hepg2"), y[:-1] - y[-1], rtol=1e-5, atol=1e-6)
    magnitudes = ctx.artifacts.outputs.effect_magnitudes("tiny", "hepg2")
    np.testing.assert_allclose(magnitudes, np.linalg.norm(y[:-1] - y[-1], axis=1),
                               rtol=1e-5)


@pytest.mark.parametrize("onehot", [False, True])
def test_jacobian_gram_matches_autograd(ctx: SuiteContext, onehot: bool) -> None:
    jac = _autograd_jacobians(ctx, wrt_onehot=onehot)
    flat = jac.reshape(jac.shape[0], -1)
    expected = (flat @ flat.T).numpy()
    gram = ctx.artifacts.jacobians.jacobian_gram("tiny", "hepg2", onehot=onehot)
    np.testing.assert_allclose(gram, expected, rtol=2e-4, atol=1e-7 * np.abs(expected).max())


def test_the_suites_own_cell_count_is_one_sentence(ctx: SuiteContext) -> None:
    outputs = ctx.artifacts.outputs
    assert outputs.delta_y("tiny", "hepg2", ("random", CELLS)) is outputs.delta_y("tiny", "hepg2")
    assert outputs.delta_y("tiny", "hepg2", ("random", CELLS // 2)) is not outputs.delta_y("tiny", "hepg2")


def test_knockout_profiles_zero_one_gene_in_every_cell(ctx: SuiteContext) -> None:
    adapter = ctx.suite.model("tiny")
    genes = [adapter.gene_names[2], adapter.gene_names[7]]
    basal, batch = ctx.suite.control_sentence("jurkat", "tiny")
    with torch.no_grad():
        r = adapter.encode_perturbation(adapter.onehot([adapter.control_pert]))
        base = adapter.forward_from_repr(r, basal, batch)[0].mean(0)
        expected = []
        for gene in genes:
            knocked = basal.clone()
            knocked[:, adapter.gene_names.index(gene)] = 0
            expected.append((adapter.forward_from_repr(r, knocked, batch)[0].mean(0) - base).double().numpy())
    profiles = ctx.artifacts.knockouts.knockout_profiles("tiny", "jurkat", genes)
    np.testing.assert_allclose(profiles, np.stack(expected), rtol=1e-4,
                               atol=1e-6)


def test_pert_weight_is_the_encoder_weight(ctx: SuiteContext) -> None:
    adapter = ctx.suite.model("tiny")
    assert isinstance(adapter, STAdapter)
    weight = adapter.model.pert_encoder[0].weight.detach()
    torch.testing.assert_close(ctx.artifacts.embeddings.pert_weight("tiny"), weight, rtol=1e-5, atol=1e-6)


def test_held_jacobians_on_another_sentence(ctx: SuiteContext) -> None:
    held = ctx.artifacts.jacobians.held_jacobians("tiny", "hepg2", ["KD02", "KD00"], ("top_magnitude", 4))
    adapter = ctx.suite.model("tiny")
    basal, batch = ctx.suite.control_sentence("hepg2", "tiny", "top_magnitude", 4)
    assert basal.shape[0] == 4
    for row, kd in zip(held, ["KD02", "KD00"], strict=True):
        r = adapter.encode_perturbation(adapter.onehot([kd]))[0].detach()
        expected = torch.autograd.functional.jacobian(
            lambda v: adapter.forward_from_repr(v[None], basal, batch)[0].mean(0), r)
        np.testing.assert_allclose(row, expected.double().numpy(), rtol=1e-4, atol=1e-6)


def test_input_derivatives_match_finite_differences(ctx: SuiteContext) -> None:
    adapter = ctx.suite.model("tiny")
    genes = adapter.gene_names
    regulators, targets = [genes[0], genes[3]], [genes[1], genes[2], genes[5]]
    d = ctx.artifacts.jacobians.input_derivatives("tiny", "jurkat", ["KD01", "KD02"], regulators, targets)
    assert d.shape == (2, 2, 3)
    basal, batch = ctx.suite.control_sentence("jurkat", "tiny")
    cols = [genes.index(t) for t in targets]
    eps = 1e-2
    for i, kd in enumerate(["KD01", "KD02"]):
        r = adapter.encode_perturbation(adapter.onehot([kd]))
        for j, reg in enumerate(regulators):
            up, down = basal.clone(), basal.clone()
            up[:, genes.index(reg)] += eps
            down[:, genes.index(reg)] -= eps
            with torch.no_grad():
                fd = (adapter.forward_from_repr(r, up, batch)[0].mean(0)
                      - adapter.forward_from_repr(r, down, batch)[0].mean(0))[cols] / (2 * eps)
            np.testing.assert_allclose(d[i, j], fd.double().numpy(), rtol=2e-2, atol=2e-4)


def test_samplings_are_seeded_distinct_and_valid(ctx: SuiteContext) -> None:
    data = ctx.suite.data_for("tiny")
    all_controls = data.controls("hepg2")
    totals = np.sort(all_controls.sum(axis=1))[::-1]
    for sampling in SAMPLINGS:
        a, batch_a = data.control_sentence("hepg2", 10, 7, None, sampling)
        b, _ = data.control_sentence("hepg2", 10, 7, None, sampling)
        np.testing.assert_array_equal(a, b)
        assert a.shape == (10, all_controls.shape[1]) and batch_a.shape == (10,)
    top, _ = data.control_sentence("hepg2", 5, 0, None, "top_magnitude")
    np.testing.assert_allclose(np.sort(top.sum(axis=1))[::-1], totals[:5], rtol=1e-6)
    batch_map = ctx.suite.model("tiny").batch_map
    _, all_batches = data.control_sentence("hepg2", all_controls.shape[0], 0, batch_map, "random")
    strat, strat_batches = data.control_sentence("hepg2", 10, 0, batch_map, "stratified")
    assert len(set(map(tuple, strat))) == 10  # without replacement
    for b in np.unique(all_batches):  # proportional to the batches' shares, up to rounding
        assert abs(np.sum(strat_batches == b) - 10 * np.mean(all_batches == b)) <= 1
    with pytest.raises(UnknownNameError, match="did you mean 'stratified'"):
        data.control_sentence("hepg2", 4, 0, None, "stratifed")


def test_routing_builders_pass_each_knockdowns_pert_representation(ctx: SuiteContext) -> None:
    """The partial Mantel test controls for −‖r_a − r_b‖: the builder must give r_k in the rows' order."""
    adapter = ctx.suite.model("tiny")
    names = ctx.suite.knockdowns("tiny")
    with torch.no_grad():
        expected = adapter.encode_perturbation(adapter.onehot(names)).double().numpy()
    case = SimpleNamespace(axes={"model": "tiny", "cell_line": "hepg2"}, model=ModelRef("tiny"), inputs=RoutingInputs(),
                           params=RoutingParams(selection="all"), location=None)
    inputs = routing_arrays(ctx.artifacts, case)  # type: ignore[arg-type]
    assert inputs.names == names
    np.testing.assert_allclose(inputs.pert_repr, expected, rtol=1e-6, atol=1e-7)
    assert inputs.pert_repr.shape[0] == inputs.delta_y.shape[0] == inputs.jacobian_gram.shape[0]
    pair = SimpleNamespace(axes={"cell_line": "hepg2"}, inputs=DifferenceInputs(models=["tiny", "tiny"]),
                           params=DifferenceParams(selection="all"), location=None)
    both = routing_pair(ctx.artifacts, pair)  # type: ignore[arg-type]
    np.testing.assert_allclose(both.pert_repr_a, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(both.pert_repr_b, expected, rtol=1e-6, atol=1e-7)


def test_a_top_selection_takes_the_jacobians_of_the_selected_knockdowns_alone(
    ctx: SuiteContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With selection 'top' the Gram covers the knockdowns the probe selects and no other, and equals the full
    Gram's block; a selected knockdown whose Jacobian turns out zero is replaced by the next of its cluster and
    kept in the Gram, so the probe counts it."""
    from hypocheck.probes.kinds import routing_clusters, routing_rows

    params = RoutingParams(n_clusters=2, top_per_cluster=1, min_kds=3)
    case = SimpleNamespace(axes={"model": "tiny", "cell_line": "hepg2"}, model=ModelRef("tiny"), inputs=RoutingInputs(),
                           params=params, location=None)
    art = ctx.artifacts
    inputs = routing_arrays(art, case)  # type: ignore[arg-type]
    _, clusters, magnitude = routing_clusters(inputs.delta_y, 2)
    k = len(inputs.names)
    expected = routing_rows(clusters, magnitude, np.zeros(k, dtype=bool), "top", 1)
    assert inputs.gram_rows is not None and list(inputs.gram_rows) == list(expected) and len(expected) < k
    full = art.jacobians.jacobian_gram("tiny", "hepg2")
    np.testing.assert_allclose(inputs.jacobian_gram, full[np.ix_(expected, expected)], rtol=1e-6)
    assert inputs.measured["jacobians of"].startswith(f"the {len(expected)} knockdowns the selection takes (of {k})")

    zero_kd = int(expected[0])
    real = art.jacobians.jacobian_gram_estimate

    def with_a_zero_jacobian(*args, **kwargs):  # type: ignore[no-untyped-def]
        est = dict(real(*args, **kwargs))
        rows = list(args[4]) if len(args) > 4 else list(range(k))
        if zero_kd in rows:
            gram = est["gram"].copy()
            gram[rows.index(zero_kd), :] = gram[:, rows.index(zero_kd)] = 0.0
            est["gram"] = gram
        return est

    monkeypatch.setattr(art.jacobians, "jacobian_gram_estimate", with_a_zero_jacobian)
    again = routing_arrays(art, case)  # type: ignore[arg-type]
    zero = np.zeros(k, dtype=bool)
    zero[zero_kd] = True
    replaced = routing_rows(clusters, magnitude, zero, "top", 1)
    assert again.gram_rows is not None and list(again.gram_rows) == [*replaced, zero_kd]
    assert zero_kd not in replaced and set(replaced) - set(expected)


def test_every_record_names_what_it_measured(ctx: SuiteContext) -> None:
    """A case says which features it clustered (the residual stream of a block, or ΔY itself), which Jacobian it
    took and on which sentence: the provider names it, and it reaches summary.json as ``measured``."""
    from hypocheck.fixtures.inputs import layer_features
    from hypocheck.probes.kinds import OutputFeatureInputs

    def case(**options: object) -> SimpleNamespace:
        return SimpleNamespace(axes={"model": "tiny", "cell_line": "hepg2", "gene_set": "ribosome"},
                               model=ModelRef("tiny"), inputs=OutputFeatureInputs(**options), location=None)

    residual = layer_features(ctx.artifacts, case(features="residual", layer=1))  # type: ignore[arg-type]
    assert {k: v for k, v in residual.measured.items() if k != "matched null"} == {
        "features": "residual stream after block 1", "layer": 1, "cell_line": "hepg2",
        "members": "0 of 0"}  # the tiny model has no ribosome knockdown
    assert residual.measured["matched null"].startswith("drew from 3 of 3 knockdowns")
    delta = layer_features(ctx.artifacts, case(features="delta_y"))  # type: ignore[arg-type]
    assert delta.measured["features"].startswith("ΔY")
    np.testing.assert_array_equal(delta.features, ctx.artifacts.outputs.delta_y("tiny", "hepg2"))
    np.testing.assert_allclose(delta.magnitude, ctx.artifacts.outputs.effect_magnitudes("tiny", "hepg2"))
    with pytest.raises(HypocheckError, match="ΔY is the model's output, it has no layer"):
        layer_features(ctx.artifacts, case(features="delta_y", layer=1))  # type: ignore[arg-type]
    routing = SimpleNamespace(axes={"model": "tiny", "cell_line": "hepg2"}, model=ModelRef("tiny"),
                              inputs=RoutingInputs(jacobian="onehot"), params=RoutingParams(), location=None)
    measured = routing_arrays(ctx.artifacts, routing).measured  # type: ignore[arg-type]
    assert measured["jacobian"].startswith("one-hot") and measured["sentence"] == f"random, {CELLS} cells, seed 3"


def test_a_bad_name_in_inputs_is_located_at_its_entry(ctx: SuiteContext, tmp_path: Path) -> None:
    """A gene the model lacks in ``inputs.genes`` is reported at that entry's line and key, with close matches."""
    from hypocheck.cases import expand
    from hypocheck.fixtures.inputs import knockout_profiles
    from hypocheck.schema import hypotheses_from_doc
    from hypocheck.yamlsource import load_yaml

    path = tmp_path / "ko.yaml"
    path.write_text("id: ko\nclaim: c\nprobe: knockout_transfer\ncases: {model: [tiny]}\ninputs:\n"
                    "  lines: [hepg2, jurkat]\n  genes:\n    - GENE00\n    - GENE0X\nexpect: [mean_spearman > 0]\n")
    doc = load_yaml(path)
    (case,) = [c for hyp, base in hypotheses_from_doc(doc) for c in expand(hyp, doc, base, {"model": ["tiny"]})]
    with pytest.raises(UnknownNameError) as err:
        knockout_profiles(ctx.artifacts, case)
    text = str(err.value)
    assert f"{path}:9:" in text and "(at inputs.genes[1])" in text and "'GENE0X'" in text, text
