"""`params.yaml`, validated once: both orchestrators and every CLI command read the configuration through here.

Unknown keys are errors (a typo must not silently fall back to a default), and every error names the key path
and what is allowed, in one line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eqseg.errors import EqsegError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(_Strict):
    """Leak-free spatial split: whole sources, or square blocks of a scene with tiles placed inside one block only."""

    by: Literal["source", "block"] = "source"
    block_size: int = Field(1024, gt=0, description="block side in pixels (split by block)")
    fractions: dict[Literal["train", "val", "test"], float] = {"train": 0.6, "val": 0.2, "test": 0.2}
    seed: int = 0

    @field_validator("fractions")
    @classmethod
    def _fractions_sum_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        if any(f < 0 for f in v.values()) or abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"must be non-negative and sum to 1 (got {dict(v)})")
        if v.get("train", 0) <= 0:
            raise ValueError("train fraction must be > 0")
        return v


class PairsDataset(_Strict):
    """A folder of images and a folder of masks with matching names (e.g. pathology tiles, EM slices)."""

    kind: Literal["pairs"]
    images: str
    masks: str
    mask_suffix: str = Field("", description="mask file name = image stem + suffix + extension")
    mask_mode: Literal["classes", "instances"] = Field(
        "classes", description="classes: pixel value is the class id; instances: 0 background, >0 class 1"
    )
    mask_values: dict[int, int] | None = Field(None, description="map raw mask values to class ids")
    classes: list[str] = Field(min_length=2)
    split: SplitConfig = SplitConfig()


class Scene(_Strict):
    raster: str
    labels: str


class GeoTiffDataset(_Strict):
    """GeoTIFF scenes with vector labels (GeoJSON, GeoPackage, Shapefile) in any CRS."""

    kind: Literal["geotiff"]
    scenes: list[Scene] = Field(min_length=1)
    class_field: str | None = Field(None, description="attribute holding the class; None: every polygon is class 1")
    class_values: dict[str, int] | None = Field(None, description="map attribute values to class ids")
    layer: str | None = None
    all_touched: bool = False
    classes: list[str] = Field(min_length=2)
    split: SplitConfig = SplitConfig(by="block")


DatasetConfig = Annotated[Union[PairsDataset, GeoTiffDataset], Field(discriminator="kind")]


class TileConfig(_Strict):
    size: int = Field(128, gt=0, description="tile side in pixels, a multiple of 2**depth of every model")
    overlap: int = Field(0, ge=0)
    min_valid_fraction: float = Field(0.01, ge=0, le=1, description="drop tiles with less valid (non-nodata) area")

    @model_validator(mode="after")
    def _overlap_below_size(self):
        if self.overlap >= self.size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than size ({self.size})")
        return self


class TrainConfig(_Strict):
    epochs: int = Field(8, gt=0)
    batch_size: int = Field(8, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    augment: Literal["none", "d4"] = "d4"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="mixed precision on CUDA (ignored on CPU)")
    num_workers: int = Field(1, ge=0)
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = automatic")
    max_train_tiles: int | None = Field(None, gt=0, description="cap on train tiles (smoke runs, label budgets)")


class EvaluateConfig(_Strict):
    batch_size: int = Field(16, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    n_preview: int = Field(6, ge=1, description="test tiles drawn in predictions.png")


class MlflowConfig(_Strict):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "eqseg"

    @field_validator("tracking_uri")
    @classmethod
    def _no_file_store(cls, v: str) -> str:
        if not (v.startswith(("sqlite:///", "http://", "https://", "postgresql", "mysql", "databricks"))):
            raise ValueError(f"use a database or server URI such as sqlite:///mlflow.db (got {v!r})")
        return v


class GridConfig(_Strict):
    datasets: list[str] = Field(min_length=1)
    models: list[str] = Field(min_length=1)
    supervision: list[Literal["full"]] = ["full"]
    seeds: list[int] = Field([0], min_length=1)


class Params(_Strict):
    datasets: dict[str, DatasetConfig]
    tile: TileConfig = TileConfig()
    models: dict[str, dict[str, Any]] = Field(description="options per model name, passed to eqseg.models.build")
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    mlflow: MlflowConfig = MlflowConfig()
    grid: GridConfig

    @model_validator(mode="after")
    def _grid_refers_to_known_names(self):
        from eqseg.models import available

        for name in self.grid.datasets:
            if name not in self.datasets:
                raise ValueError(f"grid.datasets: unknown dataset {name!r} (defined: {sorted(self.datasets)})")
        for name in self.models:
            if name not in available():
                raise ValueError(f"models: unknown model {name!r} (allowed: {available()})")
        for name in self.grid.models:
            if name not in self.models:
                raise ValueError(f"grid.models: model {name!r} has no entry under models (defined: {sorted(self.models)})")
        for name in self.grid.models:
            depth = int(self.models[name].get("depth", 0))
            if self.tile.size % (2**depth):
                raise ValueError(f"tile.size ({self.tile.size}) must be a multiple of 2**depth = {2**depth} of model {name!r}")
        return self

    def model_options(self, name: str) -> dict[str, Any]:
        if name not in self.models:
            raise EqsegError(f"params: model {name!r} has no entry under models (defined: {sorted(self.models)})")
        return dict(self.models[name])

    def dataset(self, name: str) -> PairsDataset | GeoTiffDataset:
        if name not in self.datasets:
            raise EqsegError(f"params: unknown dataset {name!r} (defined: {sorted(self.datasets)})")
        return self.datasets[name]


def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not (isinstance(p, str) and p in ("pairs", "geotiff")))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; allowed keys are documented in params.yaml)"
    elif first["type"] == "literal_error":
        msg = f"{msg} (got {first.get('input')!r})"
    elif "input" in first and not isinstance(first["input"], (dict, list)):
        msg = f"{msg} (got {first['input']!r})"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: {loc or '<top>'}: {msg}{more}"


def parse_params(raw: dict, source: str = "params") -> Params:
    """Validate a parsed params mapping; raise EqsegError with one line naming the bad key."""
    if not isinstance(raw, dict):
        raise EqsegError(f"{source}: expected a mapping at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise EqsegError(_format_error(source, err)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise EqsegError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise EqsegError(f"{path}: not valid YAML{where}") from None
    return parse_params(raw, str(path))


def stable_hash(obj: Any) -> str:
    """Short hash of a JSON-able object, used to tie checkpoints to the exact configuration."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
