"""The wheels a bare GPU machine lacks to run this project's model path and suite: gathered here, installed there.

The GPU machine lent to this project starts from an image with Python 3.12, PyTorch with CUDA and a long list
of scientific packages (``DEVICE_HAS``, as the image was last read), but without arc-state, anndata, pydantic or
allure, and it reaches no package registry. What travels with the working tree is at most 64 MiB, so the
bundle holds only what the image lacks (``BUNDLE``) and this project as a wheel, in the versions installed in
this checkout's environment (the versions its tests run with).

arc-state itself goes in without its dependencies: the model class (``state.tx.models.state_transition``)
imports lightning, transformers, peft, geomloss, omegaconf, anndata, scikit-learn and requests (through
``state.emb``), and none of arc-state's heavy extras (cell-eval, cell-load, hydra, scanpy, seaborn, wandb,
ipykernel). Of those the image lacks geomloss, omegaconf (with antlr4-python3-runtime, which PyPI has only as
source: it is built into a pure-Python wheel here) and anndata (with zarr, numcodecs and their small helpers).
``tests/test_gpu_run.py`` checks that every distribution the run imports is in the image or in the bundle.

Usage::

    make gpu-bundle                                            # writes .gpu-bundle/ (git-ignored)
    python -m tools.bench.gpu_bundle --out .gpu-bundle --python-version 3.12
    python3 -m tools.bench.gpu_bundle install --bundle .gpu-bundle --target /tmp/site    # on the device

``install`` installs, with pip and without any index, each bundled wheel whose distribution the running Python
lacks or has in an older version, into ``--target`` (put it first on ``PYTHONPATH``), so the image's own
PyTorch with CUDA is the one used. It needs nothing but the standard library and pip.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.bench.imports import normalise

ROOT = Path(__file__).resolve().parents[2]
BUNDLE_DIR = ROOT / ".gpu-bundle"
CARRY_LIMIT = 64 * 2**20
"""What may travel to the device in one call: the tracked and untracked-not-ignored files plus carried paths."""
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
MANIFEST = "BUNDLE.json"

BUNDLE: dict[str, str] = {
    "arc-state": "the ST model class (installed without its dependencies)",
    "geomloss": "imported by arc-state's models (their losses)",
    "omegaconf": "imported by arc-state's decoders",
    "antlr4-python3-runtime": "omegaconf's parser (source only on PyPI: built into a pure-Python wheel here)",
    "anndata": "arc-state's model module and the suite's data reader",
    "zarr": "anndata",
    "numcodecs": "zarr",
    "donfig": "zarr",
    "google-crc32c": "numcodecs (crc32c codec)",
    "natsort": "anndata",
    "legacy-api-wrap": "anndata",
    "scverse-misc": "anndata",
    "array-api-compat": "anndata",
    "pydantic": "the suite config and hypothesis schema",
    "pydantic-core": "pydantic",
    "annotated-types": "pydantic",
    "typing-inspection": "pydantic",
    "typing-extensions": "pydantic needs a recent one (installed only over an older one)",
    "allure-pytest": "the pytest plugin's Allure results (a pytest run of the suite on the device)",
    "allure-python-commons": "allure-pytest",
}
"""Distributions the device image lacks (or may have too old) that the model path or the suite imports."""

DEVICE_HAS = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
""".split())
"""The device image's Python packages (names normalised), as read on such a machine on 2026-11-17; Python 3.12.3,
torch 2.11.0+cu130, transformers 5.17.0."""


def wheel_name_version(path: Path) -> tuple[str, str]:
    """(normalised distribution name, version) from a wheel's file name."""
    parts = path.name[: -len(".whl")].split("-")
    if len(parts) < 5 or not path.name.endswith(".whl"):
        raise ValueError(f"{path.name}: not a wheel file name (name-version-python-abi-platform.whl)")
    return normalise(parts[0]), parts[1]


# ----------------------------------------------------------------------------------------------- the bundle
def pinned() -> dict[str, str]:
    """``BUNDLE``'s distributions at the versions installed here (what the tests run with)."""
    versions, missing = {}, []
    for name in BUNDLE:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            missing.append(name)
    if missing:
        raise SystemExit(f"gpu-bundle: {', '.join(missing)} not installed in this environment ({sys.prefix}); "
                         "run `make` targets from the project's .venv (make test installs it)")
    return versions


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"gpu-bundle: `{' '.join(cmd)}` failed:\n{(proc.stderr or proc.stdout)[-3000:]}")


