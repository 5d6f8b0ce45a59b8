"""arc-state's baselines (perturb_mean, context_mean, embed_sum), trained with ``state tx train``, loaded through the
arc-state adapter family: the class from config.yaml, the decomposed forward equal to the class's own
``predict_step``, the means equal to the training cells', and what does not apply said as such."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from hypocheck.errors import ModelLoadError, NotApplicableError, ProbeError, UnknownNameError
from hypocheck.fixtures.adapter import ModelAdapter, PerCellLine, reads_onehots, relative_difference
from hypocheck.fixtures.arc_baselines import BaselineAdapter, model_kind
from hypocheck.fixtures.config import ModelConfig
from hypocheck.fixtures.st_adapter import STAdapter
from tests.arc_runs import HELD_OUT, arc_runs, world_of
from tools.arcstate.world import CONTROL, LINES

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BASELINES = ("perturb_mean", "context_mean", "embed_sum")


@pytest.fixture(scope="module")
def runs() -> dict[str, Path]:
    return arc_runs(BASELINES)


@pytest.fixture(scope="module")
def world(runs: dict[str, Path]) -> Any:
    import anndata as ad

    return ad.read_h5ad(world_of(runs["perturb_mean"]))


def _load(run: Path, name: str) -> ModelAdapter:
    """Through the suite config's factory: the arc-state family picks the class."""
    return STAdapter.from_model_config(ModelConfig(run_dir=run), name=name, device=torch.device("cpu"))


