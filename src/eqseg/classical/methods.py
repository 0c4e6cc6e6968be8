"""The five classical segmentation baselines. Each has `fit(images, masks, classes, seed=0, **params) -> state`
(JSON-able: plain lists, ints, floats, strings, None) and `predict(state, image) -> uint8 class map`.

`seed` is the grid cell's seed, not a model option: it drives every random choice of a fit (kmeans: the pixel sample
and the k-means++ initialisation; felzenszwalb and split_merge: the k-means++ initialisation of the region rule), so
the seeds of a cell are different fits. otsu and watershed have no random choice: their fit ignores the seed, and
the seeds of their cells differ only where the seed picks the train tiles (a label budget below 100 %, or more
train tiles than `max_fit_tiles`).

What is fitted, always on the train split only (never on the image being scored):

* otsu (deterministic): one standardised band of the image (or the mean of the bands) is thresholded at Otsu's
  threshold; which band, and the class of each side (the polarity: are nuclei the dark side?), are fitted on train
  (the band whose fitted sides score the best train macro IoU). With normalise: image the threshold is each image's
  own Otsu threshold; with normalise: train it is Otsu's threshold of the pooled train pixels, fixed.
* kmeans: k-means (k-means++, seeded) of the per-pixel standardised bands on a seeded sample of train pixels; each
  cluster gets a class, fitted on train (`common.fit_mapping`).
* watershed (deterministic): Otsu foreground (band, threshold and side from the Otsu fit: the side given the rarer
  class), opened and cleaned of components smaller than `min_size`; markers are the maxima of its distance transform
  (one per connected plateau, at least `min_distance` apart) plus one background marker on everything farther than
  `bg_margin` pixels from the foreground; flooding the Sobel gradient of the band from them gives objects and
  background, whose classes are fitted on train. `watershed_instances` returns the objects as instances (for object
  F1 / AJI).
* felzenszwalb: Felzenszwalb-Huttenlocher graph segments of the standardised bands; each segment is labelled by a
  fitted rule: its mean feature's nearest k-means centre (centres fitted on train segments, seeded k-means++), the
  centre's class fitted on train pixels.
* split_merge: quadtree split of the standardised image while a block's largest band deviation exceeds
  `split_threshold` (down to `min_block` pixels), then hierarchical merging of the region adjacency graph
  (`skimage.graph.merge_hierarchical`, mean-colour distance below `merge_threshold`), then the same region rule as
  felzenszwalb.

Bands are standardised (zero mean, unit deviation) per image by default (`normalise: image`), so the methods work
for uint8 RGB and uint16 panchromatic alike and thresholds are in band standard deviations; `normalise: train`
standardises with the band statistics of the train images instead (stored in the state), which suits tiles that
hold a single class. Defaults were chosen on CPM-15 images 04 and 05 with fits on 01-03 (see the report of the
change), never on the images the tests score.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from skimage import graph
from skimage.feature import peak_local_max
from skimage.filters import sobel, threshold_otsu
from skimage.segmentation import felzenszwalb as skimage_felzenszwalb
from skimage.segmentation import watershed as skimage_watershed

from eqseg.classical.common import (
    IGNORE, _macro_iou, band_stats, check_image, check_training, contingency, features, fit_kmeans, fit_mapping, nearest,
    region_means,
)
from eqseg.errors import EqsegError
from eqseg.utils.checks import require_choice, require_float, require_int

MAX_SAMPLES = 20_000  # train pixels (per image) that k-means sees
COMMON = {"normalise": (("image", "train"), None, "image")}


def _params(where: str, spec: dict, given: dict) -> dict:
    """Defaults from spec {name: (kind, low, default)} overridden by given; kind int, float or a tuple of choices."""
    spec = {**spec, **COMMON}
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise EqsegError(f"{where}: unknown option {unknown[0]!r} (allowed: {', '.join(spec)})")
    out = {}
    for name, (kind, low, default) in spec.items():
        value = given.get(name, default)
        if isinstance(kind, tuple):
            out[name] = require_choice(where, name, value, kind)
        elif kind is int:
            out[name] = require_int(where, name, value, low)
        else:
            out[name] = require_float(where, name, value, low)
    return out


def _seed(method: str, seed) -> np.random.Generator:
    """The random generator of a fit, from the cell's seed (a non-negative int)."""
    return np.random.default_rng(require_int(f"classical.{method}", "seed", seed, 0))


