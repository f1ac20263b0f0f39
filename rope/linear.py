"""``linear``: Position Interpolation (Chen et al., arXiv 2306.15595): λ_i = s for every pair.

Matches transformers' ``linear`` bit for bit: the base frequencies divided by ``factor``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from longctx.rope.params import ScaleParams
from longctx.rope.tables import RopeFrequencies

if TYPE_CHECKING:
    from longctx.rope.spec import RopeSpec


Params = ScaleParams


def compute(spec: RopeSpec, seq_len=None, device=None) -> RopeFrequencies:
    inv_freq = spec.geometry.base_inv_freq(device)
    inv_freq /= spec.method_params.ratio(spec.geometry)
    return RopeFrequencies.single(inv_freq)


def hf_parameters(spec: RopeSpec) -> tuple[dict, float, int]:
    return (
        {"rope_type": "linear", "factor": spec.method_params.ratio(spec.geometry)},
        spec.base,
        spec.target_length,
    )
