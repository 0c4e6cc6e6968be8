"""The options of the classical baselines under params.yaml's `models:`, typed: one schema per method of
eqseg.classical and the table `CLASSICAL_OPTIONS` (name -> schema) that eqseg.config collects into its registry.

A leaf: pydantic and eqseg.utils.schema only, no numpy. The fields are the method's parameters (the specs in
eqseg.classical.methods) with the same defaults, plus `max_fit_tiles`; tests/test_architecture.py checks them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from eqseg.utils.schema import Strict


class ClassicalOptions(Strict):
    """Classical baselines (eqseg.classical): fitted on the train split in seconds, no network. No `seed` option:
    the grid cell's seed drives every random choice of a fit."""

    normalise: Literal["image", "train"] = "image"
    max_fit_tiles: int = Field(64, ge=1, description="train tiles the method is fitted on (a seeded sample)")

    @property
    def tile_multiple(self) -> int:
        return 1


class OtsuOptions(ClassicalOptions):
    pass


class KmeansModelOptions(ClassicalOptions):
    k: int = Field(8, ge=2)


class WatershedModelOptions(ClassicalOptions):
    min_distance: int = Field(3, ge=1)
    min_size: int = Field(10, ge=0)
    bg_margin: int = Field(2, ge=1)


class FelzenszwalbOptions(ClassicalOptions):
    scale: float = Field(100.0, ge=0)
    sigma: float = Field(0.8, ge=0)
    min_size: int = Field(20, ge=1)
    k: int = Field(6, ge=2)


class SplitMergeOptions(ClassicalOptions):
    split_threshold: float = Field(0.75, ge=0)
    min_block: int = Field(8, ge=1)
    merge_threshold: float = Field(0.5, ge=0)
    k: int = Field(6, ge=2)


# eqseg.classical.CLASSICAL has the same names (a test checks it).
CLASSICAL_OPTIONS: dict[str, type[ClassicalOptions]] = {
    "otsu": OtsuOptions, "kmeans": KmeansModelOptions, "watershed": WatershedModelOptions,
    "felzenszwalb": FelzenszwalbOptions, "split_merge": SplitMergeOptions,
}
