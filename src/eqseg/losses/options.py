"""The options of every loss term of a loss spec (params.yaml's `train.loss`, `train.loss_for`), typed: one schema
per term, the table `LOSS_TERMS` (term -> schema) that eqseg.config collects, and `check_loss_spec`.

A leaf: pydantic and eqseg.utils.schema only, no torch. A new term is its function (in a module of eqseg.losses,
entered in eqseg.losses.terms.TERMS) and its entry here: the fields after `weight` are the function's options with
the same defaults (tests/test_architecture.py checks it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError

from eqseg.utils.schema import Strict, first_error


class Term(Strict):
    weight: float = Field(ge=0)


class LovaszTerm(Term):
    classes: Literal["present", "all"] = "present"
    per_image: bool = False


class DiceTerm(Term):
    classes: Literal["present", "all"] = "present"
    smooth: float = Field(1.0, gt=0)


class MilTerm(Term):
    pool: Literal["lse", "topk", "max", "mean"] = "lse"
    sharpness: float = Field(5.0, gt=0)
    top: float = Field(0.1, gt=0, le=1)


# Loss terms and their typed options (eqseg.losses.TERMS has the same names; a test checks the options agree).
LOSS_TERMS: dict[str, type[Term]] = {"ce": Term, "lovasz": LovaszTerm, "dice": DiceTerm, "mil": MilTerm, "consistency": Term}


def check_loss_spec(spec: dict) -> None:
    """A loss spec maps terms to a weight or to {weight, **options}; at least one weight must be positive."""
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"must be a non-empty mapping of term to weight (terms: {', '.join(LOSS_TERMS)})")
    positive = False
    for name, value in spec.items():
        if name not in LOSS_TERMS:
            raise ValueError(f"unknown term {name!r} (allowed: {', '.join(LOSS_TERMS)})")
        opts = dict(value) if isinstance(value, dict) else {"weight": value}
        try:
            term = LOSS_TERMS[name].model_validate(opts)
        except ValidationError as err:
            raise ValueError(first_error(name, err)) from None
        positive = positive or term.weight > 0
    if not positive:
        raise ValueError("every term has weight 0; give at least one a positive weight")
