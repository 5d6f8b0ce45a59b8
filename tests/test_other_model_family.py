"""Another model family end to end: a plain-torch toy model, its adapter, and a user directory with no conftest.

The recipe of docs/adapters.md, run as a user would: a directory outside this repository holds the model's
module (``toy_model.py``, on PYTHONPATH), its weights, a tiny ``.h5ad``, ``suite.yaml`` naming the adapter as
``toy_model:load`` and two hypothesis files; ``pytest`` in that directory (the installed plugin only) must
find the planted program clustered in pert-representation space and at the output, and the random set not.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs" / "adapters.md"

TOY_MODEL = '''\
"""A toy perturbation model in plain torch, and its hypocheck adapter (``adapter: toy_model:load``)."""

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from hypocheck.errors import ModelLoadError, ProbeError, UnknownNameError
from hypocheck.fixtures.adapter import relative_difference


class ToyModel(nn.Module):
    """r = E p; h0 = In [x, r]; h_l = h_(l-1) + MLP_l(h_(l-1) + mean over cells); y = x + Out h_L."""

    def __init__(self, n_genes: int, n_perts: int, hidden: int, layers: int):
        super().__init__()
        self.pert_encoder = nn.Linear(n_perts, hidden, bias=False)
        self.input = nn.Linear(n_genes + hidden, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, 2 * hidden), nn.GELU(),
                                                  nn.Linear(2 * hidden, hidden)) for _ in range(layers))
        self.output = nn.Linear(hidden, n_genes)

    def stream(self, r: Tensor, x: Tensor, upto: int) -> Tensor:
        """Residual stream (K, S, H) after block ``upto`` for representations r (K, H) and cells x (S, G)."""
        k, s = r.shape[0], x.shape[0]
        h = self.input(torch.cat([x.expand(k, s, -1), r[:, None].expand(k, s, -1)], dim=-1))
        for block in self.blocks[:upto]:
            h = h + block(h + h.mean(1, keepdim=True))  # cells see each other through the sentence mean
        return h

    def forward(self, onehots: Tensor, x: Tensor) -> Tensor:
        return x + self.output(self.stream(self.pert_encoder(onehots), x, len(self.blocks)))


class ToyAdapter:
    """The toy model seen through hypocheck's ModelAdapter protocol."""

    attention = "bidirectional"  # every cell sees the whole sentence (through its mean)

    def __init__(self, model: ToyModel, meta: dict, name: str, device: torch.device, weights: Path):
        self.model = model.to(device).eval().requires_grad_(False)
        self.name, self.device, self.weights = name, device, weights
        self.gene_names, self.pert_names, self.control_pert = meta["genes"], meta["perts"], meta["control"]
        self.batch_map: dict[str, int] = {}  # no batch embedding
        self.hidden_dim, self.n_layers = meta["hidden"], meta["layers"]
        self.fingerprint = hashlib.sha256(weights.read_bytes()).hexdigest()

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def describe(self) -> str:
        return (f"{self.name}: toy MLP (sha256 {self.fingerprint[:12]}), {len(self.pert_names)} perts, "
                f"{len(self.gene_names)} genes, hidden {self.hidden_dim}, {self.n_layers} blocks")

    def onehot(self, perts: list[str]) -> Tensor:
        for p in perts:
            if p not in self.pert_names:
                raise UnknownNameError("perturbation", p, self.pert_names)
        rows = torch.tensor([self.pert_names.index(p) for p in perts], device=self.device)
        return nn.functional.one_hot(rows, len(self.pert_names)).to(self.dtype)

    def encode_perturbation(self, onehots: Tensor) -> Tensor:
        return self.model.pert_encoder(onehots)

    def forward_from_repr(self, r: Tensor, basal: Tensor, batch: Tensor) -> Tensor:
        return basal + self.model.output(self.layer_activations(r, basal, batch, self.n_layers))

    def layer_activations(self, r: Tensor, basal: Tensor, batch: Tensor, layer: int) -> Tensor:
        if not 1 <= layer <= self.n_layers:
            raise ProbeError(f"layer {layer} out of range: {self.name} has blocks 1..{self.n_layers}")
        return self.model.stream(r, basal, layer)

    def predict(self, perts: list[str], basal: Tensor, batch: Tensor) -> Tensor:
        with torch.no_grad():
            return self.model(self.onehot(perts), basal)

    def check_equivalence(self, basal: Tensor, batch: Tensor, perts: list[str], rtol: float = 1e-5) -> float:
        with torch.no_grad():
            mine = self.forward_from_repr(self.encode_perturbation(self.onehot(perts)), basal, batch)
        gap = relative_difference(mine, self.predict(perts, basal, batch))
        if not gap <= rtol:
            raise ModelLoadError(f"{self.weights}: forward_from_repr differs from the model by {gap:.3g}")
        return gap


