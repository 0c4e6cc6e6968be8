"""`params.yaml`, validated once: both orchestrators and every CLI command read the configuration through here.

Unknown keys are errors (a typo must not silently fall back to a default), and every error names the key path
and what is allowed, in one line. The options of models, loss terms, weak kinds and expansions are typed beside
their domains (eqseg/<domain>/options.py, torch-free leaves) and collected here (the options registry below).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import ChainMap
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from eqseg.classical.options import CLASSICAL_OPTIONS
from eqseg.errors import EqsegError
from eqseg.losses.options import LOSS_TERMS, check_loss_spec  # noqa: F401  (LOSS_TERMS: part of the registry)
from eqseg.models.options import NETWORK_OPTIONS
from eqseg.utils.schema import Strict, first_error
from eqseg.weak.options import EXPANSIONS, WEAK_KINDS


# Names from params become folder names, Snakemake wildcards, DVC matrix keys and shell words: letters, digits and
# _ . - only (no separators, no "..", nothing a shell interprets), starting with a letter or digit.
# The Snakefile's wildcard constraints are these patterns (imported from here).
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"
NAME = re.compile(NAME_PATTERN)
# A supervision: names joined by "+" (a weak kind, then optionally its expansion, then optionally +distill)
SUPERVISION_PATTERN = rf"{NAME_PATTERN}(?:\+{NAME_PATTERN})*"


def check_name(what: str | None, name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"{what + ': ' if what else ''}{name!r} is not a valid name (letters, digits, _ . - only, starting with a letter "
                         "or digit: it becomes a folder name and a command-line word)")
    return name


def check_suffix(suffix: str) -> str:
    """A part of a file name from params (a mask suffix): the characters of a name, no separator, no "..", may be empty."""
    if not isinstance(suffix, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{0,100}", suffix) or ".." in suffix:
        raise ValueError("must be letters, digits, _ . - only, no '/' or '..' (it is appended to each image's name to "
                         "find its mask in the masks folder)")
    return suffix


class SplitConfig(Strict):
    """Leak-free spatial split: whole sources, whole groups of sources (the parts of one scene: pairs datasets with a
    `*` in images and masks), or square blocks of a scene with tiles placed inside one block only."""

    by: Literal["source", "group", "block"] = "source"
    block_size: int = Field(1024, gt=0, description="block side in pixels (split by block)")
    fractions: dict[Literal["train", "val", "test"], float] = {"train": 0.6, "val": 0.2, "test": 0.2}
    seed: int = 0

    @field_validator("fractions")
    @classmethod
    def _fractions_sum_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        if any(f < 0 for f in v.values()) or abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"must be non-negative and sum to 1 (got {dict(v)})")
        return v  # train may be 0: a test-only dataset (an external test set), its band statistics over all tiles


IGNORE_LABEL = 255  # eqseg.labels.IGNORE, restated: loading params imports nothing of the domain


def parse_colour(text: str) -> tuple[int, int, int]:
    """A colour of a mask table: "#RRGGBB" (hex) or "R,G,B" (optionally in brackets) -> (r, g, b)."""
    t = str(text).strip()
    if re.fullmatch(r"#[0-9A-Fa-f]{6}", t):
        return int(t[1:3], 16), int(t[3:5], 16), int(t[5:7], 16)
    m = re.fullmatch(r"[\[(]?\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*[\])]?", t)
    if m and all(int(v) <= 255 for v in m.groups()):
        return int(m[1]), int(m[2]), int(m[3])
    raise ValueError(f"{text!r} is not a colour (write \"#RRGGBB\" or \"R,G,B\" with values 0-255, quoted in YAML)")


class PairsDataset(Strict):
    """A folder of images and a folder of masks with matching names (e.g. pathology tiles, EM slices), or one pair
    of folders per group: one `*` standing for a whole folder name in both (`data/x/*/images`, `data/x/*/masks`)
    makes each folder it matches a group (a scene cut into parts), whose sources are named `<group>_<image stem>`
    and can be split whole (split.by: group)."""

    kind: Literal["pairs"]
    images: str
    masks: str
    mask_suffix: str = Field("", description="mask file name = image stem + suffix + extension")
    mask_mode: Literal["classes", "instances", "colours"] = Field(
        "classes", description="classes: pixel value is the class id; instances: 0 background, >0 class 1; "
        "colours: RGB (or palette) colour -> class by mask_colours"
    )
    mask_values: dict[int, int] | None = Field(None, description="map raw mask values to class ids")
    mask_colours: dict[str, int | str] | None = Field(  # str: "ignore" only (checked below, in one clear line)
        None, description="mask_mode colours: \"#RRGGBB\" or \"R,G,B\" -> class id, or ignore (no label); any other "
        "colour in a mask is an error")
    classes: list[str] = Field(min_length=2)
    split: SplitConfig = SplitConfig()

    @field_validator("mask_suffix")
    @classmethod
    def _mask_suffix(cls, v: str) -> str:
        return check_suffix(v)

    @field_validator("images", "masks")
    @classmethod
    def _one_group_folder(cls, v: str) -> str:
        if v.count("*") > 1 or ("*" in v and "*" not in Path(v).parts):
            raise ValueError("at most one *, standing for a whole folder name (e.g. data/x/*/images: each folder it "
                             "matches is a group)")
        return v

    @field_validator("mask_colours")
    @classmethod
    def _colour_table(cls, v: dict | None) -> dict | None:
        if v is None:
            return v
        if not v:
            raise ValueError("is empty: map each colour of the masks to a class id or to ignore")
        seen: dict[tuple[int, int, int], str] = {}
        for key, value in v.items():
            if isinstance(value, str) and value != "ignore":
                raise ValueError(f"{key!r} maps to {value!r}: give a class id, or ignore (no label)")
            rgb = parse_colour(key)
            if rgb in seen:
                raise ValueError(f"{seen[rgb]!r} and {key!r} are the same colour {rgb}")
            seen[rgb] = key
        return v

    @model_validator(mode="after")
    def _groups_and_colours(self):
        if ("*" in self.images) != ("*" in self.masks):
            raise ValueError(f"images {self.images!r} and masks {self.masks!r}: put the group folder's * in both or in neither")
        if self.split.by == "group" and "*" not in self.images:
            raise ValueError("split.by: group needs groups: put one * for the group folder in images and masks "
                             "(e.g. images: data/x/*/images, masks: data/x/*/masks)")
        if (self.mask_mode == "colours") != (self.mask_colours is not None):
            raise ValueError("mask_colours: give it with mask_mode colours, and only then" if self.mask_colours is not None
                             else "mask_mode colours needs mask_colours (\"#RRGGBB\": class id or ignore)")
        if self.mask_mode == "colours" and self.mask_values is not None:
            raise ValueError("mask_values: not used with mask_mode colours (mask_colours maps the colours)")
        for key, cls_id in (self.mask_colours or {}).items():
            if cls_id != "ignore" and not 0 <= cls_id < len(self.classes):
                raise ValueError(f"mask_colours: {key!r} maps to {cls_id}, not a class id 0..{len(self.classes) - 1} "
                                 "(ignore: no label)")
        return self

    def colour_table(self) -> dict[tuple[int, int, int], int]:
        """mask_colours as (r, g, b) -> class id, ignore as 255 (no label)."""
        return {parse_colour(k): IGNORE_LABEL if c == "ignore" else c for k, c in (self.mask_colours or {}).items()}


class Scene(Strict):
    """A GeoTIFF scene and its labels: vector shapes (`labels`) or a single-band class raster (`mask`), either in any
    CRS (a mask on another grid is resampled onto the scene's with nearest neighbour)."""

    raster: str
    labels: str | None = None
    mask: str | None = Field(None, description="class raster beside the scene (as Inria, LandCover.ai ship labels)")

    @model_validator(mode="after")
    def _one_label_source(self):
        if (self.labels is None) == (self.mask is None):
            raise ValueError(f"{self.raster}: give exactly one of labels (vector) or mask (raster)")
        return self


class GeoTiffDataset(Strict):
    """GeoTIFF scenes with vector labels (GeoJSON, GeoPackage, Shapefile) or raster label masks, in any CRS."""

    kind: Literal["geotiff"]
    scenes: list[Scene] = Field(min_length=1)
    class_field: str | None = Field(None, description="attribute holding the class; None: every polygon is class 1")
    class_values: dict[str, int] | None = Field(None, description="map attribute values to class ids")
    layer: str | None = None
    all_touched: bool = False
    unlabelled: Literal["background", "ignore"] = Field(
        "background", description="pixels under no polygon: background (class 0) or ignore (255, unknown: partial labels)"
    )
    mask_values: dict[int, int] | None = Field(None, description="scenes with a mask: raw mask value -> class id "
                                               "(unmapped values: 255, no label); None: values are class ids")
    classes: list[str] = Field(min_length=2)
    split: SplitConfig = SplitConfig(by="block")

    @model_validator(mode="after")
    def _mask_values_are_classes(self):
        bad = sorted({c for c in (self.mask_values or {}).values() if not (0 <= c < len(self.classes) or c == 255)})
        if bad:
            raise ValueError(f"mask_values: class ids {bad} are not 0..{len(self.classes) - 1} (classes) or 255 (no label)")
        return self


class Slide(Strict):
    """One whole-slide image and its labels: a mask raster (any pyramid level) or GeoJSON in level-0 pixels."""

    image: str
    mask: str | None = None
    annotations: str | None = Field(None, description="GeoJSON in level-0 pixel coordinates (e.g. a QuPath export)")

    @model_validator(mode="after")
    def _one_label_source(self):
        if (self.mask is None) == (self.annotations is None):
            raise ValueError(f"{self.image}: give exactly one of mask or annotations")
        return self


class SlideDataset(Strict):
    """Pyramidal whole-slide images (tiled TIFF, OME-TIFF, SVS...) read at the level closest to a resolution."""

    kind: Literal["slide"]
    slides: list[Slide] = Field(min_length=1)
    mpp: float | None = Field(None, gt=0, description="target microns per pixel; the closest pyramid level is read")
    level: int | None = Field(None, ge=0, description="pyramid level to read when mpp is not given (default 0)")
    mask_mode: Literal["classes", "instances"] = "classes"
    mask_values: dict[int, int] | None = None
    annotation_classes: dict[str, int] | None = Field(
        None, description="map annotation classification names to class ids; None: every annotation is class 1"
    )
    tissue_min_saturation: float = Field(0.05, ge=0, le=1, description="floor under the Otsu threshold on saturation")
    reader: Literal["auto", "tifffile", "openslide"] = Field(
        "auto", description="auto: tifffile for TIFF-based files (.tif, .tiff, .svs, .ndpi...), OpenSlide for the rest (.mrxs, .scn...)"
    )
    classes: list[str] = Field(min_length=2)
    split: SplitConfig = SplitConfig()

    @model_validator(mode="after")
    def _mpp_or_level(self):
        if self.mpp is not None and self.level is not None:
            raise ValueError("give mpp or level, not both")
        return self


class SlideToBuild(Strict):
    """One slide assembled from the tiles of a group whose file names match `include`."""

    include: list[str] = Field(default_factory=list, description="globs on image file names; empty: every image")
    mpp: float = Field(gt=0, description="microns per pixel of the slide's level 0")
    source_mpp: float | None = Field(None, gt=0, description="microns per pixel of the tiles, if not mpp (resampled)")


class SlideGroup(Strict):
    """Slides assembled from real image tiles and masks by `eqseg make-slides NAME` into data/NAME/ (no real whole
    slide is small enough to ship). Tiles sit on a uniform grid of `cell_um` cells, so that a block split with
    blocks of that size keeps each source tile in one split."""

    images: str
    masks: str
    mask_suffix: str = ""
    mask_mode: Literal["classes", "instances"] = "instances"
    columns: int = Field(4, gt=0)
    cell_um: float | None = Field(None, gt=0, description="grid cell side in microns; None: tiles packed in rows")
    margin_um: float = Field(64.0, ge=0, description="blank glass around every tile, in microns")
    slides: dict[str, SlideToBuild] = Field(min_length=1, description="slide name -> its tiles: the name becomes the "
                                            "file names NAME.ome.tif and NAME.mask.ome.tif inside the group's folder")

    @field_validator("mask_suffix")
    @classmethod
    def _mask_suffix(cls, v: str) -> str:
        return check_suffix(v)

    @field_validator("slides")
    @classmethod
    def _slide_names(cls, v: dict[str, SlideToBuild]) -> dict[str, SlideToBuild]:
        for name in v:
            check_name(None, name)  # e.g. '../escaped' would write outside the group's folder
            if f"{name}.mask" in v:
                raise ValueError(f"{name!r} and {name + '.mask'!r}: the slide {name + '.mask'}.ome.tif would replace the "
                                 f"mask of {name}; rename one")
        return v


# ---- the options registry. Each domain types its options in a leaf module beside its code, eqseg/<domain>/options.py
# (pydantic and eqseg.utils only, no torch or numpy: tests/test_architecture.py checks it), and exports a table of
# name -> schema; these are those tables, collected. They are the leaves' own dicts (MODEL_OPTIONS a live view of
# two), so an entry added in a leaf is known here.
#   MODEL_OPTIONS  every model name eqseg can train or fit: eqseg.models.options.NETWORK_OPTIONS (networks) and
#                  eqseg.classical.options.CLASSICAL_OPTIONS (classical baselines, also re-exported from here)
#   LOSS_TERMS     the terms of a loss spec (eqseg.losses.options, with check_loss_spec)
#   WEAK_KINDS     the weak-label kinds, EXPANSIONS the expansion methods (eqseg.weak.options)
MODEL_OPTIONS: ChainMap[str, type[Strict]] = ChainMap(NETWORK_OPTIONS, CLASSICAL_OPTIONS)


DISTILL = "+distill"  # supervision suffix: a student trained on its weak parent's labels plus a teacher's pseudo-labels


@dataclass(frozen=True)
class Supervision:
    """A parsed supervision name: 'full', a weak kind ('points'), a kind and its expansion ('points+watershed'),
    optionally distilled ('points+distill': a student on the parent's labels and its teacher's pseudo-labels)."""

    name: str
    kind: str
    expansion: str = "none"
    distill: bool = False

    @property
    def is_full(self) -> bool:
        return self.kind == "full" and not self.distill

    @property
    def parent(self) -> str:
        """The supervision of the teacher (the name without +distill)."""
        return self.name.removesuffix(DISTILL)


def parse_supervision(name: str) -> Supervision:
    """Parse and check a supervision name (ValueError with one line if unknown); the one parser in eqseg."""
    kinds, methods = tuple(WEAK_KINDS), tuple(EXPANSIONS)
    name = str(name)
    distill = name.endswith(DISTILL)
    kind, _, expansion = name.removesuffix(DISTILL).partition("+")
    if kind != "full" and kind not in kinds:
        raise ValueError(f"unknown supervision {name!r} (allowed: full, {', '.join(kinds)}, optionally +expansion, "
                         "then optionally +distill)")
    if expansion and (expansion not in methods or expansion == "none"):
        raise ValueError(f"unknown expansion in {name!r} (allowed: {', '.join(m for m in methods if m != 'none')}; "
                         "+distill goes last)")
    if expansion and kind in ("full", "tags", "partial"):
        raise ValueError(f"supervision {name!r}: {kind} labels cannot be expanded")
    if distill and kind == "full":
        raise ValueError(f"supervision {name!r}: dense labels leave no pixel for a teacher to label")
    return Supervision(name, kind, expansion or "none", distill)


DatasetConfig = Annotated[Union[PairsDataset, GeoTiffDataset, SlideDataset], Field(discriminator="kind")]


class TileConfig(Strict):
    size: int = Field(128, gt=0, description="tile side in pixels, a multiple of 2**depth of every model")
    overlap: int = Field(0, ge=0)
    min_valid_fraction: float = Field(0.01, ge=0, le=1, description="drop tiles with less valid (non-nodata) area")

    @model_validator(mode="after")
    def _overlap_below_size(self):
        if self.overlap >= self.size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than size ({self.size})")
        return self


class TrainConfig(Strict):
    epochs: int = Field(8, gt=0)
    batch_size: int = Field(8, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="train, evaluate, predict and distill: auto (bf16 where the CPU or GPU computes it natively, "
        "else fp32), fp32, bf16, fp16 (CUDA only); the equivariance error is always measured in fp32")
    num_workers: int = Field(1, ge=0)
    threads: int = Field(0, ge=0, description="torch CPU threads of one training (the cores Snakemake reserves for it); 0 = all cores minus loader workers")
    nproc: int = Field(1, ge=1, description="data-parallel processes (one per GPU) launched by torchrun; 1: plain")
    max_train_tiles: int | None = Field(None, gt=0, description="cap on train tiles (smoke runs, label budgets)")
    loss: dict[str, Any] = Field({"ce": 1.0}, description="weighted loss terms: ce, lovasz, dice, mil, consistency")
    consistency_weight: float = Field(0.1, gt=0, description="weight of the consistency term of the consistency variant")
    loss_for: dict[str, dict[str, Any]] = Field(
        {"tags": {"mil": 1.0}}, description="loss per supervision kind, replacing `loss` for that kind"
    )
    tiles_per_epoch: int | None = Field(
        None, gt=0, description="tiles drawn per epoch (cycling the train set); None: each train tile once"
    )
    select: Literal["own", "dense", "last"] = Field(
        "own", description="which epoch's weights a cell keeps: own (best validation score against the labels its "
        "supervision has on the val tiles), dense (best against the dense val masks: an oracle a weak cell does not "
        "have), last (the last epoch, no validation needed)"
    )


class EvaluateConfig(Strict):
    batch_size: int = Field(16, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    n_preview: int = Field(6, ge=1, description="test tiles drawn in predictions.png")
    tta: bool = Field(True, description="also score with D4 test-time augmentation (tta_* metrics), a control for every model")
    normalise_modes: list[Literal["train", "dataset", "image", "train+adabn", "dataset+adabn", "image+adabn"]] = Field(
        default_factory=list, description="also score the test set under each of these normalisations (mode_<mode>"
        "[_adabn]_* metrics; evaluations, not trainings); a model trained with a stain reference is scored under "
        "train only")

    @field_validator("normalise_modes")
    @classmethod
    def _distinct_modes(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"modes repeat ({v})")
        return v


class PredictConfig(Strict):
    """Sliding-window prediction of whole scenes and slides (`eqseg predict`)."""

    window: int | None = Field(None, gt=0, description="window side in pixels; None: the model's tile size")
    overlap: int = Field(32, ge=0, description="pixels shared by neighbouring windows, blended with a cosine ramp")
    tta: bool = Field(False, description="average the 8 rotations/flips (D4) of each window")
    probabilities: Literal["none", "uint8", "float32"] = Field("none", description="also write class probabilities")
    batch_size: int = Field(8, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = all cores")
    object_metrics_max_pixels: int = Field(25_000_000, ge=0, description="object F1/AJI of sources up to this size "
                                           "(they need the whole stitched map in memory); 0: never")

    @model_validator(mode="after")
    def _overlap_below_window(self):
        if self.window is not None and self.overlap * 2 >= self.window:
            raise ValueError(f"overlap ({self.overlap}) must be less than half the window ({self.window})")
        return self


class DigitsConfig(Strict):
    """The rotated-digits check (Cohen & Welling 2016): CNN vs P4CNN on upright MNIST, tested rotated."""

    models: list[Literal["cnn", "p4cnn"]] = ["cnn", "p4cnn"]
    seeds: list[int] = [0]
    epochs: int = Field(6, gt=0)
    n_train: int = Field(4000, gt=0, le=4000)
    threads: int = Field(1, gt=0, description="fixed, so that results are reproducible bit for bit")
    device: Literal["auto", "cpu", "cuda"] = "auto"


class NormaliseConfig(Strict):
    """How pixel values become network inputs: one recorded choice, applied the same way by train, evaluate, predict
    and predict-dataset, and written into model.pt and every metrics file.

    train: the band statistics of the model's training split (travel in model.pt); dataset: the statistics of the
    dataset being scored (label-free; for data from elsewhere); image: each source's own statistics (a scene,
    slide or image, computed over its valid pixels)."""

    mode: Literal["train", "dataset", "image"] = Field("dataset", description="the default by the study's evidence: "
                                                       "in-domain it is train exactly, off-domain it held best "
                                                       "(report: modes_pooled.csv)")
    stain: Literal["none", "macenko", "reinhard"] = Field("none", description="H&E: map tiles onto a stain reference "
                                                          "fitted on the training split first (needs mode train)")
    adabn: bool = Field(False, description="evaluate/predict: re-estimate batch-norm statistics on the scored dataset's "
                                           "test tiles (images only; AdaBN), recorded beside the scores")
    adabn_batch_size: int = Field(16, ge=1, description="tiles per batch of the AdaBN pass (in tile order): the "
                                  "statistics are averages of per-batch statistics, so the batch changes the adapted "
                                  "model; one setting here, not evaluate's or predict's speed knob")


    @model_validator(mode="after")
    def _stain_with_train(self):
        if self.stain != "none" and self.mode != "train":
            raise ValueError(f"stain {self.stain} needs mode train (got mode {self.mode})")
        return self


class DistillConfig(Strict):
    """Self-training by data distillation (Radosavovic et al. 2018): the teacher's softmax averaged over the 8 D4
    transforms labels the pixels its weak labels leave open, where it is confident."""

    threshold: float = Field(0.9, ge=0.5, le=1.0, description="keep a pseudo-label where the teacher's (D4-averaged) "
                             "probability of its class is at least this")
    tta: bool = Field(True, description="average the teacher over the D4 transforms (data distillation); false: one pass")
    batch_size: int = Field(32, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class MlflowConfig(Strict):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "eqseg"

    @field_validator("experiment")
    @classmethod
    def _experiment_name(cls, v: str) -> str:
        return check_name(None, v)

    @field_validator("tracking_uri")
    @classmethod
    def _no_file_store(cls, v: str) -> str:
        if not (v.startswith(("sqlite:///", "http://", "https://", "postgresql", "mysql", "databricks"))):
            raise ValueError(f"use a database or server URI such as sqlite:///mlflow.db (got {v!r})")
        return v


VARIANTS = ("none", "d4", "consistency")


class TestOn(Strict):
    """Score the models trained on `dataset` also on `testset` (data from elsewhere, same classes)."""

    dataset: str
    testset: str


class GridConfig(Strict):
    """The experiment grid: every combination is one cell, one training, one MLflow run."""

    datasets: list[str] = Field(min_length=1)
    models: list[str] = Field(min_length=1)
    supervision: list[str] = Field(["full"], min_length=1, description="full | points | scribbles | boxes | coarse | tags | partial, +expansion")
    variants: list[Literal["none", "d4", "consistency"]] = Field(
        ["d4"], min_length=1, description="how the model meets symmetry in training: none, d4 (random rotations and "
        "flips of the training tiles), consistency (no augmentation; an equivariance-consistency loss term)")
    budgets: list[int] = Field([100], min_length=1, description="label budgets in percent of the train tiles "
                               "(nested, seeded subsets: the 10 % tiles lie inside the 30 % tiles)")
    seeds: list[int] = Field([0], min_length=1)
    test_on: list[TestOn] = Field(default_factory=list, description="also evaluate and predict the models of a "
                                  "dataset on another (test-only or other) dataset with the same classes")
    distill: list[str] = Field(default_factory=list, description="weak supervisions of grid.supervision whose cells "
                               "also train a distilled student (supervision NAME+distill; the NAME cell is its teacher)")

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v: list[int]) -> list[int]:
        for b in v:
            if not 1 <= b <= 100:
                raise ValueError(f"budgets are percents of the train tiles, 1 to 100 (got {b})")
        if len(set(v)) != len(v):
            raise ValueError(f"budgets repeat a value ({v})")
        return v

    @field_validator("supervision")
    @classmethod
    def _known_supervision(cls, v: list[str]) -> list[str]:
        for name in v:
            if parse_supervision(name).distill:
                raise ValueError(f"{name!r}: list distilled students as grid.distill: [{name.removesuffix(DISTILL)}] "
                                 "(their teacher is that supervision's cell)")
        return v

    @model_validator(mode="after")
    def _distill_parents(self):
        for name in self.distill:
            parse_supervision(name + DISTILL)
            if name not in self.supervision:
                raise ValueError(f"distill: {name!r} is not in grid.supervision (the {name} cell is the teacher)")
        if len(set(self.distill)) != len(self.distill):
            raise ValueError(f"distill: names repeat ({self.distill})")
        return self

    @field_validator("datasets", "models")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for name in v:
            check_name(None, name)
        return v


class CellRef(Strict):
    """One trained cell of the grid, named by its axes (dataset given by the comparison)."""

    model: str
    supervision: str = "full"
    variant: Literal["none", "d4", "consistency"] = "d4"
    budget: int = Field(100, ge=1, le=100)
    seed: int = 0


class CompareConfig(Strict):
    """A pair of trained models whose representations `eqseg compare` puts side by side (CKA, invariance)."""

    name: str
    dataset: str
    a: CellRef
    b: CellRef
    max_tiles: int = Field(64, ge=4)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(None, v)

    def cell(self, which: str) -> dict:
        return dict(dataset=self.dataset, **getattr(self, which).model_dump())


class WeakConfig(Strict):
    """Weak-label generation: options per kind, options per expansion method, and the seed (labels are data)."""

    seed: int = 0
    options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per kind, e.g. points: {per_object: 1}")
    expansion_options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per method")
    dataset_options: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict, description="per dataset, per kind: options over `options` for that dataset's labels, "
        "e.g. {dubai_aerial: {points: {regions: all_classes}}} (land cover: every class is regions, no background)")


class Params(Strict):
    datasets: dict[str, DatasetConfig]
    slides: dict[str, SlideGroup] = Field(default_factory=dict, description="slides built into data/NAME/ before tiling")
    tile: TileConfig = TileConfig()
    models: dict[str, dict[str, Any]] = Field(description="options per model name, passed to eqseg.models.build")
    weak: WeakConfig = WeakConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    digits: DigitsConfig = DigitsConfig()
    predict: PredictConfig = PredictConfig()
    normalise: NormaliseConfig = NormaliseConfig()
    distill: DistillConfig = DistillConfig()
    mlflow: MlflowConfig = MlflowConfig()
    grid: GridConfig
    compare: list[CompareConfig] = Field(default_factory=list, description="pairs of trained cells to compare")

    @model_validator(mode="after")
    def _grid_refers_to_known_names(self):
        """Cross-references and domain options, checked without building anything (loading params never imports
        torch: it runs in the Snakefile, in `eqseg check` and before every command)."""
        for name in self.datasets:
            check_name("datasets", name)
        for name in self.slides:
            check_name("slides", name)
        for name in self.grid.datasets:
            if name not in self.datasets:
                raise ValueError(f"grid.datasets: unknown dataset {name!r} (defined: {sorted(self.datasets)})")
        for i, pair in enumerate(self.grid.test_on):
            name, other = pair.dataset, pair.testset
            if name not in self.grid.datasets:
                raise ValueError(f"grid.test_on[{i}]: {name!r} is not a dataset of grid.datasets (its models are trained there)")
            if other not in self.datasets or other == name:
                raise ValueError(f"grid.test_on[{i}]: testset {other!r} must be another defined dataset (defined: {sorted(self.datasets)})")
            if list(self.datasets[other].classes) != list(self.datasets[name].classes):
                raise ValueError(f"grid.test_on[{i}]: {other!r} has classes {list(self.datasets[other].classes)}, "
                                 f"the models of {name!r} predict {list(self.datasets[name].classes)}")
        for name in self.slides:
            if not isinstance(self.datasets.get(name), SlideDataset):
                raise ValueError(f"slides.{name}: no dataset {name!r} of kind slide (slides are built into data/{name}/ "
                                 "and tiled as the dataset of the same name)")
        for name, options in self.models.items():
            check_name("models", name)
            arch = (options or {}).get("arch", name)
            if arch not in MODEL_OPTIONS:
                where = f"models.{name}.arch" if "arch" in (options or {}) else "models"
                raise ValueError(f"{where}: unknown model {arch!r} (allowed: {sorted(MODEL_OPTIONS)}; another name "
                                 "needs arch: one of them)")
            try:
                typed = MODEL_OPTIONS[arch].model_validate({k: v for k, v in (options or {}).items() if k != "arch"})
            except ValidationError as err:
                raise ValueError(first_error(f"models.{name}", err)) from None
            if name in self.grid.models and self.tile.size % typed.tile_multiple:
                raise ValueError(f"tile.size ({self.tile.size}) must be a multiple of {typed.tile_multiple} for model "
                                 f"{name!r} (2**depth)")
        for name in self.grid.models:
            if name not in self.models:
                raise ValueError(f"grid.models: model {name!r} has no entry under models (defined: {sorted(self.models)})")
        for kind in self.train.loss_for:
            if kind not in (*WEAK_KINDS, "full", "distill"):
                raise ValueError(f"train.loss_for: unknown supervision kind {kind!r} (allowed: full, {', '.join(WEAK_KINDS)}, distill)")
        for key, spec in [("train.loss", self.train.loss)] + [(f"train.loss_for.{k}", v) for k, v in self.train.loss_for.items()]:
            try:
                check_loss_spec(spec)
            except ValueError as err:
                raise ValueError(f"{key}: {err}") from None
        self._check_weak_options()
        names = [c.name for c in self.compare]
        if len(set(names)) != len(names):
            raise ValueError(f"compare: entry names repeat ({names})")
        cells = {tuple(sorted(c.items())) for c in self.cells()}
        for i, c in enumerate(self.compare):
            for which in ("a", "b"):
                if tuple(sorted(c.cell(which).items())) not in cells:
                    raise ValueError(f"compare[{i}] ({c.name}).{which}: {c.cell(which)} is not a cell of the grid")
        return self

    def _check_weak_options(self) -> None:
        """Unknown kinds, methods or option names fail here, at load, rather than inside `eqseg weak` later."""
        for key, table, given in (("weak.options", WEAK_KINDS, self.weak.options),
                                  ("weak.expansion_options", EXPANSIONS, self.weak.expansion_options)):
            for name, opts in given.items():
                if name not in table:
                    raise ValueError(f"{key}: unknown {'kind' if table is WEAK_KINDS else 'method'} {name!r} "
                                     f"(allowed: {', '.join(table)})")
                try:
                    table[name].model_validate(opts or {})
                except ValidationError as err:
                    raise ValueError(first_error(f"{key}.{name}", err)) from None
        for dataset, kinds in self.weak.dataset_options.items():
            if dataset not in self.datasets:
                raise ValueError(f"weak.dataset_options: unknown dataset {dataset!r} (defined: {sorted(self.datasets)})")
            for kind in kinds:
                if kind not in WEAK_KINDS:
                    raise ValueError(f"weak.dataset_options.{dataset}: unknown kind {kind!r} (allowed: {', '.join(WEAK_KINDS)})")
                try:
                    WEAK_KINDS[kind].model_validate(self.weak_options(dataset, kind))
                except ValidationError as err:
                    raise ValueError(first_error(f"weak.dataset_options.{dataset}.{kind}", err)) from None

    def weak_options(self, dataset: str, kind: str) -> dict[str, Any]:
        """The options of a weak kind for one dataset's labels: weak.options, then weak.dataset_options over them."""
        return {**(self.weak.options.get(kind) or {}), **((self.weak.dataset_options.get(dataset) or {}).get(kind) or {})}

    def cells(self) -> list[dict]:
        """Every trained cell of the grid: dataset, model, supervision, variant, budget (whole percent), seed."""
        import itertools

        g = self.grid
        supervision = [*g.supervision, *(s + DISTILL for s in g.distill)]
        return [dict(dataset=d, model=m, supervision=s, variant=v, budget=b, seed=seed)
                for d, m, s, v, b, seed in itertools.product(g.datasets, g.models, supervision, g.variants, g.budgets, g.seeds)]

    def evaluations(self) -> list[dict]:
        """Every (trained cell, test set) pair: the cell's own dataset, then its grid.test_on datasets."""
        return [c | {"testset": t} for c in self.cells()
                for t in [c["dataset"], *(p.testset for p in self.grid.test_on if p.dataset == c["dataset"])]]

    def supervision(self, name: str) -> Supervision:
        """The parsed supervision of a command-line argument (EqsegError with one line if unknown)."""
        try:
            return parse_supervision(name)
        except ValueError as err:
            raise EqsegError(f"supervision: {err}") from None

    def loss_spec(self, supervision: str | Supervision) -> dict[str, Any]:
        """The weighted loss terms of a supervision: train.loss_for[kind] (train.loss_for.distill for students, whose
        labels are pixels whatever their parent's kind), else train.loss."""
        sup = supervision if isinstance(supervision, Supervision) else parse_supervision(supervision)
        return dict(self.train.loss_for.get("distill" if sup.distill else sup.kind, self.train.loss))

    def model_options(self, name: str) -> dict[str, Any]:
        """The options passed to the architecture's builder (without `arch`)."""
        if name not in self.models:
            raise EqsegError(f"params: model {name!r} has no entry under models (defined: {sorted(self.models)})")
        return {k: v for k, v in (self.models[name] or {}).items() if k != "arch"}

    def model_arch(self, name: str) -> str:
        """The registered architecture of a grid model: its `arch` option, else its own name. A grid may hold one
        architecture twice under two names (p4m_unet at the unet's width and at its parameter count)."""
        self.model_options(name)
        return (self.models[name] or {}).get("arch", name)

    def dataset(self, name: str) -> PairsDataset | GeoTiffDataset | SlideDataset:
        if name not in self.datasets:
            raise EqsegError(f"params: unknown dataset {name!r} (defined: {sorted(self.datasets)})")
        return self.datasets[name]


def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    # datasets.NAME.<kind>.key: the union's tag sits third; dropped by position, so that no kind is listed here and
    # a dataset named like a kind ("pairs") keeps its name in the message
    loc = ".".join(str(p) for i, p in enumerate(first["loc"]) if not (i == 2 and first["loc"][0] == "datasets"))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; allowed keys are documented in params.yaml)"
        if tuple(first["loc"]) == ("train", "augment"):
            msg = "moved: augmentation is a grid axis now, grid.variants: [none, d4, consistency]"
        if tuple(first["loc"]) == ("train", "amp"):
            msg = "replaced by train.precision: auto | fp32 | bf16 | fp16 (used by every command, not only training)"
    elif first["type"] == "literal_error":
        msg = f"{msg} (got {first.get('input')!r})"
    elif "input" in first and not isinstance(first["input"], (dict, list)):
        msg = f"{msg} (got {first['input']!r})"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if first["type"] == "value_error" and not loc:  # cross-field checks name their keys themselves
        msg = msg.split(" (got ")[0] if msg.endswith(f"(got {first.get('input')!r})") else msg
        return f"{source}: {msg}{more}"
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
