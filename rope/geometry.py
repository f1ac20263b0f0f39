"""The fixed facts a RoPE method works on: base, rotary dims, original and target lengths.

Every method in this package turns a :class:`RopeGeometry` plus its own typed parameters
into per-pair inverse frequencies. The base frequencies are computed exactly the way
transformers computes them (``1 / base ** (arange(0, d, 2) / d)`` in float32), so that a
factor of 1 reproduces the stock model bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from longctx.rope.errors import RopeSpecError


@dataclass(frozen=True)
class RopeGeometry:
    base: float
    """rope_theta of the PRETRAINED model; factors are always relative to it."""
    rotary_dim: int
    """Rotary dims of one head, ``d = int(head_dim * partial_rotary_factor)``; d/2 pairs."""
    original_length: int
    """L: the context length the model was pretrained at."""
    target_length: int
    """L': the context length the extension targets."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base) and self.base > 1.0):
            raise RopeSpecError(f"base: expected a finite rope_theta > 1, got {self.base!r}")
        if self.rotary_dim < 2 or self.rotary_dim % 2:
            raise RopeSpecError(f"rotary_dim: expected an even number >= 2, got {self.rotary_dim!r}")
        if self.original_length < 1:
            raise RopeSpecError(f"original_length: expected a positive integer, got {self.original_length!r}")
        if self.target_length < self.original_length:
            raise RopeSpecError(
                f"target_length: expected >= original_length ({self.original_length}), got {self.target_length}"
            )

    @property
    def n_pairs(self) -> int:
        return self.rotary_dim // 2

    @property
    def scale(self) -> float:
        """s = L'/L, the extension ratio."""
        return self.target_length / self.original_length

    def exponents(self, device: torch.device | None = None) -> torch.Tensor:
        """2i/d for each pair i, float32 — the shape of the base frequencies.  # [d/2]"""
        return torch.arange(0, self.rotary_dim, 2, dtype=torch.int64, device=device).float() / self.rotary_dim

    def base_inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        """The pretrained model's inverse frequencies ``1 / base^(2i/d)``.  # [d/2]"""
        return 1.0 / (self.base ** self.exponents(device))


def inv_freq_from_factors(geom: RopeGeometry, factors, device: torch.device | None = None) -> torch.Tensor:
    """``1 / (λ_i · base^(2i/d))`` in the operation order of transformers' ``longrope``.  # [d/2]"""
    lam = torch.as_tensor(factors, dtype=torch.float32, device=device)
    return 1.0 / (lam * geom.base ** geom.exponents(device))


def factors_from_inv_freq(geom: RopeGeometry, inv_freq: torch.Tensor) -> list[float]:
    """Per-pair rescale factors λ_i = base_inv_freq_i / inv_freq_i (float64 for reporting)."""
    base = geom.base_inv_freq(inv_freq.device).double()
    return (base / inv_freq.double()).tolist()