def _sentence(world: Any, line: str, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.flatnonzero((world.obs["gene"] == CONTROL).to_numpy() & (world.obs["cell_line"] == line).to_numpy())
    return torch.as_tensor(world.obsm["X_hvg"][rows[:n]]), torch.zeros(n, dtype=torch.long)


def _training_cells(world: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expression, knockdown and line of the cells the fewshot split trains on (jurkat's held-out ones left out)."""
    genes, lines = world.obs["gene"].astype(str).to_numpy(), world.obs["cell_line"].astype(str).to_numpy()
    keep = ~((lines == "jurkat") & np.isin(genes, HELD_OUT))
    return np.asarray(world.obsm["X_hvg"])[keep], genes[keep], lines[keep]


@pytest.mark.parametrize("name", BASELINES)
def test_the_class_comes_from_config_yaml_and_the_forward_is_the_classes_own(
    name: str, runs: dict[str, Path], world: Any
) -> None:
    assert model_kind(runs[name]) == name
    adapter = _load(runs[name], name)
    assert isinstance(adapter, BaselineAdapter) and adapter.kind == name and isinstance(adapter, ModelAdapter)
    assert adapter.n_layers == 0 and adapter.attention == "none" and "no backbone" in adapter.describe()
    assert STAdapter.inspect_model_config(ModelConfig(run_dir=runs[name])) == []
    perts = [CONTROL, "RPL4", "MRPL10", "OR7A5", *HELD_OUT[:2]]
    for line in LINES:
        line_adapter = adapter.for_cell_line(line) if isinstance(adapter, PerCellLine) else adapter
        basal, batch = _sentence(world, line)
        assert line_adapter.check_equivalence(basal, batch, perts, rtol=1e-6) <= 1e-6
        with torch.no_grad():
            y = line_adapter.forward_from_repr(line_adapter.encode_perturbation(line_adapter.onehot(perts)), basal,
                                               batch)
        theirs = line_adapter.predict(perts, basal, batch)
        assert y.shape == theirs.shape == (len(perts), basal.shape[0], len(adapter.gene_names))
        assert relative_difference(y, theirs) <= 1e-6
        assert (y[1] - y[0]).abs().max() > 0.05  # a knockdown moves the prediction: the check compared something


def test_perturb_mean_is_control_plus_the_training_offsets(runs: dict[str, Path], world: Any) -> None:
    adapter = _load(runs["perturb_mean"], "pm")
    x, genes, lines = _training_cells(world)
    basal, batch = _sentence(world, "hepg2")
    assert torch.equal(adapter.encode_perturbation(adapter.onehot(["RPL4"])), adapter.onehot(["RPL4"]))
    assert adapter.hidden_dim == len(adapter.pert_names) and reads_onehots(adapter)
    for kd in ("RPL4", "NDUFA2", "OR7A5", "RPL3"):  # RPL3 is held out in jurkat: hepg2's offset alone
        deltas = [x[(genes == kd) & (lines == line)].mean(0) - x[(genes == CONTROL) & (lines == line)].mean(0)
                  for line in LINES if ((genes == kd) & (lines == line)).any()]
        with torch.no_grad():
            y = adapter.forward_from_repr(adapter.onehot([kd]), basal, batch)[0]
        np.testing.assert_allclose((y - basal).numpy(), np.broadcast_to(np.mean(deltas, 0), basal.shape), atol=1e-5)
    with torch.no_grad():
        assert torch.equal(adapter.forward_from_repr(adapter.onehot([CONTROL]), basal, batch)[0], basal)


def test_context_mean_predicts_each_lines_perturbed_mean(runs: dict[str, Path], world: Any) -> None:
    adapter = _load(runs["context_mean"], "cm")
    assert isinstance(adapter, PerCellLine)
    x, genes, lines = _training_cells(world)
    basal, batch = _sentence(world, "jurkat")
    for line in LINES:
        bound = adapter.for_cell_line(line)
        with torch.no_grad():
            y = bound.forward_from_repr(bound.onehot(["RPL4", "OR7A5", CONTROL]), basal, batch)
        expected = x[(genes != CONTROL) & (lines == line)].mean(0)
        np.testing.assert_allclose(y[0].numpy(), np.broadcast_to(expected, basal.shape), atol=1e-5)
        assert torch.equal(y[0], y[1]) and torch.equal(y[2], basal)  # every knockdown alike; the control: the cell
        assert "predicting for " + line in bound.describe()
    with pytest.raises(ProbeError, match=r"predicts per cell line \(hepg2, jurkat\) and was asked without one"):
        adapter.forward_from_repr(adapter.onehot(["RPL4"]), basal, batch)
    with pytest.raises(NotApplicableError, match=r"^model cm \(context_mean\) was not trained on "
                                                 r"cell line 'k562' and has no mean for it \(it has: hepg2, jurkat\)"):
        adapter.for_cell_line("k562")


def test_embed_sum_encodes_with_its_pert_encoder_and_differentiates(runs: dict[str, Path], world: Any) -> None:
    adapter = _load(runs["embed_sum"], "es")
    assert isinstance(adapter, BaselineAdapter)
    onehots = adapter.onehot(["RPL4", "PSMB3"])
    assert torch.equal(adapter.encode_perturbation(onehots), adapter.model.pert_encoder(onehots))
    assert adapter.hidden_dim == 16 and reads_onehots(adapter)
    basal, batch = _sentence(world, "hepg2", 6)
    r = adapter.encode_perturbation(onehots)

    def mean_out(rep: torch.Tensor) -> torch.Tensor:
        return adapter.forward_from_repr(rep, basal, batch).mean(1)

    torch.testing.assert_close(torch.func.jacfwd(mean_out)(r),
                               torch.autograd.functional.jacobian(mean_out, r, vectorize=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", BASELINES)
def test_what_a_baseline_lacks_is_not_applicable(name: str, runs: dict[str, Path], world: Any) -> None:
    adapter = _load(runs[name], name)
    basal, batch = _sentence(world, "hepg2", 4)
    r = adapter.encode_perturbation(adapter.onehot(["RPL4"]))
    with pytest.raises(NotApplicableError) as err:
        adapter.layer_activations(r, basal, batch, 1)
    assert str(err.value) == f"model {name} ({name}) has no backbone layers"
    with pytest.raises(UnknownNameError, match="unknown perturbation 'RPL44'"):
        adapter.onehot(["RPL44"])


def test_an_st_loader_refuses_a_baseline_and_an_unknown_class_is_named(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"holds arc-state's perturb_mean baseline, not an ST model") as err:
        STAdapter.from_run_dir(runs["perturb_mean"])
    assert "BaselineAdapter.from_run_dir" in str(err.value)
    copy = Path(shutil.copytree(runs["perturb_mean"], tmp_path / "cpa"))
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["model"]["name"] = "cpa"
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    for load in (lambda: _load(copy, "cpa"), lambda: STAdapter.inspect_model_config(ModelConfig(run_dir=copy))):
        with pytest.raises(ModelLoadError, match=r"config.yaml: model.name is 'cpa', a model class the arc-state "
                                                 r"adapter does not load") as err:
            load()
        assert "perturb_mean" in str(err.value) and "state" in str(err.value)
