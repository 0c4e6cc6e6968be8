"""Average precision, Dice, object F1 and AJI against hand-computed small cases (absent classes included)."""

import math
import re
import warnings

import numpy as np
import pytest
import torch

from eqseg.errors import EqsegError
from eqseg.metrics import confusion
from eqseg.metrics.objects import ObjectScores, aji_counts, instances_from_classes, match_objects, overlap, overlap_pairs
from eqseg.metrics.ranking import HistogramAP, average_precision_exact, dice_scores


def test_exact_ap_hand_cases():
    # thresholds 0.9: P=1 R=.5; 0.8: P=.5 R=.5; 0.7: P=2/3 R=1; 0.6: no recall gain -> .5*1 + .5*2/3
    assert average_precision_exact([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # a tie is one threshold: {0.5, 0.5}: P=.5 R=.5; then 0.2: P=2/3 R=1
    assert average_precision_exact([0.5, 0.5, 0.2], [1, 0, 1]) == pytest.approx(0.25 + 0.5 * 2 / 3)
    assert average_precision_exact([0.1, 0.2], [0, 0]) != average_precision_exact([0.1, 0.2], [0, 0])  # NaN
    assert average_precision_exact([0.3, 0.2, 0.1], [1, 1, 0]) == 1.0


def test_exact_ap_matches_scikit_learn():
    from sklearn.metrics import average_precision_score  # declared in the test extras: this test cannot skip

    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.3
    s = np.round(rng.random(500) + 0.3 * y, 2)  # rounding makes ties
    assert average_precision_exact(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_histogram_ap_hand_case_with_absent_class():
    # 4 pixels, 3 classes; class 2 never true -> NaN and left out of the macro mean
    probs = np.array([[0.9, 0.05, 0.05], [0.8, 0.15, 0.05], [0.7, 0.2, 0.1], [0.6, 0.3, 0.1]])
    target = np.array([0, 1, 0, 1])
    acc = HistogramAP(3, bins=1000, spacing="linear")
    acc.update(probs[:2], target[:2])  # two batches
    acc.update(torch.tensor(probs[2:]), torch.tensor(target[2:]))
    out = acc.compute(["a", "b", "c"])
    ap0 = 0.5 + 0.5 * 2 / 3  # as the exact case above
    ap1 = 0.5 * 1 + 0.5 * 2 / 3  # class-1 scores .3(b) .2(a) .15(b) .05(a): P=1 R=.5, then P=2/3 R=1
    assert out["ap_a"] == pytest.approx(ap0)
    assert out["ap_b"] == pytest.approx(ap1)
    assert math.isnan(out["ap_c"])
    assert out["ap_macro"] == pytest.approx((ap0 + ap1) / 2)


def test_histogram_ap_ignores_255_and_images_layout():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([1, 1], size=(2, 8, 8)).transpose(0, 3, 1, 2)  # (B, C, H, W)
    target = rng.integers(0, 2, size=(2, 8, 8))
    target[0, :4] = 255
    acc = HistogramAP(2, bins=1000)
    acc.update(probs, target)
    keep = target != 255
    exact = average_precision_exact(probs[:, 1][keep], target[keep] == 1)
    assert acc.per_class()[1] == pytest.approx(exact, abs=5e-3)
    assert acc.pos.sum() + acc.neg.sum() == 2 * keep.sum()


@pytest.mark.parametrize("saturated", [False, True])
def test_histogram_ap_within_tolerance_of_exact(saturated):
    rng = np.random.default_rng(2)
    n = 200_000
    y = rng.random(n) < 0.2
    z = rng.normal(1.5 * y - 0.5, 1.0) * (8.0 if saturated else 1.0)  # saturated: most p within 1e-3 of 0 or 1
    p1 = 1 / (1 + np.exp(-z))
    probs = np.stack([1 - p1, p1], axis=1)
    acc = HistogramAP(2)  # default 1000 logit bins
    for chunk in np.array_split(np.arange(n), 7):
        acc.update(probs[chunk], y[chunk].astype(np.int64))
    for c, pos in ((0, ~y), (1, y)):
        assert abs(acc.per_class()[c] - average_precision_exact(probs[:, c], pos)) < 1e-3


def test_histogram_ap_rejects_bad_shapes():
    with pytest.raises(EqsegError):
        HistogramAP(2).update(np.zeros((4, 3)), np.zeros(4, dtype=int))
    with pytest.raises(EqsegError):
        HistogramAP(2).update(np.zeros((4, 2)), np.full(4, 7))
    with pytest.raises(EqsegError, match="logits"):
        HistogramAP(2).update(np.array([[3.0, -2.0]]), np.array([0]))


def test_dice_from_confusion_hand_case():
    cm = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    out = dice_scores(cm, ["bg", "fg", "other"])
    assert out["dice_bg"] == pytest.approx(6 / 9)
    assert out["dice_fg"] == pytest.approx(8 / 11)
    assert math.isnan(out["dice_other"])
    assert out["dice_macro"] == pytest.approx((6 / 9 + 8 / 11) / 2)
    # absent from truth but predicted: Dice 0, counted
    cm2 = confusion(np.array([0, 1, 2]), np.array([0, 1, 1]), 3)
    assert dice_scores(cm2, ["a", "b", "c"])["dice_c"] == 0.0


def _scene():
    true = np.zeros((8, 8), dtype=np.int32)
    true[0:2, 0:2] = 7  # 4 px (ids need not be consecutive)
    true[4:6, 4:8] = 3  # 8 px
    pred_cls = np.zeros((8, 8), dtype=np.uint8)
    pred_cls[0:2, 0:3] = 1  # A: 6 px, IoU 4/6 with the first object
    pred_cls[4:6, 4:6] = 1  # B: 4 px, IoU 4/8 = 0.5 with the second
    pred_cls[7, 0:2] = 1  # C: 2 px, no partner
    return true, pred_cls


def test_object_f1_and_aji_hand_case():
    true, pred_cls = _scene()
    pred = instances_from_classes(pred_cls, 1)
    assert pred.max() == 3
    assert match_objects(true, pred) == (2, 1, 0)  # IoU exactly 0.5 matches
    assert match_objects(true, pred, iou_threshold=0.6) == (1, 2, 1)
    assert aji_counts(true, pred) == (8, 16)  # C = 4 + 4, U = 6 + 8 + |C| 2
    acc = ObjectScores()
    acc.update(pred, true)
    out = acc.compute()
    assert (out["obj_tp"], out["obj_fp"], out["obj_fn"]) == (2, 1, 0)
    assert out["obj_precision"] == pytest.approx(2 / 3) and out["obj_recall"] == 1.0
    assert out["obj_f1"] == pytest.approx(0.8)
    assert out["aji"] == pytest.approx(0.5) and out["aji_pooled"] == pytest.approx(0.5)
    # the unmatched prediction lies in ignored pixels: dropped
    valid = np.ones((8, 8), bool)
    valid[7] = False
    assert match_objects(true, pred, valid=valid) == (2, 0, 0)


def test_merged_prediction_one_to_one_and_aji_penalty():
    true = np.zeros((4, 4), dtype=np.int32)
    true[0, 0:2], true[0, 2:4] = 1, 2
    pred = np.zeros((4, 4), dtype=np.int32)
    pred[0, 0:4] = 5  # one prediction covering both: IoU 0.5 with each, may match only one
    assert match_objects(true, pred) == (1, 0, 1)
    assert aji_counts(true, pred) == (4, 8)  # both truths pick it: C = 2 + 2, U = 4 + 4


def test_absent_objects_and_accumulation():
    empty = np.zeros((5, 5), dtype=np.int32)
    one = empty.copy()
    one[1:3, 1:3] = 1
    acc = ObjectScores()
    acc.update(empty, empty)  # nothing anywhere: no image counted for AJI
    out = acc.compute()
    assert math.isnan(out["obj_f1"]) and math.isnan(out["aji"]) and out["images"] == 0
    acc.update(one, empty)  # a false positive only: AJI 0
    acc.update(empty, one)  # a miss only: AJI 0
    acc.update(one, one)  # perfect
    out = acc.compute(prefix="nuclei_")
    assert (out["nuclei_obj_tp"], out["nuclei_obj_fp"], out["nuclei_obj_fn"]) == (1, 1, 1)
    assert out["nuclei_obj_f1"] == pytest.approx(0.5)
    assert out["nuclei_aji"] == pytest.approx(1 / 3) and out["nuclei_aji_pooled"] == pytest.approx(4 / 12)
    with pytest.raises(EqsegError):
        match_objects(empty, np.zeros((4, 4), dtype=np.int32))


# --------------------------------------------------------------------------------------------- brute-force reference
# Object F1 and AJI pooled over several images (as predict pools them over sources: F1 from the summed matches, AJI
# as summed intersections over summed unions) against a reference written here from the definitions: IoU of every
# pair of instances from boolean masks, the optimal one-to-one matching by scipy.optimize.linear_sum_assignment, and
# Kumar et al. 2017's AJI (each true object takes its prediction of largest IoU; predictions never taken add their
# area to the union).


def _ref_image(true_inst, pred_inst, valid=None, thr=0.5):
    """(TP, FP, FN, C, U) of one image, by brute force."""
    from scipy.optimize import linear_sum_assignment

    true_inst, pred_inst = np.asarray(true_inst), np.asarray(pred_inst)
    if valid is not None:
        true_inst, pred_inst = np.where(valid, true_inst, 0), np.where(valid, pred_inst, 0)
    T = [true_inst == i for i in np.unique(true_inst) if i != 0]
    P = [pred_inst == j for j in np.unique(pred_inst) if j != 0]
    inter = np.array([[np.sum(t & p) for p in P] for t in T], dtype=float).reshape(len(T), len(P))
    union = np.array([[np.sum(t | p) for p in P] for t in T], dtype=float).reshape(len(T), len(P))
    iou = inter / np.maximum(union, 1)
    tp = 0
    if T and P:
        rows, cols = linear_sum_assignment(iou, maximize=True)  # the assignment of largest total IoU
        tp = int(np.sum(iou[rows, cols] >= thr))
        # the largest number of pairs with IoU >= thr (a maximum-cardinality matching): the same count
        rows, cols = linear_sum_assignment((iou >= thr).astype(float), maximize=True)
        assert tp == int(np.sum(iou[rows, cols] >= thr))
    c = u = 0
    taken = set()
    for i, t in enumerate(T):
        if not P or inter[i].max() == 0:
            u += int(t.sum())  # no prediction touches it
            continue
        j = int(np.argmax(iou[i]))
        c, u = c + int(inter[i, j]), u + int(union[i, j])
        taken.add(j)
    u += sum(int(p.sum()) for j, p in enumerate(P) if j not in taken)
    return tp, len(P) - tp, len(T) - tp, c, u


def _random_instances(rng, shape=(24, 24), n=9, first_id=1, step=1):
    """Rectangles of random size and place, later ones over earlier ones (so objects may be cut in two or vanish)."""
    m = np.zeros(shape, dtype=np.int32)
    for k in range(n):
        h, w = rng.integers(2, 8, size=2)
        y, x = rng.integers(0, shape[0] - 1), rng.integers(0, shape[1] - 1)
        m[y : y + h, x : x + w] = first_id + k * step
    return m


def _random_prediction(rng, truth):
    """The truth shifted by up to a pixel, some objects dropped or merged, spurious objects added, ids renamed."""
    pred = np.roll(truth, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
    ids = [i for i in np.unique(pred) if i]
    for i in ids:
        r = rng.random()
        if r < 0.15:
            pred[pred == i] = 0
        elif r < 0.3 and len(ids) > 1:
            pred[pred == i] = rng.choice(ids)
    extra = _random_instances(rng, truth.shape, n=int(rng.integers(0, 4)), first_id=500)
    pred = np.where(extra > 0, extra, pred)
    renamed = np.zeros_like(pred)
    for new, old in zip(rng.permutation(np.arange(1000, 3000))[: len(np.unique(pred))], np.unique(pred)):
        if old:
            renamed[pred == old] = new
    return renamed


def _random_images(seed=0, n=8):
    rng = np.random.default_rng(seed)
    images = []
    for k in range(n):
        truth = _random_instances(rng, n=int(rng.integers(3, 12)), first_id=int(rng.integers(1, 50)), step=3)
        pred = _random_prediction(rng, truth)
        valid = None if k % 2 else rng.random(truth.shape) > 0.1
        images.append((truth, pred, valid))
    # one image with an IoU of exactly 0.5 (a match) and one object covering two truths (IoU 0.5 with each)
    truth = np.zeros((8, 8), dtype=np.int32)
    truth[0:2, 0:4], truth[4, 0:2], truth[4, 2:4] = 1, 2, 3
    pred = np.zeros((8, 8), dtype=np.int32)
    pred[0:2, 0:2], pred[4, 0:4] = 9, 4
    images.append((truth, pred, None))
    # AJI picks the prediction of largest IoU, not of largest intersection: 6 px of IoU 6/16 over 10 px of IoU 10/36
    truth = np.zeros((12, 12), dtype=np.int32)
    truth[0:2, 0:8] = 1
    pred = np.zeros((12, 12), dtype=np.int32)
    pred[0:2, 0:3], pred[0:6, 3:8] = 5, 6
    images.append((truth, pred, None))
    return images


def _pooled_reference(images):
    tp, fp, fn, c, u = np.sum([_ref_image(t, p, v) for t, p, v in images], axis=0)
    per_image = [ci / ui for *_, ci, ui in (_ref_image(t, p, v) for t, p, v in images) if ui > 0]
    return dict(tp=int(tp), fp=int(fp), fn=int(fn), f1=2 * tp / (2 * tp + fp + fn), aji_pooled=c / u, c=int(c), u=int(u),
                aji_mean=float(np.mean(per_image)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_object_scores_pooled_over_images_match_brute_force(seed):
    images = _random_images(seed)
    ref = _pooled_reference(images)
    acc = ObjectScores(0.5)
    for truth, pred, valid in images:
        assert match_objects(truth, pred, 0.5, valid) == _ref_image(truth, pred, valid)[:3]
        assert aji_counts(truth, pred, valid) == _ref_image(truth, pred, valid)[3:]
        acc.update(pred, truth, valid)
    out = acc.compute()
    assert (out["obj_tp"], out["obj_fp"], out["obj_fn"]) == (ref["tp"], ref["fp"], ref["fn"])
    assert out["obj_f1"] == pytest.approx(ref["f1"], abs=1e-12)
    assert out["obj_precision"] == pytest.approx(ref["tp"] / (ref["tp"] + ref["fp"]), abs=1e-12)
    assert out["obj_recall"] == pytest.approx(ref["tp"] / (ref["tp"] + ref["fn"]), abs=1e-12)
    assert (out["aji_c"], out["aji_u"]) == (ref["c"], ref["u"])
    assert out["aji_pooled"] == pytest.approx(ref["aji_pooled"], abs=1e-12)
    assert out["aji"] == pytest.approx(ref["aji_mean"], abs=1e-12)  # the per-image mean, reported beside it
    # the images differ enough that pooling and averaging per image disagree (so the test tells them apart)
    per_image_f1 = np.mean([2 * a / (2 * a + b + c) for a, b, c, *_ in (_ref_image(*im) for im in images)])
    assert abs(per_image_f1 - ref["f1"]) > 1e-3 and abs(ref["aji_mean"] - ref["aji_pooled"]) > 1e-3
    assert 0 < ref["tp"] and 0 < ref["fp"] and 0 < ref["fn"]


def test_predict_object_scores_pooled_over_sources_match_brute_force():
    """predict's object columns: per source, objects = connected components of each class (4-connected) of the
    stitched map and the labels, pixels labelled 255 left out; pooled over sources by pool_objects."""
    from skimage.measure import label

    from eqseg.predict.run import object_scores, pool_objects

    rng = np.random.default_rng(7)
    classes = ["background", "a", "b"]
    per_source, refs = [], {name: [] for name in classes[1:]}
    for _ in range(6):
        truth = np.zeros((20, 20), dtype=np.uint8)
        for k in range(8):
            h, w = rng.integers(2, 7, size=2)
            y, x = rng.integers(0, 19, size=2)
            truth[y : y + h, x : x + w] = rng.integers(1, 3)
        pred = np.roll(truth, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
        pred[rng.random(pred.shape) < 0.05] = rng.integers(0, 3)  # salt: small spurious objects and cut objects
        truth[rng.random(truth.shape) < 0.05] = 255  # unlabelled pixels
        per_source.append(object_scores(pred, truth, classes))
        for k, name in enumerate(classes[1:], start=1):
            valid = truth != 255
            refs[name].append((label(truth == k, connectivity=1), label(pred == k, connectivity=1), valid))
    pooled = pool_objects(per_source)
    assert set(pooled) == {"a", "b"}
    for name, images in refs.items():
        ref = _pooled_reference(images)
        got = pooled[name]
        assert (got["obj_tp"], got["obj_fp"], got["obj_fn"]) == (ref["tp"], ref["fp"], ref["fn"])
        assert got["obj_f1"] == pytest.approx(ref["f1"], abs=1e-12)
        assert got["aji_pooled"] == pytest.approx(ref["aji_pooled"], abs=1e-12)
        per_source_f1 = np.mean([s[name]["obj_f1"] for s in per_source])
        assert abs(per_source_f1 - ref["f1"]) > 1e-3  # pooling and averaging per source differ here


# --------------------------------------------------------------------------------- mutation testing (bench/README.md)
def test_exact_ap_of_8_bit_scores_and_0_255_masks_matches_scikit_learn():
    """Scores quantised to uint8 (0..255) and a binary mask stored as 0/255: the ranking and the positives are those
    of the values, not of their wrapped-around negatives or of 255 counted as 255 positives."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(2)
    y = rng.random(300) < 0.4
    s = np.clip(rng.normal(100 + 60 * y, 40), 0, 255).astype(np.uint8)
    mask = np.where(y, 255, 0).astype(np.uint8)
    assert average_precision_exact(s, mask) == pytest.approx(average_precision_score(y, s.astype(float)), abs=1e-12)
    # a single positive is a defined AP: the precision where it is found
    assert average_precision_exact([0.9, 0.8, 0.7], [0, 1, 0]) == pytest.approx(0.5)
    with pytest.raises(EqsegError, match=r"^average_precision_exact: scores \(3,\) and labels \(2,\) differ in size$"):
        average_precision_exact([0.1, 0.2, 0.3], [0, 1])


def test_dice_in_float64_quiet_for_absent_classes_and_shape_checked():
    import warnings

    cm = np.array([[7, 2, 0], [1, 5, 0], [0, 0, 0]], dtype=np.float32)  # class 2 absent from truth and prediction
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = dice_scores(cm, ["a", "b", "c"])
    assert out["dice_a"] == 2 * 7 / (2 * 7 + 2 + 1) and out["dice_b"] == 2 * 5 / (2 * 5 + 1 + 2)  # float64 exactly
    assert math.isnan(out["dice_c"]) and out["dice_macro"] == pytest.approx((14 / 17 + 10 / 13) / 2, rel=1e-15)
    msg = r"^dice_scores: confusion matrix \(.*\) does not match 2 classes$"
    for bad in (np.ones((2, 3)), np.ones(2), np.ones((2, 2, 2))):
        with pytest.raises(EqsegError, match=msg):
            dice_scores(bad, ["a", "b"])


def test_histogram_ap_merge_equals_one_accumulator_and_refuses_mismatches():
    rng = np.random.default_rng(6)
    probs = rng.dirichlet([1, 1, 1], size=400)
    target = rng.integers(0, 3, size=400)
    whole, first, second = HistogramAP(3, bins=50), HistogramAP(3, bins=50), HistogramAP(3, bins=50)
    whole.update(probs, target)
    first.update(probs[:150], target[:150])
    second.update(probs[150:], target[150:])
    assert first.merge(second) is first
    assert np.array_equal(first.pos, whole.pos) and np.array_equal(first.neg, whole.neg)
    assert first.pos.sum() + first.neg.sum() == 3 * 400
    for other in (HistogramAP(2, bins=50), HistogramAP(3, bins=40), HistogramAP(3, bins=50, spacing="linear")):
        with pytest.raises(EqsegError, match=r"^HistogramAP.merge: accumulators differ in classes, bins or spacing$"):
            whole.merge(other)


def test_histogram_ap_without_positives_is_a_quiet_nan_and_class_names_are_checked():
    import warnings

    acc = HistogramAP(2, bins=10)
    acc.update(np.array([[0.7, 0.3]]), np.array([255]))  # nothing labelled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = acc.compute(["a", "b"])
    assert math.isnan(out["ap_macro"]) and math.isnan(out["ap_a"]) and math.isnan(out["ap_b"])
    with pytest.raises(EqsegError, match=r"^HistogramAP.compute: 3 class names for 2 classes$"):
        acc.compute(["a", "b", "c"])


def test_instances_from_classes_connectivity_and_errors():
    diagonal = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 2]])
    assert instances_from_classes(diagonal, 1, connectivity=1).max() == 2  # 4-connected: two objects
    eight = instances_from_classes(diagonal, 1, connectivity=2)  # 8-connected: one
    assert eight.max() == 1 and eight.dtype == np.int32 and eight[2, 2] == 0
    with pytest.raises(EqsegError, match=r"^instances_from_classes: connectivity must be 1 or 2 \(got 3\)$"):
        instances_from_classes(diagonal, 1, connectivity=3)
    with pytest.raises(EqsegError, match=r"^instances_from_classes: expected a 2-d class map, got shape \(3,\)$"):
        instances_from_classes(np.zeros(3), 1)


def test_dice_of_an_empty_matrix_is_a_quiet_nan():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = dice_scores(np.zeros((2, 2), dtype=np.int64), ["a", "b"])
    assert math.isnan(out["dice_macro"]) and math.isnan(out["dice_a"]) and math.isnan(out["dice_b"])


def test_object_scores_threshold_range_tied_counts_and_one_pixel_images():
    """Hand cases: the threshold lies in (0, 1]; precision and recall when TP equals FP or FN (1 / 2); an image whose
    union is one pixel still has an AJI; an empty accumulator is quietly NaN."""
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(EqsegError, match=rf"^ObjectScores: iou_threshold must be in \(0, 1\] \(got {bad}\)$"):
            ObjectScores(bad)
    one = np.zeros((3, 3), dtype=np.int32)
    one[1, 1] = 4
    acc = ObjectScores(1.0)  # only identical objects match
    acc.update(one, one)
    out = acc.compute()
    assert (out["obj_tp"], out["obj_fp"], out["obj_fn"], out["aji_c"], out["aji_u"]) == (1, 0, 0, 1, 1)
    assert out["aji"] == 1.0 and out["images"] == 1
    acc = ObjectScores()
    left, right = np.zeros((4, 6), dtype=np.int32), np.zeros((4, 6), dtype=np.int32)
    left[0:2, 0:2], right[2:4, 4:6] = 1, 1
    both = left + 2 * right
    acc.update(both, left)  # TP 1, FP 1: precision 1/2, recall 1
    assert (acc.compute()["obj_precision"], acc.compute()["obj_recall"]) == (0.5, 1.0)
    acc = ObjectScores()
    acc.update(left, both)  # TP 1, FN 1: precision 1, recall 1/2
    assert (acc.compute()["obj_precision"], acc.compute()["obj_recall"]) == (1.0, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ObjectScores().compute()
    assert all(math.isnan(out[k]) for k in ("obj_precision", "obj_recall", "obj_f1", "aji", "aji_pooled"))
    assert (out["obj_tp"], out["aji_u"], out["images"]) == (0, 0, 0)


def test_object_maps_of_different_shapes_or_not_2d_are_refused():
    for true, pred in [((5, 5), (4, 5)), ((5,), (5,)), ((2, 3, 3), (2, 3, 3))]:
        msg = f"object metrics: true {true} and predicted {pred} instance maps must be 2-d of one shape"
        with pytest.raises(EqsegError, match=f"^{re.escape(msg)}$"):
            match_objects(np.zeros(true, np.int32), np.zeros(pred, np.int32))


def test_matching_is_greedy_by_decreasing_iou_and_one_to_one_for_truths_too():
    """Hand cases in one row. At IoU >= 0.1: T1 = cols 0-3, T2 = 4-8; P1 = 0-2 (IoU 3/4 with T1), P2 = 3-7 (1/8 with
    T1, 4/6 with T2). Decreasing IoU matches T1-P1 and T2-P2 (the optimal assignment, scipy); taking the 1/8 pair first
    would block both. A truth cut into two halves (IoU 1/2 with each) matches one of them."""
    truth = np.zeros((1, 10), dtype=np.int32)
    truth[0, 0:4], truth[0, 4:9] = 1, 2
    pred = np.zeros((1, 10), dtype=np.int32)
    pred[0, 0:3], pred[0, 3:8] = 1, 2
    assert match_objects(truth, pred, 0.1) == (2, 0, 0) == _ref_image(truth, pred, thr=0.1)[:3]
    assert match_objects(truth, pred, 0.7) == (1, 1, 1)  # only T1-P1 (3/4) reaches 0.7
    truth = np.zeros((2, 4), dtype=np.int32)
    truth[0, 0:4] = 3
    pred = np.zeros((2, 4), dtype=np.int32)
    pred[0, 0:2], pred[0, 2:4] = 1, 2
    assert match_objects(truth, pred) == (1, 1, 0) == _ref_image(truth, pred)[:3]


def test_overlap_counts_by_hand_and_with_an_empty_side():
    truth = np.array([[1, 1, 0, 7], [0, 7, 7, 7]])
    pred = np.array([[0, 2, 2, 2], [0, 0, 0, 9]])
    area_t, area_p, inter = overlap(truth, pred)  # truths 1 (2 px), 7 (4 px); predictions 2 (3 px), 9 (1 px)
    assert area_t.tolist() == [2, 4] and area_p.tolist() == [3, 1] and inter.tolist() == [[1, 0], [1, 1]]
    valid = np.array([[1, 0, 1, 1], [1, 1, 1, 1]], dtype=np.uint8)
    area_t, area_p, inter = overlap(truth, pred, valid)
    assert area_t.tolist() == [1, 4] and area_p.tolist() == [2, 1] and inter.tolist() == [[0, 0], [1, 1]]
    for t, p, shape in [(truth, np.zeros_like(pred), (2, 0)), (np.zeros_like(truth), pred, (0, 2))]:
        _, _, inter = overlap(t, p)
        assert inter.shape == shape and inter.dtype.kind == "i"  # counts are integers, even when there are none


def _distinct_bin_probs(rng, n: int, classes: int, bins: int = 1000) -> np.ndarray:
    """(n, classes) scores at bin centres of `bins` linear bins, all distinct per class: one pixel per bin, where the
    histogram AP is exact (scikit-learn's average precision is then the reference)."""
    return np.stack([(rng.permutation(bins)[:n] + 0.5) / bins for _ in range(classes)], axis=1)


def test_histogram_ap_of_classes_after_one_without_positives_matches_scikit_learn():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(4)
    probs = _distinct_bin_probs(rng, 80, 3)
    target = rng.integers(1, 3, 80)  # class 0 never true: NaN, and classes 1 and 2 still scored
    acc = HistogramAP(3, bins=1000, spacing="linear")
    acc.update(probs, target)
    ap = acc.per_class()
    assert math.isnan(ap[0])
    for c in (1, 2):
        assert ap[c] == pytest.approx(average_precision_score(target == c, probs[:, c]), abs=1e-12)


def test_histogram_ap_bins_by_hand_in_both_spacings():
    """Logit spacing puts p in bin floor(bins (logit(p) + 32) / 64), clipped to 0..bins-1: with 64 bins floor(logit p)
    + 32, so p = 0, 1/4, 1/2, 3/4, 1 fall in bins 0, 30, 32, 33, 63, quietly (no numpy warning at 0 and 1). Linear
    spacing: floor(bins p), p = 1 in the top bin. A score a hair below 0 (update accepts 1e-6) ranks with 0."""
    p = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    probs = np.stack([1 - p, p], axis=1)  # class 0 scores 1 - p: the same bins in reverse
    for spacing, bins, expected in [("logit", 64, [0, 30, 32, 33, 63]), ("linear", 10, [0, 2, 5, 7, 9])]:
        acc = HistogramAP(2, bins=bins, spacing=spacing)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            acc.update(probs, np.ones(5, dtype=np.int64))
        assert np.flatnonzero(acc.pos[1]).tolist() == expected and acc.pos[1].sum() == 5
        assert np.flatnonzero(acc.neg[0]).tolist() == expected and not acc.pos[0].any() and not acc.neg[1].any()
        below = HistogramAP(2, bins=bins, spacing=spacing)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # log of a negative number: NaN, mapped to the lowest bin
            below.update(np.array([[0.5, -5e-7]]), np.array([1]))
        assert below.pos[1, 0] == 1


def test_histogram_ap_update_refuses_bad_input_with_its_message():
    def refused(probs, target, msg, num_classes=2):
        with pytest.raises(EqsegError, match=f"^{re.escape(msg)}$"):
            HistogramAP(num_classes, spacing="linear").update(np.asarray(probs, dtype=float), np.asarray(target))

    refused(np.full(4, 0.5), np.zeros(4, int), "HistogramAP.update: probs must be (N, C), (C, H, W) or (B, C, H, W), got (4,)")
    refused(np.full((4, 3), 0.2), np.zeros(4, int), "HistogramAP.update: probs have 3 classes, expected 2")
    refused(np.full((4, 2), 0.5), np.zeros(3, int), "HistogramAP.update: target has 3 pixels, probs 4")
    msg = "HistogramAP.update: probs must be probabilities in [0, 1] (soft-max them, not logits)"
    for bad in ([[0.5, 1.5], [0.5, 0.5]], [[0.5, -0.5], [0.5, 0.5]], [[0.5, np.nan], [0.5, 0.5]]):
        refused(bad, [0, 1], msg)  # above 1 only, below 0 only, not finite only
    refused(np.full((2, 2), 0.5), [0, 2], "HistogramAP.update: target labels outside 0..1 (and 255)")
    refused(np.full((2, 3), 0.2), [0, -1], "HistogramAP.update: target labels outside 0..2 (and 255)", num_classes=3)
    acc = HistogramAP(2, spacing="linear")
    acc.update(np.array([[-1e-6, 1 + 1e-6], [1.0, 0.0]]), np.array([1, 255]))  # the tolerance itself is accepted
    assert acc.pos[1].sum() == 1 and acc.pos[1, 999] == 1


def test_histogram_ap_defaults_arguments_and_torch_input_with_gradients():
    """Defaults: 1000 logit bins (p = 1/4 in bin floor(1000 (32 - ln 3) / 64) = 482). Bad sizes and spacings refused
    with their message. Probabilities straight from a model (a torch tensor that requires grad) are read like numpy
    ones: scikit-learn's AP on one pixel per bin."""
    from sklearn.metrics import average_precision_score

    acc = HistogramAP(2)
    assert acc.pos.shape == acc.neg.shape == (2, 1000)
    acc.update(np.array([[0.75, 0.25]]), np.array([1]))
    assert np.flatnonzero(acc.pos[1]).tolist() == [482]
    for num_classes, bins in ((0, 1000), (2, 1), (0, 1)):
        with pytest.raises(EqsegError, match=rf"^HistogramAP: need num_classes >= 1 and bins >= 2 \(got {num_classes}, {bins}\)$"):
            HistogramAP(num_classes, bins)
    with pytest.raises(EqsegError, match=r"^HistogramAP: spacing must be 'logit' or 'linear' \(got 'log'\)$"):
        HistogramAP(2, spacing="log")
    one = HistogramAP(1, bins=2, spacing="linear")  # the smallest accepted: one class, two bins
    one.update(np.array([[0.2], [0.7]]), np.array([0, 0]))
    assert one.pos.tolist() == [[1, 1]] and one.per_class().tolist() == [1.0]
    rng = np.random.default_rng(6)
    probs = _distinct_bin_probs(rng, 50, 2)
    target = rng.integers(0, 2, 50)
    acc = HistogramAP(2, spacing="linear")
    acc.update(torch.tensor(probs, requires_grad=True), torch.tensor(target))
    for c in (0, 1):
        assert acc.per_class()[c] == pytest.approx(average_precision_score(target == c, probs[:, c]), abs=1e-12)


@pytest.mark.parametrize("spacing", ["logit", "linear"])
def test_probabilities_rounded_just_above_one_land_in_the_top_bin(spacing):
    """update() accepts p up to 1 + 1e-6 (float rounding of a softmax); such a pixel is the most confident, not the
    least (the logit of p > 1 is NaN, which once fell into bin 0 and ranked it last)."""
    import warnings as _warnings

    from eqseg.metrics.ranking import HistogramAP

    ap = HistogramAP(2, spacing=spacing)
    with _warnings.catch_warnings():
        _warnings.simplefilter("error")  # and quietly: no invalid-value warning from the logit
        bins = ap._bin(np.array([1.0, 1.0 + 5e-7, 0.0, -5e-7]))
    assert bins.tolist() == [ap.bins - 1, ap.bins - 1, 0, 0]


@pytest.mark.parametrize("dense_pairs, lut_ids", [(0, 0), (1 << 40, 1 << 30)])
def test_object_scores_agree_with_brute_force_on_both_counting_paths(dense_pairs, lut_ids, monkeypatch):
    """Intersections counted sparsely (sort of the touching pairs) or in a dense table, ids renumbered by a sort or
    a lookup table: the same counts as the brute-force reference either way."""
    from eqseg.metrics import objects

    monkeypatch.setattr(objects, "DENSE_PAIRS", dense_pairs)
    monkeypatch.setattr(objects, "LUT_IDS", lut_ids)
    for seed in (0, 1):
        for truth, pred, valid in _random_images(seed):
            ref = _ref_image(truth, pred, valid)
            assert match_objects(truth, pred, 0.5, valid) + aji_counts(truth, pred, valid) == ref
            big = truth.astype(np.int64) * 10**12  # ids far beyond any lookup table: renumbered by a sort
            assert match_objects(big, pred, 0.5, valid) + aji_counts(big, pred, valid) == ref


def test_object_scores_of_tens_of_thousands_of_objects_need_only_their_touching_pairs():
    """17,956 true and 17,956 predicted 2 x 2 objects, one per 3 x 3 cell, each prediction its truth moved one column
    (IoU 2/6): a dense n_t x n_p table of intersections would need 2.6 GB; the sparse pairs hold one per object.
    By hand: no match at IoU 0.5, AJI C = n x 2 and U = n x 6."""
    cells = 134
    n = cells * cells
    ids = (np.arange(n, dtype=np.int32) + 1).reshape(cells, cells)
    truth = np.zeros((3 * cells, 3 * cells), dtype=np.int32)
    pred = np.zeros_like(truth)
    for dy in (0, 1):
        for dx in (0, 1):
            truth[dy::3, dx::3] = ids
            pred[dy::3, dx + 1::3] = ids[:, ::-1]  # other ids than the truth's: matching must not rely on them
    import tracemalloc

    area_t, area_p, ti, pj, inter = overlap_pairs(truth, pred)
    assert area_t.size == area_p.size == n and ti.size == n and set(inter.tolist()) == {2}
    acc = ObjectScores(0.5)
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        acc.update(pred, truth)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100e6, f"{peak / 1e6:.0f} MB for {truth.size / 1e6:.2f} MP"  # the maps are 0.65 MB each
    out = acc.compute()
    assert (out["obj_tp"], out["obj_fp"], out["obj_fn"]) == (0, n, n)
    assert (out["aji_c"], out["aji_u"]) == (2 * n, 6 * n)
    acc = ObjectScores(0.3)  # IoU 1/3 >= 0.3: every object matched one to one
    acc.update(pred, truth)
    assert (acc.compute()["obj_tp"], acc.compute()["obj_fp"]) == (n, 0)
