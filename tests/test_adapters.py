"""The ST adapter against arc-state's own forward, safe loading, bad run dirs, and the SAE adapter."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from hypocheck.errors import ModelLoadError, ProbeError, UnknownNameError
from hypocheck.fixtures.adapter import ModelAdapter, relative_difference
from hypocheck.fixtures.config import ModelConfig
from hypocheck.fixtures.sae import SparseAutoencoder
from hypocheck.fixtures.safe_load import UntrustedPickleError, load_plain_pickle, torch_load
from hypocheck.fixtures.st_adapter import AttentionModeWarning, STAdapter
from tests.helpers_tiny import (
    BATCH_NAMES,
    CELL_SET_LEN,
    GENE_NAMES,
    HIDDEN,
    LAYERS,
    N_GENES,
    PERT_NAMES,
    control_sentence,
    tiny_run_dir,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "bidirectional": tiny_run_dir(root / "bidi", bidirectional=True),
        "causal": tiny_run_dir(root / "causal", bidirectional=False),
    }


@pytest.fixture(scope="module")
def adapters(runs: dict[str, Path]) -> dict[str, STAdapter]:
    return {mode: STAdapter.from_run_dir(path, name=mode) for mode, path in runs.items()}


@pytest.fixture
def bidi(adapters: dict[str, STAdapter]) -> STAdapter:
    return adapters["bidirectional"]


def _copy_run(src: Path, dst: Path) -> Path:
    for f in src.rglob("*"):
        if f.is_file():
            target = dst / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())
    return dst


def _rewrite_checkpoint(path: Path, edit) -> None:
    ckpt = torch.load(path, weights_only=False)  # our own test file
    edit(ckpt)
    torch.save(ckpt, path)


class _Evil:
    """Unpickling runs a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------ the protocol
def test_adapter_implements_protocol(bidi: STAdapter, runs: dict[str, Path]) -> None:
    assert isinstance(bidi, ModelAdapter)
    assert bidi.gene_names == GENE_NAMES
    assert bidi.pert_names == PERT_NAMES
    assert bidi.control_pert == "non-targeting"
    assert (bidi.hidden_dim, bidi.n_layers) == (HIDDEN, LAYERS)
    assert bidi.batch_map == {b: i for i, b in enumerate(BATCH_NAMES)}
    ckpt = runs["bidirectional"] / "checkpoints" / "final.ckpt"
    assert bidi.fingerprint == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert bidi.device == torch.device("cpu")
    assert not any(p.requires_grad for p in bidi.model.parameters())
    assert "bidirectional attention" in bidi.describe() and "\n" not in bidi.describe()


def test_onehot_rows_and_unknown_names(bidi: STAdapter) -> None:
    oh = bidi.onehot(["KD03", "non-targeting"])
    assert oh.shape == (2, len(PERT_NAMES))
    assert oh.argmax(1).tolist() == [PERT_NAMES.index("KD03"), 0]
    with pytest.raises(UnknownNameError) as err:
        bidi.onehot(["KD3"])
    assert "perturbation" in str(err.value) and "KD03" in str(err.value)


# --------------------------------------------------------------- equivalence
@pytest.mark.parametrize("mode", ["bidirectional", "causal"])
@pytest.mark.parametrize("n_cells", [CELL_SET_LEN, 5, 13])
def test_forward_from_repr_equals_predict_step(adapters: dict[str, STAdapter], mode: str, n_cells: int) -> None:
    adapter = adapters[mode]
    basal, batch = control_sentence(n_cells, seed=n_cells)
    gap = adapter.check_equivalence(basal, batch, adapter.pert_names, rtol=1e-5)
    assert gap <= 1e-5
    preds = adapter.predict(adapter.pert_names, basal, batch)
    assert preds.shape == (len(PERT_NAMES), n_cells, N_GENES)
    assert (preds > 0).float().mean() > 0.5  # the comparison is not vacuous (output ReLU)
    # one sentence of a batch of K equals the same pert run alone
    alone = adapter.predict(["KD05"], basal, batch)[0]
    assert relative_difference(preds[PERT_NAMES.index("KD05")], alone) < 1e-5


