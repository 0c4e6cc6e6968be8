"""Classical segmentation baselines as models that need no training: otsu, kmeans, watershed, felzenszwalb,
split_merge (see `eqseg.classical.methods` for what each fits on the train split).

Common interface, by name through `CLASSICAL`:

    state = fit(name, images, masks, classes, seed=0, **params)  # images: list of (C, H, W) arrays, any dtype;
                                                                 # masks: list of (H, W) class maps, 255 = unlabelled
    class_map = predict(state, image)                            # (H, W) uint8 class indices

`state` is a JSON-able dict {"method", "classes", "params", ...fitted numbers}, so it can be stored next to a
model's metrics. `seed` (the grid cell's; not a model option) drives every random choice of a fit: seeds give
different kmeans, felzenszwalb and split_merge fits; otsu and watershed are deterministic. The watershed also gives
instances: `CLASSICAL["watershed"].instances(state, image)`.

Importing this package imports no numpy: loading params imports its options leaf (eqseg.classical.options, the
typed options of every method) through it. The names below come from eqseg.classical.registry, loaded on first use.
"""

from __future__ import annotations

__all__ = ["CLASSICAL", "ClassicalMethod", "fit", "get", "is_classical", "predict"]


def __getattr__(name: str):
    if name in __all__:
        from eqseg.classical import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