def _prepare(method: str, images, masks, classes, spec: dict, params: dict):
    """Checked (image, mask) pairs, options, and the fixed band statistics (None for normalise: image)."""
    where = f"classical.{method}"
    data = check_training(images, masks, classes, where)
    bands = {im.shape[0] for im, _ in data}
    if len(bands) != 1:
        raise EqsegError(f"{where}: train images differ in band count {sorted(bands)}")
    params = _params(where, spec, params)
    norm = band_stats([im for im, _ in data]) if params["normalise"] == "train" else None
    return data, params, norm


def _state(method: str, classes, params: dict, data, norm, **fitted) -> dict:
    return {"method": method, "classes": list(classes), "params": params, "bands": int(data[0][0].shape[0]),
            "norm": norm, **fitted}


def _checked(state: dict, method: str, image) -> np.ndarray:
    """The image, after checking that the state belongs to `method` and was fitted on as many bands."""
    if not isinstance(state, dict) or state.get("method") != method:
        got = state.get("method") if isinstance(state, dict) else type(state).__name__
        raise EqsegError(f"classical.{method}: state was fitted for {got!r}")
    image = check_image(image, f"classical.{method}")
    if image.shape[0] != state["bands"]:
        raise EqsegError(f"classical.{method}: image has {image.shape[0]} bands, fitted on {state['bands']}")
    return image


def _lookup(mapping, groups: np.ndarray) -> np.ndarray:
    return np.asarray(mapping, dtype=np.uint8)[groups]


# ------------------------------------------------------------------------------------------------------------ otsu
def _channel(image: np.ndarray, band: int, norm) -> np.ndarray:
    """The standardised band `band`, or the mean of all standardised bands for band = -1."""
    feat = features(image, norm)
    return feat.mean(axis=-1) if band < 0 else feat[..., band]


def _otsu(values: np.ndarray) -> float | None:
    return None if np.ptp(values) == 0 else float(threshold_otsu(values))


def _otsu_sides(image: np.ndarray, band: int, norm, threshold: float | None) -> np.ndarray:
    """0 at or below the threshold, 1 above; the image's own Otsu threshold when `threshold` is None."""
    g = _channel(image, band, norm)
    t = _otsu(g) if threshold is None else threshold
    return np.zeros(g.shape, dtype=np.int64) if t is None else (g > t).astype(np.int64)


def _fit_otsu(data, classes, norm) -> dict:
    """{"band", "threshold" (None: per image), "side_classes"} of the band (or band mean, -1) best on train."""
    bands = [-1] + (list(range(data[0][0].shape[0])) if data[0][0].shape[0] > 1 else [])
    best = None
    for band in bands:
        threshold = None
        if norm is not None:  # one fixed threshold: Otsu's on the pooled train pixels
            pooled = np.concatenate([_channel(im, band, norm).ravel() for im, _ in data])
            threshold = _otsu(pooled)
            threshold = float(pooled.min()) if threshold is None else threshold
        cont = sum(contingency(_otsu_sides(im, band, norm, threshold), m, 2, len(classes)) for im, m in data)
        mapping = fit_mapping(cont)
        score = _macro_iou(cont, np.asarray(mapping))
        if best is None or score > best[0] + 1e-12:
            best = (score, {"band": band, "threshold": threshold, "side_classes": mapping})
    return best[1]


def otsu_fit(images, masks, classes, seed: int = 0, **params) -> dict:
    """Deterministic: `seed` is accepted like every method's and changes nothing."""
    _seed("otsu", seed)
    data, params, norm = _prepare("otsu", images, masks, classes, {}, params)
    return _state("otsu", classes, params, data, norm, **_fit_otsu(data, classes, norm))


def otsu_predict(state: dict, image) -> np.ndarray:
    image = _checked(state, "otsu", image)
    return _lookup(state["side_classes"], _otsu_sides(image, state["band"], state["norm"], state["threshold"]))


