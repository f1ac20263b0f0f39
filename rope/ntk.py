"""``ntk``: static NTK-aware base change (bloc97, 2023; YaRN paper arXiv 2309.00071 §3.1).

The base becomes ``b' = b · s^(d/(d-2))``, i.e. λ_i = s^(2i/(d-2)): the highest frequency
is untouched and the lowest is interpolated by exactly s. A stock config expresses it as
``default`` RoPE with ``rope_theta = b'``, and we compute it the same way so the export
is exact.
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
    """Extension ratio s the base change is sized for; None means L'/L."""

    def __post_init__(self) -> None:
        check_positive("params.factor", self.factor, minimum=1.0, inclusive=True)


def scaled_base(spec: RopeSpec) -> float:
    g = spec.geometry
    factor = spec.method_params.factor or g.scale
    return g.base * factor ** (g.rotary_dim / (g.rotary_dim - 2))


def compute(spec: RopeSpec, seq_len=None, device=None) -> RopeFrequencies:
    return RopeFrequencies.single(1.0 / (scaled_base(spec) ** spec.geometry.exponents(device)))


def hf_parameters(spec: RopeSpec) -> tuple[dict, float, int]:
    return {"rope_type": "default"}, scaled_base(spec), spec.target_length
