"""``search``: the long factors at ``target_length`` — LongRoPE evolution, LongRoPE2's
needle-driven critical-dimension search, DCIS — warm-started from the latest earlier spec
(progressive extension); or DPE's per-group scales (training-free, arXiv 2504.18857).

The samples are built (and their count checked) before the model loads; the model is loaded
once onto the accelerator's device in the recipe's compute dtype; the population is split
over ranks by ``rope.search`` (every rank scores its share, the main process writes).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from longctx.train.schema import FactorSearchSettings, declared_length

PRODUCES = frozenset({"spec"})
RESUMES_SCORES = True

DPE_SETTINGS = {"groups": 8, "key_fraction": 0.75, "local_window": 1024, "scales": None}
"""DPE defaults (arXiv 2504.18857): 8 groups, top 48 of 64 pairs (README), W = 1024, sweep 1…L'/W."""


class Settings(FactorSearchSettings):
    kind: Literal["search"]
    attention_factor: float | None = Field(None, ge=1.0)
    """The attention factor both factor sets get while candidates are scored, kept in the spec
    (stock transformers' ``longrope`` ``attention_factor``; ``rope.attention_policy`` ``balanced``).
    None: the starting spec's — transformers' default sqrt(1 + ln s / ln L) for the target, which
    short inputs pay too, unless an earlier stage this one warm-starts from set one. 1.0 keeps short
    inputs exactly the pretrained model's in a training-free export (short factors all 1) and
    searches the long factors knowing it."""


def check(recipe, index: int, where: str) -> list[str]:
    stage = recipe.stages[index]
    L = declared_length(recipe)
    lines = []
    if L is not None and stage.target_length <= L:
        lines.append(
            f"{where}.target_length: expected > L={L} (the model's original length); got {stage.target_length}"
        )
    if stage.attention_factor is not None and stage.algorithm == "dpe":
        lines.append(f"{where}.attention_factor: dpe changes positions, not factor sets; remove it")
    return lines + settings_errors(stage, where)


def settings_errors(stage, where: str) -> list[str]:
    """The algorithm's own parameters, checked by the algorithm (no model needed)."""
    if stage.algorithm == "dpe":
        unknown = sorted(set(stage.settings) - set(DPE_SETTINGS))
        return (
            [f"{where}: settings.{unknown[0]}: unknown DPE setting (allowed: {', '.join(DPE_SETTINGS)})"]
            if unknown
            else []
        )
    from longctx.rope.search import resolve_config
    from longctx.rope.search.space import SearchConfigError

    try:
        resolve_config(stage.algorithm, stage.settings or None)
    except (SearchConfigError, TypeError) as err:
        return [f"{where}: settings: {err}"]
    return []


def plan(recipe, stage) -> str:
    return f"{stage.kind} {stage.algorithm} → L'={stage.target_length} ({stage.objective})"


def preflight(stage, ctx) -> list[str]:
    """Enough long documents for the objective (needs the tokenised data, not the model)."""
    length = stage.target_length
    docs = ctx.search_documents()
    found = sum(len(d) >= length for d in docs)
    if found >= stage.num_samples:
        return []
    longest = sorted((len(d) for d in docs), reverse=True)[:5]
    where = "data.validation" if ctx.recipe.data.validation else "the data"
    return [
        f"stages.{stage.name}.num_samples: {stage.objective} at {length} tokens needs {stage.num_samples} "
        f"documents of >= {length} tokens; {where} has {found} (longest: {longest}); "
        "add longer sources or lower num_samples"
    ]


def search_samples(stage, ctx) -> list:
    """Long documents truncated to the target (ppl) or needle-driven samples built in them."""
    from longctx.data.errors import DataError
    from longctx.data.synthetic import needle_ppl_sample
    from longctx.eval.perplexity import truncated_rows

    problems = preflight(stage, ctx)
    if problems:
        raise DataError(problems[0])
    length, tokenizer = stage.target_length, ctx.tokenizer()
    long_docs = [d for d in ctx.search_documents() if len(d) >= length]
    if stage.objective == "ppl":
        return truncated_rows(long_docs, length, bos_id=tokenizer.bos_token_id, max_docs=stage.num_samples)
    return [
        needle_ppl_sample(tokenizer, doc, length, stage.needle_depths, seed=ctx.recipe.seed + i)
        for i, doc in enumerate(long_docs[: stage.num_samples])
    ]


