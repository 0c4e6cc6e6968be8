"""The base of every params schema, and the one-line message of a failed options check.

Imports pydantic only: the options leaves beside the domains (eqseg/models/options.py, ...) build on it, and
loading params imports them without torch or numpy.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


class Strict(BaseModel):
    """Unknown keys are errors (a typo must not fall back to a default); validated options are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def first_error(where: str, err: ValidationError) -> str:
    """The first error of an options check in one line: `where.key: message (got value)`."""
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    msg = "unknown option" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
    return f"{where}.{key}: {msg} (got {e.get('input')!r})" if key else f"{where}: {msg}"
