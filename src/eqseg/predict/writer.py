"""Tiled, compressed GeoTIFF output written in whole rows of blocks, as the rows are finished, then its overviews and
the class names beside it.

GDAL compresses a tile when it is complete; rows handed over in block-aligned strips mean each tile is compressed
once and never rewritten (a partly written compressed tile would be re-read and appended again, bloating the file).

Class names travel in two side files that GIS tools read on their own (`write_class_styles`): `NAME.tif.aux.xml`,
GDAL's PAM file with the band's category names and a thematic raster attribute table (value, class, colour; what
`gdalinfo` prints and QGIS >= 3.30 shows), and `NAME.qml`, the default style QGIS loads with the layer (a paletted
renderer with each class's name and colour, for any QGIS 3).
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

BLOCK = 256
# matplotlib's tab10, the colours of classes 0..9 (then again from the start)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def profile(height: int, width: int, count: int, dtype, crs, transform, nodata) -> dict:
    return dict(
        driver="GTiff", height=height, width=width, count=count, dtype=dtype, crs=crs, transform=transform, nodata=nodata,
        tiled=True, blockxsize=BLOCK, blockysize=BLOCK, compress="deflate", predictor=1, bigtiff="IF_SAFER", num_threads="ALL_CPUS",
    )


class GeoTiffRowWriter:
    """Append rows (count, n, width) to a GeoTIFF, flushing them to the file only in whole rows of blocks."""

    def __init__(self, path: Path, **prof):
        with warnings.catch_warnings():  # unreferenced sources (pathology images) are written in pixel space
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            self._ds = rasterio.open(path, "w", **prof)
        self._parts: list[np.ndarray] = []
        self._buffered = 0
        self._row = 0

    @property
    def dataset(self):
        return self._ds

    def push(self, rows: np.ndarray) -> None:
        self._parts.append(rows)
        self._buffered += rows.shape[1]
        if self._buffered >= BLOCK:
            self._flush(self._buffered // BLOCK * BLOCK)

    def _flush(self, n: int) -> None:
        data = np.concatenate(self._parts, axis=1)
        self._ds.write(data[:, :n], window=Window(0, self._row, data.shape[2], n))
        self._row += n
        rest = data[:, n:]
        self._parts, self._buffered = ([rest] if rest.shape[1] else []), rest.shape[1]

    def close(self) -> None:
        if self._buffered:
            self._flush(self._buffered)
        self._ds.close()


def overview_factors(height: int, width: int) -> list[int]:
    """Powers of two down to about one block on the longer side (none for a raster of a block or less)."""
    factors, side = [], max(height, width)
    while side // 2 ** (len(factors) + 1) >= BLOCK // 2:
        factors.append(2 ** (len(factors) + 1))
    return factors


def add_overviews(path: Path, resampling: Resampling = Resampling.nearest) -> list[int]:
    """Internal overviews down to one block, streamed by GDAL: what makes the output a pyramidal TIFF and lets a
    GIS show a large prediction zoomed out without reading every pixel. Returns the factors built."""
    with rasterio.open(path, "r+") as ds:
        factors = overview_factors(ds.height, ds.width)
        if factors:
            ds.build_overviews(factors, resampling)
    return factors


def class_colours(n: int) -> list[tuple[int, int, int]]:
    """RGB of classes 0..n-1 (PALETTE, repeated past 10 classes)."""
    return [tuple(int(PALETTE[k % len(PALETTE)][i : i + 2], 16) for i in (1, 3, 5)) for k in range(n)]


def style_paths(path: Path) -> tuple[Path, Path]:
    """The side files of a class map: GDAL's `NAME.tif.aux.xml` and QGIS's `NAME.qml`."""
    path = Path(path)
    return path.with_name(path.name + ".aux.xml"), path.with_suffix(".qml")


def pam_xml(classes: list[str], colours: list[tuple[int, int, int]]) -> str:
    """GDAL PAM for band 1: category names (index = class id) and a thematic raster attribute table."""
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    names = ET.SubElement(band, "CategoryNames")
    for name in classes:
        ET.SubElement(names, "Category").text = name
    rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    # GDAL's GDALRATFieldType (0 integer, 2 string) and GDALRATFieldUsage (5 min-max, 2 name, 6-9 red/green/blue/alpha)
    fields = [("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8), ("Alpha", 0, 9)]
    for i, (name, kind, usage) in enumerate(fields):
        f = ET.SubElement(rat, "FieldDefn", index=str(i))
        ET.SubElement(f, "Name").text = name
        ET.SubElement(f, "Type").text = str(kind)
        ET.SubElement(f, "Usage").text = str(usage)
    for k, (name, rgb) in enumerate(zip(classes, colours)):
        row = ET.SubElement(rat, "Row", index=str(k))
        for value in (k, name, *rgb, 255):
            ET.SubElement(row, "F").text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def qml(classes: list[str], colours: list[tuple[int, int, int]]) -> str:
    """A QGIS layer style: band 1 drawn with a paletted renderer, one entry (value, colour, label) per class; 255 is
    the raster's nodata, which QGIS leaves transparent."""
    root = ET.Element("qgis", version="3.28.0", styleCategories="AllStyleCategories")
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(pipe, "rasterrenderer", type="paletted", band="1", opacity="1", alphaBand="-1", nodataColor="")
    ET.SubElement(renderer, "rasterTransparency")
    palette = ET.SubElement(renderer, "colorPalette")
    for k, (name, rgb) in enumerate(zip(classes, colours)):
        ET.SubElement(palette, "paletteEntry", value=str(k), color="#%02x%02x%02x" % rgb, alpha="255", label=name)
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "huesaturation", saturation="0", colorizeOn="0", colorizeRed="255", colorizeGreen="128",
                  colorizeBlue="128", colorizeStrength="100", grayscaleMode="0", invertColors="0")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root)
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(root, encoding="unicode") + "\n"


def write_class_styles(path: Path, classes: list[str], colours: list[tuple[int, int, int]] | None = None) -> list[Path]:
    """Write the class names of the map at `path` beside it (`style_paths`), each file atomically; return them.
    Call it before the map itself is renamed into place, so a finished map never lacks its names."""
    from eqseg.utils.atomic import atomic_file

    colours = colours or class_colours(len(classes))
    aux, style = style_paths(path)
    for target, text in ((aux, pam_xml(classes, colours)), (style, qml(classes, colours))):
        with atomic_file(target) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return [aux, style]
