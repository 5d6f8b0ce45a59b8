"""The demo world: deterministic generator, planted truth visible in the data, shipped artifacts intact.

The rebuild test retrains both models and the SAE (a few minutes on a 2-core CPU); set
``HYPOCHECK_SKIP_REBUILD=1`` to skip it.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from hypocheck.fixtures.genesets import DEFAULT_GENE_SETS
from tools.demo import DEMO_DIR
from tools.demo.manifest import sha256, shipped_files
from tools.demo.world import KEYS, generate_world, graph_matrix

CONTROL = "non-targeting"
MODELS = ("fewshot", "zeroshot")


def _load(world: str) -> tuple[Any, dict[str, Any]]:
    import anndata as ad

    return ad.read_h5ad(DEMO_DIR / world / "demo.h5ad"), json.loads((DEMO_DIR / world / "truth.json").read_text())


@pytest.fixture(scope="module")
def shipped() -> tuple[Any, dict[str, Any]]:
    return _load("world")


@pytest.fixture(scope="module")
def shipped_null() -> tuple[Any, dict[str, Any]]:
    return _load("null_world")


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return json.loads((DEMO_DIR / "MANIFEST.json").read_text())


def _cells(adata: Any, line: str, perts: list[str] | str) -> np.ndarray:
    perts = [perts] if isinstance(perts, str) else perts
    mask = (adata.obs[KEYS["cell_line"]] == line) & adata.obs[KEYS["pert"]].isin(perts)
    return np.asarray(adata.obsm[KEYS["expression"]])[mask.to_numpy()]


def _block_shift(adata: Any, genes: list[str], line: str, members: list[str]) -> float:
    idx = [adata.var_names.get_loc(g) for g in genes]
    return float(_cells(adata, line, members)[:, idx].mean() - _cells(adata, line, CONTROL)[:, idx].mean())


def _expected_shift(truth: dict[str, Any], prog: dict[str, Any], line: str) -> float:
    strength = np.mean([truth["strength"][k][line] for k in prog["members"]])
    return prog["effect"][line] * float(np.mean(prog["loadings"])) * float(strength)


def _assert_same_world(a: Any, b: Any) -> None:
    assert list(a.var_names) == list(b.var_names)
    np.testing.assert_array_equal(np.asarray(a.obsm[KEYS["expression"]]), np.asarray(b.obsm[KEYS["expression"]]))
    for key in (KEYS["pert"], KEYS["cell_line"], KEYS["batch"]):
        assert list(a.obs[key].astype(str)) == list(b.obs[key].astype(str))


# --- generator -------------------------------------------------------------------------------


def test_generator_is_deterministic_and_seeded() -> None:
    a, truth_a = generate_world(seed=3)
    b, truth_b = generate_world(seed=3)
    _assert_same_world(a, b)
    assert truth_a == truth_b
    c, _ = generate_world(seed=4)
    assert not np.array_equal(a.obsm[KEYS["expression"]], c.obsm[KEYS["expression"]])


def test_layout(shipped: tuple[Any, dict[str, Any]]) -> None:
    adata, truth = shipped
    x = np.asarray(adata.obsm[KEYS["expression"]])
    assert x.dtype == np.float32 and x.shape == (adata.n_obs, adata.n_vars) and x.min() >= 0
    assert list(adata.uns["hvg_names"]) == list(adata.var_names) == truth["genes"]
    assert set(adata.obs[KEYS["cell_line"]]) == {"hepg2", "jurkat"}
    assert set(adata.obs[KEYS["batch"]]) == set(truth["batches"])
    assert set(adata.obs[KEYS["pert"]]) == {CONTROL, *truth["knockdowns"]}
    assert 200 <= len(truth["knockdowns"]) <= 300 and 200 <= adata.n_vars <= 266
    panel = truth["nb03_panel"]
    assert set(panel["regulators"] + panel["targets"]) <= set(adata.var_names)
    assert (DEMO_DIR / "world" / "demo.h5ad").stat().st_size < 8e6


def test_spec_gene_sets_select_the_planted_programs(shipped: tuple[Any, dict[str, Any]]) -> None:
    _, truth = shipped
    for prog in truth["programs"].values():
        if prog["gene_set"]:
            selected = DEFAULT_GENE_SETS[prog["gene_set"]].select(truth["knockdowns"])
            assert sorted(selected) == sorted(prog["members"]), prog["gene_set"]
            assert len(selected) >= 12


def test_program_block_shifts_match_truth(shipped: tuple[Any, dict[str, Any]]) -> None:
    adata, truth = shipped
    assert set(truth["expected"]["active_both"]) == {"ribosome", "mitoribosome", "oxphos", "splicing"}
    for name, prog in truth["programs"].items():
        for line in truth["lines"]:
            measured = _block_shift(adata, prog["block"], line, prog["members"])
            expected = _expected_shift(truth, prog, line)
            assert measured == pytest.approx(expected, abs=0.06), (name, line)
            if name in truth["expected"]["active_both"]:
                assert abs(measured) > 0.5
    er, proteasome = truth["programs"]["er_golgi"], truth["programs"]["proteasome"]
    assert er["effect"]["hepg2"] > 0.5 and er["effect"]["jurkat"] == 0
    assert abs(_block_shift(adata, er["block"], "jurkat", er["members"])) < 0.05
    assert all(v == 0 for v in proteasome["effect"].values())
    for line in truth["lines"]:
        assert abs(_block_shift(adata, proteasome["block"], line, proteasome["members"])) < 0.05


def test_no_effect_knockdowns_look_like_controls(shipped: tuple[Any, dict[str, Any]]) -> None:
    adata, truth = shipped
    for line in truth["lines"]:
        ctrl = _cells(adata, line, CONTROL).mean(0)
        for kd in truth["no_effect"]["unrelated"][:10] + truth["programs"]["proteasome"]["members"][:5]:
            gap = np.abs(_cells(adata, line, kd).mean(0) - ctrl)
            assert gap.max() < 0.45, (line, kd)  # 20 cells, sd <= 0.5: noise only


def test_knocked_down_inputs_drop(shipped: tuple[Any, dict[str, Any]]) -> None:
    adata, truth = shipped
    genes = truth["self_knockdown"]["genes"]
    assert {"HSPA5", "ATF4", "XBP1", "SEC24A"} <= set(genes) and len(genes) >= 10
    for gene in genes:
        col = adata.var_names.get_loc(gene)
        for line in truth["lines"]:
            drop = _cells(adata, line, gene)[:, col].mean() - _cells(adata, line, CONTROL)[:, col].mean()
            assert drop < -0.6, (gene, line)


def test_regulators_covary_with_their_targets(shipped: tuple[Any, dict[str, Any]]) -> None:
    adata, truth = shipped
    graph = truth["regulatory_graph"]
    assert graph["shared"] and graph["hepg2_only"] and graph["jurkat_only"]
    for line in truth["lines"]:
        ctrl = _cells(adata, line, CONTROL)
        w = graph_matrix(truth, line)
        for edge in graph["edges"]:
            r, t = adata.var_names.get_loc(edge["regulator"]), adata.var_names.get_loc(edge["target"])
            corr = np.corrcoef(ctrl[:, r], ctrl[:, t])[0, 1]
            if w[r, t] != 0:
                assert np.sign(corr) == np.sign(w[r, t]) and abs(corr) > 0.4, (edge, line, corr)
            elif not any(e["target"] == edge["target"] and line in e["lines"] for e in graph["edges"]):
                assert abs(corr) < 0.2, (edge, line, corr)


def test_regulator_knockdown_moves_targets(shipped: tuple[Any, dict[str, Any]]) -> None:
    adata, truth = shipped
    drop = truth["self_knockdown"]["drop"]
    edges = truth["regulatory_graph"]["edges"]
    for edge in edges:
        reg, target = edge["regulator"], edge["target"]
        col = adata.var_names.get_loc(target)
        for line in truth["lines"]:
            kd, ctrl = _cells(adata, line, reg)[:, col], _cells(adata, line, CONTROL)[:, col]
            weight = sum(e["weight"] for e in edges if e["regulator"] == reg and e["target"] == target
                         and line in e["lines"])
            expected = -drop * truth["strength"][reg][line] * weight
            se = np.sqrt(kd.var(ddof=1) / kd.size + ctrl.var(ddof=1) / ctrl.size)
            assert abs(kd.mean() - ctrl.mean() - expected) < 4 * se, (edge, line)


def test_null_world_has_no_structure(
    shipped: tuple[Any, dict[str, Any]], shipped_null: tuple[Any, dict[str, Any]]
) -> None:
    _, truth = shipped
    adata, null_truth = shipped_null
    assert null_truth["null"] and not null_truth["programs"] and not null_truth["regulatory_graph"]["edges"]
    assert null_truth["genes"] == truth["genes"] and null_truth["knockdowns"] == truth["knockdowns"]
    for prog in truth["programs"].values():
        for line in truth["lines"]:
            assert abs(_block_shift(adata, prog["block"], line, prog["members"])) < 0.05
    for gene in truth["self_knockdown"]["genes"]:
        col = adata.var_names.get_loc(gene)
        for line in truth["lines"]:
            gap = _cells(adata, line, gene)[:, col].mean() - _cells(adata, line, CONTROL)[:, col].mean()
            assert abs(gap) < 0.45
    ctrl = _cells(adata, "hepg2", CONTROL)
    for edge in truth["regulatory_graph"]["edges"]:
        r, t = adata.var_names.get_loc(edge["regulator"]), adata.var_names.get_loc(edge["target"])
        assert abs(np.corrcoef(ctrl[:, r], ctrl[:, t])[0, 1]) < 0.2


@pytest.mark.parametrize("world", ["world", "null_world"])
def test_shipped_world_equals_regeneration(world: str) -> None:
    adata, truth = _load(world)
    fresh, fresh_truth = generate_world(truth["seed"], null=truth["null"])
    _assert_same_world(adata, fresh)
    assert json.loads(json.dumps(fresh_truth)) == truth


# --- shipped models --------------------------------------------------------------------------


def test_manifest_hashes_match_shipped_files(manifest: dict[str, Any]) -> None:
    assert shipped_files(DEMO_DIR) == manifest["files"]
    for rel, digest in manifest["files"].items():
        assert sha256(DEMO_DIR / rel) == digest, rel
    assert manifest["total_bytes"] < 20e6


@pytest.mark.parametrize("name", MODELS)
def test_checkpoints_load_with_arc_state(name: str, manifest: dict[str, Any]) -> None:
    from state.tx.models.state_transition import StateTransitionPerturbationModel

    run = DEMO_DIR / "runs" / name
    ckpt = run / "checkpoints" / "final.ckpt"
    model: Any = StateTransitionPerturbationModel.load_from_checkpoint(ckpt, weights_only=False)
    hp = model.hparams
    assert hp["transformer_backbone_key"] == "llama" and hp["hidden_dim"] == 64 and hp["cell_set_len"] == 32
    assert hp["transformer_backbone_kwargs"]["bidirectional_attention"] is True
    assert len(model.transformer_backbone.layers) == 4
    var_dims = pickle.loads((run / "var_dims.pkl").read_bytes())
    assert len(var_dims["pert_names"]) == hp["pert_dim"] and CONTROL in var_dims["pert_names"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    heldout = config["demo"]["heldout"]["jurkat"]
    assert heldout == manifest["models"][name]["heldout_knockdowns"]["jurkat"]
    n_kd = len(var_dims["pert_names"]) - 1
    assert len(heldout) == n_kd if name == "zeroshot" else 0.25 * n_kd < len(heldout) < 0.35 * n_kd
    model.eval()
    s = hp["cell_set_len"]
    with torch.no_grad():
        y = model({"ctrl_cell_emb": torch.rand(s, hp["input_dim"]) * 3, "batch": torch.zeros(s, dtype=torch.long),
                   "pert_emb": torch.eye(hp["pert_dim"])[[0] * s]})
    assert y.shape == (s, hp["output_dim"]) and bool((y >= 0).all())


def test_sae_files() -> None:
    cfg = json.loads((DEMO_DIR / "sae" / "cfg.json").read_text())
    assert cfg["hook_name"] == "transformer_backbone.layers.1" and cfg["hook_layer"] == 2
    assert cfg["activation_fn"] == "relu" and cfg["apply_b_dec_to_input"] is False and cfg["model"] == "fewshot"
    w = load_file(str(DEMO_DIR / "sae" / "sae_weights.safetensors"))
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    assert w["W_enc"].shape == (d_in, d_sae) and w["W_dec"].shape == (d_sae, d_in)
    assert w["b_enc"].shape == (d_sae,) and w["b_dec"].shape == (d_in,)


def _assert_learned(info: dict[str, Any]) -> None:
    """The claims a MANIFEST makes about its models: they learned, and the planted programs are visible."""
    for name in MODELS:
        m = info["models"][name]
        assert m["final_train_loss"] < 0.8 * m["eval_train_pairs"]["control"], name
        assert m["eval_train_pairs"]["model"] < m["eval_train_pairs"]["mean_response"], name
        assert m["visibility_check"]["all_pass"], (name, m["visibility_check"]["failed"])
    assert info["sae"]["variance_explained"] > 0.8


def test_manifest_shows_learning_and_planted_programs(manifest: dict[str, Any]) -> None:
    _assert_learned(manifest)


# --- rebuild ---------------------------------------------------------------------------------

# Largest |rebuilt - shipped| allowed for values read off the trained models, per kind of value. Measured on a
# 2-core AMD EPYC (Zen 4, AVX-512) over four rebuilds that are equally valid draws: ATen's AVX-512 and scalar
# (ATEN_CPU_CAPABILITY=default) kernels, and training seeds 1 and 2. Largest gap seen, then the tolerance (2x):
TRAINED_TOLERANCE = {
    "final_train_loss": 0.03,  # 0.0134 (kernels alone: 0.0071)
    "cosine/planted": 0.125,  # 0.0611 (0.0314): the checked programs and the background
    "cosine/noise": 0.16,  # 0.0757 (0.0757): no-effect, weak and never-trained programs
    "sae/variance_explained": 0.035,  # 0.0176 (0.0043)
}
WEIGHT_FILES = (".ckpt", ".safetensors")


def _trained_values(info: dict[str, Any], shipped: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """Key -> (value, tolerance kind) of every value that depends on the trained weights."""
    out = {}
    for name, m in info["models"].items():
        planted = {"background", *shipped["models"][name]["visibility_check"]["cosine_gap"]}
        out[f"{name}/final_train_loss"] = (m["final_train_loss"], "final_train_loss")
        for key, value in m["programs_visible"]["pert_encoder_cosine"].items():
            out[f"{name}/cosine/{key}"] = (value, "cosine/planted" if key in planted else "cosine/noise")
    out["sae/variance_explained"] = (info["sae"]["variance_explained"], "sae/variance_explained")
    return out


def _assert_rebuild_matches(info: dict[str, Any], manifest: dict[str, Any], exact: bool) -> None:
    assert info["files"].keys() == manifest["files"].keys()
    for rel, digest in manifest["files"].items():
        if exact or not rel.endswith(WEIGHT_FILES):
            assert info["files"][rel] == digest, rel
    for key in ("seeds", "steps", "train", "world"):
        assert info[key] == manifest[key], key
    for name, shipped in manifest["models"].items():
        fresh = info["models"][name]
        for key in ("seed", "heldout", "heldout_knockdowns"):
            assert fresh[key] == shipped[key], (name, key)
        for key in ("eval_train_pairs", "eval_heldout_pairs"):  # the no-learning baselines: no weights involved
            for baseline in ("control", "mean_response"):
                assert fresh[key][baseline] == shipped[key][baseline], (name, key, baseline)
        # the first 10 steps: same init, batches and loss; kernels differ by <= 3e-7, seeds 1 and 2 by 8-13%
        assert fresh["first_train_loss"] == pytest.approx(shipped["first_train_loss"], rel=1e-5), name
    for key in ("seed", "tokens", "steps", "l1"):
        assert info["sae"][key] == manifest["sae"][key], key
    _assert_learned(info)
    fresh_values, shipped_values = _trained_values(info, manifest), _trained_values(manifest, manifest)
    assert fresh_values.keys() == shipped_values.keys()
    rows = [(key, fresh_values[key][0], value, 0.0 if exact else TRAINED_TOLERANCE[kind])
            for key, (value, kind) in shipped_values.items()]
    report = "\n".join(f"{key}: {new:.4f} vs shipped {old:.4f} (gap {new - old:+.4f}, tolerance {tol})"
                        for key, new, old, tol in rows)
    assert all(abs(new - old) <= tol for _, new, old, tol in rows), report


@pytest.mark.skipif(os.environ.get("HYPOCHECK_SKIP_REBUILD") == "1", reason="HYPOCHECK_SKIP_REBUILD=1")
def test_rebuild_matches_manifest(tmp_path: Path, manifest: dict[str, Any]) -> None:
    """Rebuilding from the manifest's seeds and config reproduces the demo artifacts.

    Exact, on any CPU: every file but the trained weights (worlds, truth, run configs, maps), the seeds and
    held-out knockdowns, the no-learning baselines, and the start of training (``first_train_loss``).

    Not exact across CPUs: the trained weights and what is read off them. Training is deterministic on one
    machine (two rebuilds, and 1 vs 2 torch threads, give identical bytes; MKL's instruction set has no
    effect), but ATen picks its vectorized kernels by CPU (``torch.backends.cpu.get_cpu_capability()``), and
    AVX2 vs AVX-512 kernels round differently: the very first loss differs by ~1e-7 (relative), and over 1000
    Adam steps that grows until the model is as far from the shipped one as a model trained from another seed
    (e.g. fewshot proteasome cosine 0.4204 vs 0.4390; zeroshot proteasome 0.3291 vs 0.3851). These values are
    therefore compared with ``TRAINED_TOLERANCE``, measured over such rebuilds; a broken training is still far
    outside it (300 steps or a 10x smaller lr: final loss off by 0.25, planted cosines by 0.26), and the
    rebuilt models must still make the manifest's claims (``_assert_learned``).

    The shipped artifacts were built with AVX2 kernels: with ``ATEN_CPU_CAPABILITY=avx2`` (on an AVX-512
    AMD EPYC) the rebuild is byte-identical, weights included. ``HYPOCHECK_REBUILD_EXACT=1`` demands that.
    """
    from tools.demo.build import build
    from tools.demo.train import TrainConfig

    info = build(tmp_path, manifest["seeds"]["world"], TrainConfig(**manifest["train"]))
    _assert_rebuild_matches(info, manifest, exact=os.environ.get("HYPOCHECK_REBUILD_EXACT") == "1")
