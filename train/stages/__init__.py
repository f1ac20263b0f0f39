"""The stage registry: one module per stage kind, one dict.

A stage module holds everything its kind is:

- ``Settings`` — its pydantic schema (``kind: Literal["<kind>"]`` plus its keys);
- ``PRODUCES`` — what later stages may read from it: ``{"model"}``, ``{"spec"}``, both or neither;
- ``RESUMES_SCORES`` — its unfinished work on disk is scores (a rerun answers candidates from
  them, so it may resume only with the settings it started with);
- ``check(recipe, index, where) -> list[str]`` — its checks against the rest of the recipe;
- ``plan(recipe, stage) -> str`` — its ``--dry-run`` line;
- ``preflight(stage, ctx) -> list[str]`` (optional) — data checks run before any model loads;
- ``run(stage, ctx) -> dict`` — loads its model once, runs, saves; when it returns (or fails) the
  runner releases everything it prepared (``RunContext.release``) before the next stage.

Adding a stage kind = one new module + one line below. Importing this package imports no
execution code (accelerate, deepspeed, peft are imported inside ``run``).
"""

from __future__ import annotations

from types import ModuleType

from longctx.train.stages import eval as eval_stage
from longctx.train.stages import export, finetune, pretrain, readjust, search

STAGES: dict[str, ModuleType] = {
    "pretrain": pretrain,
    "finetune": finetune,
    "search": search,
    "readjust": readjust,
    "eval": eval_stage,
    "export": export,
}


def produces(stage, what: str) -> bool:
    """Whether ``stage`` writes a ``model`` or a ``spec`` later stages may read."""
    return what in STAGES[stage.kind].PRODUCES


def trains(stage) -> bool:
    return getattr(STAGES[stage.kind], "TRAINS", False)