def test_check_equivalence_raises_when_the_decomposition_is_wrong(
    bidi: STAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    basal, batch = control_sentence()
    original = bidi.encode_perturbation
    monkeypatch.setattr(bidi, "encode_perturbation", lambda oh: original(oh) * 1.01)
    with pytest.raises(ModelLoadError, match="predict_step"):
        bidi.check_equivalence(basal, batch, ["KD01", "KD02"])


def test_predict_batches_match_the_model_batch_embedding(bidi: STAdapter) -> None:
    basal, _ = control_sentence()
    zeros = torch.zeros(CELL_SET_LEN, dtype=torch.long)
    ones = torch.ones(CELL_SET_LEN, dtype=torch.long)
    assert relative_difference(bidi.predict(["KD01"], basal, zeros), bidi.predict(["KD01"], basal, ones)) > 1e-4


# ----------------------------------------------------------- layer activations
@pytest.mark.filterwarnings("ignore:.*past_key_values.*:FutureWarning")
def test_layer_activations_match_the_backbone(bidi: STAdapter) -> None:
    basal, batch = control_sentence()
    perts = ["non-targeting", "KD00", "KD07"]
    r = bidi.encode_perturbation(bidi.onehot(perts))
    captured: dict[str, torch.Tensor] = {}
    backbone = bidi.model.transformer_backbone

    def grab_inputs(_m, _args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"].detach().clone()

    def grab_output(_m, _args, output):
        captured["last"] = output.last_hidden_state.detach().clone()

    handles = [
        backbone.register_forward_pre_hook(grab_inputs, with_kwargs=True),
        backbone.register_forward_hook(grab_output),
    ]
    try:
        bidi.predict(perts, basal, batch)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        hidden = backbone(inputs_embeds=captured["embeds"], output_hidden_states=True).hidden_states
        for layer in range(1, LAYERS):
            mine = bidi.layer_activations(r, basal, batch, layer)
            assert mine.shape == (3, CELL_SET_LEN, HIDDEN)
            assert relative_difference(mine, hidden[layer]) < 1e-5
        last = bidi.layer_activations(r, basal, batch, LAYERS)
        # the final norm of the last block's output is the backbone's output ...
        assert relative_difference(backbone.norm(last), captured["last"]) < 1e-5
        # ... and the rest of the package's forward maps it to the prediction
        out = torch.relu(bidi.model.project_out(backbone.norm(last) + bidi.model.basal_encoder(basal)))
        assert relative_difference(out, bidi.forward_from_repr(r, basal, batch)) < 1e-5
    with pytest.raises(ProbeError, match="out of range"):
        bidi.layer_activations(r, basal, batch, LAYERS + 1)
    with pytest.raises(ProbeError, match="r must be"):
        bidi.forward_from_repr(r[:, :-1], basal, batch)
    # the swapped-in encoder never outlives a call, even one stopped early
    assert isinstance(bidi.model.pert_encoder, torch.nn.Sequential | torch.nn.Linear)


# ------------------------------------------------------------------ Jacobians
def test_jacfwd_matches_autograd_jacobian(runs: dict[str, Path]) -> None:
    adapter = STAdapter.from_run_dir(runs["bidirectional"])
    adapter.model.double()
    basal, batch = control_sentence(4, dtype=torch.float64)
    r = adapter.encode_perturbation(adapter.onehot(["KD02", "KD04"]))
    assert r.dtype == torch.float64

    def mean_out(rr: torch.Tensor) -> torch.Tensor:
        return adapter.forward_from_repr(rr, basal, batch).mean(1)

    forward = torch.func.jacfwd(mean_out)(r)
    reverse = torch.autograd.functional.jacobian(mean_out, r, vectorize=True)
    assert forward.shape == (2, N_GENES, 2, HIDDEN)
    scale = reverse.abs().max()
    assert scale > 0
    # LlamaRMSNorm computes in float32 even for a float64 model, hence 1e-6, not 1e-12
    torch.testing.assert_close(forward, reverse, rtol=0, atol=1e-6 * scale.item())

    def by_basal(b: torch.Tensor) -> torch.Tensor:
        return adapter.forward_from_repr(r, b, batch).mean(1)

    torch.testing.assert_close(
        torch.func.jacfwd(by_basal)(basal),
        torch.autograd.functional.jacobian(by_basal, basal, vectorize=True),
        rtol=0,
        atol=1e-6,
    )
    # vmap over perturbations agrees with the batched call
    single = torch.func.vmap(lambda one: adapter.forward_from_repr(one[None], basal, batch)[0])(r)
    torch.testing.assert_close(single, adapter.forward_from_repr(r, basal, batch))
    tangent = torch.func.jvp(mean_out, (r,), (torch.ones_like(r),))[1]
    torch.testing.assert_close(tangent, torch.einsum("kgjh,jh->kg", reverse, torch.ones_like(r)), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ cell sets
SET_LEN = 4


@pytest.fixture(scope="module")
def split(runs: dict[str, Path]) -> STAdapter:
    """The bidirectional tiny model with control sentences run in sets of SET_LEN cells."""
    return STAdapter.from_run_dir(runs["bidirectional"], name="split", cell_set_len=SET_LEN)


def _infer_per_set(adapter: STAdapter, pert: str, basal: torch.Tensor, batch: torch.Tensor, n: int) -> torch.Tensor:
    """arc-state's `state tx infer` path: predict_step(padded=False) on each window of n consecutive cells."""
    out = []
    with torch.no_grad():
        for start in range(0, basal.shape[0], n):
            cells = basal[start : start + n]
            onehots = adapter.onehot([pert]).expand(cells.shape[0], -1)
            batch_dict = {"pert_emb": onehots, "ctrl_cell_emb": cells, "batch": batch[start : start + n]}
            out.append(adapter.model.predict_step(batch_dict, 0, padded=False)["preds"])
    adapter._drop_caches()
    return torch.cat(out)


@pytest.mark.filterwarnings("ignore:.*past_key_values.*:FutureWarning")  # arc-state's predict_step, called bare
@pytest.mark.parametrize("n_cells", [12, 11], ids=["whole-sets", "remainder"])
def test_split_forward_runs_each_set_alone(
    split: STAdapter, bidi: STAdapter, n_cells: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert split.cell_set_len == SET_LEN and bidi.cell_set_len is None
    assert f"within sets of {SET_LEN}" in split.describe() and "across the whole sentence" in bidi.describe()
    basal, batch = control_sentence(n_cells, seed=7)
    perts = ["non-targeting", "KD00", "KD06"]
    bounds = list(range(0, n_cells, SET_LEN))
    with torch.no_grad():
        r = split.encode_perturbation(split.onehot(perts))
        mine = split.forward_from_repr(r, basal, batch)
        each = torch.cat([bidi.forward_from_repr(r, basal[a : a + SET_LEN], batch[a : a + SET_LEN]) for a in bounds], 1)
        whole = bidi.forward_from_repr(r, basal, batch)
        acts = split.layer_activations(r, basal, batch, 1)
        acts_each = torch.cat(
            [bidi.layer_activations(r, basal[a : a + SET_LEN], batch[a : a + SET_LEN], 1) for a in bounds], 1
        )
    assert mine.shape == whole.shape == (3, n_cells, N_GENES) and acts.shape == (3, n_cells, HIDDEN)
    assert relative_difference(mine, each) < 1e-5
    assert relative_difference(acts, acts_each) < 1e-5
    for k, pert in enumerate(perts):
        assert relative_difference(mine[k], _infer_per_set(split, pert, basal, batch, SET_LEN)) < 1e-5
    assert split.check_equivalence(basal, batch, perts) < 1e-5  # predict() runs the same sets
    assert relative_difference(split.predict(perts, basal, batch), each) < 1e-5
    gap = relative_difference(mine, whole)
    with capsys.disabled():
        print(f"\n{n_cells} cells, whole sentence vs sets of {SET_LEN}: max relative difference {gap:.3g}")
    assert gap > 5e-4, f"sets of {SET_LEN} vs the whole sentence differ by only {gap:.3g}"


def test_a_sentence_no_longer_than_a_set_runs_whole(split: STAdapter, bidi: STAdapter) -> None:
    basal, batch = control_sentence(SET_LEN, seed=2)
    r = bidi.encode_perturbation(bidi.onehot(["KD01", "KD02"]))
    with torch.no_grad():
        assert torch.equal(split.forward_from_repr(r, basal, batch), bidi.forward_from_repr(r, basal, batch))


def test_cell_set_len_from_the_suite_config(runs: dict[str, Path]) -> None:
    spec = ModelConfig(run_dir=runs["bidirectional"])
    cpu = torch.device("cpu")
    assert STAdapter.from_model_config(spec, name="a", device=cpu, cell_set_len="checkpoint").cell_set_len == (
        CELL_SET_LEN
    )
    assert STAdapter.from_model_config(spec, name="b", device=cpu, cell_set_len="sentence").cell_set_len is None
    one = STAdapter.from_model_config(spec, name="c", device=cpu, cell_set_len=1)
    assert one.cell_set_len == 1
    assert one.attention == "bidirectional"  # measured on one set of cells, whatever the split
    basal, batch = control_sentence(5, seed=3)
    r = one.encode_perturbation(one.onehot(["KD03"]))
    moved = basal.clone()
    moved[-1] += 5.0
    with torch.no_grad():  # sets of one cell: no cell sees another
        change = one.forward_from_repr(r, moved, batch)[0] - one.forward_from_repr(r, basal, batch)[0]
    assert change[:-1].abs().max() < 1e-7 < change[-1].abs().max()
    with pytest.raises(ModelLoadError, match=r"cell_set_len=0 is not valid") as err:
        STAdapter.from_run_dir(runs["bidirectional"], cell_set_len=0)
    assert "'checkpoint' (the trained value), 'sentence'" in str(err.value)
    assert STAdapter.from_run_dir(runs["bidirectional"], cell_set_len="sentence").cell_set_len is None


def test_jacfwd_through_the_split_forward(runs: dict[str, Path]) -> None:
    adapter = STAdapter.from_run_dir(runs["bidirectional"], cell_set_len=3)
    adapter.model.double()
    basal, batch = control_sentence(7, dtype=torch.float64)  # sets of 3, 3 and 1 cells
    r = adapter.encode_perturbation(adapter.onehot(["KD02", "KD04"]))

    def mean_out(rr: torch.Tensor) -> torch.Tensor:
        return adapter.forward_from_repr(rr, basal, batch).mean(1)

    forward = torch.func.jacfwd(mean_out)(r)
    reverse = torch.autograd.functional.jacobian(mean_out, r, vectorize=True)
    assert forward.shape == (2, N_GENES, 2, HIDDEN) and reverse.abs().max() > 0
    torch.testing.assert_close(forward, reverse, rtol=0, atol=1e-6 * reverse.abs().max().item())

    def by_basal(b: torch.Tensor) -> torch.Tensor:
        return adapter.forward_from_repr(r[:1], b, batch)[0]

    jac = torch.func.jacfwd(by_basal)(basal)  # (S, G, S, G)
    torch.testing.assert_close(jac, torch.autograd.functional.jacobian(by_basal, basal, vectorize=True),
                               rtol=0, atol=1e-6)
    cell_to_cell = jac.abs().amax(dim=(1, 3))  # (S, S): does cell j move cell i?
    same_set = torch.tensor([[i // 3 == j // 3 for j in range(7)] for i in range(7)])
    assert (cell_to_cell[~same_set] == 0).all()  # no attention across sets
    assert (cell_to_cell[same_set] > 0).all()
    single = torch.func.vmap(lambda one: adapter.forward_from_repr(one[None], basal, batch)[0])(r)
    torch.testing.assert_close(single, adapter.forward_from_repr(r, basal, batch))


# ------------------------------------------------------------------- attention
@pytest.mark.parametrize("mode", ["bidirectional", "causal"])
def test_attention_mode_is_read_verified_and_measured(adapters: dict[str, STAdapter], mode: str) -> None:
    adapter = adapters[mode]
    assert adapter.attention == mode
    assert adapter.declared_bidirectional is (mode == "bidirectional")
    assert adapter.module_bidirectional is (mode == "bidirectional")
    assert f"measured: {mode}" in adapter.describe()
    basal, batch = control_sentence()
    r = adapter.encode_perturbation(adapter.onehot(["KD01"]))
    moved = basal.clone()
    moved[-1] += 5.0
    with torch.no_grad():
        first_change = (adapter.forward_from_repr(r, moved, batch) - adapter.forward_from_repr(r, basal, batch))[0, 0]
    assert (first_change.abs().max().item() > 1e-6) is (mode == "bidirectional")


def test_checkpoint_silent_on_attention_warns_loudly(runs: dict[str, Path], tmp_path: Path) -> None:
    run = _copy_run(runs["bidirectional"], tmp_path / "old")

    def drop_flag(ckpt: dict) -> None:
        del ckpt["hyper_parameters"]["transformer_backbone_kwargs"]["bidirectional_attention"]

    _rewrite_checkpoint(run / "checkpoints" / "final.ckpt", drop_flag)
    with pytest.warns(AttentionModeWarning, match="CAUSAL"):
        adapter = STAdapter.from_run_dir(run)
    assert adapter.attention == "causal"
    assert adapter.declared_bidirectional is None


def test_declared_mode_that_the_installed_packages_do_not_reproduce_is_an_error(
    runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(STAdapter, "attends_forward", lambda self, *a, **k: False)
    with pytest.raises(ModelLoadError, match="declare bidirectional attention"):
        STAdapter.from_run_dir(runs["bidirectional"])


# -------------------------------------------------------------- bad run dirs
def test_missing_run_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="run directory not found") as err:
        STAdapter.from_run_dir(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value)


@pytest.mark.parametrize("missing", ["config.yaml", "var_dims.pkl", "pert_onehot_map.pt"])
def test_missing_run_dir_file(runs: dict[str, Path], tmp_path: Path, missing: str) -> None:
    run = _copy_run(runs["bidirectional"], tmp_path / "run")
    (run / missing).unlink()
    with pytest.raises(ModelLoadError, match=missing.replace(".", r"\.")):
        STAdapter.from_run_dir(run)


def test_missing_checkpoint_lists_present_ones(runs: dict[str, Path], tmp_path: Path) -> None:
    run = _copy_run(runs["bidirectional"], tmp_path / "run")
    (run / "checkpoints" / "final.ckpt").rename(run / "checkpoints" / "best.ckpt")
    with pytest.raises(ModelLoadError) as err:
        STAdapter.from_run_dir(run, checkpoint="final")
    assert "final.ckpt" in str(err.value) and "best.ckpt" in str(err.value)
    assert STAdapter.from_run_dir(run, checkpoint="best").checkpoint_path.name == "best.ckpt"
    by_path = STAdapter.from_run_dir(run, checkpoint="checkpoints/best.ckpt")
    assert by_path.checkpoint_path == run / "checkpoints" / "best.ckpt"


def test_unknown_checkpoint_name(runs: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match="unknown checkpoint name 'fnal'") as err:
        STAdapter.from_run_dir(runs["bidirectional"], checkpoint="fnal")
    assert "did you mean 'final'" in str(err.value)


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("truncated", "cannot read this PyTorch checkpoint; it looks truncated or corrupt"),
        ("garbage", "not a PyTorch checkpoint: it is neither a zip archive nor a pickle (it starts with the bytes 5f"),
        ("empty", "not a PyTorch checkpoint: it is empty (0 bytes)"),
    ],
)
def test_corrupt_checkpoint(runs: dict[str, Path], tmp_path: Path, damage: str, says: str) -> None:
    run = _copy_run(runs["bidirectional"], tmp_path / "run")
    ckpt = run / "checkpoints" / "final.ckpt"
    data = ckpt.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "garbage": np.random.default_rng(0).bytes(2048), "empty": b""}
    ckpt.write_bytes(damaged[damage])
    with pytest.raises(ModelLoadError) as err:
        STAdapter.from_run_dir(run)
    assert str(ckpt) in str(err.value) and says in str(err.value)
    assert "trust_pickle" not in str(err.value)  # trusting the file would not make it readable


_NOT_CHECKPOINTS = {
    "html": (b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body></body></html>\n",
             "it is an HTML page (an error or sign-in page saved in its place?), starting '<!DOCTYPE html>'"),
    "text": (b"404: Not Found\n", "it is text, starting '404: Not Found'"),
    "lfs": (b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 42\n", "git lfs pull"),
}


@pytest.mark.parametrize("trust", [False, True], ids=["untrusted", "trusted"])
@pytest.mark.parametrize("content", list(_NOT_CHECKPOINTS))
def test_a_file_that_is_not_a_checkpoint_says_so(runs: dict[str, Path], tmp_path: Path, content: str,
                                                 trust: bool) -> None:
    run = _copy_run(runs["bidirectional"], tmp_path / "run")
    ckpt = run / "checkpoints" / "final.ckpt"
    data, says = _NOT_CHECKPOINTS[content]
    ckpt.write_bytes(data)
    for load in (lambda: STAdapter.from_run_dir(run, trust_pickle=trust),
                 lambda: STAdapter.inspect_model_config(ModelConfig(run_dir=run, trust_pickle=trust))):
        with pytest.raises(ModelLoadError) as err:
            load()
        text = str(err.value)
        assert f"{ckpt}: not a PyTorch checkpoint: " in text and says in text
        assert "Unsupported operand" not in text and "trust_pickle" not in text


def test_checkpoint_errors_name_the_checkpoint_whatever_its_file_name(runs: dict[str, Path], tmp_path: Path) -> None:
    """The config check shows a message at `checkpoint:` when it says 'checkpoint' or '.ckpt'."""
    run = _copy_run(runs["bidirectional"], tmp_path / "run")
    weights = run / "weights" / "model.pt"
    weights.parent.mkdir()
    weights.write_bytes((run / "checkpoints" / "final.ckpt").read_bytes())
    _rewrite_checkpoint(weights, lambda c: c["hyper_parameters"].pop("pert_dim"))
    with pytest.raises(ModelLoadError) as err:
        STAdapter.inspect_model_config(ModelConfig(run_dir=run, checkpoint="weights/model.pt"))
    assert err.value.message.startswith(f"checkpoint {weights}: missing key 'hyper_parameters.pert_dim'")


_PREFIXES = [b"", b"\x80\x02", b"\x80\x04\x95", b"PK\x03\x04", b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("prefix", _PREFIXES, ids=["raw", "pickle2", "pickle4", "zip", "legacy-magic"])
def test_any_bytes_load_or_fail_with_a_load_error(tmp_path: Path, prefix: bytes) -> None:
    """Seeded fuzz: whatever the bytes, both loaders return or raise our own error, never a bare one."""
    rng = np.random.default_rng(len(prefix))
    for i in range(150):
        blob = prefix + rng.bytes(int(rng.integers(0, 400)))
        file = tmp_path / f"blob{i}.bin"
        file.write_bytes(blob)
        for load in (torch_load, load_plain_pickle):
            try:
                load(file)
            except (ModelLoadError, UntrustedPickleError):
                pass


def _rewrite_var_dims(run: Path, **changes) -> None:
    vd = pickle.loads((run / "var_dims.pkl").read_bytes())
    vd.update(changes)
    (run / "var_dims.pkl").write_bytes(pickle.dumps(vd))


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"pert_dim": 13}, "pert_dim"),
        ({"output_dim": 47}, "output_dim"),
        ({"gene_names": GENE_NAMES[:-1]}, "gene_names"),
        ({"pert_names": PERT_NAMES[:-1]}, "pert_names"),
    ],
)
def test_var_dims_that_disagree_with_the_checkpoint(
    runs: dict[str, Path], tmp_path: Path, changes: dict, key: str
) -> None:
    run = _copy_run(runs["bidirectional"], tmp_path / "run")
    _rewrite_var_dims(run, **changes)
    with pytest.raises(ModelLoadError) as err:
        STAdapter.from_run_dir(run)
    assert "var_dims.pkl" in str(err.value) and key in str(err.value)


def test_inspect_reads_and_checks_without_building_the_model(
    runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from state.tx.models.state_transition import StateTransitionPerturbationModel

    def refuse(*_args, **_kwargs):
        raise AssertionError("inspect_model_config built the model")

    monkeypatch.setattr(StateTransitionPerturbationModel, "load_from_checkpoint", refuse)
    assert STAdapter.inspect_model_config(ModelConfig(run_dir=runs["bidirectional"])) == []
    with pytest.raises(ModelLoadError, match="unknown checkpoint name 'fnal'"):
        STAdapter.inspect_model_config(ModelConfig(run_dir=runs["bidirectional"], checkpoint="fnal"))


@pytest.mark.parametrize("key", ["hvg_dim", "gene_dim"])
def test_decoder_only_dims_that_disagree_are_a_note(
    runs: dict[str, Path], bidi: STAdapter, tmp_path: Path, key: str
) -> None:
    """arc-state 0.11.1 wrote its default hvg_dim=2001 into checkpoints whose var_dims.pkl says otherwise."""
    run = _copy_run(runs["bidirectional"], tmp_path / "run")
    _rewrite_checkpoint(run / "checkpoints" / "final.ckpt", lambda c: c["hyper_parameters"].update({key: 2001}))
    expected = (
        f"{run / 'var_dims.pkl'} (key {key!r}) says {key}={N_GENES}, but {run / 'checkpoints' / 'final.ckpt'} "
        f"(hyper_parameters.{key}) says 2001; only arc-state's gene decoder reads {key}"
    )
    notes = STAdapter.inspect_model_config(ModelConfig(run_dir=run))
    assert len(notes) == 1 and notes[0].startswith(expected) and "loaded anyway" in notes[0]
    adapter = STAdapter.from_run_dir(run)
    assert adapter.notes == notes
    assert int(adapter.model.hparams[key]) == 2001  # arc-state built it from the checkpoint's value
    basal, batch = control_sentence()
    assert relative_difference(adapter.predict(PERT_NAMES, basal, batch), bidi.predict(PERT_NAMES, basal, batch)) == 0
    assert bidi.notes == []


@pytest.mark.parametrize("key", ["pert_dim", "input_dim", "batch_dim"])
def test_checkpoint_dims_that_change_the_model_are_refused(runs: dict[str, Path], tmp_path: Path, key: str) -> None:
    run = _copy_run(runs["bidirectional"], tmp_path / "run")
    _rewrite_checkpoint(run / "checkpoints" / "final.ckpt", lambda c: c["hyper_parameters"].update({key: 99}))
    for load in (lambda: STAdapter.from_run_dir(run), lambda: STAdapter.inspect_model_config(ModelConfig(run_dir=run))):
        with pytest.raises(ModelLoadError) as err:
            load()
        assert f"var_dims.pkl (key {key!r}) says {key}=" in err.value.message
        assert f"final.ckpt (hyper_parameters.{key}) says 99: the run dir and checkpoint do not belong together" in (
            err.value.message
        )


def test_var_dims_missing_key(runs: dict[str, Path], tmp_path: Path) -> None:
    run = _copy_run(runs["bidirectional"], tmp_path / "run")
    vd = pickle.loads((run / "var_dims.pkl").read_bytes())
    del vd["gene_names"]
    (run / "var_dims.pkl").write_bytes(pickle.dumps(vd))
    with pytest.raises(ModelLoadError, match=r"var_dims\.pkl: missing key 'gene_names'"):
        STAdapter.from_run_dir(run)


# --------------------------------------------------------------- safe loading
def test_malicious_var_dims_is_refused_and_never_runs(runs: dict[str, Path], tmp_path: Path) -> None:
    run = _copy_run(runs["bidirectional"], tmp_path / "run")
    marker = tmp_path / "pwned"
    (run / "var_dims.pkl").write_bytes(pickle.dumps({"gene_names": GENE_NAMES, "x": _Evil(marker)}))
    with pytest.raises(UntrustedPickleError) as err:
        STAdapter.from_run_dir(run)
    text = str(err.value)
    assert "var_dims.pkl" in text and "system" in text and "trust_pickle" in text
    assert isinstance(err.value, ModelLoadError)
    assert not marker.exists()


@pytest.mark.parametrize("target", ["checkpoints/final.ckpt", "pert_onehot_map.pt"])
def test_malicious_torch_files_are_refused(runs: dict[str, Path], tmp_path: Path, target: str) -> None:
    run = _copy_run(runs["bidirectional"], tmp_path / "run")
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "payload": _Evil(marker)}, run / target)
    with pytest.raises(UntrustedPickleError) as err:
        STAdapter.from_run_dir(run)
    assert Path(target).name in str(err.value) and "system" in str(err.value)
    assert not marker.exists()


def test_unlisted_global_loads_only_with_trust(runs: dict[str, Path], tmp_path: Path) -> None:
    run = _copy_run(runs["bidirectional"], tmp_path / "run")
    _rewrite_checkpoint(run / "checkpoints" / "final.ckpt", lambda c: c.update(note=Fraction(1, 3)))
    with pytest.raises(UntrustedPickleError, match=r"fractions\.Fraction") as err:
        STAdapter.from_run_dir(run)
    assert "trust_pickle: true" in str(err.value)  # the one failure that trusting the file can fix
    assert STAdapter.from_run_dir(run, trust_pickle=True).attention == "bidirectional"


def test_plain_pickle_allow_list(tmp_path: Path) -> None:
    good = tmp_path / "good.pkl"
    value = {"names": ["a", "b"], "arr": np.arange(3), "n": np.int64(4), "t": (1, 2.5), "s": {"x"}}
    good.write_bytes(pickle.dumps(value))
    loaded = load_plain_pickle(good)
    assert loaded["names"] == ["a", "b"] and int(loaded["n"]) == 4 and loaded["arr"].tolist() == [0, 1, 2]
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(eval))  # a reference to builtins.eval
    with pytest.raises(UntrustedPickleError, match=r"builtins\.eval"):
        load_plain_pickle(bad)
    with pytest.raises(ModelLoadError, match="not found"):
        torch_load(tmp_path / "absent.pt")


