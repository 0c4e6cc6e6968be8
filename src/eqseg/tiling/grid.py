"""Pure geometry of tiling and splitting: where tiles go, and which split each source or block belongs to.

Splits are spatial so that they cannot leak: either whole sources go to one split, or a scene is cut into square
blocks, each block goes to one split, and tiles are placed inside a single block (never across a block edge), so
no pixel is ever shared by tiles of two splits. Georeferenced sources may cover the same ground: sources (or
blocks) of different scenes whose footprints overlap form one unit, drawn into one split together.
"""

from __future__ import annotations

import numpy as np

from eqseg.errors import EqsegError

SPLITS = ("train", "val", "test")


def tile_origins(extent: int, size: int, overlap: int) -> list[int]:
    """Start offsets along one axis: stride size-overlap, covering [0, extent); the last tile is padded, not shifted
    (for passes that must see every pixel once; tiles and prediction windows use window_origins)."""
    stride = size - overlap
    origins = [0]
    while origins[-1] + size < extent:
        origins.append(origins[-1] + stride)
    return origins


def window_origins(extent: int, size: int, overlap: int) -> list[int]:
    """Start offsets of sliding windows along one axis: stride size-overlap, the last one shifted back to end exactly
    at `extent` (so no window reaches past the scene and none is padded); a single window at 0 when the extent is
    smaller than a window (that one alone is padded)."""
    if size <= overlap:
        raise EqsegError(f"window size ({size}) must be larger than its overlap ({overlap})")
    if extent <= size:
        return [0]
    return list(range(0, extent - size, size - overlap)) + [extent - size]


def tile_windows(row0: int, col0: int, height: int, width: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """(row, col) origins of the tiles covering the rectangle at (row0, col0) of the given height and width: the
    last tile of a row or column is shifted back inside the rectangle (window_origins), so tiles are padded only
    along a side shorter than a tile."""
    return [
        (row0 + r, col0 + c)
        for r in window_origins(height, size, overlap)
        for c in window_origins(width, size, overlap)
    ]


def split_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """How many of n items go to each split: largest remainder, and at least one for every split with a share > 0."""
    wanted = {s: fractions.get(s, 0.0) * n for s in SPLITS}
    counts = {s: int(np.floor(v)) for s, v in wanted.items()}
    for s in sorted(SPLITS, key=lambda s: wanted[s] - counts[s], reverse=True)[: n - sum(counts.values())]:
        counts[s] += 1
    for s in SPLITS:
        if fractions.get(s, 0.0) > 0 and counts[s] == 0:
            donor = max(SPLITS, key=lambda d: counts[d])
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[s] += 1
    return counts


def assign_splits(n: int, fractions: dict[str, float], seed: int) -> list[str]:
    """A split name for each of n items (sources or blocks), shuffled with the seed, in the items' order."""
    counts = split_counts(n, fractions)
    labels = [s for s in SPLITS for _ in range(counts[s])]
    order = np.random.default_rng(seed).permutation(n)
    out = [""] * n
    for item, label in zip(order, labels):
        out[int(item)] = label
    return out


def blocks(height: int, width: int, block_size: int) -> list[tuple[int, int, int, int]]:
    """(row, col, height, width) of square blocks covering a height x width scene (edge blocks are smaller)."""
    return [
        (r, c, min(block_size, height - r), min(block_size, width - c))
        for r in range(0, height, block_size)
        for c in range(0, width, block_size)
    ]


def check_block_size(block_size: int, tile_size: int, overlap: int, key: str) -> None:
    if block_size < tile_size + overlap:
        raise EqsegError(f"{key}: block_size ({block_size}) must be at least tile size + overlap ({tile_size + overlap})")


def overlap_groups(boxes: list[tuple[float, float, float, float]], owners: list[int]) -> list[int]:
    """A group id for each box (minx, miny, maxx, maxy): boxes of different owners whose interiors intersect are in
    one group, transitively (union-find); ids are numbered in order of first appearance, so that boxes overlapping
    nothing keep their own position's number. Boxes of one owner (blocks of one scene) are never joined by this."""
    from shapely import STRtree, box

    parent = list(range(len(boxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    geoms = [box(*b) for b in boxes]
    if len(set(owners)) > 1:
        tree = STRtree(geoms)
        for i, g in enumerate(geoms):
            for j in tree.query(g, predicate="intersects"):
                j = int(j)
                if owners[j] != owners[i] and g.intersection(geoms[j]).area > 0:  # touching edges share no ground
                    a, b = root(i), root(j)
                    parent[max(a, b)] = min(a, b)
    ids: dict[int, int] = {}
    return [ids.setdefault(root(i), len(ids)) for i in range(len(boxes))]


def owned_masks(rows: np.ndarray, cols: np.ndarray, heights: np.ndarray, widths: np.ndarray, size: int,
                which: np.ndarray | None = None) -> np.ndarray:
    """(len(which), size, size) bool: the pixels each tile `which` (default: all) of one source *owns*, so that every pixel covered by the tiles is
    owned by exactly one of them and a score over tiles counts it once.

    Tile k covers the pixels [row, row + height) x [col, col + width) of the source (its in-extent part; `size`
    with padding). A pixel belongs to the covering tile whose window centre is nearest (Euclidean), ties to the
    lower index (tiles are given in reading order). On a full grid of windows this cuts every overlap at its middle,
    so each tile owns a rectangle; where a tile of the grid was dropped (too little valid area), its neighbours
    share its pixels between them by the same rule. Distances are computed on doubled integer coordinates: exact."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    heights, widths = np.asarray(heights, np.int64), np.asarray(widths, np.int64)
    S = int(size)
    which = np.arange(len(rows)) if which is None else np.asarray(which, np.int64)
    out = np.zeros((len(which), S, S), dtype=bool)
    axis = (2 * np.arange(S, dtype=np.int64) + 1 - S) ** 2  # squared doubled distance to the centre, along one axis
    by_row = np.argsort(rows, kind="stable")  # neighbours are looked up in the band of rows within a tile
    sorted_rows = rows[by_row]
    for i, k in enumerate(which):
        r, c, h, w = rows[k], cols[k], heights[k], widths[k]
        band = by_row[np.searchsorted(sorted_rows, r - S + 1) : np.searchsorted(sorted_rows, r + S)]
        near = band[(np.abs(cols[band] - c) < S) & (band != k)]
        if not near.size:  # no other tile within reach (a grid without overlap): the tile owns all it covers
            out[i, :h, :w] = True
            continue
        own = axis[:h, None] + axis[None, :w]
        keep = np.ones((h, w), dtype=bool)
        for j in near:
            # the part of tile j's in-extent area inside tile k's, in k's coordinates
            y0, y1 = max(rows[j] - r, 0), min(rows[j] + heights[j] - r, h)
            x0, x1 = max(cols[j] - c, 0), min(cols[j] + widths[j] - c, w)
            if y0 >= y1 or x0 >= x1:
                continue
            dy, dx = r - rows[j], c - cols[j]  # k's local coordinates -> j's
            other = axis[y0 + dy : y1 + dy, None] + axis[None, x0 + dx : x1 + dx]
            mine = own[y0:y1, x0:x1]
            keep[y0:y1, x0:x1] &= (mine < other) if j < k else (mine <= other)
        out[i, :h, :w] = keep
    return out
