"""One architecture twice in a grid under two names (`arch:`): p4m_unet at the unet's raw width and at its
parameter count, each trained, saved, reloaded and reported under its own name."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from eqseg.config import parse_params
from eqseg.errors import EqsegError
from eqseg.models import build
from eqseg.models.checkpoint import load_model


def _params(root, models, grid_models):
    raw = yaml.safe_load((root / "tests/smoke/params.yaml").read_text())
    raw["models"] = models
    raw["grid"]["models"] = grid_models
    raw["compare"] = []
    return raw


def test_an_alias_validates_its_architectures_options(root):
    raw = _params(root, {"unet": {"width": 8}, "p4m_params": {"arch": "p4m_unet", "width": 8, "match": "params"}},
                  ["unet", "p4m_params"])
    params = parse_params(raw)
    assert params.model_arch("p4m_params") == "p4m_unet" and params.model_arch("unet") == "unet"
    assert params.model_options("p4m_params") == {"width": 8, "match": "params"}  # arch is not a builder option
    bad = copy.deepcopy(raw)
    bad["models"]["p4m_params"]["match"] = "flops"
    with pytest.raises(EqsegError, match=r"models\.p4m_params.*match"):
        parse_params(bad)
    bad = copy.deepcopy(raw)
    bad["models"]["p4m_params"]["arch"] = "p5_unet"
    with pytest.raises(EqsegError, match=r"models\.p4m_params\.arch: unknown model 'p5_unet'"):
        parse_params(bad)
    bad = copy.deepcopy(raw)
    del bad["models"]["p4m_params"]["arch"]
    with pytest.raises(EqsegError, match=r"models: unknown model 'p4m_params'.*arch"):
        parse_params(bad)
    bad = copy.deepcopy(raw)
    bad["models"]["../x"] = {"arch": "unet"}
    with pytest.raises(EqsegError, match=r"not a valid name"):
        parse_params(bad)


def test_an_alias_cell_trains_under_its_name_and_reloads_as_its_architecture(small_setup, tmp_path):
    from conftest import tool_env, train_cmd
    import subprocess

    tmp = small_setup
    raw = yaml.safe_load((tmp / "params.yaml").read_text())
    raw["models"]["unet_wide"] = {"arch": "unet", "depth": 2, "width": 12}
    raw["train"]["epochs"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "model"
    cmd = train_cmd(tmp, out)
    cmd[cmd.index("--params") + 1] = str(tmp_path / "params.yaml")
    cmd[cmd.index("--model") + 1] = "unet_wide"
    done = subprocess.run(cmd, env=tool_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    model, info = load_model(out / "model.pt", torch.device("cpu"))
    assert (info.model, info.arch, info.options) == ("unet_wide", "unet", {"depth": 2, "width": 12})
    reference = build("unet", info.in_channels, info.num_classes, depth=2, width=12)
    assert [p.shape for p in model.parameters()] == [p.shape for p in reference.parameters()]
    # the alias is a different model from the grid's unet (depth 3, width 16 in the smoke params)
    assert sum(p.numel() for p in model.parameters()) != sum(
        p.numel() for p in build("unet", info.in_channels, info.num_classes, **raw["models"]["unet"]).parameters())