# ------------------------------------------------------------------------ SAE
def _write_sae(root: Path, d_in: int = HIDDEN, d_sae: int = 64, layer: int = 2, apply_b_dec: bool = True, **drop):
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(3)
    cfg = {"d_in": d_in, "d_sae": d_sae, "activation_fn": "relu", "hook_layer": layer,
           "hook_name": f"blocks.{layer}", "apply_b_dec_to_input": apply_b_dec}
    weights = {
        "W_enc": torch.randn(d_in, d_sae, generator=gen),
        "b_enc": torch.randn(d_sae, generator=gen) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=gen),
        "b_dec": torch.randn(d_in, generator=gen),
    }
    for key in drop.get("cfg", ()):
        del cfg[key]
    for key in drop.get("weights", ()):
        del weights[key]
    (root / "cfg.json").write_text(json.dumps(cfg))
    save_file(weights, str(root / "sae_weights.safetensors"))
    return root, weights


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_sae_encode_decode(tmp_path: Path, bidi: STAdapter, apply_b_dec: bool) -> None:
    root, w = _write_sae(tmp_path / "sae", apply_b_dec=apply_b_dec)
    sae = SparseAutoencoder.load(root)
    sae.check_compatible(bidi)
    x = torch.randn(5, HIDDEN, generator=torch.Generator().manual_seed(0))
    expected = torch.relu(((x - w["b_dec"]) if apply_b_dec else x) @ w["W_enc"] + w["b_enc"])
    torch.testing.assert_close(sae.encode(x), expected)
    torch.testing.assert_close(sae.decode(expected), expected @ w["W_dec"] + w["b_dec"])
    basal, batch = control_sentence()
    acts = bidi.layer_activations(bidi.encode_perturbation(bidi.onehot(["KD01"])), basal, batch, sae.hook_layer)
    assert sae.encode(acts).shape == (1, CELL_SET_LEN, 64)


