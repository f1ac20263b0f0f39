"""DCIS: divide-and-conquer incremental search (arXiv 2412.18811; no public code).

From a warm start (historical factors, or YaRN), each round walks the segments of the
factor vector — high dimensions (low frequencies) first — and for each segment tries C
increments added to the current factors of that segment, keeps the best one if it lowers
the score, then moves on; the next round splits every segment in two and narrows the
increment range. Factors are not forced monotone (the paper's "adaptive", non-strictly
increasing factors); only the bounds ``[min_factor, max_factor]`` hold.

The paper leaves the settings open; our defaults and why:

- increments are added in log space (``λ ← λ·e^δ``): factors span 1…s, and a relative
  step means the same for a pair at 1.1 and one at 8; ``δ`` on a symmetric grid of C = 8
  values in ``[-R, R]``;
- R starts at 0.5 (×/÷ 1.65: YaRN's factors are within that of a good solution on our
  tiny models, and larger steps mostly hit the bounds) and shrinks by 0.7 per round —
  slower than halving, so the per-pair rounds at the end can still move a single pair by
  ~±40% in total (halving leaves them ±12%: too little to leave a monotone shape);
- 2 segments at first (the high/low-frequency split the paper describes), doubling each
  round up to one pair per segment: coarse moves early when the range is wide, fine
  per-pair moves late when it is narrow — the "divide and conquer";
- 6 rounds: the last round's smallest step (0.5·0.7^5/4 ≈ 2%) is near the 0.01 grid at λ ≈ 1;
- pruning (the paper's "prune increments that cannot help"): increments are tried from
  the smallest outward, in +/− pairs, and a direction stops at its first increment that
  does not improve on the previous one in that direction (the score is close to unimodal
  along one segment's step); increments that round to an already evaluated vector cost
  nothing (cache).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from longctx.rope.search.evolution import baseline_factors
from longctx.rope.search.space import Candidate, FactorSpace, SearchConfigError, check_int

if TYPE_CHECKING:
    from longctx.rope.search.runner import SearchContext
    from longctx.rope.spec import RopeSpec

DCIS_INITS = ("yarn", "pi", "ntk", "template")


@dataclass(frozen=True)
class DCISConfig:
    init: str = "yarn"
    """Warm start: "yarn", "pi", "ntk", or "template" (historical factors: the template's own set)."""
    segments: int = 2
    """Segments in the first round (high / low frequency)."""
    increments: int = 8
    """C: increments tried per segment per round (even: ± pairs)."""
    initial_range: float = 0.5
    """R of the first round: increments δ in [-R, R] on log λ."""
    shrink: float = 0.7
    """Range multiplier per round (the narrowing)."""
    rounds: int = 6
    """Rounds; segments double every round up to one pair per segment."""
    high_first: bool = True
    """Walk segments from the highest pair index (lowest frequency) down (paper heuristic)."""
    prune: bool = True
    """Stop a direction at its first non-improving increment (see module docstring)."""
    min_factor: float = 1.0
    """Smallest λ."""
    max_factor_ratio: float = 1.25
    """Largest λ as a multiple of s (LongRoPE's range, for comparable results)."""
    max_factor: float | None = None
    """Absolute largest λ; overrides ``max_factor_ratio``."""

    def validate(self, template: RopeSpec, field: str = "long_factor") -> None:
        check_int("dcis.segments", self.segments, 1)
        check_int("dcis.rounds", self.rounds, 1)
        check_int("dcis.increments", self.increments, 2)
        if self.increments % 2:
            raise SearchConfigError(
                f"dcis.increments: expected an even number (± pairs), got {self.increments}"
            )
        if self.init not in DCIS_INITS:
            raise SearchConfigError(f"dcis.init: expected one of {DCIS_INITS}, got {self.init!r}")
        if not (self.initial_range > 0 and math.isfinite(self.initial_range)):
            raise SearchConfigError(f"dcis.initial_range: expected a number > 0, got {self.initial_range!r}")
        if not 0 < self.shrink <= 1:
            raise SearchConfigError(f"dcis.shrink: expected a value in (0, 1], got {self.shrink!r}")
        self.space(template)

    def space(self, template: RopeSpec) -> FactorSpace:
        high = self.max_factor if self.max_factor is not None else self.max_factor_ratio * template.scale
        return FactorSpace(template.geometry.n_pairs, self.min_factor, high, "none")

    def for_readjust(self, max_factor: float) -> DCISConfig:
        return dataclasses.replace(self, max_factor=max_factor, init="template")


def warm_start(ctx: SearchContext, cfg: DCISConfig, space: FactorSpace) -> Candidate:
    t = ctx.template
    if cfg.init == "template":
        current = getattr(t, ctx.field) or (1.0,) * ctx.n_pairs
    else:
        method = {"yarn": "yarn", "pi": "linear", "ntk": "ntk"}[cfg.init]
        current = baseline_factors(t, method)
    return Candidate(tuple(space.clip(f) for f in current))


def segment_bounds(n_pairs: int, count: int, high_first: bool) -> list[tuple[int, int]]:
    """``count`` contiguous near-equal segments [start, stop) of the pairs, in walk order."""
    count = min(count, n_pairs)
    edges = [round(k * n_pairs / count) for k in range(count + 1)]
    bounds = [(a, b) for a, b in itertools.pairwise(edges) if b > a]
    return bounds[::-1] if high_first else bounds


def shifted(space: FactorSpace, cand: Candidate, seg: tuple[int, int], delta: float) -> Candidate:
    a, b = seg
    f = list(cand.factors)
    f[a:b] = [space.clip(v * math.exp(delta)) for v in f[a:b]]
    return Candidate(tuple(f))


def search_segment(ctx, cfg: DCISConfig, space, current, score, seg, radius):
    """Best of the C increments on ``seg`` (or ``current`` when none improves)."""
    half = cfg.increments // 2
    steps = [radius * k / half for k in range(1, half + 1)]
    if not cfg.prune:
        trials = [shifted(space, current, seg, s * sign) for s in steps for sign in (1, -1)]
        scores = ctx.evaluate(trials, cut=score)
        best = min(zip(trials, scores), key=lambda p: p[1], default=(current, score))
        return best if best[1] < score else (current, score)
    best, last = (current, score), {1: score, -1: score}
    for step in steps:
        signs = [s for s in (1, -1) if last[s] is not None]
        if not signs:
            break
        trials = [shifted(space, current, seg, step * s) for s in signs]
        for sign, trial, value in zip(signs, trials, ctx.evaluate(trials, cut=score)):
            last[sign] = value if value < last[sign] else None
            if value < best[1]:
                best = (trial, value)
    return best


def run_dcis(ctx: SearchContext, cfg: DCISConfig) -> None:
    space = cfg.space(ctx.template)
    current = warm_start(ctx, cfg, space)
    (score,) = ctx.evaluate([current])
    ctx.checkpoint(0, [(current, score)])
    for r in range(cfg.rounds):
        radius = cfg.initial_range * cfg.shrink**r
        for seg in segment_bounds(ctx.n_pairs, cfg.segments * 2**r, cfg.high_first):
            current, score = search_segment(ctx, cfg, space, current, score, seg, radius)
        ctx.checkpoint(r + 1, [(current, score)])
