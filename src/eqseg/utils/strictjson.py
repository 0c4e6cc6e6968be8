"""JSON that every parser reads: no NaN or Infinity in any file eqseg writes.

Python's json writes `NaN`, which jq, JavaScript and DVC's strict paths reject. An undefined number is written as
`null`, and the key beside it, `<key>_undefined`, says why (a reason the writer gives, else what the value was),
so a reader sees "no value, and this is the cause" instead of a silent gap.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

UNDEFINED = "_undefined"


def _plain(o):
    """numpy scalars and arrays, paths: the JSON types they stand for."""
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return o


def _bad(v) -> str | None:
    """'nan' or 'infinite' for a non-finite float, else None."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else "infinite"
    return None


def _default_reason(kind: str) -> str:
    return f"not a finite number ({kind})"


def _clean_list(items: list, reasons: dict) -> tuple[list, list[int], str | None]:
    """The list with non-finite floats as None; the positions replaced and what they were."""
    out, where, kind = [], [], None
    for i, v in enumerate(items):
        v = _plain(v)
        if (k := _bad(v)) is not None:
            out.append(None)
            where.append(i)
            kind = kind or k
        else:
            out.append(finite(v, reasons))
    return out, where, kind


def finite(obj, reasons: dict[str, str] | None = None):
    """`obj` with every NaN/Infinity replaced by None; for a dict key `k` so replaced (or a list under `k` with such
    entries), `k_undefined` holds `reasons[k]` if given, else what the value was. Existing `_undefined` keys stay."""
    reasons = reasons or {}
    obj = _plain(obj)
    if isinstance(obj, dict):
        out, notes = {}, {}
        for k, v in obj.items():
            v = _plain(v)
            if (kind := _bad(v)) is not None:
                out[k] = None
                notes[f"{k}{UNDEFINED}"] = reasons.get(k, _default_reason(kind))
            elif isinstance(v, (list, tuple)):
                out[k], where, kind = _clean_list(list(v), reasons)
                if where:
                    notes[f"{k}{UNDEFINED}"] = reasons.get(k, f"entries {where}: {_default_reason(kind)}")
            else:
                out[k] = finite(v, reasons)
        return out | {k: v for k, v in notes.items() if k not in out}
    if isinstance(obj, (list, tuple)):
        return _clean_list(list(obj), reasons)[0]
    return None if _bad(obj) is not None else obj


def dumps(obj, reasons: dict[str, str] | None = None, default=None, **kwargs) -> str:
    """json.dumps of finite(obj): raises rather than ever writing NaN or Infinity. `default` as in json.dumps
    (e.g. str), its results made finite too."""

    def fallback(o):
        if default is None:
            raise TypeError(f"not JSON serialisable: {type(o).__name__}")
        return finite(default(o))

    return json.dumps(finite(obj, reasons), allow_nan=False, default=fallback, **kwargs)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def loads(text: str):
    """json.loads that refuses NaN and Infinity, as strict parsers do (for tests and readers of our files)."""
    return json.loads(text, parse_constant=_no_constant)
