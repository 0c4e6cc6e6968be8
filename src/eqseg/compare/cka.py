"""Linear CKA between the layers of two models, and per-layer invariance profiles under D4.

CKA (Kornblith et al. 2019) compares two representations X (n × p) and Y (n × q) of the same n examples through
their Gram matrices K = XXᵀ, L = YYᵀ: CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)). It is invariant to
orthogonal transforms and isotropic scaling of either representation, not to arbitrary invertible maps.

Memory stays bounded with the minibatch form of Nguyen et al. (2021, "Do wide and deep networks learn the same
things?"): HSIC is averaged over minibatches of examples, CKA = Σ_b HSIC_1(K_b, L_b) / sqrt(Σ_b HSIC_1(K_b, K_b)
Σ_b HSIC_1(L_b, L_b)), with HSIC_1 the unbiased estimator of Song et al. (2012):

    HSIC_1(K, L) = [tr(K̃L̃) + 1ᵀK̃1 1ᵀL̃1 / ((n−1)(n−2)) − 2/(n−2) 1ᵀK̃L̃1] / (n(n−3)),  K̃ = K with zero diagonal.

It is unbiased, so CKA of independent representations tends to 0 as batches accumulate (the biased estimator
does not: it stays at a positive value that depends on the dimension). Minibatches need n >= 4 examples.
`debiased=False` uses the biased HSIC_0 = tr(KHLH) / (n−1)² instead.

For conv layers an example is one image (or tile) and its features are the layer's (C, H, W) output, average-pooled
to at most `spatial` × `spatial` pixels, flattened to C·h·w: layers of different resolutions compare through their
n × n Gram matrices. Only the Gram matrices of one batch are held, never the features of all batches.

`invariance_profile`: per layer and per D4 element g, ‖f(g·x) − g·f(x)‖ / ‖f(x)‖ (Frobenius norms summed over the
batches), where for group layers with regular fields (B, F·|G|, H, W; channel f·|G| + g) the group axis is first
pooled (max or mean) so the features become invariant fields on which g acts only spatially. The group action is
`eqseg.models.groups`' (one D4 definition in the code base).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eqseg.errors import EqsegError
from eqseg.models.groups import P4M, Group


# --------------------------------------------------------------------------------------------------- HSIC and CKA
def _gram(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    return x @ x.T


def _hsic_matrix(ks: torch.Tensor, ls: torch.Tensor, debiased: bool) -> torch.Tensor:
    """HSIC between every Gram in ks (A, n, n) and every Gram in ls (B, n, n): an (A, B) matrix."""
    n = ks.shape[-1]
    if debiased:
        if n < 4:
            raise EqsegError(f"debiased CKA needs batches of at least 4 examples (got {n})")
        eye = torch.eye(n, dtype=torch.bool, device=ks.device)
        kt, lt = ks.masked_fill(eye, 0.0), ls.masked_fill(eye, 0.0)
        trace = torch.einsum("aij,bij->ab", kt, lt)  # tr(K̃L̃) with symmetric Grams
        sum_k, sum_l = kt.sum(dim=(1, 2)), lt.sum(dim=(1, 2))
        row_k, row_l = kt.sum(dim=2), lt.sum(dim=2)
        return (trace + torch.outer(sum_k, sum_l) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (row_k @ row_l.T)) / (
            n * (n - 3)
        )
    if n < 2:
        raise EqsegError(f"CKA needs batches of at least 2 examples (got {n})")
    h = torch.eye(n, dtype=ks.dtype, device=ks.device) - 1.0 / n
    kc, lc = h @ ks @ h, h @ ls @ h
    return torch.einsum("aij,bij->ab", kc, lc) / (n - 1) ** 2


def linear_cka(x, y, debiased: bool = False) -> float:
    """Linear CKA of two representations (n × p, n × q; numpy or torch) of the same n examples, in one batch."""
    x = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
    y = y if torch.is_tensor(y) else torch.as_tensor(np.asarray(y))
    if x.shape[0] != y.shape[0]:
        raise EqsegError(f"linear_cka: {x.shape[0]} and {y.shape[0]} examples differ")
    acc = MinibatchCKA(1, 1, debiased=debiased)
    acc.update([x], [y])
    return float(acc.compute()[0, 0])


class MinibatchCKA:
    """Accumulates the CKA matrix between `n_a` layers of one model and `n_b` of another, batch by batch.

    `update(feats_a, feats_b)`: lists of tensors (n, ...) for the same n examples (one per layer); `compute()`
    returns the (n_a, n_b) numpy matrix.
    """

    def __init__(self, n_a: int, n_b: int, debiased: bool = True):
        if n_a < 1 or n_b < 1:
            raise EqsegError(f"MinibatchCKA: need at least one layer on each side (got {n_a}, {n_b})")
        self.n_a, self.n_b, self.debiased = n_a, n_b, debiased
        self.xy = torch.zeros(n_a, n_b, dtype=torch.float64)
        self.xx = torch.zeros(n_a, dtype=torch.float64)
        self.yy = torch.zeros(n_b, dtype=torch.float64)
        self.varies_a = torch.zeros(n_a, dtype=torch.bool)
        self.varies_b = torch.zeros(n_b, dtype=torch.bool)
        self.examples = 0

    def update(self, feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor]) -> None:
        if len(feats_a) != self.n_a or len(feats_b) != self.n_b:
            raise EqsegError(f"MinibatchCKA.update: expected {self.n_a} and {self.n_b} layers, "
                             f"got {len(feats_a)} and {len(feats_b)}")
        sizes = {int(f.shape[0]) for f in list(feats_a) + list(feats_b)}
        if len(sizes) != 1:
            raise EqsegError(f"MinibatchCKA.update: layers disagree on the number of examples {sorted(sizes)}")
        ka = torch.stack([_gram(f.detach().cpu()) for f in feats_a])
        kb = torch.stack([_gram(f.detach().cpu()) for f in feats_b])
        self.xy += _hsic_matrix(ka, kb, self.debiased)
        self.xx += torch.diagonal(_hsic_matrix(ka, ka, self.debiased))
        self.yy += torch.diagonal(_hsic_matrix(kb, kb, self.debiased))
        self.varies_a |= torch.tensor([_varies(f) for f in feats_a])
        self.varies_b |= torch.tensor([_varies(f) for f in feats_b])
        self.examples += sizes.pop()

    def compute(self) -> np.ndarray:
        """The CKA matrix; NaN for a layer whose features never vary over the examples of a batch (a constant layer
        has no similarity to anything; rounding would otherwise give it a meaningless number near 0)."""
        denom = torch.sqrt(torch.clamp(torch.outer(self.xx, self.yy), min=0.0))
        defined = (denom > 0) & torch.outer(self.varies_a, self.varies_b)
        out = torch.where(defined, self.xy / torch.where(denom > 0, denom, 1.0), torch.full_like(self.xy, float("nan")))
        return out.numpy()


def _varies(f: torch.Tensor, rtol: float = 1e-6) -> bool:
    """Whether the features of the batch differ between examples (beyond float rounding)."""
    f = f.detach().reshape(f.shape[0], -1).double()
    spread = (f - f.mean(0)).abs().max()
    return bool(spread > rtol * max(float(f.abs().max()), 1e-30))


# ---------------------------------------------------------------------------------------------- features of models
def default_layers(model: nn.Module) -> list[str]:
    """The blocks of a U-Net-like model (`down.i`, `up.i`, `head`), else every Conv2d, in forward-definition order."""
    names = dict(model.named_modules())
    if isinstance(names.get("down"), nn.ModuleList) and isinstance(names.get("up"), nn.ModuleList):
        blocks = [f"down.{i}" for i in range(len(model.down))] + [f"up.{i}" for i in range(len(model.up))]
        return blocks + (["head"] if "head" in names else [])
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise EqsegError(f"{type(model).__name__}: no layers to compare (no down/up blocks, no Conv2d); "
                         "name the layers explicitly")
    return convs


@contextmanager
def _hooks(model: nn.Module, layers: Sequence[str], store: dict):
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        raise EqsegError(f"{type(model).__name__}: no module named {missing} (see model.named_modules())")
    handles = []
    for name in layers:
        def hook(_module, _inputs, output, name=name):
            out = output[0] if isinstance(output, (tuple, list)) else output
            store[name] = out.detach().clone()  # a later in-place op (ReLU(inplace=True)) must not change it
        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield modules
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _eval(model: nn.Module):
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was)


def layer_features(model: nn.Module, x: torch.Tensor, layers: Sequence[str]) -> list[torch.Tensor]:
    """Outputs of the named modules for input x (eval mode, no grad), in the order of `layers`."""
    store: dict = {}
    with _eval(model), _hooks(model, layers, store):
        model(x)
    return [store[n] for n in layers]


def _subsample(f: torch.Tensor, spatial: int) -> torch.Tensor:
    if f.ndim == 4 and (f.shape[-2] > spatial or f.shape[-1] > spatial):
        f = F.adaptive_avg_pool2d(f, (min(spatial, f.shape[-2]), min(spatial, f.shape[-1])))
    return f.reshape(f.shape[0], -1)


def cka_matrix(
    model_a: nn.Module,
    model_b: nn.Module,
    batches: Iterable[torch.Tensor],
    layers_a: Sequence[str] | None = None,
    layers_b: Sequence[str] | None = None,
    spatial: int = 8,
    debiased: bool = True,
) -> dict:
    """Layer × layer CKA of two models on the same input batches (each (B, C, H, W) or an (x, y) pair; B >= 4 when
    debiased).

    Returns {"cka": (len(layers_a), len(layers_b)) numpy array, "layers_a", "layers_b", "examples"}.
    Inputs are moved to each model's device and dtype.
    """
    layers_a = list(layers_a) if layers_a is not None else default_layers(model_a)
    layers_b = list(layers_b) if layers_b is not None else default_layers(model_b)
    acc = MinibatchCKA(len(layers_a), len(layers_b), debiased=debiased)
    for x in batches:
        fa = [_subsample(f, spatial) for f in layer_features(model_a, _like(x, model_a), layers_a)]
        fb = [_subsample(f, spatial) for f in layer_features(model_b, _like(x, model_b), layers_b)]
        acc.update(fa, fb)
    if acc.examples == 0:
        raise EqsegError("cka_matrix: no input batches")
    return {"cka": acc.compute(), "layers_a": layers_a, "layers_b": layers_b, "examples": acc.examples}


def _like(x, model: nn.Module) -> torch.Tensor:
    """The batch's input tensor (first item of an (x, y) pair from a DataLoader) on the model's device and dtype."""
    if isinstance(x, (tuple, list)):
        x = x[0]
    if not torch.is_tensor(x) or x.ndim != 4:
        raise EqsegError(f"expected input batches (B, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")
    p = next(iter(model.parameters()), None)
    return x if p is None else x.to(device=p.device, dtype=p.dtype)


# ------------------------------------------------------------------------------------------------ invariance profile
def _pool_group(f: torch.Tensor, module: nn.Module, pool: str) -> torch.Tensor:
    """Regular fields of a group module pooled over the group axis (max or mean); other outputs unchanged."""
    if getattr(module, "out_rep", "trivial") != "regular":
        return f
    order = module.group.order
    b, c, h, w = f.shape
    f = f.reshape(b, c // order, order, h, w)
    return f.amax(dim=2) if pool == "max" else f.mean(dim=2)


def invariance_profile(
    model: nn.Module,
    batches: Iterable[torch.Tensor] | torch.Tensor,
    layers: Sequence[str] | None = None,
    group: Group = P4M,
    pool: str = "max",
) -> dict[str, dict[str, float]]:
    """{layer: {element name: ‖f(g·x) − g·f(x)‖ / ‖f(x)‖}} for every element g of `group` (default D4 = p4m).

    f is the layer's output with regular fields pooled over the group axis (`pool`: "max" or "mean"), so a layer
    of an equivariant model scores 0 up to rounding for the elements of its own group. Tile sides must be a
    multiple of the model's `tile_multiple` so that downsampling commutes with the transforms.
    """
    if pool not in ("max", "mean"):
        raise EqsegError(f"invariance_profile: pool must be 'max' or 'mean' (got {pool!r})")
    if torch.is_tensor(batches):
        batches = [batches]
    layers = list(layers) if layers is not None else default_layers(model)
    modules = dict(model.named_modules())
    num = {n: np.zeros(group.order) for n in layers}
    den = {n: 0.0 for n in layers}
    seen = False
    for x in batches:
        seen = True
        x = _like(x, model)
        base = [_pool_group(f, modules[n], pool) for n, f in zip(layers, layer_features(model, x, layers))]
        for n, f in zip(layers, base):
            den[n] += float(f.double().pow(2).sum())
        for g in range(group.order):
            moved = layer_features(model, group.transform(x, g), layers)
            for n, f0, f1 in zip(layers, base, moved):
                f1 = _pool_group(f1, modules[n], pool)
                expected = group.transform(f0, g) if f0.ndim == 4 else f0
                num[n][g] += float((f1 - expected).double().pow(2).sum())
    if not seen:
        raise EqsegError("invariance_profile: no input batches")
    return {
        n: {group.element_name(g): (float(np.sqrt(num[n][g] / den[n])) if den[n] > 0 else float("nan"))
            for g in range(group.order)}
        for n in layers
    }
