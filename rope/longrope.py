"""``longrope``: searched per-pair factors (Ding et al., LongRoPE, arXiv 2402.13753).

Two factor sets: ``long_factor`` serves inputs longer than L, ``short_factor`` (default all
ones = the pretrained RoPE) inputs of at most L — Phi-3's convention, and what transformers'
``longrope`` type reads. Attention factor ("mscale", paper §3.3 / Phi-3):
``sqrt(1 + ln s / ln L)`` with s = L'/L, applied to BOTH sets as stock transformers does.
``mscale_short=False`` applies it to long inputs only (short rows then use exactly the
pretrained RoPE); such a spec cannot be exported to a stock config unless the factor is 1.
``n_hat`` (paper §3.2, "start tokens") is a spec field handled by the installed rotary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from longctx.rope.errors import RopeSpecError
from longctx.rope.geometry import inv_freq_from_factors
from longctx.rope.params import check_positive
from longctx.rope.tables import RopeFrequencies

if TYPE_CHECKING:
    from longctx.rope.spec import RopeSpec


@dataclass(frozen=True)
class Params:
    factor: float | None = None
    """Ratio used for the default attention factor (transformers' optional ``factor``); None: L'/L."""
    mscale_short: bool = True
    """Apply the attention factor to the short set too (stock transformers behaviour)."""

    def __post_init__(self) -> None:
        check_positive("params.factor", self.factor)


def validate(spec: RopeSpec) -> None:
    if spec.long_factor is None:
        raise RopeSpecError(
            f"long_factor: required for method {spec.method!r} ({spec.geometry.n_pairs} floats)"
        )


def default_attention_factor(spec: RopeSpec) -> float:
    factor = spec.method_params.factor or spec.geometry.scale
    if factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(spec.original_length))


def attention_factors(spec: RopeSpec) -> tuple[float, float]:
    """(short, long) attention factors."""
    long = spec.attention_factor if spec.attention_factor is not None else default_attention_factor(spec)
    return (long if spec.method_params.mscale_short else 1.0), long


def short_factor_of(spec: RopeSpec) -> tuple[float, ...]:
    return spec.short_factor if spec.short_factor is not None else (1.0,) * spec.geometry.n_pairs


def compute(spec: RopeSpec, seq_len=None, device=None) -> RopeFrequencies:
    g = spec.geometry
    short_scale, long_scale = attention_factors(spec)
    return RopeFrequencies(
        short_inv_freq=inv_freq_from_factors(g, short_factor_of(spec), device),
        long_inv_freq=inv_freq_from_factors(g, spec.long_factor, device),
        short_attention_factor=short_scale,
        long_attention_factor=long_scale,
    )


def hf_parameters(spec: RopeSpec) -> tuple[dict, float, int]:
    short_scale, long_scale = attention_factors(spec)
    if short_scale != long_scale:
        from longctx.rope.errors import RopeExportError

        raise RopeExportError(
            f"mscale_short=False gives short inputs attention factor 1 and long inputs {long_scale:.6g}, "
            "but stock longrope applies one attention factor to both; set params.mscale_short=true "
            "(or attention_factor=1) to export"
        )
    params = {
        "rope_type": "longrope",
        "long_factor": list(spec.long_factor),
        "short_factor": list(short_factor_of(spec)),
        "original_max_position_embeddings": spec.original_length,
    }
    if spec.method_params.factor is not None:
        params["factor"] = spec.method_params.factor
    if spec.attention_factor is not None:
        params["attention_factor"] = spec.attention_factor
    # vLLM, TGI and MLX read these two and ignore attention_factor (without them they compute
    # sqrt(1 + ln(max_pos / L) / ln L) themselves); transformers reads attention_factor and logs
    # them as unrecognised keys. Both sides then scale cos/sin exactly as this spec does.
    params["short_mscale"], params["long_mscale"] = short_scale, long_scale
    return params, spec.base, spec.target_length
