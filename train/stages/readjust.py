"""``readjust``: short-context readjustment (LongRoPE §3.3) — search ``short_factor`` at a
length ≤ L on the final model, so short inputs recover what the extension cost them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from longctx.train.schema import FactorSearchSettings, declared_length
from longctx.train.stages import search

PRODUCES = frozenset({"spec"})
RESUMES_SCORES = True


class Settings(FactorSearchSettings):
    """Short-context readjustment (LongRoPE §3.3): search ``short_factor`` at a length ≤ L."""

    kind: Literal["readjust"]
    algorithm: str = "evolution"
    objective: Literal["ppl", "needle_ppl"] = "ppl"
    max_factor: float = Field(2.0, ge=1.0)
    """Largest short factor (LongRoPE §3.3: "a smaller maximum λ")."""


def check(recipe, index: int, where: str) -> list[str]:
    stage = recipe.stages[index]
    L = declared_length(recipe)
    lines = []
    if L is not None and stage.target_length > L:
        lines.append(
            f"{where}.target_length: readjustment targets a short length <= L={L}; got {stage.target_length}"
        )
    if stage.algorithm == "dpe":
        lines.append(f"{where}.algorithm: dpe has no short factors to readjust")
        return lines
    return lines + search.settings_errors(stage, where)


plan = search.plan
preflight = search.preflight


def run(stage, ctx) -> dict:
    return search.factor_search(stage, ctx, "short_factor")
