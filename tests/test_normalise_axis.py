"""The normalisation axis of evaluate (evaluate.normalise_modes): each mode scored beside the configured one must
give exactly what an evaluation configured with that mode gives, and must not disturb the configured scores."""

from __future__ import annotations

import pytest

from test_normalise import blended, params_for  # noqa: F401 (a fixture: model statistics differ from the store's)

LABELS = ["train+adabn", "train", "image", "dataset+adabn", "dataset", "image+adabn"]  # adapted before plain


def test_every_mode_of_the_axis_equals_its_own_evaluation(blended, tmp_path):
    from eqseg.evaluate.run import evaluate, mode_key

    tmp = blended
    params = params_for(tmp, tmp / "data", "train")
    plain = evaluate(params, tmp / "model", tmp / "tiles", tmp_path / "plain")
    axis_params = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"normalise_modes": LABELS})})
    axis = evaluate(axis_params, tmp / "model", tmp / "tiles", tmp_path / "axis")
    for key in ("miou_macro", "fwiou", "pixel_accuracy", "iou_nucleus"):  # the configured scores stay as they were
        assert axis[key] == plain[key], key
    seen = set()
    for label in LABELS:
        mode, _, adapt = label.partition("+")
        alone = evaluate(params_for(tmp, tmp / "data", mode, bool(adapt)), tmp / "model", tmp / "tiles",
                         tmp_path / label.replace("+", "_"))
        key = mode_key(label)
        for metric in ("miou_macro", "fwiou", "pixel_accuracy", "iou_background", "iou_nucleus"):
            assert axis[key + metric] == pytest.approx(alone[metric], abs=1e-12), (label, metric)
        seen.add(round(axis[key + "miou_macro"], 9))
    # the model's statistics differ from the store's, so the modes really feed other inputs
    assert len(seen) >= 4, seen
    # AdaBN of one mode must not leak into the next (a fresh model per mode): train after train+adabn is train
    assert axis[mode_key("train") + "miou_macro"] == pytest.approx(plain["miou_macro"], abs=1e-12)


def test_repeated_modes_are_refused(tmp_path):
    from eqseg.errors import EqsegError

    with pytest.raises(EqsegError, match=r"evaluate\.normalise_modes.*repeat"):
        p = params_for(tmp_path, tmp_path, "train")
        raw = p.model_dump(mode="json")
        raw["evaluate"]["normalise_modes"] = ["image", "image"]
        from eqseg.config import parse_params

        parse_params(raw)
