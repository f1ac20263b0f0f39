"""``longrope2``: critical-dimension factors (Shang et al., LongRoPE2, arXiv 2502.20082 §3.2).

Pairs whose period exceeds the pretraining length L never saw a full rotation during
training. The theoretical critical pair index is ``d_tcd = ceil((d/2) · log_b(L / 2π))``
(paper: 35 for Llama-3-8B with b=500000, d=128, L=8192). Only pairs ``i >= d_rcd`` are
searched (in [s, 2s]); pairs below follow the NTK shape ``λ_i = λ_{d_rcd}^(i/d_rcd)``.
The paper argues the real critical dimension is lower (Llama-3-8B: 30; the released
factors use 33), so ``critical_dim`` is computed by default and overridable.

Note: the formula above gives 34 for Phi-3-mini (d=96, b=10000, L=4096); the paper's 31
corresponds to L=2048. We implement the formula as written.

At inference it is stock ``longrope`` (long iff max(position_ids)+1 > L), so it exports as
``longrope``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from longctx.rope import longrope
from longctx.rope.errors import RopeSpecError
from longctx.rope.tables import RopeFrequencies

if TYPE_CHECKING:
    from longctx.rope.spec import RopeSpec

NTK_FILL_RTOL = 1e-6


@dataclass(frozen=True)
class Params:
    critical_dim: int | None = None
    """d_rcd in pairs; None computes the theoretical ``d_tcd`` from base, rotary dim and L."""
    factor: float | None = None
    """As in ``longrope``: ratio for the default attention factor; None means L'/L."""
    mscale_short: bool = True
    """As in ``longrope``: apply the attention factor to short inputs too (stock behaviour)."""

    def __post_init__(self) -> None:
        if self.critical_dim is not None and (
            isinstance(self.critical_dim, bool)
            or not isinstance(self.critical_dim, int)
            or self.critical_dim < 1
        ):
            raise RopeSpecError(f"params.critical_dim: expected an integer >= 1, got {self.critical_dim!r}")


def theoretical_critical_dim(base: float, rotary_dim: int, original_length: int) -> int:
    """``ceil((d/2) · log_b(L/2π))``: first pair whose period 2π·b^(2i/d) exceeds L."""
    return math.ceil((rotary_dim / 2) * math.log(original_length / (2 * math.pi)) / math.log(base))


def critical_dim_of(spec: RopeSpec) -> int:
    g = spec.geometry
    rcd = spec.method_params.critical_dim
    if rcd is None:
        rcd = theoretical_critical_dim(g.base, g.rotary_dim, g.original_length)
    if not 1 <= rcd < g.n_pairs:
        raise RopeSpecError(
            f"params.critical_dim: {rcd} is outside 1..{g.n_pairs - 1} for rotary_dim {g.rotary_dim}, "
            f"base {g.base:g}, L {g.original_length}; set params.critical_dim explicitly"
        )
    return rcd


def ntk_fill(critical_factor: float, critical_dim: int) -> list[float]:
    """Factors of pairs ``0 … d_rcd-1``: ``λ_i = λ_{d_rcd}^(i/d_rcd)`` (NTK shape, λ_0 = 1)."""
    return [critical_factor ** (i / critical_dim) for i in range(critical_dim)]


def long_factor_from_upper(upper, critical_dim: int) -> list[float]:
    """A full long factor from the searched part ``λ[d_rcd:]`` (first entry is λ_{d_rcd})."""
    upper = [float(v) for v in upper]
    return ntk_fill(upper[0], critical_dim) + upper


def validate(spec: RopeSpec) -> None:
    longrope.validate(spec)
    rcd = critical_dim_of(spec)
    want = ntk_fill(spec.long_factor[rcd], rcd)
    for i, (have, expect) in enumerate(zip(spec.long_factor[:rcd], want)):
        if abs(have - expect) > NTK_FILL_RTOL * expect:
            raise RopeSpecError(
                f"long_factor[{i}]: {have!r} breaks the NTK shape below critical_dim {rcd} "
                f"(expected λ_{rcd}^({i}/{rcd}) = {expect!r}); build it with "
                "rope.longrope2.long_factor_from_upper"
            )


def compute(spec: RopeSpec, seq_len=None, device=None) -> RopeFrequencies:
    return longrope.compute(spec, seq_len, device)


def hf_parameters(spec: RopeSpec) -> tuple[dict, float, int]:
    return longrope.hf_parameters(spec)
