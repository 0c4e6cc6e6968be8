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


def _rank_step(rank: int, port: int, out: str) -> None:
    """One rank: eqseg's DDP start, its train_one_epoch over its shard of a fixed global batch, weights saved."""
    import os

    import torch

    from eqseg.train.distributed import World, mean, shard, start, stop
    from eqseg.train.loop import train_one_epoch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    world = World(rank, rank, 2)
    start(world, torch.device("cpu"))
    try:
        net, x, y = _model_and_batch()
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        _one_step(ddp, net, x[shard(np.arange(8), world)], y[shard(np.arange(8), world)], train_one_epoch)
        torch.save(net.state_dict(), f"{out}/rank{rank}.pt")
        # the epoch's loss as train_one_epoch returns it (a tensor on the device), and a plain float
        means = [mean(torch.tensor(2.0 * rank + 1), world), mean(10.0 * rank, world, torch.device("cpu"))]
        torch.save(torch.tensor(means), f"{out}/mean{rank}.pt")
    finally:
        stop(world)


def _model_and_batch():
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
    g = torch.Generator().manual_seed(1)
    return net, torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 2, (8, 16, 16), generator=g)


def _one_step(model, net, x, y, train_one_epoch) -> None:
    import torch
    import torch.nn.functional as F

    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loader = [(x, y, torch.zeros(0))]
    loss = lambda logits, target, **_: F.cross_entropy(logits, target)  # noqa: E731 (a mean: DDP averages it)
    train_one_epoch(model, loader, loss, optimiser, scaler, torch.device("cpu"), "fp32", torch.Generator(), net)


def test_ddp_all_reduces_gradients_like_one_process_on_the_global_batch(tmp_path):
    """Two gloo ranks, each with half of a batch, take one step through eqseg's training step: their weights are
    equal to each other and to one process stepping on the whole batch (so gradients really are all-reduced)."""
    import socket

    import torch
    import torch.multiprocessing as mp

    from eqseg.train.loop import train_one_epoch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank_step, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for r in (0, 1):  # ranks 0 and 1 gave 1 and 3, then 0 and 10: every rank reads the means 2 and 5
        assert torch.load(tmp_path / f"mean{r}.pt").tolist() == [2.0, 5.0]
    net, x, y = _model_and_batch()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _one_step(net, None, x, y, train_one_epoch)
    single = net.state_dict()
    for k in single:
        assert torch.equal(w0[k], w1[k]), k
        assert torch.allclose(w0[k], single[k], atol=1e-6), k
        assert not torch.allclose(before[k], single[k]), k  # the step moved the weights
    # without all-reduce a rank would follow only its half: check that this would have been visible
    half, _, _ = _model_and_batch()
    _one_step(half, None, x[:4], y[:4], train_one_epoch)
    assert any(not torch.allclose(half.state_dict()[k], single[k], atol=1e-4) for k in single)


def test_process_group_takes_cuda_and_cpu_tensors_on_gpus():
    """On GPUs the group must all-reduce CUDA tensors (NCCL) and CPU ones (gloo): NCCL alone fails on a CPU tensor
    at the end of the first epoch; on the CPU, gloo."""
    import torch

    from eqseg.train.distributed import backend

    assert backend(torch.device("cuda", 1)) == "cpu:gloo,cuda:nccl"
    assert backend(torch.device("cpu")) == "gloo"