# ---------------------------------------------------------------------------------------------------------- kmeans
KMEANS = {"k": (int, 2, 8)}


def kmeans_fit(images, masks, classes, seed: int = 0, **params) -> dict:
    """`seed` (the cell's) draws the pixel sample and the k-means++ initialisation."""
    rng = _seed("kmeans", seed)
    data, params, norm = _prepare("kmeans", images, masks, classes, KMEANS, params)
    feats = [features(im, norm).reshape(-1, im.shape[0]) for im, _ in data]
    sample = np.concatenate([f[rng.choice(f.shape[0], min(MAX_SAMPLES, f.shape[0]), replace=False)] for f in feats])
    # a fresh generator of the same seed for the initialisation (as before the seed was the cell's: seed 0 is the
    # fit this baseline always was)
    centres = fit_kmeans(sample, params["k"], _seed("kmeans", seed), "classical.kmeans")
    cont = sum(contingency(nearest(f, centres), m.ravel(), params["k"], len(classes)) for f, (_, m) in zip(feats, data))
    return _state("kmeans", classes, params, data, norm, seed=int(seed), centres=centres.tolist(),
                  cluster_classes=fit_mapping(cont))


def kmeans_predict(state: dict, image) -> np.ndarray:
    image = _checked(state, "kmeans", image)
    codes = nearest(features(image, state["norm"]).reshape(-1, image.shape[0]), state["centres"])
    return _lookup(state["cluster_classes"], codes).reshape(image.shape[1:])


# ------------------------------------------------------------------------------------------------------- watershed
WATERSHED = {"min_distance": (int, 1, 3), "min_size": (int, 0, 10), "bg_margin": (int, 1, 2)}


def _watershed_regions(image: np.ndarray, state: dict) -> np.ndarray:
    """Watershed labels: 1 = background, 2.. = objects (state: band, threshold, object_side, norm, params)."""
    p, norm = state["params"], state["norm"]
    fg = _otsu_sides(image, state["band"], norm, state["threshold"]) == state["object_side"]
    fg = ndi.binary_opening(fg, structure=ndi.generate_binary_structure(2, 1))
    comp, n = ndi.label(fg)
    if n and p["min_size"] > 0:
        fg &= np.bincount(comp.ravel())[comp] >= p["min_size"]
    markers = np.zeros(fg.shape, dtype=np.int32)
    if fg.any():
        dist = ndi.distance_transform_edt(fg)
        peaks = peak_local_max(dist, min_distance=p["min_distance"], threshold_abs=0.5, exclude_border=False)
        peak_mask = np.zeros(fg.shape, dtype=bool)
        peak_mask[tuple(peaks.T)] = True
        peak_labels, _ = ndi.label(peak_mask, structure=np.ones((3, 3)))
        markers = np.where(peak_mask, peak_labels + 1, 0).astype(np.int32)
    markers[~ndi.binary_dilation(fg, iterations=p["bg_margin"])] = 1  # no foreground: all background
    return skimage_watershed(sobel(_channel(image, state["band"], norm)), markers)


def watershed_fit(images, masks, classes, seed: int = 0, **params) -> dict:
    """Band, threshold and object side from the Otsu fit (objects: the side whose class is rarer on train; the
    smaller side if both sides map to one class), then the class of object and of background regions.
    Deterministic: `seed` is accepted like every method's and changes nothing."""
    _seed("watershed", seed)
    data, params, norm = _prepare("watershed", images, masks, classes, WATERSHED, params)
    otsu = _fit_otsu(data, classes, norm)
    if otsu["side_classes"][0] != otsu["side_classes"][1]:
        freq = sum(np.bincount(m[m != IGNORE].ravel(), minlength=len(classes)) for _, m in data)
        object_side = int(np.argmin([freq[c] for c in otsu["side_classes"]]))
    else:
        sizes = sum(np.bincount(_otsu_sides(im, otsu["band"], norm, otsu["threshold"]).ravel(), minlength=2)
                    for im, _ in data)
        object_side = int(np.argmin(sizes))
    state = _state("watershed", classes, params, data, norm, band=otsu["band"], threshold=otsu["threshold"],
                   object_side=object_side)
    cont = sum(contingency(np.minimum(_watershed_regions(im, state), 2) - 1, m, 2, len(classes)) for im, m in data)
    state["region_classes"] = fit_mapping(cont)
    return state


