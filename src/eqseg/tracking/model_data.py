"""The trained model (mlflow.pytorch) and the tile store it learnt from (a dataset input), logged to the active run."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

from eqseg.errors import EqsegError
from eqseg.tracking.store import retry


def log_model(net, info: dict[str, Any] | None = None, name: str = "model") -> str:
    """Log the trained network to the active run with mlflow.pytorch (a LoggedModel: the UI lists it under Models,
    and `mlflow.pytorch.load_model(f"runs:/{run_id}/{name}")` loads it back as the same torch module).

    Pickle serialisation (loading needs eqseg importable, as for any pickled module); MLflow's default "pt2"
    traces the graph for one fixed input shape and costs seconds. `info` (classes, band statistics, tile size,
    normalisation...) is stored as the model's metadata, so a user can prepare inputs the way training did.
    The signature is (batch, bands, H, W) float32 -> (batch, classes, H, W) logits. Returns the model URI."""
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models.signature import ModelSignature
    from mlflow.types import Schema, TensorSpec

    info = dict(info or {})
    bands, classes = info.get("in_channels"), info.get("num_classes")
    signature = None
    if isinstance(bands, int) and isinstance(classes, int):
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, bands, -1, -1), "image")]),
                                   outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, classes, -1, -1), "logits")]))
    metadata = json.loads(json.dumps(info, default=str))  # plain JSON types in the MLmodel file
    was_training = net.training
    net.eval()
    flavour_log = logging.getLogger("mlflow.pytorch")
    level = flavour_log.level
    flavour_log.setLevel(logging.ERROR)  # the warning about pickle is the choice documented above
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model_info = retry(lambda: mlflow.pytorch.log_model(
                net, name=name, serialization_format="pickle", signature=signature, metadata=metadata,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
            ))
    finally:
        flavour_log.setLevel(level)
        net.train(was_training)
    return model_info.model_uri


def _index_frame(tiles: Path):
    import pandas as pd

    df = pd.read_parquet(tiles / "index.parquet")  # plain pandas: the footprint stays WKB bytes
    return df


def dataset_digest(tiles: Path) -> str:
    """Content digest of a tile store's index (every row and column) and meta record: 16 hex digits."""
    import pandas as pd

    tiles = Path(tiles)
    df = _index_frame(tiles)
    h = hashlib.sha256()
    h.update(",".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    h.update((tiles / "meta.json").read_bytes())
    return h.hexdigest()[:16]


def log_dataset(tiles: Path, name: str, context: str = "training", tags: dict[str, str] | None = None) -> str:
    """Log a tile store as the active run's dataset input (the UI's "Datasets used"): its index as a pandas
    dataset named `name`, source `<tiles>/index.parquet`, a content digest of index and meta (dataset_digest),
    schema and row count. Returns the digest."""
    import mlflow
    import mlflow.data

    tiles = Path(tiles)
    if not (tiles / "index.parquet").is_file() or not (tiles / "meta.json").is_file():
        raise EqsegError(f"{tiles}: not a tile store (missing index.parquet or meta.json)")
    df = _index_frame(tiles)
    digest = dataset_digest(tiles)
    with warnings.catch_warnings():  # source resolution and integer-column schema hints
        warnings.simplefilter("ignore")
        ds = mlflow.data.from_pandas(df, source=str(tiles / "index.parquet"), name=name, digest=digest)
        retry(lambda: mlflow.log_input(ds, context=context, tags=tags))
    return digest
