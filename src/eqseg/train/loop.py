"""`eqseg train`: fit one model on one tile store, checkpointing every epoch and resuming after a kill.

The checkpoint lives beside the output folder (`.{name}.ckpt.pt`), outside what Snakemake and DVC declare, so
neither deletes it before a re-run; it is tied to a hash of the configuration and removed once training ends.
The MLflow run id travels in the checkpoint, so a resumed training continues the same run.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from eqseg import paths, tracking
from eqseg.config import CLASSICAL_OPTIONS, Params, stable_hash
from eqseg.data.cells import cell_train_ids, check_labels_match, load_labels
from eqseg.data.dataset import TileDataset
from eqseg.errors import EqsegError
from eqseg.data import normalise as norm
from eqseg.train.record import plot_history, run_config_title, weak_metrics, write_history
from eqseg.train.validate import Validation, selected_epoch, undefined_reasons, validation_for
from eqseg.losses import build_loss
from eqseg.models import build, count_macs, count_parameters
from eqseg.models.checkpoint import ModelInfo, save_model
from eqseg.tiling.store import TileStore
from eqseg.train import distributed as ddp
from eqseg.runtime import autocast, memory_format, resolve_device, resolve_precision, seed_everything, set_threads, to_device
from eqseg.utils import strictjson
from eqseg.utils.atomic import atomic_dir, atomic_file, check_replaceable

log = logging.getLogger(__name__)


def checkpoint_path(out: Path) -> Path:
    return out.parent / f".{out.name}.ckpt.pt"


class EpochOrder(torch.utils.data.Sampler):
    """The shuffled tiles of the current epoch, seeded by (seed, epoch); `tiles_per_epoch` cycles small train sets.
    Under torchrun each rank takes its share of the same order. It yields (epoch, position) pairs, so loader
    workers that live across epochs (persistent) augment for the right epoch without being told."""

    def __init__(self, ds: TileDataset, seed: int, tiles_per_epoch: int | None, world: ddp.World):
        self.ds, self.seed, self.count, self.world, self.epoch = ds, seed, tiles_per_epoch or len(ds), world, 0

    def order(self) -> np.ndarray:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return ddp.shard(np.fromiter(RandomSampler(self.ds, num_samples=self.count, generator=g), np.int64), self.world)

    def __len__(self) -> int:
        return self.count // self.world.size

    def __iter__(self):
        return iter([(self.epoch, int(i)) for i in self.order()])


def make_loader(ds: TileDataset, batch_size: int, seed: int, num_workers: int, pin: bool,
                tiles_per_epoch: int | None = None, world: ddp.World = ddp.World()) -> DataLoader:
    """One loader for the whole training (its workers persist); `loader.sampler.epoch` picks the epoch."""
    order = EpochOrder(ds, seed, tiles_per_epoch, world)
    return DataLoader(ds, batch_size=batch_size, sampler=order, num_workers=num_workers, drop_last=len(order) > batch_size,
                      pin_memory=pin, persistent_workers=num_workers > 0)


def adamw(parameters, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused where torch has the kernel (CPU and CUDA): one pass over all parameters instead of ~10 ops per
    tensor (on CUDA its step counters stay on the GPU: no host read per step). gridnet's 107 tensors, 1 thread:
    3.4 -> 0.6 ms a step (bench/README.md, issue 19)."""
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=device.type in ("cpu", "cuda"))


def train_one_epoch(model, loader, loss_fn, optimiser, scaler, device, precision: str, generator: torch.Generator,
                    net=None) -> torch.Tensor:
    """One pass; `model` may be the DDP wrapper of `net`, whose own forward serves losses that call the model again.
    Returns the mean loss as a tensor on the device: nothing in the step waits for the device (the loss is summed
    there and read once per epoch), so a GPU is never stalled by the host."""
    model.train()
    layout = memory_format(net or model)
    total, batches = torch.zeros((), device=device), 0
    for x, y, tags in loader:
        x, y = to_device(x, device, layout), y.to(device, non_blocking=True)
        tags = tags.to(device, non_blocking=True) if tags.numel() else None
        with autocast(device, precision):
            loss = loss_fn(model(x), y, tags=tags, model=net or model, x=x, generator=generator)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        total += loss.detach().float()
        batches += 1
    return total / max(batches, 1)


