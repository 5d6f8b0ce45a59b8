"""The AnnData loader and the suite configuration: happy paths and every clear error."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from hypocheck.errors import ConfigError, DataError, UnknownNameError
from hypocheck.fixtures.config import SuiteConfig
from hypocheck.fixtures.data import PerturbData
from tests.helpers_tiny import (
    BATCH_NAMES,
    CELL_LINES,
    GENE_NAMES,
    N_GENES,
    single_thread,
    tiny_adata,
    tiny_h5ad,
    tiny_run_dir,
)

BATCH_MAP = {b: i for i, b in enumerate(BATCH_NAMES)}


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_h5ad(tmp_path_factory.mktemp("data") / "tiny.h5ad")


@pytest.fixture(scope="module")
def data(h5ad: Path) -> PerturbData:
    return PerturbData.load(h5ad)


# ------------------------------------------------------------------ happy path
def test_load_exposes_lines_knockdowns_genes_and_fingerprint(data: PerturbData, h5ad: Path) -> None:
    assert data.cell_lines == CELL_LINES
    assert data.knockdowns("hepg2") == ["KD00", "KD01", "KD02"]
    assert data.gene_names == GENE_NAMES
    assert data.controls("hepg2").shape == (12, N_GENES)
    assert data.cells("jurkat", "KD01").shape == (6, N_GENES)
    assert data.fingerprint == hashlib.sha256(h5ad.read_bytes()).hexdigest()
    assert "2 " not in repr(data) or "tiny.h5ad" in repr(data)


def test_control_sentence_is_seeded_and_without_replacement(data: PerturbData, h5ad: Path) -> None:
    x, batch = data.control_sentence("hepg2", n_cells=10, seed=42, batch_map=BATCH_MAP)
    assert x.shape == (10, N_GENES) and x.dtype == np.float32 and batch.dtype == np.int64
    assert len({row.tobytes() for row in x}) == 10  # distinct cells
    x2, batch2 = data.control_sentence("hepg2", n_cells=10, seed=42, batch_map=BATCH_MAP)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(batch, batch2)
    x3, _ = data.control_sentence("hepg2", n_cells=10, seed=7, batch_map=BATCH_MAP)
    assert not np.array_equal(x, x3)
    # the same draw as np.random.default_rng(seed) over the control rows
    import anndata as ad

    full = ad.read_h5ad(h5ad)
    rows = np.nonzero(((full.obs["gene"] == "non-targeting") & (full.obs["cell_line"] == "hepg2")).to_numpy())[0]
    chosen = rows[np.random.default_rng(42).choice(rows.size, size=10, replace=False)]
    np.testing.assert_array_equal(x, full.obsm["X_hvg"][chosen])
    expected_batch = [BATCH_MAP[b] for b in full.obs["batch"].astype(str).to_numpy()[chosen]]
    assert batch.tolist() == expected_batch
    assert set(batch.tolist()) == {0, 1}


def test_batch_fallback_and_too_many_cells(data: PerturbData) -> None:
    _, batch = data.control_sentence("hepg2", 8, 0)  # no map: all zeros
    assert batch.tolist() == [0] * 8
    with pytest.warns(UserWarning, match="batches the model does not know"):
        _, batch = data.control_sentence("hepg2", 8, 0, batch_map={"batch_b": 1})
    assert set(batch.tolist()) <= {0, 1}
    with pytest.raises(DataError, match="13 control cells requested for 'hepg2', only 12 exist"):
        data.control_sentence("hepg2", 13, 0)


def test_align_genes_reorders_and_reports_missing(data: PerturbData) -> None:
    order = list(reversed(GENE_NAMES[:10]))
    aligned = data.align_genes(order)
    assert aligned.gene_names == order
    np.testing.assert_array_equal(aligned.controls("hepg2"), data.controls("hepg2")[:, 9::-1])
    x, _ = aligned.control_sentence("jurkat", 4, 1)
    np.testing.assert_array_equal(x, data.control_sentence("jurkat", 4, 1)[0][:, 9::-1])
    with pytest.raises(DataError) as err:
        data.align_genes([*GENE_NAMES[:5], "GENE4", "MYC", "XBP1"])
    text = str(err.value)
    assert "3 of the model's 8 genes" in text and "'MYC'" in text and "close:" in text and "tiny.h5ad" in text


def test_hvg_subset_gene_names_and_no_batch(tmp_path: Path) -> None:
    adata = tiny_adata(genes=[f"G{i}" for i in range(60)])
    adata.obsm["X_hvg"] = adata.obsm["X_hvg"][:, :20]
    adata.var["highly_variable"] = [i % 3 == 0 for i in range(60)]
    adata.obs = adata.obs.drop(columns="batch")
    path = tmp_path / "hvg.h5ad"
    adata.write_h5ad(path)
    loaded = PerturbData.load(path, batch_key=None)
    assert loaded.gene_names == [f"G{i}" for i in range(0, 60, 3)]
    assert loaded.control_sentence("hepg2", 3, 0, BATCH_MAP)[1].tolist() == [0, 0, 0]


def test_lazy_row_reads_match_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import h5py

    import hypocheck.fixtures.data as data_module

    monkeypatch.setattr(data_module, "_BLOCK", 100)
    values = np.random.default_rng(0).normal(size=(300, 5)).astype(np.float32)
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as fh:
        fh["m"] = values
    rows = data_module._H5Rows(path, "m", (300, 5))
    index = np.concatenate([np.arange(100, 180), [5, 299, 5, 0, 250]])  # a slab, point reads, repeats
    np.testing.assert_array_equal(rows.take(index), values[index])
    assert rows.take(np.array([], dtype=np.int64)).shape == (0, 5)
    np.testing.assert_array_equal(np.concatenate([b for _, b in rows.blocks()]), values)


def test_expression_from_x_and_gene_names_from_uns(tmp_path: Path) -> None:
    adata = tiny_adata()
    adata.X = adata.obsm["X_hvg"][:, :N_GENES].copy()
    adata.uns["model_genes"] = np.array([f"ALT{i}" for i in range(N_GENES)])
    path = tmp_path / "x.h5ad"
    adata.write_h5ad(path)
    loaded = PerturbData.load(path, expr_key="X", gene_names_key="model_genes")
    assert loaded.gene_names[:2] == ["ALT0", "ALT1"]
    np.testing.assert_array_equal(loaded.controls("jurkat"), PerturbData.load(path).controls("jurkat"))


# ---------------------------------------------------------------- bad files
def test_missing_and_non_h5ad_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found") as err:
        PerturbData.load(tmp_path / "absent.h5ad")
    assert "absent.h5ad" in str(err.value)
    text_file = tmp_path / "notes.h5ad"
    text_file.write_text("gene,cell_line\n")
    with pytest.raises(DataError, match=r"notes\.h5ad: not an \.h5ad file"):
        PerturbData.load(text_file)
    import h5py

    with h5py.File(tmp_path / "plain.h5", "w") as fh:
        fh["x"] = np.zeros(3)
    with pytest.raises(DataError, match=r"plain\.h5: not an AnnData file: no /obs group"):
        PerturbData.load(tmp_path / "plain.h5")


@pytest.mark.parametrize(
    ("kwargs", "where", "suggestion"),
    [
        ({"gene_key": "genes"}, "obs['genes']", "did you mean 'gene'"),
        ({"cell_line_key": "cell_type"}, "obs['cell_type']", "cell_line"),
        ({"batch_key": "gem_group"}, "obs['gem_group']", "batch_key: null"),
        ({"expr_key": "X_pca"}, "obsm['X_pca']", "X_hvg"),
    ],
)
def test_missing_keys_name_file_key_and_what_exists(h5ad: Path, kwargs: dict, where: str, suggestion: str) -> None:
    with pytest.raises(DataError) as err:
        PerturbData.load(h5ad, **kwargs)
    text = str(err.value)
    assert "tiny.h5ad" in text and where in text and suggestion in text


def test_nan_and_inf_are_counted_and_located(tmp_path: Path) -> None:
    adata = tiny_adata()
    adata.obsm["X_hvg"][3, 5] = np.nan
    adata.obsm["X_hvg"][40, 7] = np.inf
    path = tmp_path / "nan.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(DataError) as err:
        PerturbData.load(path)
    text = str(err.value)
    assert "nan.h5ad" in text and "2 non-finite values (1 NaN, 1 Inf)" in text
    assert "hepg2: 1" in text and "jurkat: 1" in text and "cell3" in text and "GENE05" in text


def test_zero_controls_for_a_line(tmp_path: Path) -> None:
    adata = tiny_adata()
    keep = ~((adata.obs["cell_line"] == "jurkat") & (adata.obs["gene"] == "non-targeting")).to_numpy()
    path = tmp_path / "noctrl.h5ad"
    adata[keep].copy().write_h5ad(path)
    loaded = PerturbData.load(path)
    loaded.controls("hepg2")
    with pytest.raises(DataError) as err:
        loaded.control_sentence("jurkat", 4, 0)
    text = str(err.value)
    assert "noctrl.h5ad" in text and "no control cells for cell line 'jurkat'" in text and "non-targeting" in text


def test_unknown_cell_line_and_knockdown(data: PerturbData) -> None:
    with pytest.raises(UnknownNameError) as err:
        data.controls("HepG2 ")
    assert "cell line" in str(err.value) and "hepg2" in str(err.value) and "tiny.h5ad" in str(err.value)
    with pytest.raises(UnknownNameError, match="did you mean 'KD01'"):
        data.cells("hepg2", "KD1")


# ------------------------------------------------------------------ config
def _write_suite(root: Path, **overrides) -> Path:
    cfg = {
        "models": {"fewshot": {"run_dir": "runs/fewshot"}},
        "data": {"path": "data/tiny.h5ad"},
        "cell_lines": ["hepg2", "jurkat"],
        **overrides,
    }
    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_config_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = SuiteConfig.load(_write_suite(tmp_path, gene_sets={"ribosome": {"patterns": ["^RPL"]}}))
    assert cfg.models["fewshot"].run_dir == (tmp_path / "runs" / "fewshot").resolve()
    assert cfg.models["fewshot"].checkpoint == "final" and cfg.models["fewshot"].trust_pickle is False
    assert cfg.data.path == (tmp_path / "data" / "tiny.h5ad").resolve()
    assert (cfg.data.gene_key, cfg.data.expr_key, cfg.data.control_label) == ("gene", "X_hvg", "non-targeting")
    assert (cfg.control_sentence.cells, cfg.control_sentence.seed) == (64, 42)
    assert cfg.sae is None and cfg.device == "auto"
    sets = cfg.gene_set_definitions()
    assert sets["ribosome"].patterns == ("^RPL",) and "mitoribosome" in sets
    with pytest.raises(UnknownNameError, match="did you mean 'fewshot'"):
        cfg.model("fewshoot")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"data": {"path": "x.h5ad", "gene_kye": "gene"}}, ["unknown key 'gene_kye'", "data.gene_kye", "gene_key"]),
        ({"models": {"fewshot": {"run_dir": "r", "chekpoint": "best"}}}, ["models.fewshot.chekpoint", "checkpoint"]),
        ({"device": "gpu"}, ["device", "gpu"]),
        ({"control_sentence": {"cells": 0}}, ["control_sentence.cells"]),
        ({"gene_sets": {"bad": {"patterns": ["(unclosed"]}}}, ["gene_sets.bad.patterns", "regular expression"]),
        ({"cell_lines": []}, ["cell_lines"]),
    ],
)
def test_config_errors_name_file_line_and_key(tmp_path: Path, overrides: dict, expected: list[str]) -> None:
    path = _write_suite(tmp_path, **overrides)
    with pytest.raises(ConfigError) as err:
        SuiteConfig.load(path)
    text = str(err.value)
    assert str(path) in text and err.value.location is not None and err.value.location.line is not None
    for piece in expected:
        assert piece in text


def test_example_config_validates() -> None:
    cfg = SuiteConfig.load(Path(__file__).resolve().parents[1] / "fixtures" / "suite.example.yaml")
    assert set(cfg.models) == {"fewshot", "zeroshot"} and cfg.cell_lines == ["hepg2", "jurkat"]


def test_config_missing_required_and_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text("models: {a: {run_dir: r}}\ncell_lines: [hepg2]\n")
    with pytest.raises(ConfigError, match="missing required key 'data'"):
        SuiteConfig.load(path)
    path.write_text("models: [\n")
    with pytest.raises(ConfigError, match="YAML") as err:
        SuiteConfig.load(path)
    assert str(path) in str(err.value)
    with pytest.raises(ConfigError, match="not found"):
        SuiteConfig.load(tmp_path / "absent.yaml")


def test_config_loads_model_and_data_end_to_end(tmp_path: Path) -> None:
    tiny_run_dir(tmp_path / "runs" / "fewshot")
    (tmp_path / "data").mkdir()
    tiny_h5ad(tmp_path / "data" / "tiny.h5ad")
    cfg = SuiteConfig.load(_write_suite(tmp_path, device="cpu", control_sentence={"cells": 8, "seed": 1}))
    with single_thread():
        adapter = cfg.load_model("fewshot")
        data = cfg.load_data().align_genes(adapter.gene_names)
        x, batch = data.control_sentence("hepg2", cfg.control_sentence.cells, cfg.control_sentence.seed,
                                         adapter.batch_map)
        import torch

        gap = adapter.check_equivalence(torch.from_numpy(x), torch.from_numpy(batch), adapter.pert_names)
    assert adapter.name == "fewshot" and gap <= 1e-5
    assert cfg.load_sae() is None


def test_the_start_up_check_refuses_data_no_case_could_run_on(tmp_path: Path) -> None:
    """More control cells asked than a line has, or a line with controls only: one error before any case runs,
    at the suite config's key, saying what is valid (not an error in every case later)."""
    import anndata
    import yaml

    from hypocheck.errors import ConfigError
    from hypocheck.fixtures.backend import validate_suite
    from hypocheck.fixtures.config import SuiteConfig
    from tests.helpers_tiny import tiny_suite

    path = tiny_suite(tmp_path, cells=4, seed=0)
    raw = yaml.safe_load(path.read_text())
    validate_suite(SuiteConfig.load(path))  # the tiny suite itself is fine
    adata = anndata.read_h5ad(tmp_path / "data" / "tiny.h5ad")
    controls = int(((adata.obs["gene"] == "non-targeting") & (adata.obs["cell_line"] == "jurkat")).sum())
    path.write_text(yaml.safe_dump({**raw, "control_sentence": {"cells": controls + 1, "seed": 0}}))
    with pytest.raises(ConfigError) as err:
        validate_suite(SuiteConfig.load(path))
    text = str(err.value)
    assert "control_sentence.cells" in text and f"only {controls} control cells" in text and "valid: at most" in text
    keep = (adata.obs["cell_line"] != "jurkat") | (adata.obs["gene"] == "non-targeting")
    adata[keep.to_numpy()].copy().write_h5ad(tmp_path / "data" / "controls_only.h5ad")
    path.write_text(yaml.safe_dump({**raw, "data": {**raw["data"], "path": "data/controls_only.h5ad"}}))
    with pytest.raises(ConfigError, match="cell line 'jurkat' has only control cells") as err:
        validate_suite(SuiteConfig.load(path))
    assert "(at cell_lines[1])" in str(err.value)


