"""Data-parallel training over several processes (one per GPU) launched by torchrun.

`eqseg train` relaunches itself under torchrun when `train.nproc > 1`, so the Snakemake rule and the DVC stage keep
the same command. Every rank draws the same seeded order of tiles for an epoch and takes its own equal share, so the
ranks run the same number of batches (DDP needs that) and an epoch still covers `tiles_per_epoch` tiles in all.
Rank 0 alone validates, checkpoints, logs to MLflow and writes the output; the others only train.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

LAUNCHED = "EQSEG_TORCHRUN"  # set by the relaunch, so a rank never relaunches again


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def current_world() -> World:
    """The process's place in a torchrun job (RANK, LOCAL_RANK, WORLD_SIZE); a single process otherwise."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))


def launch_command(nproc: int, args: list[str]) -> list[str]:
    """torchrun on this machine with `nproc` processes, each running `eqseg <args>`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "eqseg.cli", *args]


def relaunch(nproc: int, args: list[str]) -> int:
    """Run `eqseg <args>` under torchrun and return its exit status."""
    import subprocess

    return subprocess.run(launch_command(nproc, args), env=os.environ | {LAUNCHED: "1"}).returncode


def check_devices(nproc: int, device: str) -> None:
    """One process per GPU: refuse more processes than GPUs (on the CPU, gloo runs any number, e.g. to test)."""
    from eqseg.errors import EqsegError
    from eqseg.runtime import resolve_device

    gpus = torch.cuda.device_count()
    if resolve_device(device).type == "cuda" and nproc > gpus:
        raise EqsegError(f"train.nproc: {nproc} processes but {gpus} GPUs on this machine")


def shard(order: np.ndarray, world: World) -> np.ndarray:
    """This rank's share of an epoch's order: equal lengths on every rank (the remainder is dropped), disjoint."""
    per_rank = len(order) // world.size
    return order[world.rank * per_rank : (world.rank + 1) * per_rank]


def backend(device: torch.device) -> str:
    """NCCL for CUDA tensors and gloo for CPU ones in one group on GPUs (a CPU tensor all-reduced over NCCL alone
    fails), gloo on the CPU."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def start(world: World, device: torch.device) -> None:
    if world.size > 1 and not dist.is_initialized():
        dist.init_process_group(backend(device))


def mean(value: float | torch.Tensor, world: World, device: torch.device | None = None) -> float:
    """The mean of a per-rank number over all ranks, all-reduced on the training device (`value`'s own, for a
    tensor); read back once, as a float."""
    if world.size == 1:
        return float(value)
    t = torch.as_tensor(value, dtype=torch.float64, device=value.device if torch.is_tensor(value) else device).reshape(1)
    dist.all_reduce(t)
    return float(t) / world.size


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def stop(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