def test_sae_incompatible_with_model(tmp_path: Path, bidi: STAdapter) -> None:
    with pytest.raises(ModelLoadError, match="d_in=16") as err:
        SparseAutoencoder.load(_write_sae(tmp_path / "a", d_in=16)[0]).check_compatible(bidi)
    assert "cfg.json" in str(err.value)
    with pytest.raises(ModelLoadError, match="hook_layer=5"):
        SparseAutoencoder.load(_write_sae(tmp_path / "b", layer=5)[0]).check_compatible(bidi)


def test_sae_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="SAE directory not found"):
        SparseAutoencoder.load(tmp_path / "none")
    root, _ = _write_sae(tmp_path / "nocfg")
    (root / "cfg.json").unlink()
    with pytest.raises(ModelLoadError, match=r"cfg\.json: SAE file not found"):
        SparseAutoencoder.load(root)
    root, _ = _write_sae(tmp_path / "nokey", cfg=["d_sae"])
    with pytest.raises(ModelLoadError, match=r"cfg\.json \(at d_sae\): missing key 'd_sae'"):
        SparseAutoencoder.load(root)
    root, _ = _write_sae(tmp_path / "noW", weights=["W_dec"])
    with pytest.raises(ModelLoadError, match=r"sae_weights\.safetensors \(at W_dec\): missing tensor 'W_dec'"):
        SparseAutoencoder.load(root)
    root, _ = _write_sae(tmp_path / "shape")
    cfg = json.loads((root / "cfg.json").read_text())
    (root / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 65}))
    with pytest.raises(ModelLoadError, match=r"'W_enc' has shape \(32, 64\), expected \(32, 65\)"):
        SparseAutoencoder.load(root)
    (root / "sae_weights.safetensors").write_bytes(b"junk")
    with pytest.raises(ModelLoadError, match="cannot read safetensors"):
        SparseAutoencoder.load(root)


