# Shared helpers: the experiment grid, the raw files each rule reads (so that a changed image or label file re-runs
# its jobs), and the rule params that make Snakemake re-run a job when its own part of params.yaml changes.
# Snakemake still compares modification times, but an input file newer than the outputs whose content is unchanged
# (its checksum, recorded for files up to 1 MB) does not count: a touched or checked-out label file re-runs nothing.
import fnmatch
import itertools
import json
from pathlib import Path

from eqseg.errors import EqsegError
from eqseg.tiling.pairs import dataset_pairs

DIGITS_DATA = "data/mnist5k/mnist_5k.csv.gz"  # the bundled MNIST sample (`eqseg digits`; `data/mnist5k` in dvc.yaml)
RASTER_SIDECARS = (".aux.xml", ".ovr", ".msk")  # files GDAL reads beside a raster
SHAPEFILE_PARTS = (".shx", ".dbf", ".prj", ".cpg")
# Which ready job runs first (higher first; the rest have 0): data preparation, then the trainings (the long jobs),
# then scoring; the digits check and the report fill the cores last. Without them Snakemake ran the digits check and
# a finished cell's evaluation before starting the next training, and the short jobs piled up serially at the end.
PRIORITY = {"prepare": 3, "train": 2, "score": 1}


def grid_outputs(pattern):
    """The pattern for every trained cell and each of its test sets (its own dataset, then grid.test_on)."""
    return list(dict.fromkeys(pattern.format(**cell) for cell in P.evaluations()))


def compare_outputs():
    return [paths.COMPARE.format(dataset=c.dataset, name=c.name) for c in P.compare]


def section(*parts):
    return json.dumps([p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in parts], sort_keys=True)


def _pairs(images, masks, suffix, globs=()):
    """Image and mask files of a folder pair (or of every group's pair, with a `*` for the group folder), as
    `dataset_pairs` (what tiling and make-slides read) matches them; when the folders cannot be paired, the folders
    themselves (the job then reports what is wrong in one line)."""
    try:
        pairs = dataset_pairs(images, masks, suffix)
    except EqsegError:
        return [images, masks]
    pairs = [p for p in pairs if not globs or any(fnmatch.fnmatch(p.image.name, g) for g in globs)]
    return [str(f) for p in pairs for f in (p.image, p.mask)]


def _with_sidecars(path, suffixes):
    found = [path]
    for suffix in suffixes:
        side = Path(path + suffix) if suffix in RASTER_SIDECARS else Path(path).with_suffix(suffix)
        if side.exists():
            found.append(str(side))
    return found


def dataset_files(name):
    """The raw files `eqseg tile` and `eqseg predict-dataset` read for a dataset, so that a changed image, mask or
    label file re-runs both. Slides built by the `slides` rule are its output folder (that rule lists their tiles)."""
    if name in P.slides:
        return [paths.SLIDES.format(group=name)]
    cfg = P.dataset(name)
    if cfg.kind == "slide":  # slides built by the `slides` rule are its output folder, whatever the dataset's name
        built = [paths.SLIDES.format(group=g) for g in P.slides]
        owners = {b for s in cfg.slides for b in built if Path(s.image).is_relative_to(b)}
        if owners:
            return sorted(owners)
    if cfg.kind == "pairs":
        return _pairs(cfg.images, cfg.masks, cfg.mask_suffix)
    files = []
    if cfg.kind == "geotiff":
        for scene in cfg.scenes:
            files += _with_sidecars(scene.raster, RASTER_SIDECARS)
            if scene.mask is not None:  # a raster label mask
                files += _with_sidecars(scene.mask, RASTER_SIDECARS)
            else:
                files += _with_sidecars(scene.labels, SHAPEFILE_PARTS if scene.labels.lower().endswith(".shp") else ())
    else:  # slide
        for slide in cfg.slides:
            files.append(slide.image)
            companion = Path(slide.image).with_suffix("")  # MIRAX keeps its pixels in a folder beside the .mrxs
            if slide.image.lower().endswith(".mrxs") and companion.is_dir():
                files.append(str(companion))
            files += [f for f in (slide.mask, slide.annotations) if f]
    return files


def slide_tiles(group):
    """The image tiles and masks `eqseg make-slides GROUP` assembles (those matched by any slide's `include`)."""
    g = P.slides[group]
    globs = [] if any(not s.include for s in g.slides.values()) else [p for s in g.slides.values() for p in s.include]
    return _pairs(g.images, g.masks, g.mask_suffix, globs)


onstart:
    shell("eqseg tracking-init --params {PARAMS_FILE:q}")


def compare_entry(w):
    """The `compare:` entry of params named by a job's wildcards."""
    for c in P.compare:
        if c.dataset == w.dataset and c.name == w.name:
            return c
    raise ValueError(f"no compare entry {w.name!r} for dataset {w.dataset!r} in {PARAMS_FILE}")
