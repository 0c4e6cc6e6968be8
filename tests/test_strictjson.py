"""No NaN or Infinity in any JSON eqseg writes: null with the reason beside it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from eqseg.utils import strictjson
from eqseg.utils.atomic import write_json


def strict(text: str):
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))


def test_write_json_writes_null_and_the_reason_never_nan(tmp_path):
    obj = {"miou": float("nan"), "ok": np.float32(0.5), "loss": np.float64(np.inf), "iou": [0.5, np.nan, 1.0],
           "nested": {"ap": math.nan}, "n": np.int64(3)}
    write_json(tmp_path / "m.json", obj, reasons={"miou": "no test pixels"})
    got = strict((tmp_path / "m.json").read_text())
    assert got == {"miou": None, "miou_undefined": "no test pixels", "ok": 0.5, "loss": None,
                   "loss_undefined": "not a finite number (infinite)", "iou": [0.5, None, 1.0],
                   "iou_undefined": "entries [1]: not a finite number (nan)", "n": 3,
                   "nested": {"ap": None, "ap_undefined": "not a finite number (nan)"}}


def test_dumps_keeps_a_default_and_refuses_nothing_finite():
    assert strict(strictjson.dumps({"p": object()}, default=lambda o: "x")) == {"p": "x"}
    assert strictjson.dumps([1, 2.5, "a", None, True]) == '[1, 2.5, "a", null, true]'
    with pytest.raises(ValueError, match="NaN is not JSON"):
        strictjson.loads('{"a": NaN}')


def test_summary_of_a_cell_selected_by_its_last_epoch_has_no_nan(small_setup, tmp_path, eqseg_cli):
    """train.select last: no validation score, so best_val_score used to be NaN in config.json."""
    import yaml

    from conftest import train_cmd

    p = yaml.safe_load((small_setup / "params.yaml").read_text())
    p["train"].update(select="last", epochs=1)
    (tmp_path / "last.yaml").write_text(yaml.safe_dump(p))
    cmd = train_cmd(small_setup, tmp_path / "m")
    cmd[cmd.index("--params") + 1] = str(tmp_path / "last.yaml")
    proc = eqseg_cli(cmd[1:], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = strict((tmp_path / "m" / "config.json").read_text())["summary"]
    assert summary["best_val_score"] is None
    assert summary["best_val_score_undefined"] == "no validation: train.select last"