def download(name: str, version: str, dest: Path, python_version: str) -> None:
    """One wheel for the device's Python and platform, without dependencies; a source-only release is built
    here, and accepted only when the wheel it gives is pure Python (it then runs on any platform)."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    try:
        _pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
             "--implementation", "cp", *platforms, "-d", str(dest), f"{name}=={version}")
        return
    except SystemExit as exc:
        if "No matching distribution" not in str(exc) and "Could not find a version" not in str(exc):
            raise
    with tempfile.TemporaryDirectory() as tmp:
        _pip("wheel", "--quiet", "--no-deps", "--no-binary", name, "-w", tmp, f"{name}=={version}")
        built = list(Path(tmp).glob("*.whl"))
        if len(built) != 1 or not built[0].name.endswith("-none-any.whl"):
            raise SystemExit(f"gpu-bundle: {name}=={version} has no wheel for Python {python_version} on "
                             f"manylinux x86_64 and does not build into a pure-Python one ({[p.name for p in built]})")
        built[0].replace(dest / built[0].name)


def project_wheel(dest: Path) -> None:
    """This project as a wheel (what `pip install .` installs)."""
    _pip("wheel", "--quiet", "--no-deps", "-w", str(dest), str(ROOT))


def travelling_bytes(root: Path = ROOT) -> int:
    """Bytes of what travels besides carried paths: tracked files and untracked files git does not ignore."""
    listing = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, text=True, check=True).stdout
    return sum((root / f).stat().st_size for f in listing.split("\0") if f and (root / f).is_file())


def check_size(bundle_bytes: int, tree_bytes: int, limit: int = CARRY_LIMIT) -> str:
    """The size line to print; ``SystemExit`` naming both parts when together they pass ``limit``."""
    mib = 2**20
    line = (f"bundle {bundle_bytes / mib:.1f} MiB + working tree {tree_bytes / mib:.1f} MiB = "
            f"{(bundle_bytes + tree_bytes) / mib:.1f} MiB of the {limit / mib:.0f} MiB that may travel")
    if bundle_bytes + tree_bytes > limit:
        raise SystemExit(f"gpu-bundle: too large: {line}. Drop wheels the device has (DEVICE_HAS in "
                         "tools/bench/gpu_bundle.py) or carry less of the working tree")
    return line


def build(out: Path, python_version: str) -> dict[str, object]:
    """Write the bundle to ``out`` (replacing it only once complete) and return its manifest."""
    versions = pinned()
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-") as tmp:  # outside the checkout: not counted as travelling
        stage = Path(tmp)
        for name, version in versions.items():
            print(f"  {name}=={version}", flush=True)
            download(name, version, stage, python_version)
        project_wheel(stage)
        wheels = sorted(stage.glob("*.whl"))
        bundle_bytes = sum(p.stat().st_size for p in wheels)
        line = check_size(bundle_bytes, travelling_bytes())
        manifest: dict[str, object] = {
            "python": python_version, "platforms": list(PLATFORMS),
            "built": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "wheels": {p.name: {"bytes": p.stat().st_size, "why": BUNDLE.get(wheel_name_version(p)[0], "this project")}
                       for p in wheels},
            "bundle_bytes": bundle_bytes, "size": line,
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(stage, out)
    return manifest


# ---------------------------------------------------------------------------------------- on the device
def _older(have: str, want: str) -> bool:
    try:
        from packaging.version import Version

        return Version(have) < Version(want)
    except Exception:  # no packaging, or a version it cannot parse: keep what is there
        return False


def select(bundle: Path) -> tuple[list[Path], dict[str, str]]:
    """The bundle's wheels this Python lacks (or has older), and for the rest the version it has."""
    chosen, present = [], {}
    for wheel in sorted(bundle.glob("*.whl")):
        name, version = wheel_name_version(wheel)
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            chosen.append(wheel)
            continue
        if _older(have, version):
            chosen.append(wheel)
        else:
            present[name] = have
    return chosen, present


def install(bundle: Path, target: Path) -> list[str]:
    """Install the selected wheels into ``target`` with pip, offline; returns what was installed."""
    manifest = bundle / MANIFEST
    if not manifest.is_file():
        raise SystemExit(f"{bundle}: no {MANIFEST}; build the bundle with `make gpu-bundle` and carry .gpu-bundle")
    want = json.loads(manifest.read_text())["python"]
    have = f"{sys.version_info.major}.{sys.version_info.minor}"
    if want != have:
        raise SystemExit(f"{bundle}: wheels for Python {want}, but this is Python {have} ({sys.executable}); "
                         f"rebuild with `python -m tools.bench.gpu_bundle --python-version {have}`")
    chosen, present = select(bundle)
    if chosen:
        target.mkdir(parents=True, exist_ok=True)
        _pip("install", "--quiet", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
             "--target", str(target), *map(str, chosen))
    names = [f"{wheel_name_version(w)[0]}=={wheel_name_version(w)[1]}" for w in chosen]
    print(f"installed into {target}: {', '.join(names) or 'nothing'}; already here: "
          f"{', '.join(f'{k}=={v}' for k, v in sorted(present.items())) or 'nothing'}", flush=True)
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    inst = sub.add_parser("install", help="on the device: install the bundle into a target folder")
    inst.add_argument("--bundle", type=Path, default=BUNDLE_DIR)
    inst.add_argument("--target", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=BUNDLE_DIR)
    parser.add_argument("--python-version", default="3.12", help="the device's Python (major.minor)")
    args = parser.parse_args(argv)
    if args.command == "install":
        install(args.bundle, args.target)
        return
    manifest = build(args.out, args.python_version)
    for name, info in manifest["wheels"].items():  # type: ignore[attr-defined]
        print(f"  {info['bytes'] / 2**20:6.2f} MiB  {name}")
    print(f"wrote {args.out}: {manifest['size']}")


if __name__ == "__main__":
    main()
