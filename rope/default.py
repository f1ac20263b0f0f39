"""``default``: the pretrained RoPE, unchanged (Su et al., RoFormer, arXiv 2104.09864)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from longctx.rope.tables import RopeFrequencies

if TYPE_CHECKING:
    from longctx.rope.spec import RopeSpec


@dataclass(frozen=True)
class Params:
    """No parameters: θ_i = base^(-2i/d)."""


def compute(spec: RopeSpec, seq_len=None, device=None) -> RopeFrequencies:
    return RopeFrequencies.single(spec.geometry.base_inv_freq(device))


def hf_parameters(spec: RopeSpec) -> tuple[dict, float, int]:
    """(type-specific rope parameters, rope_theta, max_position_embeddings) for a stock config."""
    return {"rope_type": "default"}, spec.base, spec.target_length
