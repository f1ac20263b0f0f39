"""``linear``: Position Interpolation (Chen et al., arXiv 2306.15595): λ_i = s for every pair.

Matches transformers' ``linear`` bit for bit: the base frequencies divided by ``factor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rope.params import check_positive
from rope.tables import RopeFrequencies

if TYPE_CHECKING:
    from rope.spec import RopeSpec


@dataclass(frozen=True)
class Params:
    factor: float | None = None
    """Interpolation ratio s; None means L'/L."""

    def __post_init__(self) -> None:
        check_positive("params.factor", self.factor, minimum=1.0, inclusive=True)


def factor_of(spec: RopeSpec) -> float:
    return spec.method_params.factor or spec.geometry.scale


def compute(spec: RopeSpec, seq_len=None, device=None) -> RopeFrequencies:
    inv_freq = spec.geometry.base_inv_freq(device)
    inv_freq /= factor_of(spec)
    return RopeFrequencies.single(inv_freq)


def hf_parameters(spec: RopeSpec) -> tuple[dict, float, int]:
    return {"rope_type": "linear", "factor": factor_of(spec)}, spec.base, spec.target_length
