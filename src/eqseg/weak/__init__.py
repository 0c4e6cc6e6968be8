"""Weak labels: simulated cheap annotations of dense masks, their classical expansion, and their quality.

`generate(mask, kind, seed, **options)` is the one entry point to the generators; `expand(image, labels, method)`
densifies sparse labels; `make_weak_labels` (in `store`) does both over the train tiles of a tile store.

Importing this package imports no numpy: loading params imports its options leaf (eqseg.weak.options, the typed
options of every kind and expansion) through it. The names below come from eqseg.weak.simulate, loaded on first use.
"""

from __future__ import annotations

__all__ = ["EFFORT_UNITS", "IGNORE", "LABEL_KINDS", "METHODS", "Annotation", "annotate", "check_kind", "expand", "generate"]


def __getattr__(name: str):
    if name in __all__:
        from eqseg.weak import simulate

        return getattr(simulate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
