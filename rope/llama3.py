"""``llama3``: Llama 3.1's piecewise rule (Meta, "The Llama 3 Herd of Models", arXiv 2407.21783).

Wavelengths shorter than ``L/high_freq_factor`` are kept, longer than ``L/low_freq_factor``
are divided by ``factor``, and the band between is smoothly interpolated. Meta's constants
for 8k → 128k: factor 8, low_freq_factor 1, high_freq_factor 4. Operation order follows
transformers' ``_compute_llama3_parameters``.
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
    """Interpolation ratio of the low-frequency band; None means L'/L (Meta: 8)."""
    low_freq_factor: float = 1.0
    """L/low_freq_factor is the wavelength above which pairs are fully interpolated (Meta: 1)."""
    high_freq_factor: float = 4.0
    """L/high_freq_factor is the wavelength below which pairs are kept (Meta: 4)."""

    def __post_init__(self) -> None:
        check_positive("params.factor", self.factor, minimum=1.0, inclusive=True)
        check_positive("params.low_freq_factor", self.low_freq_factor)
        check_positive("params.high_freq_factor", self.high_freq_factor)
        if self.high_freq_factor <= self.low_freq_factor:
            raise RopeSpecError(
                f"params.high_freq_factor: expected > low_freq_factor ({self.low_freq_factor}), "
                f"got {self.high_freq_factor}"
            )


def compute(spec: RopeSpec, seq_len=None, device=None) -> RopeFrequencies:
    g, p = spec.geometry, spec.method_params
    factor = p.factor or g.scale
    inv_freq = g.base_inv_freq(device)
    low_freq_wavelen = g.original_length / p.low_freq_factor
    high_freq_wavelen = g.original_length / p.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (g.original_length / wavelen - p.low_freq_factor) / (p.high_freq_factor - p.low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return RopeFrequencies.single(torch.where(is_medium, smoothed, scaled))


def hf_parameters(spec: RopeSpec) -> tuple[dict, float, int]:
    p = spec.method_params
    params = {
        "rope_type": "llama3",
        "factor": p.factor or spec.geometry.scale,
        "low_freq_factor": p.low_freq_factor,
        "high_freq_factor": p.high_freq_factor,
        "original_max_position_embeddings": spec.original_length,
    }
    return params, spec.base, spec.target_length
