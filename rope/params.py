"""Typed method parameters: strict parsing (unknown keys are errors) and value checks.

Every check raises :class:`RopeSpecError` with one line naming the field and what was
expected; nothing is logged and defaulted the way transformers' validators warn.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

from longctx.rope.errors import RopeSpecError

if TYPE_CHECKING:
    from longctx.rope.geometry import RopeGeometry

P = TypeVar("P")


def parse_params(cls: type[P], raw: dict[str, Any] | None, method: str) -> P:
    """Build the dataclass ``cls`` from ``raw``; an unknown key raises with a suggestion."""
    raw = dict(raw or {})
    names = [f.name for f in fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            allowed = ", ".join(names) or "none"
            raise RopeSpecError(
                f"params.{key}: unknown parameter for method {method!r}{hint} (allowed: {allowed})"
            )
    return cls(**raw)


def check_positive(name: str, value: float | None, *, minimum: float = 0.0, inclusive: bool = False) -> None:
    """Finite and > minimum (or >= when ``inclusive``); None passes (means "use the default")."""
    if value is None:
        return
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value >= minimum if inclusive else value > minimum)
    if not ok:
        op = ">=" if inclusive else ">"
        raise RopeSpecError(f"{name}: expected a finite number {op} {minimum}, got {value!r}")


def check_factor_list(name: str, values, n_pairs: int, rotary_dim: int) -> list[float]:
    """A per-pair factor list: exactly d/2 finite positive numbers."""
    if not isinstance(values, (list, tuple)):
        raise RopeSpecError(f"{name}: expected a list of {n_pairs} floats, got {type(values).__name__}")
    if len(values) != n_pairs:
        raise RopeSpecError(
            f"{name}: expected {n_pairs} values (rotary_dim/2 = {rotary_dim}/2), got {len(values)}"
        )
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise RopeSpecError(f"{name}[{i}]: expected a finite factor > 0, got {v!r}")
        out.append(float(v))
    return out


@dataclass(frozen=True)
class ScaleParams:
    """Parameters of the one-ratio methods (``linear``, ``ntk``, ``dynamic``)."""

    factor: float | None = None
    """The extension ratio s the method is sized for; None means L'/L."""

    def __post_init__(self) -> None:
        check_positive("params.factor", self.factor, minimum=1.0, inclusive=True)

    def ratio(self, geom: RopeGeometry) -> float:
        return self.factor or geom.scale
