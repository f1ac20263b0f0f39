"""``pretrain``: train the base model at its original length L with its own (default) RoPE."""

from __future__ import annotations

from typing import Literal

from longctx.train.schema import TrainStage, train_plan, window_errors

PRODUCES = frozenset({"model"})
RESUMES_SCORES = False
TRAINS = True


class Settings(TrainStage):
    """Train the base model at its original length L with the default RoPE."""

    kind: Literal["pretrain"]


def check(recipe, index: int, where: str) -> list[str]:
    stage = recipe.stages[index]
    lines = window_errors(recipe, stage, where)
    lines += [
        f"{where}.windows[{j}].rope: pretrain trains the original RoPE only"
        for j, w in enumerate(stage.windows)
        if w.rope == "rescaled"
    ]
    return lines


def plan(recipe, stage) -> str:
    return "pretrain " + train_plan(stage)


def preflight(stage, ctx) -> list[str]:
    return []


def run(stage, ctx) -> dict:
    from longctx.train.fit import fit

    return fit(stage, ctx, spec_of=ctx.base_spec)
