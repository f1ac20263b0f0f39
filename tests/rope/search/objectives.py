"""Synthetic search objectives (no model): a hidden factor vector and a log-space distance."""

from __future__ import annotations

import math

from longctx.rope import RopeSpec

L, TARGET, HEAD_DIM = 128, 1024, 32
N_PAIRS = HEAD_DIM // 2
SCALE = TARGET / L


def template(**kw) -> RopeSpec:
    return RopeSpec(
        "longrope",
        base=10_000.0,
        head_dim=HEAD_DIM,
        original_length=L,
        target_length=TARGET,
        long_factor=[1.0] * N_PAIRS,
        **kw,
    )


MONOTONE_TARGET = [1 + (SCALE + 1) * (i / (N_PAIRS - 1)) ** 2 for i in range(N_PAIRS)]
"""Non-decreasing, inside [1, 1.25·s]."""

BUMPY_TARGET = [(1.0 + i * 0.4) * (1.25 if i % 4 == 1 else 1.0) for i in range(N_PAIRS)]
"""Not monotone: only a search that allows non-monotone factors can reach it."""


class Recorder:
    """``score(specs)``: distance to ``target`` (+ an n̂ term); records every spec scored."""

    def __init__(self, target, field="long_factor", n_hat_best=0, fail_after=None, n_hat_weight=0.01):
        self.target, self.field, self.n_hat_best = target, field, n_hat_best
        self.n_hat_weight = n_hat_weight
        self.seen: list[RopeSpec] = []
        self.fail_after = fail_after

    def value(self, spec: RopeSpec) -> float:
        f = getattr(spec, self.field)
        d = sum((math.log(a) - math.log(b)) ** 2 for a, b in zip(f, self.target))
        return 1.0 + d + self.n_hat_weight * abs(math.log2(spec.n_hat + 1) - math.log2(self.n_hat_best + 1))

    def __call__(self, specs):
        out = []
        for spec in specs:
            if self.fail_after is not None and len(self.seen) >= self.fail_after:
                raise SimulatedCrash(len(self.seen))
            self.seen.append(spec)
            out.append(self.value(spec))
        return out


def never_called(specs):
    raise AssertionError("score must not be called for bad input")


class SimulatedCrash(RuntimeError):
    """Raised by ``Recorder(fail_after=n)`` to interrupt a search mid-generation."""
