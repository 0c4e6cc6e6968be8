"""The tile store's meta record (`meta.json`), typed.

`StoreMeta.model_dump()` is exactly the record the writer puts into meta.json (written sorted and indented by
eqseg.utils.atomic.write_json): reading a store and writing its meta again gives the same bytes, so the stores'
content digests (eqseg.tracking.dataset_digest) do not move.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer, model_validator

from eqseg.errors import EqsegError

_SLIDE_FIELDS = ("level", "mpp", "downsample")


class SourceMeta(BaseModel):
    """One source of the store: its name, size in pixels (of the level read, for slides), CRS and affine transform
    (None for unreferenced images and slides); slides add their pyramid level, microns per pixel (None when the
    file does not say) and downsample (level-0 pixels per pixel of that level)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    height: int
    width: int
    crs: str | None
    transform: list[float] | None
    level: int | None = None  # slides only, as the three below
    mpp: float | None = None
    downsample: float | None = None

    @property
    def is_slide(self) -> bool:
        return self.level is not None

    @model_validator(mode="after")
    def _slide_fields_together(self) -> SourceMeta:
        if not self.is_slide and (self.mpp is not None or self.downsample is not None):
            raise ValueError("mpp and downsample go with a slide's level")
        if self.is_slide and self.downsample is None:
            raise ValueError("a slide source needs its downsample")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler) -> dict:
        out = handler(self)
        if not self.is_slide:  # the writer writes level, mpp and downsample for slides only
            for k in _SLIDE_FIELDS:
                out.pop(k, None)
        return out


class StoreMeta(BaseModel):
    """meta.json of a tile store: dataset name, classes, band count and dtype of images.npy, tile size and overlap,
    number of tiles, per-band mean and standard deviation (over the image-valid pixels of the train split, or of all
    tiles when the store has no train tile: `stats_from`), tiles per split and the sources."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    classes: list[str]
    num_classes: int
    bands: int
    dtype: str
    tile_size: int
    overlap: int
    n_tiles: int
    band_mean: list[float]
    band_std: list[float]
    stats_from: Literal["train", "all"]
    splits: dict[str, int]
    sources: list[SourceMeta]

    @model_validator(mode="after")
    def _consistent(self) -> StoreMeta:
        if self.num_classes != len(self.classes):
            raise ValueError(f"num_classes {self.num_classes} but {len(self.classes)} classes")
        if not len(self.band_mean) == len(self.band_std) == self.bands:
            raise ValueError(f"{self.bands} bands but {len(self.band_mean)} band_mean and {len(self.band_std)} band_std")
        return self

    @classmethod
    def load(cls, path: str | Path) -> StoreMeta:
        """Read and check a meta.json; a missing, unreadable or invalid file is one EqsegError line naming it."""
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise EqsegError(f"{path}: missing; run `eqseg tile` first") from None
        except (OSError, UnicodeDecodeError) as err:
            raise EqsegError(f"{path}: unreadable ({err})") from None
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise EqsegError(f"{path}: not valid JSON ({err}); re-run `eqseg tile`") from None
        try:
            return cls.model_validate(record)
        except ValidationError as err:
            raise EqsegError(f"{path}: not a tile store meta record ({_first_error(err)}); re-run `eqseg tile`") from None


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
    more = f"; {err.error_count() - 1} more" if err.error_count() > 1 else ""
    return (f"{key}: {msg}" if key else msg) + more
