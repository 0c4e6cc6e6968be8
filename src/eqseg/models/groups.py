"""Group algebra of p4 (quarter turns) and p4m (quarter turns and mirrors) acting on the pixel grid.

Element (m, r) acts on an image as T = F^m ∘ R^r: rotate by r quarter turns (`torch.rot90` on the last two dims),
then, if m = 1, mirror left-right (flip of the last dim). Since R∘F = F∘R^-1, composition is
(m1, r1)(m2, r2) = (m1 xor m2, (-1)^m2 * r1 + r2 mod 4). The index of (m, r) is 4m + r, so p4 is the first four
elements of p4m. Both transforms map the pixel grid onto itself about the image centre, which is why every
layer built from them is equivariant exactly, not up to interpolation.

Feature maps on the group ("regular fields") use the flat layout (B, F*|G|, H, W) with channel f*|G| + g, so that
batch norm, non-linearities, pooling and upsampling are the ordinary 2-d ops and export to plain torch.nn needs
no reshuffling. The group acts on them by (g·f)(h, x) = f(g^-1 h, g^-1 x): transform every channel spatially and
permute the group axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

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
        m, r = self.elements[g]
        return ("m" if m else "") + (f"r{r}" if r else ("" if m else "e"))

    def compose(self, a: int, b: int) -> int:
        """Index of a∘b (b applied first)."""
        (m1, r1), (m2, r2) = self.elements[a], self.elements[b]
        return 4 * (m1 ^ m2) + ((-r1 if m2 else r1) + r2) % 4

    def inverse(self, g: int) -> int:
        m, r = self.elements[g]
        return g if m else (-r) % 4

    def transform(self, x: torch.Tensor, g: int) -> torch.Tensor:
        """Apply element g to the last two (spatial) dims of x."""
        m, r = self.elements[g]
        x = torch.rot90(x, r, dims=(-2, -1))
        return torch.flip(x, dims=(-1,)) if m else x

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
    """
    saved = [b.detach().clone() for b in module.buffers()]
    with torch.no_grad():
        y = module(x.clone())  # clone: in-place layers must not alter the caller's x
        scale = y.abs().max().clamp_min(torch.finfo(y.dtype).tiny)
        errors = {
            group.element_name(g): float(
                (module(group.act(x, g, in_rep)) - group.act(y, g, out_rep)).abs().max() / scale
            )
            for g in range(group.order)
        }
        for b, s in zip(module.buffers(), saved):
            b.copy_(s)
    return errors
