"""Model registry: `build(name, in_channels, num_classes, **options)`; params.yaml selects models by these names.

Importing this package imports no torch: loading params imports its options leaf (eqseg.models.options, the typed
options of every network) through it. The model modules, and torch with them, load on the first `build` or
`available`; the registry's names (`register`, `_REGISTRY`) on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eqseg.errors import EqsegError

if TYPE_CHECKING:
    import torch

_LAZY = ("_REGISTRY", "register")  # from eqseg.models.registry (register: the decorator model modules use)


def __getattr__(name: str):
    if name in _LAZY:
        from eqseg.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


def _load_builtin() -> None:
    """Import every module of this package, for the `@register` of the model modules among them: a new model
    module is found without an entry anywhere else. Run by the first `build` or `available`, so that importing
    eqseg.models stays cheap (an optional model registers only if its library is installed: steerable, escnn)."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def available() -> list[str]:
    from eqseg.models.registry import _REGISTRY

    _load_builtin()
    return sorted(_REGISTRY)


def build(name: str, in_channels: int, num_classes: int, **options) -> torch.nn.Module:
    from eqseg.models.registry import _REGISTRY

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
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    param = next(model.parameters())
    x = torch.zeros(1, in_channels, tile_size, tile_size, device=param.device, dtype=param.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2