def watershed_instances(state: dict, image) -> np.ndarray:
    """Objects of the watershed as an instance map (0 = background, 1.. = objects), int32."""
    regions = _watershed_regions(_checked(state, "watershed", image), state)
    return np.where(regions >= 2, regions - 1, 0).astype(np.int32)


def watershed_predict(state: dict, image) -> np.ndarray:
    regions = _watershed_regions(_checked(state, "watershed", image), state)
    return _lookup(state["region_classes"], np.minimum(regions, 2) - 1)


# --------------------------------------------------------------------------------- region rule (segments -> class)
def _fit_region_rule(segmented, classes, k: int, rng: np.random.Generator, where: str) -> dict:
    """segmented: list of (regions (H, W) 0..R-1, feat (H, W, C), mask). Centres of region means (k-means++ drawn
    with rng), class per centre."""
    means = [region_means(r, f)[0] for r, f, _ in segmented]
    centres = fit_kmeans(np.concatenate(means), k, rng, where)
    cont = sum(contingency(nearest(mu, centres)[r], m, k, len(classes)) for mu, (r, _, m) in zip(means, segmented))
    return {"centres": centres.tolist(), "cluster_classes": fit_mapping(cont)}


def _apply_region_rule(state: dict, regions: np.ndarray, feat: np.ndarray) -> np.ndarray:
    mu, _ = region_means(regions, feat)
    return _lookup(state["cluster_classes"], nearest(mu, state["centres"])[regions])


# ---------------------------------------------------------------------------------------------------- felzenszwalb
FELZENSZWALB = {"scale": (float, 0.0, 100.0), "sigma": (float, 0.0, 0.8), "min_size": (int, 1, 20),
                "k": (int, 2, 6)}


def _felzenszwalb_regions(image: np.ndarray, p: dict, norm) -> tuple[np.ndarray, np.ndarray]:
    feat = features(image, norm)
    regions = skimage_felzenszwalb(feat, scale=p["scale"], sigma=p["sigma"], min_size=p["min_size"], channel_axis=-1)
    return regions, feat


def felzenszwalb_fit(images, masks, classes, seed: int = 0, **params) -> dict:
    """The segments are deterministic; `seed` (the cell's) draws the k-means++ initialisation of the region rule."""
    rng = _seed("felzenszwalb", seed)
    data, params, norm = _prepare("felzenszwalb", images, masks, classes, FELZENSZWALB, params)
    segmented = [(*_felzenszwalb_regions(im, params, norm), m) for im, m in data]
    rule = _fit_region_rule(segmented, classes, params["k"], rng, "classical.felzenszwalb")
    return _state("felzenszwalb", classes, params, data, norm, seed=int(seed), **rule)


def felzenszwalb_predict(state: dict, image) -> np.ndarray:
    image = _checked(state, "felzenszwalb", image)
    return _apply_region_rule(state, *_felzenszwalb_regions(image, state["params"], state["norm"]))


# ------------------------------------------------------------------------------------------------------ split_merge
SPLIT_MERGE = {"split_threshold": (float, 0.0, 0.75), "min_block": (int, 1, 8), "merge_threshold": (float, 0.0, 0.5),
               "k": (int, 2, 6)}