def factor_search(stage, ctx, field: str, prepare=None, objective=None) -> dict:
    """Search ``field`` ("long_factor" or "short_factor") of the stage's spec on its model;
    ``prepare(stage, ctx, model, spec, scorer) -> (spec, record)`` may change the template first and
    ``objective(stage, ctx, model, template, scorer) -> (score, record)`` extend the scorer."""
    import dataclasses

    from longctx.eval.scorer import build_scorer
    from longctx.rope import apply_rope
    from longctx.rope.attention_policy import with_attention_policy
    from longctx.rope.search import readjust, run_search
    from longctx.rope.search.runner import factor_template

    samples = search_samples(stage, ctx)
    model = ctx.load_model(stage)
    previous = ctx.spec_for(stage, model)
    stage_dir = ctx.stage_dir(stage.name)
    kwargs = dict(
        config=stage.settings or None,
        out_dir=stage_dir / "search",
        seed=ctx.recipe.seed,
        max_evaluations=stage.max_evaluations,
        progress=ctx.accelerator.is_main_process,
    )
    kind = "long" if field == "long_factor" else "short"
    scorer = build_scorer(
        model, samples, stage.objective, factor_set=kind, abandon_margin=stage.abandon_margin
    )
    record = {}
    if prepare is not None:
        previous, record = prepare(stage, ctx, model, previous, scorer)
    apply_rope(model, previous)
    if objective is not None:
        scorer, more = objective(stage, ctx, model, previous, scorer)
        record.update(more)
    if field == "long_factor":
        # run_search turns a non-longrope template into all-one factors with the same geometry
        template = previous.replace(target_length=stage.target_length)
        attention = getattr(stage, "attention_factor", None)
        if attention is not None:
            template = with_attention_policy(factor_template(template), "balanced", attention)
            record["attention_factor"] = attention
        result = run_search(stage.algorithm, template, scorer, **kwargs)
    else:
        result = readjust(
            stage.algorithm, previous, scorer, stage.target_length, max_factor=stage.max_factor, **kwargs
        )
        # a readjustment never leaves short inputs worse than it found them: the starting short
        # factors are a candidate too (an evolution's first population need not contain them)
        start = scorer([previous])[0]
        record["start_score"] = start
        if start <= result.score:
            result = dataclasses.replace(result, spec=previous, score=start)
            record["kept_start"] = True
            ctx.log(f"[{stage.name}] no candidate beat the starting short factors ({start:.4f}); kept them")
    if ctx.accelerator.is_main_process:
        result.spec.to_json(stage_dir / "spec.json")
    return {
        "score": result.score,
        "objective": stage.objective,
        "evaluations": result.evaluations,
        "rejected": result.rejected,
        **record,
        "spec": result.spec.to_dict(),
    }


def _dpe(stage, ctx) -> dict:
    """Training-free DPE: key pairs by Q/K norm at lengths ≤ L, then a per-group scale sweep."""
    import torch

    from longctx.eval.scorer import build_scorer
    from longctx.rope import RopeSpec, apply_rope
    from longctx.rope.dpe import select_key_dims
    from longctx.rope.search.dpe import detect_group_scales

    cfg = {**DPE_SETTINGS, **stage.settings}
    samples = search_samples(stage, ctx)
    model = ctx.load_model(stage)
    base = ctx.base_spec(model)
    apply_rope(model, base)
    device = ctx.device
    short = [
        torch.tensor([d[: base.original_length]], device=device)
        for d in ctx.search_documents()[: stage.num_samples]
    ]
    with torch.no_grad():
        key_dims = select_key_dims(model, short, max(1, round(cfg["key_fraction"] * base.geometry.n_pairs)))
    template = RopeSpec(
        "dpe", base.base, base.head_dim, base.original_length, stage.target_length, base.partial_rotary_factor,
        params={"group_scales": [1.0] * cfg["groups"], "key_dims": list(key_dims), "local_window": cfg["local_window"]},
    )  # fmt: skip
    scorer = build_scorer(model, samples, stage.objective, factor_set="long")
    result = detect_group_scales(
        template, scorer, groups=cfg["groups"], scales=cfg["scales"], out_dir=ctx.stage_dir(stage.name),
        progress=ctx.accelerator.is_main_process,
    )  # fmt: skip
    if ctx.accelerator.is_main_process:
        result.spec.to_json(ctx.stage_dir(stage.name) / "spec.json")
    sweeps = [{str(k): v for k, v in sweep.items()} for sweep in result.sweeps]
    return {"objective": stage.objective, "sweeps": sweeps, "spec": result.spec.to_dict()}


def run(stage, ctx) -> dict:
    if stage.algorithm == "dpe":
        return _dpe(stage, ctx)
    return factor_search(stage, ctx, "long_factor")
