"""Data-parallel training: `eqseg train` with train.nproc > 1 relaunches itself under the real torchrun (gloo on
the CPU here, NCCL on GPUs); rank 0 alone validates, writes and logs."""

from __future__ import annotations

import subprocess

import numpy as np
import yaml

from conftest import tool_env, train_cmd
from eqseg.train.distributed import World, shard


def test_shards_are_equal_disjoint_and_cover_the_order():
    order = np.random.default_rng(0).permutation(103)
    parts = [shard(order, World(rank=r, size=4)) for r in range(4)]
    assert {len(p) for p in parts} == {25}  # equal lengths: every rank runs the same number of batches
    joined = np.concatenate(parts)
    assert len(set(joined)) == 100 and np.array_equal(joined, order[:100])
    assert np.array_equal(shard(order, World()), order)  # one process: the order unchanged


def test_two_processes_under_torchrun_train_one_model_and_one_mlflow_run(small_setup, tmp_path):
    from mlflow.tracking import MlflowClient

    tmp = small_setup
    p = yaml.safe_load((tmp / "params.yaml").read_text())
    p["train"].update(nproc=2, epochs=2, num_workers=0, threads=1, loss={"ce": 1.0, "consistency": 0.1})
    p["mlflow"]["experiment"] = "ddp"
    (tmp / "ddp.yaml").write_text(yaml.safe_dump(p))
    out = tmp_path / "model"
    done = subprocess.run(train_cmd(tmp, out, "ddp.yaml"), env=tool_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("best val mIoU") == 1  # rank 0 alone reports
    assert (out / "model.pt").is_file()
    hist = np.genfromtxt(out / "history.csv", delimiter=",", names=True)
    assert list(hist["epoch"]) == [1, 2] and np.isfinite(hist["train_loss"]).all()
    client = MlflowClient(tracking_uri=p["mlflow"]["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["processes"] == "2" and runs[0].data.params["train.nproc"] == "2"
