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

from hypocheck.fixtures.demo import DEMO_DIR
from hypocheck.fixtures.demo.manifest import sha256, shipped_files
from hypocheck.fixtures.demo.world import KEYS, generate_world, graph_matrix
from hypocheck.fixtures.genesets import DEFAULT_GENE_SETS

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


def test_manifest_shows_learning_and_planted_programs(manifest: dict[str, Any]) -> None:
    for name in MODELS:
        m = manifest["models"][name]
        assert m["final_train_loss"] < 0.8 * m["eval_train_pairs"]["control"]
        assert m["eval_train_pairs"]["model"] < m["eval_train_pairs"]["mean_response"]
        assert m["visibility_check"]["all_pass"], m["visibility_check"]["failed"]
    assert manifest["sae"]["variance_explained"] > 0.8


# --- rebuild ---------------------------------------------------------------------------------


def _metrics(info: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name, m in info["models"].items():
        out[f"{name}/final_train_loss"] = m["final_train_loss"]
        for key, value in m["programs_visible"]["pert_encoder_cosine"].items():
            out[f"{name}/cosine/{key}"] = value
    out["sae/variance_explained"] = info["sae"]["variance_explained"]
    return out


@pytest.mark.skipif(os.environ.get("HYPOCHECK_SKIP_REBUILD") == "1", reason="HYPOCHECK_SKIP_REBUILD=1")
def test_rebuild_matches_manifest(tmp_path: Path, manifest: dict[str, Any]) -> None:
    from hypocheck.fixtures.demo.build import build
    from hypocheck.fixtures.demo.train import TrainConfig

    info = build(tmp_path, manifest["seeds"]["world"], TrainConfig(**manifest["train"]))
    assert info["files"]["world/truth.json"] == manifest["files"]["world/truth.json"]
    fresh, shipped_metrics = _metrics(info), _metrics(manifest)
    assert fresh.keys() == shipped_metrics.keys()
    for key, value in shipped_metrics.items():
        assert fresh[key] == pytest.approx(value, rel=0.02, abs=0.01), key
