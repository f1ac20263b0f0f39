"""The searched object: per-pair factor vectors on a 0.01 grid, their bounds and constraints.

LongRoPE (arXiv 2402.13753 §3.2) searches each λ_i on a 0.01 grid in ``[1, 1.25·s]`` (the
public code: ``[1, 1+s]``) under ``λ_i ≤ λ_{i+1}``; LongRoPE2 (arXiv 2502.20082 §3.2) only the
pairs at or above the critical dimension, in ``[s, 2s]``, strictly increasing; DCIS (arXiv
2412.18811) drops monotonicity. A :class:`FactorSpace` holds those rules; a
:class:`Candidate` is one point of it (factors, n̂, critical dim) with a hashable
:attr:`Candidate.key` on the grid, the key of the evaluation cache and of deduplication.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from longctx.rope.errors import RopeSpecError

GRID = 0.01
"""Factor resolution (LongRoPE §3.2: "0.01 granularity")."""

MONOTONE_MODES = ("none", "nondecreasing", "increasing")


class SearchConfigError(RopeSpecError):
    """A search configuration or its inputs are invalid (raised before any model work)."""


def snap(value: float, grid: float = GRID) -> float:
    """Nearest grid point, as a clean float (``round(k·grid, 10)``)."""
    return round(round(value / grid) * grid, 10)


@dataclass(frozen=True)
class Candidate:
    factors: tuple[float, ...]
    """λ per pair (all pairs, relative to the original base)."""
    n_hat: int = 0
    """LongRoPE start positions that keep the original RoPE."""
    critical_dim: int | None = None
    """LongRoPE2 critical dimension of this candidate (pairs below follow the NTK shape)."""

    @property
    def key(self) -> tuple:
        """Cache / dedupe key: factors rounded to the 0.01 grid, plus n̂ and critical dim."""
        return (tuple(round(f, 2) for f in self.factors), self.n_hat, self.critical_dim)

    def to_json(self) -> dict:
        return {"factors": list(self.factors), "n_hat": self.n_hat, "critical_dim": self.critical_dim}

    @classmethod
    def from_json(cls, data: dict) -> Candidate:
        return cls(tuple(data["factors"]), int(data["n_hat"]), data.get("critical_dim"))


@dataclass(frozen=True)
class FactorSpace:
    n_pairs: int
    """d/2 rotary pairs."""
    low: float
    """Smallest allowed λ of a searched pair."""
    high: float
    """Largest allowed λ of a searched pair."""
    monotone: str = "nondecreasing"
    """"nondecreasing" (LongRoPE), "increasing" (LongRoPE2) or "none" (DCIS)."""
    grid: float = GRID
    """Resolution of the searched factors."""

    def __post_init__(self) -> None:
        if self.monotone not in MONOTONE_MODES:
            raise SearchConfigError(f"monotone: expected one of {MONOTONE_MODES}, got {self.monotone!r}")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low <= 0:
            raise SearchConfigError(
                f"factor range: expected finite bounds > 0, got [{self.low}, {self.high}]"
            )
        if snap(self.high, self.grid) < snap(self.low, self.grid):
            raise SearchConfigError(
                f"factor range: empty search range [{self.low:g}, {self.high:g}]; expected low <= high"
            )

    def clip(self, value: float) -> float:
        return min(max(snap(value, self.grid), snap(self.low, self.grid)), snap(self.high, self.grid))

    def is_valid(self, factors, start: int = 0) -> bool:
        """Bounds and monotone constraint on pairs ``start…`` (pairs below are not searched)."""
        part = factors[start:]
        eps = 1e-9
        if any(f < self.low - eps or f > self.high + eps for f in part):
            return False
        if self.monotone == "nondecreasing":
            return all(a <= b + eps for a, b in itertools.pairwise(part))
        if self.monotone == "increasing":
            return all(a < b - eps for a, b in itertools.pairwise(part))
        return True

    def resample_between(self, rng: np.random.Generator, left: float | None, right: float | None) -> float:
        """A uniform grid value between the neighbours (LongRoPE mutation), within the bounds."""
        step = self.grid if self.monotone == "increasing" else 0.0
        lo = self.low if left is None or self.monotone == "none" else max(self.low, left + step)
        hi = self.high if right is None or self.monotone == "none" else min(self.high, right - step)
        k_lo, k_hi = math.ceil(lo / self.grid - 1e-9), math.floor(hi / self.grid + 1e-9)
        if k_hi < k_lo:
            return math.nan
        return round(int(rng.integers(k_lo, k_hi + 1)) * self.grid, 10)

    def mutate(self, rng: np.random.Generator, factors, prob: float, start: int = 0) -> list[float]:
        """Resample each pair ``i ≥ start`` with probability ``prob`` between its neighbours."""
        out = list(factors)
        for i in range(start, self.n_pairs):
            if rng.random() >= prob:
                continue
            left = out[i - 1] if i > start else None
            right = out[i + 1] if i + 1 < self.n_pairs else None
            value = self.resample_between(rng, left, right)
            if not math.isnan(value):
                out[i] = value
        return out

    def make_monotone(self, factors, start: int = 0) -> list[float]:
        """Clip to the bounds and repair the order (running max, +grid when strict)."""
        out = list(factors[:start]) + [self.clip(f) for f in factors[start:]]
        step = self.grid if self.monotone == "increasing" else 0.0
        if self.monotone == "none":
            return out
        for i in range(start + 1, self.n_pairs):
            out[i] = max(out[i], snap(out[i - 1] + step, self.grid))
        if not self.is_valid(out, start):
            raise SearchConfigError(
                f"factor range: [{self.low:g}, {self.high:g}] cannot hold {self.n_pairs - start} "
                f"{self.monotone} factors on a {self.grid:g} grid"
            )
        return out


def check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SearchConfigError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def check_prob(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise SearchConfigError(f"{name}: expected a probability in [0, 1], got {value!r}")
