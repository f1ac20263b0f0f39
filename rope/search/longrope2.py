"""LongRoPE2 search (Shang et al., arXiv 2502.20082 §3.2): critical dimension + evolution.

Pairs below the critical dimension completed full periods during pretraining and are
only NTK-shaped (``λ_i = λ_{d_rcd}^(i/d_rcd)``, :func:`rope.longrope2.ntk_fill`); the pairs
at and above it are searched in ``[s, 2s]``, strictly increasing, by LongRoPE's evolution
(population 64, 40 iterations, p = 0.3; :mod:`rope.search.evolution`). The initial
population spans candidate critical dims — from the pair with 10 periods within L up to the
theoretical ``d_tcd`` — each with ``λ[d_rcd:]`` at a random ``s' ∈ [s, 2s]``; a candidate
keeps its critical dim for life, so selection picks the critical dim as well (the paper
finds the real one below ``d_tcd``: 30 vs 35 for LLaMA3-8B).

Strictly increasing versus "set λ[d_rcd:] = s'": a constant block is not strictly
increasing, so the seed is the smallest strictly increasing grid vector starting at s'
(``s' + 0.01·j``). The default objective is needle-driven perplexity (``needle_ppl``;
plain-PPL search cost 3.35 RULER-128k points in the paper's ablation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from longctx.rope.longrope2 import long_factor_from_upper, theoretical_critical_dim
from longctx.rope.search.evolution import Operators, PopulationConfig, evolve
from longctx.rope.search.space import GRID, Candidate, FactorSpace, SearchConfigError, snap

SEED_STREAM = 1_000_000
"""Generation number of the seed draws (distinct from the initial mutants' stream 0)."""

if TYPE_CHECKING:
    from longctx.rope.search.runner import SearchContext
    from longctx.rope.spec import RopeSpec


@dataclass(frozen=True)
class LongRoPE2Config(PopulationConfig):
    """LongRoPE's evolution loop (:class:`PopulationConfig`: population 64, 40 iterations,
    p = 0.3 as LongRoPE2, arXiv 2502.20082 §3.2; parents / children / crossover as LongRoPE's) over the
    pairs above the critical dimension."""

    NAME: ClassVar[str] = "longrope2"

    critical_dim: int | None = None
    """Fixed d_rcd in pairs; None spans the initial population over candidate critical dims."""
    init_min_periods: float = 10.0
    """Smallest candidate critical dim: the pair whose period fits this many times in L (paper: 10)."""
    min_ratio: float = 1.0
    """Searched λ lower bound as a multiple of s (paper: s)."""
    max_ratio: float = 2.0
    """Searched λ upper bound as a multiple of s (paper: 2s)."""

    def validate(self, template: RopeSpec, field: str = "long_factor") -> None:
        if field != "long_factor":
            raise SearchConfigError("longrope2: field: the critical-dimension search is for long_factor only")
        self.validate_population()
        n = template.geometry.n_pairs
        for rcd in self.critical_dims(template):
            if not 1 <= rcd < n:
                raise SearchConfigError(f"longrope2.critical_dim: expected 1..{n - 1}, got {rcd}")
            space = self.space(template)
            space.make_monotone([space.low] * n, rcd)  # raises when the range cannot hold them

    def space(self, template: RopeSpec) -> FactorSpace:
        s = template.scale
        return FactorSpace(template.geometry.n_pairs, self.min_ratio * s, self.max_ratio * s, "increasing")

    def critical_dims(self, template: RopeSpec) -> list[int]:
        """Candidate critical dims of the initial population (one when ``critical_dim`` is set)."""
        if self.critical_dim is not None:
            return [self.critical_dim]
        g = template.geometry
        tcd = theoretical_critical_dim(g.base, g.rotary_dim, g.original_length)
        low = math.ceil(
            g.n_pairs * math.log(g.original_length / (self.init_min_periods * 2 * math.pi)) / math.log(g.base)
        )
        tcd = min(max(tcd, 1), g.n_pairs - 1)
        return list(range(min(max(low, 1), tcd), tcd + 1))


def _finish(space: FactorSpace):
    def finish(parent: Candidate, factors: list[float], n_hat: int) -> Candidate:
        rcd = parent.critical_dim
        return Candidate(tuple(long_factor_from_upper(factors[rcd:], rcd)), 0, rcd)

    return finish


def initial_seeds(ctx: SearchContext, cfg: LongRoPE2Config, space: FactorSpace) -> list[Candidate]:
    """Per candidate critical dim (round robin): λ[d_rcd:] = s' + 0.01·j, s' ∈ [s, 2s] on the grid."""
    rng = ctx.rng(SEED_STREAM)
    dims = cfg.critical_dims(ctx.template)
    n = ctx.n_pairs
    seeds: dict[tuple, Candidate] = {}
    for k in range(cfg.population * 4):
        if len(seeds) == cfg.population:
            break
        rcd = dims[k % len(dims)]
        top = snap(space.high - GRID * (n - rcd - 1))
        s_prime = space.resample_between(rng, None, None)
        s_prime = min(s_prime, top)
        upper = [snap(s_prime + GRID * j) for j in range(n - rcd)]
        cand = Candidate(tuple(long_factor_from_upper(upper, rcd)), 0, rcd)
        seeds.setdefault(cand.key, cand)
    return list(seeds.values())


def run_longrope2(ctx: SearchContext, cfg: LongRoPE2Config) -> None:
    space = cfg.space(ctx.template)
    ops = Operators(space, (0,), start=lambda c: c.critical_dim, finish=_finish(space))
    evolve(ctx, cfg, ops, initial_seeds(ctx, cfg, space))
