"""The stage registry: one module per stage kind, one dict, each module held to :class:`StageKind`.

A stage module holds everything its kind is (:class:`StageKind`, checked when this package is
imported — a module missing a piece fails there, naming it, not when its stage's turn comes):

- ``Settings`` — its pydantic schema (``kind: Literal["<kind>"]`` plus its keys);
- ``PRODUCES`` — what later stages may read from it: ``{"model"}``, ``{"spec"}``, both or neither;
- ``RESUMES_SCORES`` — its unfinished work on disk is scores (a rerun answers candidates from
  them, so it may resume only with the settings it started with);
- ``TRAINS`` — it trains weights (batch lines, the memory plan's training rows);
- ``check(recipe, index, where) -> list[str]`` — its checks against the rest of the recipe;
- ``plan(recipe, stage) -> str`` — its ``--dry-run`` line;
- ``preflight(stage, ctx) -> list[str]`` — data checks run before any model loads (``[]``: none);
- ``run(stage, ctx) -> dict`` — loads its model once, runs, saves; when it returns (or fails) the
  runner releases everything it prepared (``RunContext.release``) before the next stage.

Adding a stage kind = one new module + one line below. Importing this package imports no
execution code (accelerate, deepspeed, peft are imported inside ``run``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any, Protocol, get_type_hints

from longctx.train.schema import Strict
from longctx.train.stages import eval as eval_stage
from longctx.train.stages import export, finetune, pretrain, readjust, search


class StageKind(Protocol):
    """What a stage kind module provides (see the module docstring)."""

    Settings: type[Strict]
    PRODUCES: frozenset
    RESUMES_SCORES: bool
    TRAINS: bool
    check: Callable[[Any, int, str], list[str]]
    plan: Callable[[Any, Any], str]
    preflight: Callable[[Any, Any], list[str]]
    run: Callable[[Any, Any], dict]


ARITY = {"check": 3, "plan": 2, "preflight": 2, "run": 2}


def conformance(name: str, module: ModuleType) -> list[str]:
    """What ``module`` lacks of :class:`StageKind` (``[]``: it conforms), one line each."""
    problems = []
    for attr, kind in get_type_hints(StageKind).items():
        if not hasattr(module, attr):
            problems.append(f"stage kind {name!r} ({module.__name__}): missing {attr}")
            continue
        value = getattr(module, attr)
        if attr == "Settings":
            ok = inspect.isclass(value) and issubclass(value, Strict) and "kind" in value.model_fields
        elif attr in ARITY:
            ok = callable(value) and len(inspect.signature(value).parameters) == ARITY[attr]
        else:  # PRODUCES, RESUMES_SCORES, TRAINS
            ok = isinstance(value, kind) and (attr != "PRODUCES" or value <= {"model", "spec"})
        if not ok:
            problems.append(f"stage kind {name!r} ({module.__name__}): {attr} is {value!r}; expected {kind}")
    return problems


def _registry(modules: dict[str, ModuleType]) -> dict[str, ModuleType]:
    problems = [line for name, module in modules.items() for line in conformance(name, module)]
    if problems:
        raise TypeError("; ".join(problems))
    return modules


STAGES: dict[str, ModuleType] = _registry({
    "pretrain": pretrain,
    "finetune": finetune,
    "search": search,
    "readjust": readjust,
    "eval": eval_stage,
    "export": export,
})  # fmt: skip


def produces(stage, what: str) -> bool:
    """Whether ``stage`` writes a ``model`` or a ``spec`` later stages may read."""
    return what in STAGES[stage.kind].PRODUCES


def trains(stage) -> bool:
    return STAGES[stage.kind].TRAINS