def quadtree(feat: np.ndarray, threshold: float, min_block: int) -> np.ndarray:
    """Quadtree split (Horowitz & Pavlidis): a block splits into four while its largest band standard deviation
    exceeds `threshold` and both halves stay >= min_block pixels; returns leaf labels 0..L-1."""
    h, w, c = feat.shape
    # integral images of x and x² give any block's deviation in O(1)
    s1 = np.zeros((h + 1, w + 1, c))
    s2 = np.zeros((h + 1, w + 1, c))
    s1[1:, 1:] = feat.astype(np.float64).cumsum(0).cumsum(1)
    s2[1:, 1:] = (feat.astype(np.float64) ** 2).cumsum(0).cumsum(1)
    labels = np.zeros((h, w), dtype=np.int64)
    n, stack = 0, [(0, 0, h, w)]
    while stack:
        r, q, bh, bw = stack.pop()
        area = bh * bw
        t1 = s1[r + bh, q + bw] - s1[r, q + bw] - s1[r + bh, q] + s1[r, q]
        t2 = s2[r + bh, q + bw] - s2[r, q + bw] - s2[r + bh, q] + s2[r, q]
        std = np.sqrt(np.maximum(t2 / area - (t1 / area) ** 2, 0.0)).max()
        if std > threshold and bh >= 2 * min_block and bw >= 2 * min_block:
            h2, w2 = bh // 2, bw // 2
            stack += [(r, q, h2, w2), (r, q + w2, h2, bw - w2),
                      (r + h2, q, bh - h2, w2), (r + h2, q + w2, bh - h2, bw - w2)]
        else:
            labels[r:r + bh, q:q + bw] = n
            n += 1
    return labels


def region_adjacency_graph(labels: np.ndarray, feat: np.ndarray) -> graph.RAG:
    """`skimage.graph.RAG` of 4-adjacent regions with the node data `merge_hierarchical` expects ('labels',
    'pixel count', 'total color', 'mean color') and mean-colour distance weights; built with numpy (RAG(labels)
    and rag_mean_color visit every pixel in Python)."""
    n = int(labels.max()) + 1
    means, counts = region_means(labels, feat)
    pairs = np.concatenate([
        np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], 1),
        np.stack([labels[:-1].ravel(), labels[1:].ravel()], 1),
    ])
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    rag = graph.RAG()
    rag.add_nodes_from((i, {"labels": [i], "pixel count": float(counts[i]),
                            "total color": (means[i] * counts[i]).tolist(), "mean color": means[i].tolist()})
                       for i in range(n))
    weights = np.linalg.norm(means[pairs[:, 0]] - means[pairs[:, 1]], axis=1)
    rag.add_edges_from((int(a), int(b), {"weight": float(wt)}) for (a, b), wt in zip(pairs, weights))
    rag.max_id = n - 1
    return rag


def _merge_mean_color(rag, src, dst):
    node, other = rag.nodes[dst], rag.nodes[src]
    node["total color"] = [x + y for x, y in zip(node["total color"], other["total color"])]
    node["pixel count"] = node["pixel count"] + other["pixel count"]
    node["mean color"] = [x / node["pixel count"] for x in node["total color"]]


def _weight_mean_color(rag, src, dst, n):
    a, b = rag.nodes[dst]["mean color"], rag.nodes[n]["mean color"]
    return {"weight": math.sqrt(sum((x - y) * (x - y) for x, y in zip(a, b)))}  # plain floats: called per edge


def _split_merge_regions(image: np.ndarray, p: dict, norm) -> tuple[np.ndarray, np.ndarray]:
    feat = features(image, norm)
    leaves = quadtree(feat, p["split_threshold"], p["min_block"])
    rag = region_adjacency_graph(leaves, feat)
    merged = graph.merge_hierarchical(leaves, rag, thresh=p["merge_threshold"], rag_copy=False, in_place_merge=True,
                                      merge_func=_merge_mean_color, weight_func=_weight_mean_color)
    return merged, feat


def split_merge_fit(images, masks, classes, seed: int = 0, **params) -> dict:
    """The split and the merge are deterministic; `seed` (the cell's) draws the k-means++ initialisation of the
    region rule."""
    rng = _seed("split_merge", seed)
    data, params, norm = _prepare("split_merge", images, masks, classes, SPLIT_MERGE, params)
    segmented = [(*_split_merge_regions(im, params, norm), m) for im, m in data]
    rule = _fit_region_rule(segmented, classes, params["k"], rng, "classical.split_merge")
    return _state("split_merge", classes, params, data, norm, seed=int(seed), **rule)


def split_merge_predict(state: dict, image) -> np.ndarray:
    image = _checked(state, "split_merge", image)
    return _apply_region_rule(state, *_split_merge_regions(image, state["params"], state["norm"]))