@dataclass
class TrainingState:
    """The training state, what survives a kill (the final model file is eqseg.models.checkpoint's): weights,
    optimiser, scheduler and scaler states and the training record. Saved every epoch beside the output folder
    (`.{name}.ckpt.pt`), loaded with `weights_only=True` (tensors and plain containers only)."""

    path: Path
    config_hash: str

    def load(self, net, optimiser, scheduler, scaler) -> dict | None:
        """The saved training state if the checkpoint exists and belongs to this configuration, else None."""
        if not self.path.is_file():
            return None
        try:
            ckpt = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated by a kill during the rename-less window, or foreign
            log.warning("ignoring unreadable checkpoint %s (%s)", self.path, type(err).__name__)
            return None
        if ckpt.get("config_hash") != self.config_hash:
            log.warning("ignoring checkpoint %s: made with another configuration", self.path)
            return None
        net.load_state_dict(ckpt["model"])
        optimiser.load_state_dict(ckpt["optimiser"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        return ckpt["state"]

    def save(self, net, optimiser, scheduler, scaler, state: dict) -> None:
        with atomic_file(self.path) as tmp:
            torch.save(dict(config_hash=self.config_hash, model=net.state_dict(), optimiser=optimiser.state_dict(),
                            scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), state=state), tmp)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class Observer:
    """Hooks of one training; the default does nothing. MLflow is one observer, not woven through the loop."""

    def start(self, state: dict, run_config: dict, extra: dict, config_hash: str) -> None: ...
    def epoch(self, row: dict) -> None: ...
    def finish(self, summary: dict, files: list[Path], net, info: ModelInfo) -> None: ...
    def fail(self) -> None: ...


class MlflowObserver(Observer):
    """One MLflow run per grid cell; its id travels in the checkpoint, so a resumed training continues it, and a
    retry after a kill before the first checkpoint closes the dead run (KILLED) instead of leaving two."""

    def __init__(self, params: Params, cell: dict, labels_dir: Path, quality: dict, tiles: Path, started: float | None = None):
        self.params, self.cell, self.labels_dir, self.quality, self.tiles = params, cell, labels_dir, quality, tiles
        self.started = started  # time.time() when the training began: a new run spans all of it

    def start(self, state: dict, run_config: dict, extra: dict, config_hash: str) -> None:
        c = self.cell
        run = tracking.start_cell_run(
            self.params.mlflow, dict(stage="train", **c), config_hash, run_id=state["run_id"],
            run_name=paths.CELL.format(**c),
            tags={k: str(v) for k, v in c.items()}, start_time=self.started,
        )
        state["run_id"] = run.info.run_id
        if state["epoch"] == 0:
            tracking.log_params(run_config | extra)
            tracking.log_metrics(weak_metrics(self.quality))
            tracking.log_artifacts([self.labels_dir / "quality.json"], subdir="labels")
            tracking.log_dataset(self.tiles, name=c["dataset"])

    def epoch(self, row: dict) -> None:
        tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])

    def finish(self, summary: dict, files: list[Path], net, info: ModelInfo) -> None:
        tracking.log_metrics(summary)
        tracking.log_artifacts(files)
        tracking.log_model(net, info.model_dump())
        tracking.end_run()

    def fail(self) -> None:
        tracking.end_run("KILLED")


def run_epochs(model, net, ds, store, validation: Validation, loss_fn, optimiser, scheduler, scaler, device, precision, cfg,
               seed, state: dict, ckpt: TrainingState, observer: Observer, world: ddp.World, val_normaliser, batch_size: int) -> None:
    """Train from state['epoch'] to cfg.epochs; rank 0 validates, keeps the selected epoch's weights (train.select,
    eqseg.train.validate) and checkpoints each epoch. A progress bar over epochs shows in a terminal (rank 0), none
    in logs."""
    from tqdm import tqdm

    loader = make_loader(ds, cfg.batch_size, seed, cfg.num_workers, device.type == "cuda", cfg.tiles_per_epoch, world)
    for epoch in tqdm(range(state["epoch"], cfg.epochs), desc="train", unit="epoch", initial=state["epoch"],
                      total=cfg.epochs, disable=None if world.main else True, leave=False):
        t0 = time.perf_counter()
        loader.sampler.epoch = epoch
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)  # CPU: draws which D4 element to test
        loss = ddp.mean(train_one_epoch(model, loader, loss_fn, optimiser, scaler, device, precision, gen, net), world)
        scheduler.step()
        if not world.main:
            continue
        val = validation.score(net, store, batch_size, device, val_normaliser, precision)
        row = dict(epoch=epoch + 1, train_loss=loss, **val, seconds=time.perf_counter() - t0)
        state["history"].append(row)
        observer.epoch(row)
        if validation.labels != "none" and selected_epoch(state["history"], validation) is row:
            state["best_state"] = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        state["epoch"] = epoch + 1
        ckpt.save(net, optimiser, scheduler, scaler, state)
        log.info("epoch %d/%d loss %.4f val score %.4f (%s labels) (%.1fs)", epoch + 1, cfg.epochs, loss,
                 row["val_score"], validation.labels, row["seconds"])


