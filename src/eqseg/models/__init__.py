"""Model registry: `build(name, in_channels, num_classes, **options)`; params.yaml selects models by these names."""

from __future__ import annotations

import torch

from eqseg.errors import EqsegError
from eqseg.models.registry import _REGISTRY, register  # noqa: F401  (register: the decorator model modules use)


def _load_builtin() -> None:
    # Imported for their @register side effect; kept lazy so `import eqseg.models` stays cheap.
    from eqseg.models import unet  # noqa: F401

    for optional in ("eqseg.models.gunet", "eqseg.models.gridnet", "eqseg.models.steerable"):
        try:
            __import__(optional)
        except ModuleNotFoundError as err:
            if err.name != optional:
                raise


def available() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def build(name: str, in_channels: int, num_classes: int, **options) -> torch.nn.Module:
    _load_builtin()
    if name not in _REGISTRY:
        raise EqsegError(f"unknown model {name!r} (allowed: {sorted(_REGISTRY)})")
    try:
        return _REGISTRY[name](in_channels, num_classes, **options)
    except TypeError as err:
        raise EqsegError(f"models.{name}: bad option ({err})") from None


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: torch.nn.Module, in_channels: int, tile_size: int) -> int:
    """Multiply-accumulates of one forward pass on one tile, counted on the aten ops (works for functional convs)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    param = next(model.parameters())
    x = torch.zeros(1, in_channels, tile_size, tile_size, device=param.device, dtype=param.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2
