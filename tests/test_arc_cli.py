"""Run dirs made by arc-state's own ``state tx train`` (tiny ST models, ~30 s each on CPU, cached across sessions
by ``tests.arc_runs``), used as a user uses them.

- each arc-state option loads, and the probes' forward equals arc-state's ``predict_step`` on the same control
  cells: the defaults (fewshot), a batch encoder with a confidence token and causal attention (zeroshot), a batch
  token on dense perturbation features (batch_token); ``output_space=all`` is refused with the reason;
- ``hypocheck init`` and a claim file run from a folder outside the repository (the installed package, a
  config and YAML only);
- a dense perturbation map is detected from its values: one-hot probes and the shuffled control are
  inconclusive "not applicable" with the reason, the other probes run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hypocheck.errors import ModelLoadError
from hypocheck.fixtures.adapter import reads_onehots
from hypocheck.fixtures.st_adapter import STAdapter
from tests.arc_runs import arc_runs, world_of
from tools.arcstate.world import CONTROL, LINES

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ST_RUNS = ("fewshot", "zeroshot", "batch_token", "all_genes")


@pytest.fixture(scope="module")
def runs() -> dict[str, Path]:
    return arc_runs(ST_RUNS)


@pytest.fixture(scope="module")
def world(runs: dict[str, Path]) -> Any:
    import anndata as ad

    return ad.read_h5ad(world_of(runs["fewshot"]))


def _controls(world: Any, line: str, n: int = 16) -> tuple[torch.Tensor, np.ndarray]:
    rows = np.flatnonzero((world.obs["gene"] == CONTROL).to_numpy() & (world.obs["cell_line"] == line).to_numpy())
    return torch.as_tensor(world.obsm["X_hvg"][rows[:n]]), world.obs["batch"].astype(str).to_numpy()[rows[:n]]


@pytest.mark.parametrize("name", ["fewshot", "zeroshot", "batch_token"])
def test_each_option_loads_and_the_forward_is_predict_steps(name: str, runs: dict[str, Path], world: Any) -> None:
    adapter = STAdapter.from_run_dir(runs[name], name=name, cell_set_len="checkpoint")
    hp = adapter.model.hparams
    if name == "zeroshot":
        assert hp["batch_encoder"] and hp["confidence_token"] and adapter.attention == "causal"
    else:
        assert adapter.attention == "bidirectional"
    assert bool(hp.get("use_batch_token", False)) == (name == "batch_token")
    assert reads_onehots(adapter) == (name != "batch_token")
    assert any("dense vectors" in n for n in adapter.notes) == (name == "batch_token")
    perts = [CONTROL, "RPL4", "MRPL10", "OR7A5", "RPL3"]
    for line in LINES:
        basal, batch_names = _controls(world, line)
        batch = torch.as_tensor([adapter.batch_map.get(b, 0) for b in batch_names])
        assert adapter.check_equivalence(basal, batch, perts, rtol=1e-5) <= 1e-5
        theirs = adapter.predict(perts, basal, batch)
        assert (theirs[1] - theirs[0]).abs().max() > 1e-3  # a knockdown moves the prediction


def test_output_space_all_is_refused_with_the_reason(runs: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match=r"trained with output_space 'all'.*does not say which genes") as err:
        STAdapter.from_run_dir(runs["all_genes"])
    assert "data.kwargs.output_space=gene" in str(err.value)


CLAIMS = """\
hypotheses:
  - id: outputs
    claim: ribosome knockdowns cluster in predicted ΔY
    probe: output_set_clustering
    cases: {{model: [{models}], cell_line: [hepg2], gene_set: [ribosome]}}
    params: {{null_sets: 200, bootstrap: 100}}
    inputs: {{features: delta_y}}
    {controls}expect: [significant]
  - id: onehot_routing
    claim: the one-hot Jacobian routes alike
    probe: routing_coherence
    cases: {{model: [{models}], cell_line: [hepg2]}}
    params: {{selection: all, permutations: 100, bootstrap: 100}}
    inputs: {{jacobian: onehot}}
    expect: [significant]
