"""The model artifact: `model.pt` = typed `ModelInfo` + weights, below every command that writes or reads it.

train writes it, evaluate, predict and the report read it; none of them imports another to do so. Loading uses
`torch.load(weights_only=True)` only: a model file is data, never code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eqseg.errors import EqsegError


class ModelInfo(BaseModel):
    """Everything needed to rebuild a trained model and to feed it inputs the way it was trained."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str = Field(description="the model's name in the grid (params models: key)")
    arch: str | None = Field(None, description="its registered architecture when the name is an alias (None: the name)")
    options: dict[str, Any] = Field(default_factory=dict)
    in_channels: int
    num_classes: int
    classes: list[str]
    band_mean: list[float] = Field(description="band statistics of the training split (normalise: train)")
    band_std: list[float]
    normalise: str = Field("train", description="normalisation the model was trained with (params normalise.mode)")
    stain: dict | None = Field(None, description="stain reference {method, reference} the inputs were mapped onto")
    tile_size: int
    dataset: str | None = None
    supervision: str | None = None
    seed: int | None = None
    select: str | None = Field(None, description="how the kept epoch was chosen (train.select: own, dense, last)")
    selected_by: str | None = None
    precision: str | None = Field(None, description="the precision it was trained in (fp32, bf16, fp16; train.precision resolved)")

    def check_inputs(self, bands: int, classes: list[str] | None, where: str) -> None:
        """One line, before any work, when data do not fit the model: band count, or class names (scores against
        other classes would be meaningless)."""
        if bands != self.in_channels:
            raise EqsegError(f"{where}: {bands} band(s), but model {self.model!r} was trained on {self.in_channels}")
        if classes is not None and list(classes) != list(self.classes):
            raise EqsegError(f"{where}: classes {list(classes)} differ from the model's {list(self.classes)}")


def save_model(path: Path, model, info: ModelInfo) -> None:
    import torch

    torch.save({"info": info.model_dump(), "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, path)


def save_classical(path: Path, state: dict, info: ModelInfo) -> None:
    """A fitted classical baseline in the same file as a network (model.pt), its state as plain values."""
    import json

    import torch

    torch.save({"info": info.model_dump(), "classical": json.loads(json.dumps(state, default=_plain))}, path)


def _plain(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not a plain value: {type(o).__name__}")


def read_model_file(path: Path) -> tuple[dict, ModelInfo]:
    """The saved blob and its typed info: {"info", "state_dict"} for networks, {"info", "classical"} for a fitted
    classical baseline (plain JSON-like values either way, so weights_only=True loads both)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise EqsegError(f"{path}: trained model not found; run `eqseg train` first")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        info = ModelInfo.model_validate(blob["info"])
        if "state_dict" not in blob and "classical" not in blob:
            raise KeyError("state_dict")
        return blob, info
    except ValidationError as err:
        raise EqsegError(f"{path}: not an eqseg model (its info lacks {err.errors()[0]['loc'][0]!r})") from None
    except Exception as err:  # unpickling refused, truncated file, not a dict...
        if "weights only" in str(err).lower() or "weights_only" in str(err):
            why = "it holds Python objects besides tensors, which eqseg never unpickles"
        else:
            why = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"
        raise EqsegError(f"{path}: not a model written by `eqseg train` ({why})") from None


def load_model(path: Path, device) -> tuple[Any, ModelInfo]:
    """Rebuild a network from its saved name, options and weights (eval mode, on `device`)."""
    from eqseg.models import build

    blob, info = read_model_file(path)
    if "state_dict" not in blob:
        raise EqsegError(f"{path}: holds a fitted classical baseline, not a network (load it with eqseg.inference.load_trained)")
    state = blob["state_dict"]
    model = build(info.arch or info.model, info.in_channels, info.num_classes, **info.options)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise EqsegError(f"{path}: weights do not fit model {info.model!r} with options {info.options}") from err
    return model.to(device).eval(), info