def test_identity_rotary_is_skipped_bit_for_bit(bidi: STAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
    """arc-state's NoRoPE makes the rotary step the identity: skipping it changes no bit of outputs or JVPs."""
    from hypocheck.fixtures import st_backbone

    assert bidi._identity_rotary, "the tiny Llama backbone uses NoRoPE: the skip should be active"
    basal, batch = control_sentence(6)
    r = bidi.encode_perturbation(bidi.onehot(["KD01", "KD03"]))
    tangent = torch.linspace(-1, 1, r.numel()).reshape(r.shape)

    def outputs() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return torch.func.jvp(lambda rr: bidi.forward_from_repr(rr, basal, batch).mean(1), (r,), (tangent,))

    from transformers.models.llama import modeling_llama

    calls = []
    original = modeling_llama.apply_rotary_pos_emb

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", counted)
    skipped = outputs()
    assert not calls, "the rotary step ran although it is the identity"
    monkeypatch.setattr(bidi, "_identity_rotary", False)
    rotated = outputs()
    assert calls, "with the skip off the rotary step runs"
    for a, b in zip(skipped, rotated, strict=True):
        assert torch.equal(a, b)
    # a backbone whose rotary embedding is not NoRoPE keeps its rotary step
    assert not st_backbone.rotary_is_identity(torch.nn.Module())


def test_reading_a_checkpoint_imports_lightning_only_when_it_names_it(runs: dict[str, Path], tmp_path: Path) -> None:
    """Importing Lightning costs seconds: a checkpoint that names none of its classes is read without it."""
    import subprocess
    import sys

    ckpt = next(runs["bidirectional"].rglob("*.ckpt"))
    code = ("import sys; from hypocheck.fixtures.safe_load import torch_load; "
            f"ckpt = torch_load({str(ckpt)!r}); "
            "assert 'state_dict' in ckpt; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('lightning', 'pytorch_lightning')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
