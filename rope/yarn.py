"""``yarn``: NTK-by-parts interpolation + attention temperature (Peng et al., arXiv 2309.00071).

Pairs that rotate more than ``beta_fast`` times within L keep their frequency (λ = 1), pairs
that rotate fewer than ``beta_slow`` times are interpolated by s, with a linear ramp in
between; cos/sin are multiplied by ``0.1·ln s + 1`` (paper eq. 22). Constants and the
operation order follow transformers' ``_compute_yarn_parameters`` (defaults 32 / 1,
``truncate`` rounding of the ramp bounds) so results match bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from longctx.rope.errors import RopeSpecError
from longctx.rope.params import check_positive
from longctx.rope.tables import RopeFrequencies

if TYPE_CHECKING:
    from longctx.rope.spec import RopeSpec


@dataclass(frozen=True)
class Params:
    factor: float | None = None
    """Interpolation ratio s for the low-frequency pairs; None means L'/L."""
    beta_fast: float | None = None
    """Rotations within L above which a pair is left alone (paper: 32)."""
    beta_slow: float | None = None
    """Rotations within L below which a pair is fully interpolated (paper: 1)."""
    mscale: float | None = None
    """DeepSeek-style numerator multiplier of ln s in the attention factor (with mscale_all_dim)."""
    mscale_all_dim: float | None = None
    """DeepSeek-style denominator multiplier of ln s in the attention factor."""
    truncate: bool = True
    """Round the ramp bounds to whole pairs (transformers' default; gpt-oss uses False)."""

    def __post_init__(self) -> None:
        check_positive("params.factor", self.factor, minimum=1.0, inclusive=True)
        for name in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
            check_positive(f"params.{name}", getattr(self, name))
        if (self.beta_fast or 32) <= (self.beta_slow or 1):
            raise RopeSpecError(
                f"params.beta_fast: expected > beta_slow ({self.beta_slow or 1}), got {self.beta_fast or 32}"
            )


def _mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def attention_factor(spec: RopeSpec) -> float:
    """The paper's ``0.1·ln s + 1`` unless the spec or DeepSeek-style mscales say otherwise."""
    if spec.attention_factor is not None:
        return spec.attention_factor
    p = spec.method_params
    factor = p.factor or spec.geometry.scale
    if p.mscale and p.mscale_all_dim:
        return float(_mscale(factor, p.mscale) / _mscale(factor, p.mscale_all_dim))
    return _mscale(factor)


def _correction_dim(rotations: float, dim: int, base: float, length: int) -> float:
    """Pair index (in dims) whose wavelength fits ``rotations`` times into ``length``."""
    return (dim * math.log(length / (rotations * 2 * math.pi))) / (2 * math.log(base))


def ramp_bounds(spec: RopeSpec) -> tuple[float, float]:
    """(low, high) pair indices of the ramp between "keep" and "interpolate"."""
    g, p = spec.geometry, spec.method_params
    low = _correction_dim(p.beta_fast or 32, g.rotary_dim, g.base, g.original_length)
    high = _correction_dim(p.beta_slow or 1, g.rotary_dim, g.base, g.original_length)
    if p.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, g.rotary_dim - 1)


def compute(spec: RopeSpec, seq_len=None, device=None) -> RopeFrequencies:
    g, p = spec.geometry, spec.method_params
    factor = p.factor or g.scale
    pos_freqs = g.base ** (
        torch.arange(0, g.rotary_dim, 2).to(device=device, dtype=torch.float) / g.rotary_dim
    )
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (factor * pos_freqs)
    low, high = ramp_bounds(spec)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = torch.clamp((torch.arange(g.n_pairs, dtype=torch.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp.to(device=device, dtype=torch.float)  # 1 = extrapolate (λ=1), 0 = interpolate
    inv_freq = interpolation * (1 - keep) + extrapolation * keep
    return RopeFrequencies.single(inv_freq, attention_factor(spec))


def hf_parameters(spec: RopeSpec) -> tuple[dict, float, int]:
    p = spec.method_params
    params = {
        "rope_type": "yarn",
        "factor": p.factor or spec.geometry.scale,
        "original_max_position_embeddings": spec.original_length,
    }
    for name in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
        if getattr(p, name) is not None:
            params[name] = getattr(p, name)
    if not p.truncate:
        params["truncate"] = False
    if spec.attention_factor is not None:
        params["attention_factor"] = spec.attention_factor
    return params, spec.base, spec.target_length
