"""Training: checkpoint each epoch, resume after a kill to exactly the weights of an uninterrupted run."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import BIN, tool_env
from eqseg.config import load_params
from eqseg.tiling.store import build_tile_store
from eqseg.train.loop import checkpoint_path
from eqseg.weak.stage import make_weak_stage


@pytest.fixture(scope="module")
def small_setup(tmp_path_factory, root):
    tmp = tmp_path_factory.mktemp("train")
    p = yaml.safe_load((root / "tests/smoke/params.yaml").read_text())
    p["datasets"]["cpm15"]["images"] = str(root / "data/cpm15/images")
    p["datasets"]["cpm15"]["masks"] = str(root / "data/cpm15/masks")
    p["train"].update(epochs=5, max_train_tiles=40, num_workers=1)
    p["mlflow"]["tracking_uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
    (tmp / "params.yaml").write_text(yaml.safe_dump(p))
    params = load_params(tmp / "params.yaml")
    build_tile_store("cpm15", params.dataset("cpm15"), params.tile, tmp / "tiles")
    make_weak_stage(params, "cpm15", "full", tmp / "tiles", tmp / "labels")
    return tmp


def train_cmd(tmp: Path, out: Path) -> list[str]:
    return [str(BIN / "eqseg"), "train", "--params", str(tmp / "params.yaml"), "--dataset", "cpm15", "--model", "unet",
            "--seed", "3", "--tiles", str(tmp / "tiles"), "--labels", str(tmp / "labels"), "--out", str(out)]


def weights(model_dir: Path) -> dict:
    return torch.load(model_dir / "model.pt", weights_only=True)["state_dict"]


def test_resume_after_kill_matches_uninterrupted_run(small_setup):
    tmp = small_setup
    straight, resumed = tmp / "straight", tmp / "resumed"
    subprocess.run(train_cmd(tmp, straight), env=tool_env(), check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(train_cmd(tmp, resumed), env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = checkpoint_path(resumed)
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not resumed.exists()  # killed: a checkpoint, no output that looks done

    done = subprocess.run(train_cmd(tmp, resumed), env=tool_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    assert not ckpt.exists()
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    hist = np.genfromtxt(resumed / "history.csv", delimiter=",", names=True)
    assert list(hist["epoch"]) == [1, 2, 3, 4, 5]


def test_checkpoint_of_another_configuration_is_ignored(small_setup, tmp_path):
    tmp = small_setup
    out = tmp_path / "model"
    ckpt = checkpoint_path(out)
    torch.save({"config_hash": "something-else"}, ckpt)
    done = subprocess.run(train_cmd(tmp, out), env=tool_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "another configuration" in done.stderr and (out / "model.pt").is_file()
