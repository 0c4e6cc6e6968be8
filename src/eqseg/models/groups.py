"""The one definition of D4 in eqseg: p4 (quarter turns) and p4m (quarter turns and mirrors) on the pixel grid.

Element g = 4m + r acts on an image as T_g = R^r ∘ F^m: if m = 1, mirror left-right (flip of the last dim), then
rotate by r quarter turns (`torch.rot90` / `np.rot90` on the last two dims). Since F∘R = R^-1∘F, composition is
(m1, r1)(m2, r2) = (m1 xor m2, r1 + (-1)^m1 * r2 mod 4). p4 is the first four elements of p4m. Both transforms map
the pixel grid onto itself about the image centre, which is why every layer built from them is equivariant
exactly, not up to interpolation.

Every user of the group goes through `Group.transform` (torch) or `Group.transform_numpy` (numpy): the layers,
seeded augmentation, test-time augmentation, the consistency loss and the equivariance metric (a test checks that
they agree), so "element 5" means the same transform everywhere. `D4` is p4m under its usual name.

Feature maps on the group ("regular fields") use the flat layout (B, F*|G|, H, W) with channel f*|G| + g, so that
batch norm, non-linearities, pooling and upsampling are the ordinary 2-d ops and export to plain torch.nn needs
no reshuffling. The group acts on them by (g·f)(h, x) = f(g^-1 h, g^-1 x): transform every channel spatially and
permute the group axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import torch

from eqseg.errors import EqsegError

Rep = Literal["trivial", "regular"]


@dataclass(frozen=True)
class Group:
    name: str
    flips: bool

    @property
    def order(self) -> int:
        return 8 if self.flips else 4

    @cached_property
    def elements(self) -> tuple[tuple[int, int], ...]:
        return tuple((m, r) for m in range(2 if self.flips else 1) for r in range(4))

    def element_name(self, g: int) -> str:
        """'e', 'r1'..'r3' (rotations), 'm', 'mr1'..'mr3' (mirror, then rotate)."""
        m, r = self.elements[g]
        return ("m" if m else "") + (f"r{r}" if r else ("" if m else "e"))

    def is_reflection(self, g: int) -> bool:
        return bool(self.elements[g][0])

    def compose(self, a: int, b: int) -> int:
        """Index of a∘b (b applied first)."""
        (m1, r1), (m2, r2) = self.elements[a], self.elements[b]
        return 4 * (m1 ^ m2) + (r1 + (-r2 if m1 else r2)) % 4

    def inverse(self, g: int) -> int:
        m, r = self.elements[g]
        return g if m else (-r) % 4

    def transform(self, x: torch.Tensor, g: int) -> torch.Tensor:
        """Apply element g to the last two (spatial) dims of a tensor (images, logits, masks, filters)."""
        m, r = self.elements[g]
        if m:
            x = torch.flip(x, dims=(-1,))
        return torch.rot90(x, r, dims=(-2, -1)) if r else x

    def transform_numpy(self, a: np.ndarray, g: int) -> np.ndarray:
        """`transform` for numpy arrays (a view where possible): augmentation of tiles and masks."""
        m, r = self.elements[g]
        if m:
            a = a[..., ::-1]
        return np.rot90(a, r, axes=(-2, -1)) if r else a

    def untransform(self, x: torch.Tensor, g: int) -> torch.Tensor:
        """Apply the inverse of element g (test-time augmentation maps predictions back with it)."""
        return self.transform(x, self.inverse(g))

    def regular_permutation(self, g: int) -> list[int]:
        """p with (g·f)[h] = T_g f[p[h]] on the group axis, i.e. p[h] = g^-1 h."""
        g_inv = self.inverse(g)
        return [self.compose(g_inv, h) for h in range(self.order)]

    def act(self, x: torch.Tensor, g: int, rep: Rep) -> torch.Tensor:
        """Action of g on a (B, C, H, W) tensor of trivial fields (images, logits) or flat regular fields."""
        if rep == "regular":
            b, c, h, w = x.shape
            x = x.reshape(b, c // self.order, self.order, h, w)[:, :, self.regular_permutation(g)].reshape(b, c, h, w)
        return self.transform(x, g)


P4 = Group("p4", flips=False)
P4M = Group("p4m", flips=True)
D4 = P4M
GROUPS = {"p4": P4, "p4m": P4M}


def get_group(name: str) -> Group:
    if name not in GROUPS:
        raise EqsegError(f"unknown group {name!r} (allowed: {sorted(GROUPS)})")
    return GROUPS[name]


def equivariance_errors(
    module: torch.nn.Module, x: torch.Tensor, group: Group, in_rep: Rep = "trivial", out_rep: Rep = "trivial"
) -> dict[str, float]:
    """max|f(g·x) - g·f(x)| / max|f(x)| for every g; works for any module, equivariant or not.

    Buffers (batch-norm running statistics) are restored afterwards, so a check in train mode has no side effect.
    Outputs are compared in float32 at least (mixed-precision models return float16).
    """
    saved = [b.detach().clone() for b in module.buffers()]

    def f(t: torch.Tensor) -> torch.Tensor:
        y = module(t)
        return y.float() if y.dtype in (torch.float16, torch.bfloat16) else y

    with torch.no_grad():
        y = f(x.clone())  # clone: in-place layers must not alter the caller's x
        scale = y.abs().max().clamp_min(torch.finfo(y.dtype).tiny)
        errors = {
            group.element_name(g): float((f(group.act(x, g, in_rep)) - group.act(y, g, out_rep)).abs().max() / scale)
            for g in range(group.order)
        }
        for b, s in zip(module.buffers(), saved):
            b.copy_(s)
    return errors
