"""The table of buildable models: each model module registers its constructor here under the name params.yaml uses;
eqseg.models builds from it (and loads the built-in modules first)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

_REGISTRY: dict[str, Callable[..., torch.nn.Module]] = {}


def register(name: str):
    """Decorator: make a model constructor `f(in_channels, num_classes, **options)` buildable by name."""

    def wrap(fn):
        _REGISTRY[name] = fn
        return fn

    return wrap
