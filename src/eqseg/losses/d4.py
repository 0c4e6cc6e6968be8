"""The dihedral group D4 acting on the last two (spatial) dims, with the convention of `eqseg.models.groups`.

Element g = 4m + r rotates by r quarter turns, then mirrors left-right if m = 1; sharing the models' convention
keeps one definition of "g·x" in the code base.
"""

from __future__ import annotations

import torch

from eqseg.models.groups import P4M

ORDER = P4M.order


def d4_apply(x: torch.Tensor, g: int) -> torch.Tensor:
    """g·x on the last two dims of any tensor (images, logits, probabilities, masks)."""
    return P4M.transform(x, g)


def d4_inverse(g: int) -> int:
    return P4M.inverse(g)