def load(spec, *, name: str, device: torch.device, cell_set_len: int | str) -> ToyAdapter:
    """The factory named in suite.yaml; cell_set_len is moot: the toy pools over the whole sentence."""
    meta_file, weights = Path(spec.run_dir) / "meta.json", Path(spec.run_dir) / "weights.safetensors"
    if not (meta_file.is_file() and weights.is_file()):
        raise ModelLoadError(f"{spec.run_dir}: not a toy run directory (needs meta.json, weights.safetensors)")
    meta = json.loads(meta_file.read_text())
    model = ToyModel(len(meta["genes"]), len(meta["perts"]), meta["hidden"], meta["layers"])
    model.load_state_dict(load_file(weights))
    return ToyAdapter(model, meta, name, device, weights)
'''

N_GENES, HIDDEN, LAYERS = 24, 16, 2
CONTROL = "non-targeting"
PLANTED = [f"PLA{i}" for i in range(1, 11)]
UNPLANTED = [f"RND{i}" for i in range(1, 11)]
ACTIVE = [f"ACT{i}" for i in range(1, 21)]  # knockdowns with an effect, each in its own direction
INERT = [f"NOE{i}" for i in range(1, 21)]  # knockdowns with (almost) no effect
KNOCKDOWNS = PLANTED + UNPLANTED + ACTIVE + INERT
GENES = [f"G{i:02d}" for i in range(N_GENES)]
LINES = ("hepg2", "jurkat")

SUITE = f"""\
models:
  toy: {{run_dir: runs/toy, adapter: "toy_model:load"}}
data: {{path: toy.h5ad, gene_key: gene, cell_line_key: cell_line, expr_key: X_toy, batch_key: batch,
        control_label: {CONTROL}}}
cell_lines: [{", ".join(LINES)}]
control_sentence: {{cells: 16, seed: 0, cell_set_len: sentence}}
gene_sets:
  planted: {{members: [{", ".join(PLANTED)}]}}
  unplanted: {{members: [{", ".join(UNPLANTED)}]}}
device: cpu
"""

EMBEDDING = """\
id: toy_pert_embedding
claim: Knockdowns of the planted program point the same way in the toy model's pert-representation space
probe: pert_embedding_clustering
cases: {model: [toy], gene_set: [planted, unplanted]}
params: {null_sets: 500, bootstrap: 200}
expect:
  - z_matched > 2
  - significant
expected: {default: pass, unplanted: fail}
"""

OUTPUT = """\
id: toy_output_clustering
claim: Knockdowns of the planted program move the toy model's residual stream the same way, in both lines
probe: output_set_clustering
cases: {model: [toy], cell_line: [hepg2, jurkat], gene_set: [planted, unplanted]}
params: {null_sets: 500, bootstrap: 200}
# the two sets share no program, so the matched null leaves out only declared relations (none here); leaving out
# the other set too (the default) would leave the planted set too few knockdowns of its own ‖ΔY‖ to be matched with
inputs: {features: residual, layer: 2, null_excludes: related}
expect:
  - z_matched > 2
  - significant
  - magnitude_ratio > 2
expected: {default: pass, unplanted: fail}
"""


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def write_run_dir(root: Path, seed: int = 0) -> None:
    """Seeded toy weights in ``root/runs/toy``: the planted knockdowns share one direction of r, the others are
    random (ACT*, RND*) or near zero (NOE*); the rest of the network is torch's default initialisation."""
    import torch
    from safetensors.torch import save_file

    rng = np.random.default_rng(seed)
    perts = [CONTROL, *KNOCKDOWNS]
    shared = _unit(rng.normal(size=HIDDEN))
    reps = {CONTROL: np.zeros(HIDDEN)}
    for k in KNOCKDOWNS:
        own = _unit(rng.normal(size=HIDDEN))
        scale = 0.05 if k in INERT else rng.uniform(2.5, 3.5)
        reps[k] = scale * (_unit(shared + 0.5 * own) if k in PLANTED else own)
    with torch.random.fork_rng(devices=[]):  # seeded, without touching this session's generator
        torch.manual_seed(seed)
        model = _toy_module(root).ToyModel(N_GENES, len(perts), HIDDEN, LAYERS)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    state["pert_encoder.weight"] = torch.as_tensor(np.stack([reps[p] for p in perts], 1), dtype=torch.float32)
    run = root / "runs" / "toy"
    run.mkdir(parents=True)
    save_file(state, run / "weights.safetensors")
    meta = {"genes": GENES, "perts": perts, "control": CONTROL, "hidden": HIDDEN, "layers": LAYERS}
    (run / "meta.json").write_text(json.dumps(meta))


def write_h5ad(path: Path, seed: int = 0) -> None:
    """Controls and a few cells of every knockdown in two lines; expression in obsm['X_toy'] over GENES."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    labels, lines, rows = [], [], []
    for i, line in enumerate(LINES):
        base = rng.gamma(2.0, 1.0 + i, size=N_GENES)  # each line has its own mean profile
        for gene in [CONTROL] * 40 + [k for k in KNOCKDOWNS for _ in range(2)]:
            labels.append(gene)
            lines.append(line)
            rows.append(np.log1p(rng.poisson(base)).astype(np.float32))
    x = np.stack(rows)
    obs = pd.DataFrame({"gene": labels, "cell_line": lines, "batch": [f"b{j % 2}" for j in range(len(rows))]},
                       index=[f"cell{j}" for j in range(len(rows))])
    ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=GENES), obsm={"X_toy": x}).write_h5ad(path)


def _toy_module(directory: Path) -> ModuleType:
    """``toy_model.py`` of ``directory``, imported under a name of its own (not left in sys.modules)."""
    spec = importlib.util.spec_from_file_location(f"toy_model_{abs(hash(directory))}", directory / "toy_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's directory: the toy model's module, weights, data, suite.yaml and hypotheses; no conftest."""
    root = tmp_path_factory.mktemp("toy_user")
    (root / "toy_model.py").write_text(TOY_MODEL)
    write_run_dir(root)
    write_h5ad(root / "toy.h5ad")
    (root / "suite.yaml").write_text(SUITE)
    (root / "hypotheses").mkdir()
    (root / "hypotheses" / "toy_embedding.yaml").write_text(EMBEDDING)
    (root / "hypotheses" / "toy_output.yaml").write_text(OUTPUT)
    return root


def test_toy_module_is_short_and_is_the_documented_example() -> None:
    lines = TOY_MODEL.splitlines()
    assert len(lines) < 100, f"the toy model module has {len(lines)} lines; the recipe promises under 100"
    assert all(len(line) <= 120 for line in lines)
    docs = DOCS.read_text(encoding="utf-8")
    assert TOY_MODEL in re.findall(r"```python\n(.*?)```", docs, flags=re.S), \
        "docs/adapters.md must show toy_model.py exactly as this test runs it"
    yaml_blocks = re.findall(r"```yaml\n(.*?)```", docs, flags=re.S)
    assert EMBEDDING in yaml_blocks and OUTPUT in yaml_blocks, "docs/adapters.md must show the hypotheses run here"


def test_toy_adapter_follows_the_protocol(user_dir: Path) -> None:
    import torch

    from hypocheck.errors import ModelLoadError, UnknownNameError
    from hypocheck.fixtures import jacobians
    from hypocheck.fixtures.adapter import ModelAdapter
    from hypocheck.fixtures.config import SuiteConfig

    config = SuiteConfig.load(user_dir / "suite.yaml")
    sys.path.insert(0, str(user_dir))
    try:
        adapter = config.load_model("toy")
    finally:
        sys.path.remove(str(user_dir))
        sys.modules.pop("toy_model", None)
    assert isinstance(adapter, ModelAdapter)
    assert (adapter.hidden_dim, adapter.n_layers, adapter.dtype) == (HIDDEN, LAYERS, torch.float32)
    assert adapter.pert_names[0] == adapter.control_pert == CONTROL and adapter.gene_names == GENES
    assert "\n" not in adapter.describe()
    weights = (user_dir / "runs" / "toy" / "weights.safetensors").read_bytes()
    assert adapter.fingerprint == hashlib.sha256(weights).hexdigest()
    with pytest.raises(UnknownNameError, match="perturbation"):
        adapter.onehot(["PLA01"])
    gen = torch.Generator().manual_seed(0)
    basal, batch = torch.rand(6, N_GENES, generator=gen) * 3, torch.zeros(6, dtype=torch.long)
    assert adapter.check_equivalence(basal, batch, adapter.pert_names) <= 1e-6
    r = adapter.encode_perturbation(adapter.onehot(["PLA1", "RND1", CONTROL]))
    assert adapter.forward_from_repr(r, basal, batch).shape == (3, 6, N_GENES)
    assert adapter.layer_activations(r, basal, batch, 1).shape == (3, 6, HIDDEN)

    def mean_out(rr: torch.Tensor) -> torch.Tensor:
        return adapter.forward_from_repr(rr, basal, batch).mean(1)

    reverse = torch.autograd.functional.jacobian(mean_out, r)  # (K, G, K, H)
    torch.testing.assert_close(torch.func.jacfwd(mean_out)(r), reverse, rtol=1e-4, atol=1e-5)
    # the Jacobian probes' engine: vmap over points of vmap over directions of jvp
    engine = jacobians.pert_jacobians(lambda v: adapter.forward_from_repr(v[None], basal, batch)[0].mean(0), r,
                                      progress=False, tangent_chunk=HIDDEN)
    torch.testing.assert_close(engine, torch.stack([reverse[k, :, k] for k in range(3)]), rtol=1e-4, atol=1e-5)
    adapter.encode_perturbation = lambda oh: adapter.model.pert_encoder(oh) * 1.01
    with pytest.raises(ModelLoadError, match="differs"):
        adapter.check_equivalence(basal, batch, ["PLA1", "RND1"])


def test_the_plugin_runs_a_non_arc_state_model_from_configuration_alone(user_dir: Path) -> None:
    assert not list(user_dir.rglob("conftest.py")), "the user's directory must need no conftest"
    assert REPO_ROOT not in user_dir.parents
    # as a user runs it: the installed plugin, their own module on PYTHONPATH, nothing of this test session
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "HYPOCHECK_SUITE", "PYTEST_ADDOPTS"} and not k.startswith("PYTEST_XDIST")}
    env |= {"PYTHONPATH": str(user_dir), "HYPOCHECK_THREADS": "1", "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:randomly"],
        cwd=user_dir, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode in (0, 1), output  # 1: the unplanted cases fail, as they should
    summary = json.loads((user_dir / "reports" / "summary.json").read_text())
    verdicts = {(c["hypothesis"], c["axes"].get("cell_line"), c["axes"]["gene_set"]): c["verdict"]
                for c in summary["cases"]}
    expected: dict[tuple[str, str | None, str], str] = {
        ("toy_pert_embedding", None, "planted"): "pass", ("toy_pert_embedding", None, "unplanted"): "fail",
    }
    for line in LINES:
        expected |= {("toy_output_clustering", line, "planted"): "pass",
                     ("toy_output_clustering", line, "unplanted"): "fail"}
    assert verdicts == expected, output  # every case judged (no errors), planted pass, unplanted fail
    assert "toy MLP" in summary["environment"]["models"]["toy"]["describe"]
    assert elapsed < 120, f"the user's run took {elapsed:.0f} s"
