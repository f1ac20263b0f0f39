"""``finetune``: mixed-context-window training (LongRoPE2 §3.3) — short rows keep the original
RoPE, long rows use the rescaled spec read from ``spec_from``."""

from __future__ import annotations

from typing import Literal

from longctx.train.schema import TrainStage, train_plan, window_errors

PRODUCES = frozenset({"model", "spec"})
RESUMES_SCORES = False
TRAINS = True


class Settings(TrainStage):
    """Mixed-context-window fine-tuning (LongRoPE2 §3.3) with a searched spec."""

    kind: Literal["finetune"]
    spec_from: str | None = None
    """Stage whose RoPE spec to train with; default: the latest earlier spec-producing stage."""


def check(recipe, index: int, where: str) -> list[str]:
    return window_errors(recipe, recipe.stages[index], where)


def plan(recipe, stage) -> str:
    return "finetune " + train_plan(stage)


def preflight(stage, ctx) -> list[str]:
    return []


def run(stage, ctx) -> dict:
    from longctx.train.fit import fit

    return fit(stage, ctx, spec_of=lambda model: ctx.spec_for(stage, model))
