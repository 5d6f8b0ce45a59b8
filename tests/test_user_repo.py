"""A user's repository: a suite config and hypothesis files, no conftest, pytest run in that folder.

Collection follows the documented rule (a ``hypotheses`` folder or ``*.hyp.yaml``; the ``hypocheck_files``
ini option replaces it), a folder with no hypothesis file says so, cases can be selected by probe, mark and
tag, and a broken suite config ends the run with exactly one error naming file, line and key.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "tools" / "demo"

CLAIM = """\
id: {id}
claim: Knockdowns of one pathway cluster in pert_encoder space
probe: pert_embedding_clustering
cases: {{model: [fewshot], gene_set: [mitoribosome, proteasome]}}
params: {{null_sets: 100, bootstrap: 100}}
expect: [z > 2]
marks: [embedding]
tags: [paper-claim-1]
"""


def suite(directory: Path, **changes: object) -> Path:
    """The demo world's suite config with absolute paths (and ``changes`` merged in), written to ``directory``."""
    config = yaml.safe_load((REPO / "suite.yaml").read_text())
    for model in config["models"].values():
        model["run_dir"] = str(REPO / model["run_dir"])
    config["data"]["path"] = str(REPO / config["data"]["path"])
    config["sae"]["path"] = str(REPO / config["sae"]["path"])
    config["truth"] = str(REPO / config["truth"])
    if "models" in changes:  # the demo's baselines go with its models
        config.pop("baselines", None)
    for key, value in changes.items():
        section, _, inner = key.partition(".")
        if inner:
            config[section][inner] = value
        else:
            config[section] = value
    path = directory / "suite.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "HYPOCHECK_SUITE"}}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
                          cwd=directory, env=env, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture
def user_repo(tmp_path: Path) -> Path:
    suite(tmp_path)
    (tmp_path / "hypotheses").mkdir()
    (tmp_path / "hypotheses" / "embedding.yaml").write_text(CLAIM.format(id="in_folder"))
    (tmp_path / "claims").mkdir()
    (tmp_path / "claims" / "extra.hyp.yaml").write_text(CLAIM.format(id="by_name"))
    (tmp_path / "claims" / "notes.yaml").write_text("just: some other yaml\n")
    return tmp_path


def test_collection_rule_without_conftest(user_repo: Path) -> None:
    assert not list(user_repo.rglob("conftest.py"))
    out = run(user_repo, "--co", "-q").stdout
    assert "hypotheses/embedding.yaml::in_folder[fewshot-mitoribosome]" in out
    assert "claims/extra.hyp.yaml::by_name[fewshot-proteasome]" in out
    assert "notes.yaml" not in out
    assert "4 tests collected" in out


def test_ini_patterns_replace_the_rule(user_repo: Path) -> None:
    (user_repo / "pytest.ini").write_text("[pytest]\nhypocheck_files = claims/*.hyp.yaml\n")
    out = run(user_repo, "--co", "-q").stdout
    assert "by_name[fewshot-mitoribosome]" in out and "in_folder" not in out


def test_a_folder_without_hypotheses_says_so(user_repo: Path) -> None:
    (user_repo / "empty").mkdir()
    result = run(user_repo, "empty")
    assert result.returncode == 5  # pytest's "no tests collected"
    assert f"hypocheck: no hypothesis files under {user_repo / 'empty'}" in result.stdout
    assert "a folder named 'hypotheses'" in result.stdout and "hypocheck_files" in result.stdout


@pytest.mark.parametrize("selection", ["pert_embedding_clustering", "embedding", "paper_claim_1"])
def test_select_by_probe_mark_and_tag(user_repo: Path, selection: str) -> None:
    out = run(user_repo, "--co", "-q", "-m", selection).stdout
    assert "4 tests collected" in out or "4/4 tests collected" in out, out
    none = run(user_repo, "--co", "-q", "-m", "not " + selection).stdout
    assert "no tests collected" in none or "0 selected" in none or "4 deselected" in none, none


def _one_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    text = result.stdout + result.stderr
    assert result.returncode == 4, text  # a usage error: no case ran
    assert text.count("the suite config cannot be used") == 1, text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    assert "Traceback" not in text


def test_missing_data_file_is_one_error_at_its_line(user_repo: Path) -> None:
    suite(user_repo, **{"data.path": str(user_repo / "missing.h5ad")})
    _one_error(run(user_repo, "-n", "2"), "suite.yaml:", "(at data.path)", "data file not found")


def test_wrong_data_key_is_one_error_with_close_matches(user_repo: Path) -> None:
    suite(user_repo, **{"data.gene_key": "genes"})
    _one_error(run(user_repo), "(at data.gene_key)", "did you mean 'gene'?")


def test_unknown_cell_line_is_one_error(user_repo: Path) -> None:
    suite(user_repo, cell_lines=["hepg2", "k562"])
    _one_error(run(user_repo), "(at cell_lines[1])", "'k562' is not in")


def test_a_checkpoint_that_is_not_one_is_one_error(user_repo: Path) -> None:
    run_dir = user_repo / "run"
    shutil.copytree(DEMO / "runs" / "fewshot", run_dir)
    (run_dir / "checkpoints" / "final.ckpt").write_text("<html>not a checkpoint</html>\n")
    suite(user_repo, models={"fewshot": {"run_dir": str(run_dir), "checkpoint": "final"}})
    _one_error(run(user_repo), "(at models.fewshot.checkpoint)", "final.ckpt")


def test_unknown_config_key_is_one_error(user_repo: Path) -> None:
    path = suite(user_repo)
    path.write_text(path.read_text().replace("device:", "devise:"))
    _one_error(run(user_repo, "--co"), "suite.yaml:", "unknown key 'devise'", "did you mean 'device'")


def test_reports_get_the_umask_mode_not_0600(tmp_path: Path) -> None:
    from hypocheck.atomic import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "summary.json", "{}\n")
    finally:
        os.umask(old)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o644


def test_html_report_without_the_allure_tool_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hypocheck import allure_report

    monkeypatch.delenv("HYPOCHECK_ALLURE", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(allure_report.AllureNotFoundError, match="npm install --save-dev allure@3"):
        allure_report.find_allure(tmp_path)
    (tmp_path / "results").mkdir()

    original = allure_report.find_allure

    def missing(root: Path | None = None) -> str:
        return original(tmp_path)

    monkeypatch.setattr(allure_report, "find_allure", missing)
    assert allure_report.main(["generate", str(tmp_path / "results"), "-o", str(tmp_path / "html")]) == 2
    assert "cannot render the HTML report: the Allure command-line tool" in capsys.readouterr().err
