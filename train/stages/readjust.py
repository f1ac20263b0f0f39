"""``readjust``: short-context readjustment (LongRoPE §3.3) — search ``short_factor`` at a
length ≤ L on the final model, so short inputs recover what the extension cost them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from longctx.train.schema import FactorSearchSettings, declared_length
from longctx.train.stages import search

PRODUCES = frozenset({"spec"})
RESUMES_SCORES = True
TRAINS = False


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
    short_tolerance: float | None = Field(None, ge=0.0)
    """``balanced`` with a short-quality budget: the factor best for long inputs among those that
    cost short perplexity at ``target_length`` at most this fraction (0.02: 2 %) over factor 1.0.
    None: the factor whose worse relative loss (short or long) is smallest."""
    retrieval_weight: float = Field(1.0, ge=0.0)
    """Weight of retrieval at ``target_length`` in the short-factor objective: score =
    ppl / ppl₀ + w · needle-ppl / needle-ppl₀ (₀: the starting spec), the needle term being the
    loss on the answer tokens of needles planted in real documents (LongRoPE2 §3.2's needle-driven
    objective, one needle at mid depth; passkey prompts where a needle does not fit the length).
    0: perplexity only (LongRoPE §3.3)."""


def check(recipe, index: int, where: str) -> list[str]:
    stage = recipe.stages[index]
    L = declared_length(recipe)
    lines = []
    if L is not None and stage.target_length > L:
        lines.append(
            f"{where}.target_length: readjustment targets a short length <= L={L}; got {stage.target_length}"
        )
    if search.searches(stage) == "positions":
        lines.append(
            f"{where}.algorithm: {stage.algorithm} searches positions; it has no short factors to readjust"
        )
        return lines
    return lines + search.settings_errors(stage, where)


plan = search.plan
preflight = search.preflight


def run(stage, ctx) -> dict:
    """The short factors at ``target_length`` ≤ L under the stage's attention policy, scored on
    perplexity (plus retrieval at L, ``retrieval_weight``); never worse than the starting ones."""
    import dataclasses

    from longctx.rope import apply_rope
    from longctx.rope.search import readjust

    s = search.setup(stage, ctx, "short")
    start, record = _attention_policy(stage, ctx, s.model, s.start, s.scorer)
    apply_rope(s.model, start)
    scorer, more = _objective(stage, ctx, s.model, start, s.scorer)
    record.update(more)
    result = readjust(
        stage.algorithm, start, scorer, stage.target_length, max_factor=stage.max_factor, **s.run_kwargs
    )
    # a readjustment never leaves short inputs worse than it found them: the starting short
    # factors are a candidate too (an evolution's first population need not contain them)
    record["start_score"] = start_score = scorer([start])[0]
    if start_score <= result.score:
        result = dataclasses.replace(result, spec=start, score=start_score)
        record["kept_start"] = True
        ctx.log(f"[{stage.name}] no candidate beat the starting short factors ({start_score:.4f}); kept them")
    return search.finish(stage, ctx, result, record)


def _retrieval_samples(stage, ctx) -> list:
    """One needle at mid depth in each of ``num_samples`` real documents of ``target_length``
    tokens; where a needle and its question do not fit that length (L = 128), passkey prompts at
    spread depths instead (what the tiny base is pretrained to retrieve)."""
    from longctx.data.errors import DataError
    from longctx.data.needle import needle_ppl_sample
    from longctx.data.passkey import passkey_sample

    tok, L, seed = ctx.tokenizer(), stage.target_length, ctx.recipe.seed
    docs = [d for d in ctx.search_documents() if len(d) >= L][: stage.num_samples]
    try:
        return [needle_ppl_sample(tok, doc, L, [0.5], seed=seed + i) for i, doc in enumerate(docs)]
    except DataError:
        n = stage.num_samples
        return [passkey_sample(tok, L, depth=(i + 0.5) / n, seed=seed + i) for i in range(n)]


def _objective(stage, ctx, model, template, scorer):
    """Perplexity plus, with ``retrieval_weight`` > 0, retrieval at ``target_length``: a readjustment
    that lowers short perplexity by breaking retrieval at L scores worse than one that keeps it."""
    if stage.retrieval_weight == 0 or stage.objective != "ppl":
        return scorer, {}
    from longctx.eval.scorer import build_scorer

    gate = _start_retrieves(stage, ctx, model)
    if not gate["retrieves"]:
        # a model that retrieves nothing at L gives the needle term no signal to keep: perplexity only
        ctx.log(
            f"[{stage.name}] passkey at L={stage.target_length}: {gate['accuracy']:.0f} %; retrieval term left out"
        )
        return scorer, {"retrieval_gate": gate}
    needles = build_scorer(
        model, _retrieval_samples(stage, ctx), "needle_ppl", factor_set="short", cache=scorer.cache
    )
    ppl0, needle0 = scorer([template])[0], needles([template])[0]
    w = stage.retrieval_weight

    def combined(specs):
        return [p / ppl0 + w * n / needle0 for p, n in zip(scorer(specs), needles(specs))]

    return combined, {
        "retrieval_gate": gate,
        "objective_terms": {"ppl_start": ppl0, "needle_ppl_start": needle0, "retrieval_weight": w},
    }


def _start_retrieves(stage, ctx, model) -> dict:
    """Passkey accuracy at ``target_length`` of the model as the search starts (its starting spec
    installed): the retrieval term joins the objective only where the model retrieves at L."""
    from longctx.eval.passkey import passkey_eval, passkey_samples

    n, tok = stage.num_samples, ctx.tokenizer()
    samples = passkey_samples(
        tok, [stage.target_length], [(i + 0.5) / n for i in range(n)], seed=ctx.recipe.seed + 7
    )
    accuracy = passkey_eval(model, tok, samples, progress=False)["accuracy"]
    return {"passkey_samples": n, "accuracy": accuracy, "retrieves": accuracy > 0}


def _attention_policy(stage, ctx, model, spec, scorer):
    """The template of the short-factor search under the stage's attention policy, and a record.
    ``balanced`` scores short inputs with the search's own scorer when it is plain perplexity at
    ``target_length`` (same rows; its cache then serves the search's first evaluations)."""
    from longctx.eval.perplexity import truncated_rows
    from longctx.eval.scorer import build_scorer
    from longctx.rope.attention_policy import METHODS, balance_attention_factor, with_attention_policy

    if stage.attention == "keep" or spec.method not in METHODS:
        return spec, {"attention_policy": "keep"}
    if stage.attention == "short_original":
        return with_attention_policy(spec, "short_original"), {"attention_policy": "short_original"}
    tok, docs = ctx.tokenizer(), ctx.search_documents()

    def rows(n: int) -> list:
        return truncated_rows(
            [d for d in docs if len(d) >= n], n, bos_id=tok.bos_token_id, max_docs=stage.num_samples
        )

    long_rows = rows(spec.target_length)
    if not long_rows:
        from longctx.data.errors import DataError

        raise DataError(
            f"attention: balanced needs documents of >= {spec.target_length} tokens (the spec's L'); found none"
        )
    short = (
        scorer
        if stage.objective == "ppl"
        else build_scorer(model, rows(stage.target_length), "ppl", factor_set="short", cache=scorer.cache)
    )
    long = build_scorer(model, long_rows, "ppl", factor_set="long", cache=scorer.cache)
    chosen, table = balance_attention_factor(
        spec, short, long, points=stage.balance_points, short_tolerance=stage.short_tolerance
    )
    ctx.log(f"[{stage.name}] attention factor {chosen.attention_factor:.4f} for both sets (balanced)")
    return chosen, {
        "attention_policy": "balanced",
        "attention_factor": chosen.attention_factor,
        "short_tolerance": stage.short_tolerance,
        "balance": table,
    }
