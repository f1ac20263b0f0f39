"""What a method computes for one geometry: inverse frequencies per factor set + attention factor."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RopeFrequencies:
    """The two factor sets a rotary embedding chooses between (identical for one-set methods).

    ``short`` serves inputs whose length is <= L, ``long`` inputs longer than L (the rule
    transformers applies to ``longrope``); methods without a short set return the same
    tensor for both. The attention factor (YaRN/LongRoPE "mscale") multiplies cos and sin.
    """

    short_inv_freq: torch.Tensor  # [d/2] float32
    long_inv_freq: torch.Tensor  # [d/2] float32
    short_attention_factor: float
    long_attention_factor: float

    @classmethod
    def single(cls, inv_freq: torch.Tensor, attention_factor: float = 1.0) -> RopeFrequencies:
        return cls(inv_freq, inv_freq, float(attention_factor), float(attention_factor))
