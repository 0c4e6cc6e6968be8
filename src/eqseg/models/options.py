"""The options of every network under params.yaml's `models:`, typed: one schema per architecture and the table
`NETWORK_OPTIONS` (name -> schema) that eqseg.config collects into its registry.

A leaf: pydantic and eqseg.utils.schema only, no torch. Loading params imports it (through eqseg/models/__init__.py,
which imports no torch either) to check every model's options before anything is built. A new model is its module
(the `@register`ed constructor) and its entry here: the fields are the constructor's keyword arguments with the
same defaults, and `tile_multiple` says which tile sizes it takes (tests/test_architecture.py checks both).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from eqseg.utils.schema import Strict


class UNetOptions(Strict):
    """Options of `unet` (and of the escnn U-Nets c8_unet/d8_unet)."""

    depth: int = Field(3, ge=1, le=8)
    width: int = Field(16, gt=0)

    @property
    def tile_multiple(self) -> int:
        return 2**self.depth


class GroupUNetOptions(UNetOptions):
    """Options of `p4_unet`/`p4m_unet`: width in raw channels; match the unet's raw width or its parameter count."""

    match: Literal["channels", "params"] = "channels"


class GridNetOptions(Strict):
    rows: int = Field(3, ge=1, le=8)
    columns: int = Field(4, ge=2)
    width: int = Field(8, gt=0)

    @property
    def tile_multiple(self) -> int:
        return 2 ** (self.rows - 1)


# Every network eqseg.models builds, with its typed options (the classical baselines: eqseg.classical.options;
# eqseg.config.MODEL_OPTIONS collects both).
NETWORK_OPTIONS: dict[str, type[Strict]] = {
    "unet": UNetOptions, "p4_unet": GroupUNetOptions, "p4m_unet": GroupUNetOptions, "gridnet": GridNetOptions,
    "c8_unet": UNetOptions, "d8_unet": UNetOptions,
}