"""


def _user_run(folder: Path, runs: dict[str, Path], names: list[str], controls: str = "",
              claims: str = CLAIMS) -> dict[str, Any]:
    """``hypocheck init`` and a claim file in ``folder`` (outside the repository), then pytest there."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "HYPOCHECK_SUITE"}}
    init = [str(Path(sys.executable).parent / "hypocheck"), "init", "--data", str(world_of(runs["fewshot"])),
            *[a for n in names for a in ("--run-dir", f"{n}={runs[n]}")]]
    done = subprocess.run(init, cwd=folder, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (folder / "hypotheses" / "claims.yaml").write_text(claims.format(models=", ".join(names), controls=controls))
    (folder / "hypotheses" / "example.yaml").unlink()
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", "-q",
                           "hypotheses"], cwd=folder, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    summary = folder / "reports" / "summary.json"
    assert summary.is_file(), done.stdout[-3000:] + done.stderr[-2000:]
    cases = json.loads(summary.read_text())["cases"]
    return {c["id"]: c for c in cases} | {"__output__": done.stdout}


def test_init_and_a_claim_file_run_from_a_folder_outside_the_repository(runs: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    assert not tmp_path.resolve().is_relative_to(Path(__file__).resolve().parents[1])
    cases = _user_run(tmp_path, runs, ["fewshot", "zeroshot"])
    out = cases.pop("__output__")
    assert len(cases) == 4, out[-3000:]
    for case_id, case in cases.items():
        assert case["verdict"] in ("pass", "fail", "inconclusive"), (case_id, case.get("reason"))
        assert not case["verdict"] == "inconclusive" or "not applicable" not in case.get("reason", "")


def test_a_dense_perturbation_map_makes_one_hot_cases_not_applicable_and_the_rest_run(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    cases = _user_run(tmp_path, runs, ["batch_token"], controls="controls: [shuffled_perts]\n    ")
    out = cases.pop("__output__")
    (output,) = [c for i, c in cases.items() if i.startswith("claims::outputs")]
    (routing,) = [c for i, c in cases.items() if i.startswith("claims::onehot_routing")]
    assert output["verdict"] in ("pass", "fail"), out[-3000:]
    shuffled = output["controls"]["shuffled_perts"]
    assert shuffled["verdict"] == "inconclusive" and "dense perturbation vectors" in shuffled["reason"], shuffled
    assert routing["verdict"] == "inconclusive", routing
    assert routing["reason"].startswith("not applicable: the one-hot Jacobian"), routing["reason"]


def _copy_run(run: Path, folder: Path) -> Path:
    import shutil

    target = folder / run.name
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("version_*"))
    return target


def test_a_checkpoint_from_a_run_trained_with_other_options_is_one_usage_error(runs: dict[str, Path],
                                                                               tmp_path: Path) -> None:
    import shutil

    # the fewshot run (arc-state's defaults) with the zeroshot run's checkpoint (batch encoder, causal attention)
    target = _copy_run(runs["fewshot"], tmp_path)
    shutil.copy(runs["zeroshot"] / "checkpoints" / "final.ckpt", target / "checkpoints" / "final.ckpt")
    with pytest.raises(ModelLoadError) as err:
        STAdapter.from_run_dir(target)
    text = str(err.value)
    assert str(target / "checkpoints" / "final.ckpt") in text and str(target / "config.yaml") in text
    assert "model.kwargs.batch_encoder: False in config.yaml, True in the checkpoint" in text
    assert "model.kwargs.transformer_backbone_kwargs.bidirectional_attention: True in config.yaml, False" in text
    assert "put the checkpoint back in the run dir it was trained in" in text
    # the suite's start-up check shows it at the model's checkpoint key
    from hypocheck.errors import ConfigError
    from hypocheck.fixtures.backend import validate_suite
    from hypocheck.fixtures.config import SuiteConfig

    (tmp_path / "suite.yaml").write_text(
        f"data: {{path: {world_of(runs['fewshot'])}}}\ncell_lines: [hepg2]\n"
        f"models:\n  copied: {{run_dir: {target}}}\n")
    with pytest.raises(ConfigError, match="batch_encoder") as cfg_err:
        validate_suite(SuiteConfig.load(tmp_path / "suite.yaml"))
    assert cfg_err.value.location is not None and cfg_err.value.location.line == 4


def test_training_options_that_do_not_change_the_predictions_are_a_note(runs: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    import yaml

    target = _copy_run(runs["fewshot"], tmp_path)
    config = yaml.safe_load((target / "config.yaml").read_text())
    config["training"]["max_steps"] = 4000
    config["model"]["kwargs"]["blur"] = 0.5
    (target / "config.yaml").write_text(yaml.safe_dump(config))
    adapter = STAdapter.from_run_dir(target)
    (note,) = [n for n in adapter.notes if "training option" in n]
    assert "2 training option(s)" in note and "training.max_steps: 4000 in config.yaml, 40 in the checkpoint" in note
    assert "model.kwargs.blur: 0.5 in config.yaml, 0.05 in the checkpoint" in note


def test_the_training_split_each_run_dir_records(runs: dict[str, Path], tmp_path: Path) -> None:
    from hypocheck.fixtures.training_split import read_training_split
    from tests.arc_runs import HELD_OUT

    fewshot, zeroshot = read_training_split(runs["fewshot"]), read_training_split(runs["zeroshot"])
    assert fewshot is not None and zeroshot is not None
    assert fewshot.held_knockdowns == {"jurkat": frozenset(HELD_OUT)} and not fewshot.held_lines
    assert fewshot.line_seen("jurkat") and not fewshot.seen("jurkat", "RPL3") and fewshot.seen("hepg2", "RPL3")
    assert fewshot.line_text("jurkat") == "yes, 6 of its knockdowns held out (few-shot)"
    assert zeroshot.held_lines == {"jurkat": "test"} and not zeroshot.seen("jurkat", "RPL4")
    assert zeroshot.line_text("jurkat").startswith("no: held out whole (zero-shot, test")
    # the demo's baselines name their data config relative to the repository; a moved run dir keeps its copy
    demo = Path(__file__).resolve().parents[1] / "tools" / "demo" / "runs"
    moved = _copy_run(demo / "perturb_mean", tmp_path)
    split = read_training_split(moved)
    assert split is not None and split.source == str(moved / "data_split.toml")
    assert len(split.held_knockdowns["jurkat"]) == 78 and split.seen("k562", "ATR") and not split.seen("jurkat", "ATR")
    assert read_training_split(demo / "fewshot") is None  # the demo's ST runs record their split only as 'demo:'


SPLIT_CLAIMS = """\
hypotheses:
  - id: by_split
    claim: ribosome knockdowns cluster in predicted ΔY, seen and unseen in training
    probe: output_set_clustering
    cases: {{model: [{models}], cell_line: [jurkat], gene_set: [ribosome], split: [seen, unseen]}}
    params: {{null_sets: 100, bootstrap: 100}}
    inputs: {{features: delta_y}}
    expect: [significant]
"""


def test_cases_show_the_training_split_and_narrow_to_seen_or_unseen(runs: dict[str, Path], tmp_path: Path) -> None:
    import yaml

    nosplit = _copy_run(runs["fewshot"], tmp_path / "copy")
    config = yaml.safe_load((nosplit / "config.yaml").read_text())
    del config["data"]["kwargs"]["toml_config_path"]
    (nosplit / "config.yaml").write_text(yaml.safe_dump(config))
    user = tmp_path / "user"
    user.mkdir()
    cases = _user_run(user, {**runs, "nosplit": nosplit}, ["fewshot", "zeroshot", "nosplit"], claims=SPLIT_CLAIMS)
    out = cases.pop("__output__")
    assert len(cases) == 6, out[-3000:]
    by = {tuple(k.split("[")[1].rstrip("]").split("-")[::3]): c for k, c in cases.items()}
    seen, unseen = by[("fewshot", "seen")], by[("fewshot", "unseen")]
    assert seen["measured"]["line_in_training"] == "yes, 6 of its knockdowns held out (few-shot)"
    used, total = (int(x) for x in seen["measured"]["members"].split(" of "))
    assert seen["measured"]["knockdowns_in_training"] == f"{used} of {used} seen (in jurkat)"
    assert unseen["measured"]["knockdowns_in_training"] == "1 of 1 seen (in jurkat)".replace("1 of", "0 of", 1)
    assert unseen["measured"]["members"] == f"1 of {total}" and "seen in training" in unseen["measured"][
        "members_unused"]
    zs = by[("zeroshot", "unseen")]["measured"]
    assert zs["line_in_training"].startswith("no: held out whole") and zs["members"] == f"{total} of {total}"
    assert by[("zeroshot", "seen")]["measured"]["members"] == f"0 of {total}"
    err = by[("nosplit", "seen")]
    assert err["verdict"] == "error" and "records no training split" in err["reason"], err
