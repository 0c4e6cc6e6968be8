"""The options of every weak-label kind (params.yaml's `weak.options`, `weak.dataset_options`) and of every
expansion method (`weak.expansion_options`), typed: one schema each and the tables `WEAK_KINDS` and `EXPANSIONS`
(name -> schema) that eqseg.config collects. Their names are also the supervisions `parse_supervision` accepts.

A leaf: pydantic and eqseg.utils.schema only, no numpy. A new kind is its generator (in eqseg.weak.generators,
entered in PER_TILE and EFFORT_UNITS) and its entry here: the fields are the generator's options after
`(mask, rng)` with the same defaults (tests/test_architecture.py checks it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from eqseg.utils.schema import Strict

_REGIONS = Field("objects", description="objects: class 0 is one background region, other classes' connected "
                 "components are objects; all_classes: every connected region of every class (land cover) gets per_object")
_MIN_REGION = Field(1, ge=1, description="regions (objects) smaller than this get no click or stroke")


def _background_needs_objects(options):
    if options.regions == "all_classes" and options.background is not None:
        raise ValueError("background applies to regions: objects only (with all_classes every region gets per_object)")
    return options


class PointsOptions(Strict):
    per_object: int = Field(1, ge=1)
    background: int | None = Field(None, ge=0)
    focus: float = Field(2.0, ge=0)
    regions: Literal["objects", "all_classes"] = _REGIONS
    min_region_pixels: int = _MIN_REGION

    _regions = model_validator(mode="after")(_background_needs_objects)


class ScribblesOptions(Strict):
    per_object: int = Field(1, ge=1)
    background: int | None = Field(None, ge=0)
    width: int = Field(1, ge=1, description="pixels across a stroke, odd: a disc centred on the skeleton")
    erosion: int = Field(2, ge=0)
    length: int = Field(48, ge=1)
    regions: Literal["objects", "all_classes"] = _REGIONS
    min_region_pixels: int = _MIN_REGION

    _regions = model_validator(mode="after")(_background_needs_objects)

    @field_validator("width")
    @classmethod
    def _odd_width(cls, width: int) -> int:
        if width % 2 == 0:
            raise ValueError("must be odd (a stroke is centred on its skeleton)")
        return width


class BoxesOptions(Strict):
    inside: Literal["class", "unknown"] = "class"
    jitter: int = Field(0, ge=0)


class CoarseOptions(Strict):
    factor: int = Field(8, ge=2)
    band: int | None = Field(None, ge=0)


class TagsOptions(Strict):
    min_pixels: int = Field(1, ge=1)


class PartialOptions(Strict):
    fraction: float = Field(0.1, gt=0, le=1)


class RegionGrowingOptions(Strict):
    threshold: float = Field(1.0, gt=0)
    max_steps: int = Field(64, ge=1)


class WatershedOptions(Strict):
    compactness: float = Field(0.0, ge=0)


class SuperpixelsOptions(Strict):
    algorithm: Literal["slic", "felzenszwalb"] = "slic"
    segment_area: int = Field(64, ge=1)
    compactness: float = Field(0.3, gt=0)
    scale: float = Field(100.0, gt=0)


class KmeansOptions(Strict):
    iterations: int = Field(10, ge=1)


# Weak kinds and expansion methods of eqseg.weak with their typed options (a test checks they match the functions).
WEAK_KINDS: dict[str, type[Strict]] = {"points": PointsOptions, "scribbles": ScribblesOptions, "boxes": BoxesOptions,
                                        "coarse": CoarseOptions, "tags": TagsOptions, "partial": PartialOptions}
EXPANSIONS: dict[str, type[Strict]] = {"none": Strict, "region_growing": RegionGrowingOptions,
                                       "watershed": WatershedOptions, "superpixels": SuperpixelsOptions,
                                       "kmeans": KmeansOptions}