def test_the_start_up_check_refuses_a_line_whose_knockdowns_no_model_knows(tmp_path: Path) -> None:
    """A line whose knockdowns are all unknown to a model (another screen's data, a wrong gene_key): one error at
    the line's key, naming the model and examples of both vocabularies, before any case runs."""
    import anndata
    import yaml

    from hypocheck.errors import ConfigError
    from hypocheck.fixtures.backend import validate_suite
    from hypocheck.fixtures.config import SuiteConfig
    from tests.helpers_tiny import tiny_suite

    path = tiny_suite(tmp_path, cells=4, seed=0)
    raw = yaml.safe_load(path.read_text())
    adata = anndata.read_h5ad(tmp_path / "data" / "tiny.h5ad")
    jurkat_kd = ((adata.obs["cell_line"] == "jurkat") & (adata.obs["gene"] != "non-targeting")).to_numpy()
    genes = adata.obs["gene"].astype(str).to_numpy().copy()
    genes[jurkat_kd] = ["OTHER" + g for g in genes[jurkat_kd]]
    adata.obs["gene"] = genes
    adata.write_h5ad(tmp_path / "data" / "other.h5ad")
    raw["data"]["path"] = "data/other.h5ad"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        validate_suite(SuiteConfig.load(path))
    text = str(err.value)
    assert "(at cell_lines[1])" in text and "cell line 'jurkat' has no knockdown that model 'tiny' knows" in text
    assert "its 3 knockdowns" in text and "e.g. OTHERKD00" in text and "KD00" in text, text
    assert "hint: list only the cell lines whose knockdowns the models know" in text
    raw["cell_lines"] = ["hepg2"]  # hepg2's knockdowns are the model's: the check passes
    path.write_text(yaml.safe_dump(raw))
    validate_suite(SuiteConfig.load(path))
