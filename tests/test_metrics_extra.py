"""Average precision, Dice, object F1 and AJI against hand-computed small cases (absent classes included)."""

import math

import numpy as np
import pytest
import torch

from eqseg.errors import EqsegError
from eqseg.metrics import confusion
from eqseg.metrics.objects import ObjectScores, aji_counts, instances_from_classes, match_objects
from eqseg.metrics.ranking import HistogramAP, average_precision_exact, dice_scores


def test_exact_ap_hand_cases():
    # thresholds 0.9: P=1 R=.5; 0.8: P=.5 R=.5; 0.7: P=2/3 R=1; 0.6: no recall gain -> .5*1 + .5*2/3
    assert average_precision_exact([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # a tie is one threshold: {0.5, 0.5}: P=.5 R=.5; then 0.2: P=2/3 R=1
    assert average_precision_exact([0.5, 0.5, 0.2], [1, 0, 1]) == pytest.approx(0.25 + 0.5 * 2 / 3)
    assert average_precision_exact([0.1, 0.2], [0, 0]) != average_precision_exact([0.1, 0.2], [0, 0])  # NaN
    assert average_precision_exact([0.3, 0.2, 0.1], [1, 1, 0]) == 1.0


def test_exact_ap_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.3
    s = np.round(rng.random(500) + 0.3 * y, 2)  # rounding makes ties
    assert average_precision_exact(s, y) == pytest.approx(sklearn.average_precision_score(y, s), abs=1e-12)


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
