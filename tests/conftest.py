"""Shared fixtures: the repository root, real bundled data, and throw-away copies of the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BIN = Path(sys.executable).parent


def tool_env() -> dict[str, str]:
    """Environment in which `eqseg`, `snakemake` and `dvc` of this interpreter come first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("GIT_AUTHOR_NAME", "eqseg-test")
    env.setdefault("GIT_AUTHOR_EMAIL", "test@example.org")
    env.setdefault("GIT_COMMITTER_NAME", "eqseg-test")
    env.setdefault("GIT_COMMITTER_EMAIL", "test@example.org")
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def run(cmd: list[str], cwd: Path, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def copy_repo(dest: Path) -> Path:
    """Copy the files git would check out (tracked and untracked-but-not-ignored) into dest."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if not src.exists() and not src.is_symlink():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, target)
    return dest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small, latency-bound torch work: one thread avoids OpenMP barrier stalls when other jobs share the 2 cores
    (measured 3x faster under load)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def torch_seed():
    import torch

    torch.manual_seed(0)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture
def eqseg_cli():
    """Run the real `eqseg` command in a folder; returns the CompletedProcess (no check)."""

    def call(args: list[str], cwd: Path, timeout: int = 300):
        return run([str(BIN / "eqseg"), *args], cwd=cwd, timeout=timeout, check=False)

    return call


@pytest.fixture(scope="module")
def small_setup(tmp_path_factory, root):
    """A small real training setup: CPM-15 tiles (64 px) and full labels, params for 5 short epochs, own MLflow db."""
    import yaml

    from eqseg.config import load_params
    from eqseg.tiling.store import build_tile_store
    from eqseg.weak.stage import make_weak_stage

    tmp = tmp_path_factory.mktemp("train")
    p = yaml.safe_load((root / "tests/smoke/params.yaml").read_text())
    p["datasets"]["cpm15"]["images"] = str(root / "data/cpm15/images")
    p["datasets"]["cpm15"]["masks"] = str(root / "data/cpm15/masks")
    p["train"].update(epochs=5, max_train_tiles=40, num_workers=1)
    p["mlflow"]["tracking_uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
    (tmp / "params.yaml").write_text(yaml.safe_dump(p))
    params = load_params(tmp / "params.yaml")
    build_tile_store("cpm15", params.dataset("cpm15"), params.tile, tmp / "tiles")
    make_weak_stage(params, "cpm15", params.supervision("full"), tmp / "tiles", tmp / "labels")
    return tmp


@pytest.fixture
def tiled_setup(request):
    """small_setup for the tests bench/gpu_check.sh runs: its tile store is built through the source readers
    (rasterio, shapely), which a lent device machine running `gpu_check.sh --bench` lacks (their wheels do not fit
    its call; bench/README.md, "On a GPU: what one device call can carry"), so there such a test skips."""
    pytest.importorskip("rasterio", reason="building the tile store needs rasterio (not on the device machine)")
    pytest.importorskip("shapely", reason="building the tile store needs shapely (not on the device machine)")
    return request.getfixturevalue("small_setup")


def train_cmd(tmp: Path, out: Path, params: str = "params.yaml") -> list[str]:
    return [str(BIN / "eqseg"), "train", "--params", str(tmp / params), "--dataset", "cpm15", "--model", "unet",
            "--seed", "3", "--tiles", str(tmp / "tiles"), "--labels", str(tmp / "labels"), "--out", str(out)]
