"""OpenSlide reading on real pixels: an Aperio SVS written from CPM-15 tiles, read through OpenSlide and through
tifffile, which must agree pixel for pixel (deflate is lossless), down to the tiles that `eqseg tile` stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from eqseg.config import Slide, SlideDataset, SplitConfig, TileConfig
from eqseg.errors import EqsegError
from eqseg.slides.make import make_slide, pyramid
from eqseg.slides.openslide_reader import OpenSlideReader
from eqseg.slides.readers import open_slide
from eqseg.slides.source import MaskLabels, SlideSource, open_slides
from eqseg.slides.tiff import PyramidTiff
from eqseg.tiling.store import TileStore, build_tile_store

MPP = 0.25
TILE = 256


def write_svs(path: Path, levels: list[np.ndarray], mpp: float) -> None:
    """The Aperio layout OpenSlide's aperio driver and tifffile's SVS series both expect: the full-resolution image
    tiled in the first directory, a stripped thumbnail second, then the reduced levels as further tiled directories
    (not SubIFDs, NewSubfileType 0), every description starting with "Aperio" and carrying `|MPP = `."""
    h, w = levels[0].shape[:2]
    desc = f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] ({TILE}x{TILE}) Deflate|AppMag = 40|MPP = {mpp}"
    with tifffile.TiffWriter(path) as tif:
        tif.write(levels[0], tile=(TILE, TILE), compression="zlib", photometric="rgb", description=desc, metadata=None)
        tif.write(levels[-1], compression="zlib", photometric="rgb", description=desc, metadata=None)
        for a in levels[1:]:
            tif.write(a, tile=(TILE, TILE), compression="zlib", photometric="rgb", description=desc, metadata=None)


@pytest.fixture(scope="module")
def svs(tmp_path_factory, root):
    """Four real 40x CPM-15 tiles on a 0.25 um/px canvas, cropped to a multiple of 8 px so that every level halves
    exactly (integer downsamples), written as SVS, with its class mask as a plain tiled TIFF; also the odd-sized
    original canvas as SVS."""
    d = tmp_path_factory.mktemp("svs")
    make_slide(root / "data/cpm15/images", root / "data/cpm15/masks", d / "canvas.tif", d / "canvas_mask.tif", MPP,
               mask_suffix="_mask", include=("image0[89].png", "image1[45].png"), columns=2)
    canvas = tifffile.imread(d / "canvas.tif", series=0, level=0)
    h, w = canvas.shape[0] // 8 * 8, canvas.shape[1] // 8 * 8
    write_svs(d / "slide.svs", pyramid(canvas[:h, :w], nearest=False), MPP)
    tifffile.imwrite(d / "mask.tif", tifffile.imread(d / "canvas_mask.tif", series=0, level=0)[:h, :w], tile=(TILE, TILE))
    write_svs(d / "odd.svs", pyramid(canvas, nearest=False), MPP)
    return d


def test_openslide_reports_the_levels_and_resolution_tifffile_reads(svs):
    tf, osr = PyramidTiff(svs / "slide.svs"), OpenSlideReader(svs / "slide.svs")
    assert len(osr.levels) == len(tf.levels) >= 3 and osr.bands == 3 and osr.dtype == np.uint8
    assert [(lv.height, lv.width, lv.downsample) for lv in osr.levels] == [(lv.height, lv.width, lv.downsample) for lv in tf.levels]
    assert [lv.mpp for lv in osr.levels] == pytest.approx([lv.mpp for lv in tf.levels]) and osr.levels[1].mpp == pytest.approx(0.5)
    assert osr._slide.properties["openslide.vendor"] == "aperio"  # read by the Aperio driver, not as generic TIFF


@pytest.mark.parametrize("level", [0, 1, 2])
def test_regions_across_tile_boundaries_equal_the_tifffile_pixels(svs, level):
    tf, osr = PyramidTiff(svs / "slide.svs"), OpenSlideReader(svs / "slide.svs")
    lv = tf.levels[level]
    direct = np.moveaxis(tifffile.imread(svs / "slide.svs", series=0, level=level), -1, 0)
    regions = [(0, 0, 64, 64), (TILE - 37, TILE - 50, 101, 120), (lv.height // 2 - 3, 5, 7, lv.width - 10),
               (lv.height - 90, lv.width - 70, 90, 70)]  # straddling 2 and 4 file tiles, a whole row, the corner
    for r, c, h, w in regions:
        got = osr.read(level, r, c, h, w)
        assert got.shape == (3, h, w) and got.dtype == np.uint8
        assert np.array_equal(got, tf.read(level, r, c, h, w)) and np.array_equal(got, direct[:, r : r + h, c : c + w])
    assert np.array_equal(osr.read_level(level), direct)
    with pytest.raises(ValueError, match="outside level"):
        osr.read(level, lv.height - 10, 0, 20, 20)


def test_non_integer_downsamples_are_interpolated_by_openslide(svs):
    """Odd level-0 sizes give downsamples like 2.0004: OpenSlide then resamples a region whose origin falls
    between level pixels; the pixels stay within a fraction of a pixel of tifffile's, and exact at level 0."""
    tf, osr = PyramidTiff(svs / "odd.svs"), OpenSlideReader(svs / "odd.svs")
    assert [(lv.height, lv.width) for lv in osr.levels] == [(lv.height, lv.width) for lv in tf.levels]
    assert osr.levels[0].height % 2 == 1 or osr.levels[0].width % 2 == 1
    assert np.array_equal(osr.read(0, 301, 517, 200, 300), tf.read(0, 301, 517, 200, 300))
    a, b = osr.read(1, 250, 300, 150, 200).astype(int), tf.read(1, 250, 300, 150, 200).astype(int)
    assert 0 < np.abs(a - b).mean() < 3


