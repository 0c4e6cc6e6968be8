"""Pure geometry of tiling and splitting: where tiles go, and which split each source or block belongs to.

Splits are spatial so that they cannot leak: either whole sources go to one split, or a scene is cut into square
blocks, each block goes to one split, and tiles are placed inside a single block (never across a block edge), so
no pixel is ever shared by tiles of two splits.
"""

from __future__ import annotations

import numpy as np

from eqseg.errors import EqsegError

SPLITS = ("train", "val", "test")


def tile_origins(extent: int, size: int, overlap: int) -> list[int]:
    """Start offsets along one axis: stride size-overlap, covering [0, extent); the last tile is padded, not shifted."""
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
    """(row, col) origins of the tiles covering the rectangle at (row0, col0) of the given height and width."""
    return [
        (row0 + r, col0 + c)
        for r in tile_origins(height, size, overlap)
        for c in tile_origins(width, size, overlap)
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
