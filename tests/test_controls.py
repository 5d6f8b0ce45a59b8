"""Control models (``NAME~randomized``, ``NAME~shuffled_perts``) on a tiny real arc-state model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hypocheck.errors import ModelLoadError, UnknownNameError
from hypocheck.fixtures.config import SuiteConfig
from hypocheck.fixtures.context import SuiteContext
from hypocheck.fixtures.controls import (
    CONTROL_KINDS,
    ShuffledPerturbations,
    derangement,
    make_control,
    redraw_parameters,
)
from hypocheck.fixtures.st_adapter import STAdapter
from hypocheck.models import ModelRef, axis_values
from tests.helpers_tiny import control_sentence, tiny_suite

SEED = 3  # the tiny suite's control_sentence.seed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> SuiteContext:
    return SuiteContext(SuiteConfig.load(tiny_suite(tmp_path_factory.mktemp("controls"), cells=8, seed=SEED)))


@pytest.fixture(scope="module")
def trained(ctx: SuiteContext) -> STAdapter:
    adapter = ctx.suite.model("tiny")
    assert isinstance(adapter, STAdapter)
    return adapter


def _is_norm_param(name: str) -> bool:
    return "norm" in name


def _knockdowns(adapter: STAdapter) -> list[str]:
    return [p for p in adapter.pert_names if p != adapter.control_pert]


# ---------------------------------------------------------------- randomized
def test_randomized_copy_redraws_every_weight_with_the_trained_scale(trained: STAdapter) -> None:
    before = {k: v.clone() for k, v in trained.model.state_dict().items()}
    control = trained.randomized_copy(SEED)
    after = dict(trained.model.state_dict())
    assert after.keys() == before.keys()
    for k, v in before.items():  # the trained model is untouched
        assert torch.equal(after[k], v), k
    trained_params = dict(trained.model.named_parameters())
    control_params = dict(control.model.named_parameters())
    assert control_params.keys() == trained_params.keys()
    assert control.model is not trained.model
    for name, p in control_params.items():
        t = trained_params[name]
        assert p.shape == t.shape and p.dtype == t.dtype, name
        if _is_norm_param(name):
            assert torch.equal(p, torch.ones_like(p)), name
            continue
        if t.numel() > 1 and t.std().item() == 0:  # constant (arc-state zeroes the unused token embedding)
            assert not p.any(), name
            continue
        assert not torch.allclose(p, t), name
        if p.numel() >= 1000:  # same scale as trained, centred on 0
            assert p.std().item() == pytest.approx(t.std().item(), rel=0.1), name
            assert abs(p.mean().item()) < 0.1 * t.std().item(), name
    assert [p.shape for p in control.model.parameters()] == [p.shape for p in trained.model.parameters()]
    assert (control.gene_names, control.pert_names, control.batch_map) == (
        trained.gene_names, trained.pert_names, trained.batch_map)
    assert (control.n_layers, control.hidden_dim, control.attention, control.cell_set_len) == (
        trained.n_layers, trained.hidden_dim, trained.attention, trained.cell_set_len)


def test_randomized_copy_is_seeded(trained: STAdapter) -> None:
    a, b, other = trained.randomized_copy(5), trained.randomized_copy(5), trained.randomized_copy(6)
    sa, sb, so = a.model.state_dict(), b.model.state_dict(), other.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["pert_encoder.0.weight"], so["pert_encoder.0.weight"])
    assert a.fingerprint == b.fingerprint
    assert len({a.fingerprint, other.fingerprint, trained.fingerprint}) == 3


def test_randomized_outputs_differ_and_the_equivalence_check_passes(trained: STAdapter) -> None:
    control = trained.randomized_copy(SEED)
    basal, batch = control_sentence()
    perts = _knockdowns(trained)[:4]
    assert control.check_equivalence(basal, batch, perts) <= 1e-5
    with torch.no_grad():
        mine, theirs = control.predict(perts, basal, batch), trained.predict(perts, basal, batch)
        r_mine = control.encode_perturbation(control.onehot(perts))
        r_theirs = trained.encode_perturbation(trained.onehot(perts))
    assert mine.shape == theirs.shape
    assert (mine - theirs).abs().max().item() > 0.1 * theirs.abs().max().item()
    assert not torch.allclose(r_mine, r_theirs)


def test_redraw_parameters_resets_norms_and_draws_the_rest() -> None:
    torch.manual_seed(0)
    first, norm, last = nn.Linear(50, 40), nn.LayerNorm(40), nn.Linear(40, 1)
    module = nn.Sequential(first, norm, last)
    with torch.no_grad():
        norm.weight.fill_(3.0)
        norm.bias.fill_(0.5)
        last.bias.fill_(2.0)  # one element: drawn with |2| as its scale
        first.weight.mul_(10.0)
    trained_std = first.weight.std().item()
    redraw_parameters(module, seed=0)
    assert torch.equal(norm.weight, torch.ones(40)) and torch.equal(norm.bias, torch.zeros(40))
    assert first.weight.std().item() == pytest.approx(trained_std, rel=0.1)
    assert last.bias.item() != 2.0


# ------------------------------------------------------------ shuffled perts
def test_shuffled_control_routes_each_knockdown_to_another_embedding(trained: STAdapter) -> None:
    control = ShuffledPerturbations(trained, seed=SEED)
    kds = _knockdowns(trained)
    assert sorted(control.routing[k] for k in kds) == sorted(kds)  # a permutation of the knockdowns
    assert all(control.routing[k] != k for k in kds)
    assert control.routing[trained.control_pert] == trained.control_pert
    with torch.no_grad():
        for k in [*kds, trained.control_pert]:
            expected = trained.encode_perturbation(trained.onehot([control.routing[k]]))
            assert torch.equal(control.encode_perturbation(control.onehot([k])), expected), k
            if k != trained.control_pert:
                assert not torch.allclose(control.encode_perturbation(control.onehot([k])),
                                          trained.encode_perturbation(trained.onehot([k]))), k
    basal, batch = control_sentence()
    assert control.check_equivalence(basal, batch, kds[:4]) <= 1e-5
    assert torch.equal(control.predict(kds[:2], basal, batch),
                       trained.predict([control.routing[k] for k in kds[:2]], basal, batch))
    with pytest.raises(UnknownNameError, match="perturbation"):
        control.onehot(["NOT_A_KD"])


def test_shuffled_control_is_seeded_and_fingerprinted(trained: STAdapter) -> None:
    a, b, other = (ShuffledPerturbations(trained, seed=s) for s in (SEED, SEED, SEED + 1))
    assert a.routing == b.routing and a.routing != other.routing
    assert a.fingerprint == b.fingerprint
    assert len({a.fingerprint, other.fingerprint, trained.fingerprint,
                trained.randomized_copy(SEED).fingerprint}) == 4
    assert (a.name, a.gene_names, a.pert_names, a.n_layers) == (
        "tiny~shuffled_perts", trained.gene_names, trained.pert_names, trained.n_layers)


@pytest.mark.parametrize("n", [2, 3, 10, 301])
def test_derangement_has_no_fixed_point(n: int) -> None:
    perm = derangement(n, seed=n)
    assert sorted(perm.tolist()) == list(range(n))
    assert not np.any(perm == np.arange(n))
    assert np.array_equal(perm, derangement(n, seed=n))


# --------------------------------------------------------------- the suite
def test_suite_builds_each_control_once_from_the_trained_model(ctx: SuiteContext, trained: STAdapter) -> None:
    randomized = ctx.suite.model("tiny~randomized")
    assert ctx.suite.model("tiny~randomized") is randomized
    assert ctx.suite.model("tiny") is trained
    assert isinstance(randomized, STAdapter) and randomized.name == "tiny~randomized"
    expected = trained.randomized_copy(SEED)  # the suite's seed
    for (name, p), q in zip(randomized.model.named_parameters(), expected.model.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert randomized.fingerprint == expected.fingerprint != trained.fingerprint
    env = ctx.suite.environment()["models"]
    assert env["tiny~randomized"]["fingerprint"] == randomized.fingerprint


def test_suite_artifacts_of_controls_are_their_own(ctx: SuiteContext, trained: STAdapter) -> None:
    names, trained_emb = ctx.artifacts.embeddings.pert_embeddings("tiny")
    shuffled = ctx.suite.model("tiny~shuffled_perts")
    assert isinstance(shuffled, ShuffledPerturbations) and shuffled.seed == SEED
    assert ctx.suite.model("tiny~shuffled_perts") is shuffled
    shuffled_names, shuffled_emb = ctx.artifacts.embeddings.pert_embeddings("tiny~shuffled_perts")
    assert shuffled_names == names == ctx.suite.knockdowns("tiny~shuffled_perts")
    with torch.no_grad():
        routed = trained.encode_perturbation(trained.onehot([shuffled.routing[n] for n in names]))
    np.testing.assert_array_equal(shuffled_emb, routed.double().numpy())
    assert not np.allclose(shuffled_emb, trained_emb)
    _, randomized_emb = ctx.artifacts.embeddings.pert_embeddings("tiny~randomized")
    assert randomized_emb.shape == trained_emb.shape and not np.allclose(randomized_emb, trained_emb)
    outputs = ctx.artifacts.outputs
    assert not np.allclose(outputs.delta_y("tiny~randomized", "hepg2"), outputs.delta_y("tiny", "hepg2"))


def test_suite_loads_the_trained_model_once_for_its_controls(ctx: SuiteContext, monkeypatch) -> None:
    calls: list[str] = []
    load = SuiteConfig.load_model

    def counting(self: SuiteConfig, name: str):
        calls.append(name)
        return load(self, name)

    monkeypatch.setattr(SuiteConfig, "load_model", counting)
    suite = SuiteContext(ctx.suite.config).suite
    suite.model("tiny~shuffled_perts")
    suite.model("tiny~randomized")
    suite.model("tiny")
    assert calls == ["tiny"]


@pytest.mark.parametrize("name", ["tiny~randomised", "tiny~", "tiny~randomized~shuffled_perts"])
def test_unknown_control_kind_is_a_clear_error(ctx: SuiteContext, name: str) -> None:
    with pytest.raises(UnknownNameError) as info:
        ctx.suite.model(name)
    text = str(info.value)
    assert "unknown control kind" in text and repr(name) in text
    assert "valid: data, randomized, shuffled_perts" in text
    assert name not in ctx.suite._models


def test_control_of_an_unknown_model_names_the_models(ctx: SuiteContext) -> None:
    with pytest.raises(UnknownNameError, match="unknown model 'tinny'") as info:
        ctx.suite.model("tinny~randomized")
    assert "did you mean 'tiny'" in str(info.value)


def test_control_names_and_kinds() -> None:
    assert CONTROL_KINDS == ("randomized", "shuffled_perts")
    assert ModelRef.parse("fewshot") == ModelRef("fewshot") and str(ModelRef("fewshot")) == "fewshot"
    ref = ModelRef.parse("fewshot~shuffled_perts")
    assert ref == ModelRef("fewshot", "shuffled_perts") and str(ref) == "fewshot~shuffled_perts"
    assert ref.trained == ModelRef("fewshot") and ModelRef("fewshot").with_control("randomized").control == "randomized"
    assert axis_values(["a"]) == ["a", "a~randomized", "a~shuffled_perts", "a~data"]


def test_randomized_needs_an_adapter_that_can_copy_itself(trained: STAdapter) -> None:
    shuffled = ShuffledPerturbations(trained, seed=SEED)
    with pytest.raises(ModelLoadError, match="randomized_copy"):
        make_control(shuffled, "randomized", seed=SEED)