def test_unscanned_pixels_are_white(svs, tmp_path):
    """A zero-length tile is one OpenSlide's Aperio driver treats as not scanned: transparent, hence white here."""
    path = tmp_path / "holed.svs"
    path.write_bytes((svs / "slide.svs").read_bytes())
    tf = PyramidTiff(path)
    per_row = -(-tf.levels[0].width // TILE)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tag = tif.pages[0].tags["TileByteCounts"]
        counts = list(tag.value)
        counts[2 * per_row + 2] = 0  # level-0 tile at row 2, column 2, inside the first CPM-15 tile
        tag.overwrite(counts)
    osr = OpenSlideReader(path)
    r0 = 2 * TILE - 10
    region = osr.read(0, r0, r0, TILE + 20, TILE + 20)
    assert (region[:, 10:-10, 10:-10] == 255).all()
    above = tf.read(0, r0, r0, 10, TILE + 20)  # its neighbours as they are
    assert np.array_equal(region[:, :10], above) and (above < 200).any()


@pytest.mark.parametrize("mpp", [0.25, 0.5])
def test_slide_source_tiles_alike_with_either_reader(svs, mpp):
    mask = MaskLabels(svs / "mask.tif", "classes", None, 2)
    a = SlideSource(svs / "slide.svs", mask, mpp=mpp, reader="openslide")
    b = SlideSource(svs / "slide.svs", MaskLabels(svs / "mask.tif", "classes", None, 2), mpp=mpp, reader="tifffile")
    assert isinstance(a._slide, OpenSlideReader) and isinstance(b._slide, PyramidTiff)
    assert (a.level, a.height, a.width, a.mpp) == (b.level, b.height, b.width, b.mpp) and np.array_equal(a.tissue, b.tissue)
    n = 0
    for r in range(0, a.height, 200):
        for c in range(0, a.width, 200):  # 200-px tiles, not aligned with the file's 256-px tiles
            x, y = a.read_tile(r, c, 200, a.height, a.width), b.read_tile(r, c, 200, b.height, b.width)
            assert x.valid_fraction == y.valid_fraction and np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask)
            n += x.valid_fraction > 0
    assert n > 4


def test_tile_store_with_reader_openslide_matches_tifffile(svs, tmp_path):
    def cfg(reader):
        return SlideDataset(kind="slide", classes=["background", "nucleus"], mpp=0.5, reader=reader,
                            slides=[Slide(image=str(svs / "slide.svs"), mask=str(svs / "mask.tif"))],
                            split=SplitConfig(by="block", block_size=256))

    assert isinstance(open_slides(cfg("openslide"), Path("."))[0]._slide, OpenSlideReader)
    stores = {}
    for reader in ("openslide", "tifffile"):
        build_tile_store("svs", cfg(reader), TileConfig(size=128, min_valid_fraction=0.0), tmp_path / reader)
        stores[reader] = TileStore(tmp_path / reader)
    o, t = stores["openslide"], stores["tifffile"]
    assert len(o.index) == len(t.index) > 0 and list(o.index.tile_id) == list(t.index.tile_id)
    assert np.array_equal(o.images, t.images) and np.array_equal(o.masks, t.masks) and (o.masks == 1).any()


def test_auto_reader_by_suffix_and_errors_name_the_file(svs, tmp_path):
    assert isinstance(open_slide(svs / "slide.svs"), PyramidTiff)
    assert isinstance(open_slide(svs / "slide.svs", "openslide"), OpenSlideReader)
    (tmp_path / "x.mrxs").write_text("not a slide\n")
    with pytest.raises(EqsegError, match=r"x\.mrxs: not a slide format OpenSlide recognises"):
        open_slide(tmp_path / "x.mrxs")  # auto: OpenSlide for .mrxs
    with pytest.raises(EqsegError, match=r"gone\.scn: slide not found"):
        open_slide(tmp_path / "gone.scn")
    with pytest.raises(EqsegError, match=r"gone\.svs: slide not found"):
        OpenSlideReader(tmp_path / "gone.svs")
    with pytest.raises(EqsegError, match="unknown slide reader 'bioformats'"):
        open_slide(svs / "slide.svs", "bioformats")
    with pytest.raises(EqsegError, match=r"x\.mrxs: not a slide format"):
        SlideSource(tmp_path / "x.mrxs", MaskLabels(svs / "mask.tif", "classes", None, 2), reader="openslide")
