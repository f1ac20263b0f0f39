"""``ntk``: static NTK-aware base change (bloc97, 2023; YaRN paper arXiv 2309.00071 §3.1).

The base becomes ``b' = b · s^(d/(d-2))``, i.e. λ_i = s^(2i/(d-2)): the highest frequency
is untouched and the lowest is interpolated by exactly s. A stock config expresses it as
``default`` RoPE with ``rope_theta = b'``, and we compute it the same way so the export
is exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from longctx.rope.params import ScaleParams
from longctx.rope.tables import RopeFrequencies

if TYPE_CHECKING:
    from longctx.rope.spec import RopeSpec


Params = ScaleParams


def scaled_base(spec: RopeSpec) -> float:
    g = spec.geometry
    factor = spec.method_params.ratio(g)
    return g.base * factor ** (g.rotary_dim / (g.rotary_dim - 2))


def compute(spec: RopeSpec, seq_len=None, device=None) -> RopeFrequencies:
    return RopeFrequencies.single(1.0 / (scaled_base(spec) ** spec.geometry.exponents(device)))


def hf_parameters(spec: RopeSpec) -> tuple[dict, float, int]:
    return {"rope_type": "default"}, scaled_base(spec), spec.target_length
