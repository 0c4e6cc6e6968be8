"""Vector labels of a GeoTIFF scene: read (any format GDAL/pyogrio reads), checked, repaired and reprojected to the
raster's CRS as (geometry, class id) pairs, which eqseg.tiling.geotiff rasterises strip by strip.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.errors import RasterioIOError
from shapely.geometry import box

from eqseg.errors import EqsegError
from eqseg.tiling.protocol import require_file


def load_vector_labels(
    path: Path, raster_path: Path, raster_crs, raster_bounds, class_field: str | None,
    class_values: dict[str, int] | None, num_classes: int, layer: str | None = None,
) -> list:
    """Read vector labels, reproject them to the raster's CRS, and return (geometry, class id) pairs."""
    import geopandas as gpd

    require_file(path, "vector labels")
    try:
        gdf = gpd.read_file(path, layer=layer) if layer else gpd.read_file(path)
    except Exception as err:  # pyogrio raises several types for unreadable files
        raise EqsegError(f"{path}: cannot read vector labels ({str(err).splitlines()[0]})") from None
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
    if gdf.empty:
        raise EqsegError(f"{path}: the label file has no features (no geometries), so it labels nothing on {raster_path.name}")
    if gdf.crs is None:
        raise EqsegError(f"{path}: vector labels have no CRS, so they cannot be placed on {raster_path.name}; set one (e.g. ogr2ogr -a_srs)")
    if raster_crs is None:
        raise EqsegError(_no_georeferencing(raster_path, path))
    gdf = _repair_invalid(gdf, path)
    if class_field is None:
        ids = np.ones(len(gdf), dtype=int)
    else:
        if class_field not in gdf.columns:
            fields = [c for c in gdf.columns if c != gdf.geometry.name]
            shown = f"{fields[:12]} and {len(fields) - 12} more" if len(fields) > 12 else f"{fields}"
            raise EqsegError(f"{path}: unknown class field {class_field!r} (fields: {shown})")
        values = gdf[class_field]
        if class_values is not None:
            unknown = sorted({str(v) for v in values} - set(class_values))
            if unknown:
                raise EqsegError(f"{path}: values {unknown} of field {class_field!r} are not in class_values")
            ids = np.array([class_values[str(v)] for v in values], dtype=int)
        else:
            try:
                ids = values.astype(int).to_numpy()
            except (TypeError, ValueError):
                raise EqsegError(f"{path}: field {class_field!r} is not numeric: give class_values to map its values to class ids") from None
    bad = sorted({int(i) for i in ids if not 0 <= i < num_classes})
    if bad:
        raise EqsegError(f"{path}: class ids {bad} from the labels are outside 0..{num_classes - 1} (classes)")
    gdf = gdf.to_crs(raster_crs)
    if not gdf.intersects(box(*raster_bounds)).any():
        raise EqsegError(f"{path}: labels do not overlap the raster {raster_path.name} (after reprojection to its CRS)")
    return list(zip(gdf.geometry.to_numpy(), ids.tolist()))


def _no_georeferencing(raster_path: Path, labels_path: Path) -> str:
    """The message for a raster without a CRS: name the format GDAL found when it is not a GeoTIFF."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(raster_path) as ds:
                driver = ds.driver
    except RasterioIOError:
        driver = None
    if driver and driver != "GTiff":
        return (f"{raster_path}: not a GeoTIFF (GDAL reads it as {driver}) and has no georeferencing, so vector labels "
                f"from {labels_path.name} cannot be placed on it")
    return (f"{raster_path}: GeoTIFF without a CRS (no georeferencing), so vector labels from {labels_path.name} cannot "
            "be placed on it; set one (e.g. gdal_edit.py -a_srs EPSG:...)")


def _repair_invalid(gdf, path: Path):
    """Invalid geometries (self-intersecting polygons...) repaired with shapely.make_valid, keeping their polygonal
    parts; one warning says how many. Parts that collapse to nothing are dropped."""
    import logging

    import geopandas as gpd

    invalid = ~gdf.geometry.is_valid.to_numpy()
    if not invalid.any():
        return gdf
    geoms = gdf.geometry.to_numpy().copy()
    geoms[invalid] = shapely.make_valid(geoms[invalid], method="structure", keep_collapsed=False)
    gdf = gdf.copy()
    gdf[gdf.geometry.name] = gpd.GeoSeries(geoms, index=gdf.index, crs=gdf.crs)
    n = int(invalid.sum())
    logging.getLogger(__name__).warning("%s: repaired %d invalid geometr%s (e.g. self-intersecting polygons) with "
                                        "shapely.make_valid", path, n, "y" if n == 1 else "ies")
    return gdf[~gdf.geometry.is_empty]
