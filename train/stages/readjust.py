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
    attention: Literal["keep", "balanced", "short_original"] = "balanced"
    """The attention factor short inputs get (``rope.attention_policy``): ``balanced`` searches one
    factor for both sets that trades short ppl at ``target_length`` against long ppl at the
    spec's L' (stock-HF exportable); ``short_original`` gives short inputs 1.0 (exactly the
    pretrained RoPE; vLLM-exportable, not stock HF); ``keep`` leaves the spec's as it is."""
    balance_points: int = Field(9, ge=2)
    """Factors tried between 1 and transformers' default by the ``balanced`` search."""


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
    return search.factor_search(stage, ctx, "short_factor", prepare=_attention_policy)


def _attention_policy(stage, ctx, model, spec):
    """The template of the short-factor search under the stage's attention policy, and a record."""
    from longctx.eval.perplexity import truncated_rows
    from longctx.eval.scorer import build_scorer
    from longctx.rope.attention_policy import METHODS, balance_attention_factor, with_attention_policy

    if stage.attention == "keep" or spec.method not in METHODS:
        return spec, {"attention_policy": "keep"}
    if stage.attention == "short_original":
        return with_attention_policy(spec, "short_original"), {"attention_policy": "short_original"}
    tok = ctx.tokenizer()
    L, long_length = stage.target_length, spec.target_length
    docs = ctx.documents()
    rows_at = {n: truncated_rows([d for d in docs if len(d) >= n], n, bos_id=tok.bos_token_id, max_docs=stage.num_samples)
               for n in (L, long_length)}  # fmt: skip
    if len(rows_at[long_length]) < 1:
        from longctx.data.errors import DataError

        raise DataError(
            f"attention: balanced needs documents of >= {long_length} tokens (the spec's L'); found none"
        )
    short = build_scorer(model, rows_at[L], "ppl", factor_set="short")
    long = build_scorer(model, rows_at[long_length], "ppl", factor_set="long")
    chosen, table = balance_attention_factor(spec, short, long, points=stage.balance_points)
    ctx.log(f"[{stage.name}] attention factor {chosen.attention_factor:.4f} for both sets (balanced)")
    return chosen, {
        "attention_policy": "balanced",
        "attention_factor": chosen.attention_factor,
        "balance": table,
    }
