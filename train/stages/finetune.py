"""``finetune``: mixed-context-window training (LongRoPE2 §3.3) — short rows keep the original
RoPE, long rows use the rescaled spec read from ``spec_from``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from longctx.train.schema import Strict, TrainStage, train_plan, window_errors

PRODUCES = frozenset({"model", "spec"})
RESUMES_SCORES = False
TRAINS = True


class RetentionCfg(Strict):
    """Short-context retention: on the original-RoPE rows the loss adds ``kl_weight`` × KL(frozen
    starting model ‖ trained model) per counted token, the teacher's logits taken a slice of tokens
    at a time through the tiled loss (``train.tiled_loss.Teacher``; no ``[tokens, vocab]`` tensor).
    The teacher is a frozen copy of the stage's starting model (compute dtype, outside the engine:
    one more model's weights per process) under the RoPE it was saved with."""

    kl_weight: float = Field(gt=0)


class Settings(TrainStage):
    """Mixed-context-window fine-tuning (LongRoPE2 §3.3) with a searched spec."""

    kind: Literal["finetune"]
    spec_from: str | None = None
    """Stage whose RoPE spec to train with; default: the latest earlier spec-producing stage."""
    rope: Literal["spec", "yarn", "linear", "ntk"] = "spec"
    """The RoPE of the long rows: ``spec`` — the searched spec of ``spec_from``; ``yarn`` /
    ``linear`` (PI) / ``ntk`` — that baseline built for the longest window, with no search (the
    fine-tuned YaRN that LongRoPE2 compares against). Saved as the stage's spec."""
    retention: RetentionCfg | None = None
    """Keep short rows close to the starting model (:class:`RetentionCfg`); None: plain LM loss."""


def check(recipe, index: int, where: str) -> list[str]:
    stage = recipe.stages[index]
    lines = window_errors(recipe, stage, where)
    if stage.rope != "spec" and stage.spec_from is not None:
        lines.append(f"{where}.spec_from: rope: {stage.rope} builds its own RoPE; remove spec_from")
    if stage.retention is not None and not any(w.rope == "original" for w in stage.windows):
        lines.append(f"{where}.retention: needs a window with rope: original (the rows it keeps close)")
    return lines


def plan(recipe, stage) -> str:
    return "finetune " + train_plan(stage)


def preflight(stage, ctx) -> list[str]:
    return []


def run(stage, ctx) -> dict:
    from longctx.train.fit import fit

    if stage.rope == "spec":
        return fit(stage, ctx, spec_of=lambda model: ctx.spec_for(stage, model))
    longest = max(w.length for w in stage.windows)
    return fit(stage, ctx, spec_of=lambda model: ctx.baseline_spec(model, stage.rope, longest))
