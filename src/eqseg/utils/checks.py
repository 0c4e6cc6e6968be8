"""Checks of user options shared by generators and expansions: every failure is one line naming the option."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np

from eqseg.errors import EqsegError


def check_known(where: str, fn: Callable, options: dict, skip: int) -> None:
    """Reject option names that `fn` does not take (its first `skip` parameters are not options)."""
    allowed = list(inspect.signature(fn).parameters)[skip:]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise EqsegError(f"{where}: unknown option {unknown[0]!r} (allowed: {', '.join(allowed) or 'none'})")


def require_int(where: str, name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise EqsegError(f"{where}: {name} must be an integer >= {low} (got {value!r})")
    return int(value)


def require_float(where: str, name: str, value, low: float, high: float = np.inf, low_open: bool = False) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{']' if np.isfinite(high) else ')'}"
        raise EqsegError(f"{where}: {name} must be a number in {interval} (got {value!r})")
    return float(value)


def require_choice(where: str, name: str, value, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise EqsegError(f"{where}: {name} must be one of {', '.join(allowed)} (got {value!r})")
    return value


def require_seed(seed) -> int:
    """Seeds feed numpy's SeedSequence together with tile ids, which only takes non-negative integers."""
    return require_int("weak", "seed", seed, 0)
