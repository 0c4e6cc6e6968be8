"""Which reader opens a slide: tifffile for TIFF-based files, whose pages it decodes itself (fewer native
dependencies, pixel-exact at every level), OpenSlide for the formats only it understands."""

from __future__ import annotations

from pathlib import Path

from eqseg.errors import EqsegError
from eqseg.slides.openslide_reader import OpenSlideReader
from eqseg.slides.tiff import PyramidTiff

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".svs", ".ndpi", ".qptiff")
READERS = ("auto", "tifffile", "openslide")
SlideReader = PyramidTiff | OpenSlideReader


def open_slide(path: Path, reader: str = "auto") -> SlideReader:
    """A region reader for `path`: `reader` is tifffile, openslide, or auto (by the file's suffix)."""
    path = Path(path)
    if reader not in READERS:
        raise EqsegError(f"{path}: unknown slide reader {reader!r} (one of {list(READERS)})")
    if reader == "auto":
        reader = "tifffile" if path.suffix.lower() in TIFF_SUFFIXES else "openslide"
    return PyramidTiff(path) if reader == "tifffile" else OpenSlideReader(path)


def slide_name(path: Path | str) -> str:
    """The name of a slide's source: its file name without suffixes like `.ome.tif` (`a.ome.tif` -> `a`)."""
    stem = Path(path).stem
    return stem[: -len(".ome")] if stem.lower().endswith(".ome") else stem