def variant_setup(params: Params, variant: str, loss_spec: dict) -> tuple[str, dict]:
    """(augmentation, loss spec) of a training variant: none; d4 (random D4 element per tile and epoch);
    consistency (no augmentation, plus the equivariance-consistency term at train.consistency_weight)."""
    if variant == "d4":
        return "d4", loss_spec
    if variant == "consistency":
        return "none", {**loss_spec, "consistency": loss_spec.get("consistency", params.train.consistency_weight)}
    if variant == "none":
        return "none", loss_spec
    raise EqsegError(f"variant: {variant!r} is not one of none, d4, consistency")


def train(params: Params, dataset: str, model_name: str, supervision: str, seed: int, tiles: Path, labels_dir: Path, out: Path,
          observer: Observer | None = None, variant: str = "d4", budget: int = 100) -> dict:
    """Train one grid cell; write model.pt, history.csv, config.json, run.json and curves.png into `out`.
    Under torchrun (train.nproc > 1) every rank trains; rank 0 alone writes and returns the summary, others {}.
    `observer` defaults to MLflow tracking (rank 0)."""
    started = time.time()  # the cell's MLflow run starts here, so that its duration covers the whole training
    check_replaceable(out)  # before hours of training, not after
    if params.model_arch(model_name) in CLASSICAL_OPTIONS:
        from eqseg.train.classical import fit_classical

        return fit_classical(params, dataset, model_name, supervision, seed, tiles, labels_dir, out, variant, budget)
    cfg = params.train
    world = ddp.current_world()
    store = TileStore(tiles)
    meta = store.meta
    options = params.model_options(model_name)
    arch = params.model_arch(model_name)  # the registered architecture (a grid name may be an alias: `arch:`)
    sup = params.supervision(supervision)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    precision = resolve_precision(cfg.precision, device)
    set_threads(cfg.threads, cfg.num_workers, world.size)
    seed_everything(seed)

    net = build(arch, meta.bands, meta.num_classes, **options)
    net = net.to(device, memory_format=memory_format(net))
    if meta.tile_size % getattr(net, "tile_multiple", 1):
        raise EqsegError(f"tile size {meta.tile_size} of {tiles} is not a multiple of {net.tile_multiple} for model {model_name}")
    ddp.start(world, device)
    model = net if world.size == 1 else torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    optimiser = adamw(model.parameters(), cfg.lr, cfg.weight_decay, device)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=cfg.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # bf16 has fp32's range: no scaling

    augment, loss_spec = variant_setup(params, variant, params.loss_spec(sup))
    labels, label_ids, quality = load_labels(labels_dir)
    check_labels_match(quality, sup.name, labels_dir)
    train_ids = cell_train_ids(store, label_ids, sup.distill, cfg.max_train_tiles, seed, budget)
    tag_options = params.weak_options(dataset, "tags")
    validation = validation_for(cfg.select, store, labels_dir, int(tag_options.get("min_pixels", 1)))
    val_ids = validation.ids
    mode = params.normalise.mode
    train_stats = (meta.band_mean, meta.band_std)  # training: the dataset is the training dataset
    stain = None
    if params.normalise.stain != "none":  # a reference from the train split; statistics of the stained tiles
        from eqseg.data.stain import StainNormaliser, reference_tiles

        stain = StainNormaliser.fit(params.normalise.stain, reference_tiles(store, train_ids, seed=seed))
        train_stats = norm.stained_statistics(store, train_ids, stain)
    ds = TileDataset(store, train_ids, augment=augment, seed=seed, labels=labels, label_ids=label_ids,
                     normaliser=norm.for_store(mode, train_stats, store, store.sources(train_ids, distinct=True) if mode == "image" else None,
                                               stain=stain))
    val_normaliser = norm.for_store(mode, train_stats, store, store.sources(val_ids, distinct=True) if mode == "image" else None,
                                    stain=stain)
    loss_fn = build_loss(loss_spec)
    run_config = dict(
        dataset=dataset, model=model_name, supervision=sup.name, variant=variant, budget=budget, seed=seed,
        model_options=options, **({"arch": arch} if arch != model_name else {}), loss=loss_spec, augment=augment,
        weak=params.weak.model_dump() if not sup.is_full else None, normalise=mode, stain=params.normalise.stain,
        train=cfg.model_dump(), tile=dict(size=meta.tile_size, overlap=meta.overlap), n_train_tiles=len(train_ids),
        n_val_tiles=len(val_ids), tiles=str(tiles), precision=precision, **validation.record,
    )
    if sup.distill:  # (only then, so checkpoints of other cells keep their hash)
        run_config["distill"] = params.distill.model_dump(exclude={"device", "batch_size"})
    hashed = {k: v for k, v in run_config.items()
              if k not in ("tiles", "normalise", "stain", "variant", "budget", "augment", "precision")}
    hashed |= {"stats": meta.band_mean, "augment": augment, "budget": budget}
    if mode != "train" or stain is not None:  # (absent for the default, so checkpoints of earlier versions still resume)
        hashed["normalise"] = [mode, params.normalise.stain]
    ckpt = TrainingState(checkpoint_path(out), stable_hash(hashed))
    n_params = count_parameters(net)
    macs = count_macs(net, meta.bands, meta.tile_size)

    state = ckpt.load(net, optimiser, scheduler, scaler)
    if state is not None and world.main:
        log.warning("resuming %s from epoch %d (checkpoint %s)", out, state["epoch"], ckpt.path)
    state = state or dict(epoch=0, history=[], best_state=None, run_id=None)
    cell = dict(dataset=dataset, model=model_name, supervision=sup.name, variant=variant, budget=budget, seed=seed)
    observer = (observer or MlflowObserver(params, cell, labels_dir, quality, tiles, started)) if world.main else Observer()
    observer.start(state, run_config, {"n_params": n_params, "macs_per_tile": macs, "device": str(device), "processes": world.size},
                   ckpt.config_hash)
    try:
        run_epochs(model, net, ds, store, validation, loss_fn, optimiser, scheduler, scaler, device, precision, cfg, seed, state,
                   ckpt, observer, world, val_normaliser, params.evaluate.batch_size)
    except BaseException:
        observer.fail()
        raise
    finally:
        ddp.stop(world)
    if not world.main:
        return {}

    if state["best_state"] is not None:  # else: the last epoch's weights, which the net holds
        net.load_state_dict(state["best_state"])
    info = ModelInfo(model=model_name, arch=arch if arch != model_name else None, options=options, in_channels=meta.bands, num_classes=meta.num_classes,
                     classes=meta.classes, band_mean=list(train_stats[0]), band_std=list(train_stats[1]), normalise=mode,
                     stain=stain.record if stain is not None else None,
                     tile_size=meta.tile_size, dataset=dataset, supervision=sup.name, seed=seed, precision=precision,
                     **validation.record)
    best = selected_epoch(state["history"], validation)
    summary = dict(best_epoch=best["epoch"], best_val_miou=best["val_miou"], best_val_score=best["val_score"],
                   **validation.record, precision=precision, final_train_loss=state["history"][-1]["train_loss"],
                   n_params=n_params, macs_per_tile=macs, train_seconds=sum(r["seconds"] for r in state["history"]))
    with atomic_dir(out) as tmp:
        save_model(tmp / "model.pt", net, info)
        write_history(tmp / "history.csv", state["history"])
        (tmp / "config.json").write_text(strictjson.dumps(run_config | {"summary": summary}, undefined_reasons(validation), indent=2, default=str) + "\n")
        (tmp / "run.json").write_text(strictjson.dumps({"run_id": state["run_id"], "tracking_uri": params.mlflow.tracking_uri}) + "\n")
        plot_history(tmp / "curves.png", state["history"], title=run_config_title(run_config))
    observer.finish(summary, [out / "model.pt", out / "history.csv", out / "config.json", out / "curves.png"], net, info)
    ckpt.remove()
    return summary

