"""``search``: the long factors at ``target_length`` — LongRoPE evolution, LongRoPE2's
needle-driven critical-dimension search, DCIS — warm-started from the latest earlier spec
(progressive extension); or DPE's per-group scales (training-free, arXiv 2504.18857).

The samples are built (and their count checked) before the model loads; the model is loaded
once onto the accelerator's device in the recipe's compute dtype; the population is split
over ranks by ``rope.search`` (every rank scores its share, the main process writes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from longctx.train.schema import FactorSearchSettings, declared_length

PRODUCES = frozenset({"spec"})
RESUMES_SCORES = True
TRAINS = False


class Settings(FactorSearchSettings):
    kind: Literal["search"]
    attention_factor: float | None = Field(None, ge=1.0)
    """The attention factor both factor sets get while candidates are scored, kept in the spec
    (stock transformers' ``longrope`` ``attention_factor``; ``rope.attention_policy`` ``balanced``).
    None: the starting spec's — transformers' default sqrt(1 + ln s / ln L) for the target, which
    short inputs pay too, unless an earlier stage this one warm-starts from set one. 1.0 keeps short
    inputs exactly the pretrained model's in a training-free export (short factors all 1) and
    searches the long factors knowing it."""
    score_length: int | None = Field(None, gt=0)
    """Score candidates on samples of this many tokens (a proxy: L < score_length ≤ target_length)
    under the long factor set, while the factors are searched for ``target_length`` — e.g. an 8×
    template scored at 2×, when a full-length forward costs too much per candidate. None: the
    target length."""


def check(recipe, index: int, where: str) -> list[str]:
    stage = recipe.stages[index]
    L = declared_length(recipe)
    lines = []
    if L is not None and stage.target_length <= L:
        lines.append(
            f"{where}.target_length: expected > L={L} (the model's original length); got {stage.target_length}"
        )
    if stage.score_length is not None and not (
        (L is None or stage.score_length > L) and stage.score_length <= stage.target_length
    ):
        lines.append(
            f"{where}.score_length: expected L={L} < score_length <= target_length={stage.target_length}; "
            f"got {stage.score_length}"
        )
    if stage.attention_factor is not None and searches(stage) == "positions":
        lines.append(
            f"{where}.attention_factor: {stage.algorithm} changes positions, not factor sets; remove it"
        )
    return lines + settings_errors(stage, where)


def searches(stage) -> str | None:
    """What the stage's algorithm searches (``rope.search.SearchAlgorithm.searches``), None if unknown."""
    from longctx.rope.search import SEARCH_ALGORITHMS

    entry = SEARCH_ALGORITHMS.get(stage.algorithm)
    return None if entry is None else entry.searches


def settings_errors(stage, where: str) -> list[str]:
    """The algorithm's own parameters, checked by the algorithm (no model needed)."""
    from longctx.rope.search import resolve_config
    from longctx.rope.search.space import SearchConfigError

    try:
        _, config = resolve_config(stage.algorithm, stage.settings or None)
        if searches(stage) == "positions":
            config.validate()  # its ranges need no template
    except (SearchConfigError, TypeError) as err:
        return [f"{where}: settings: {err}"]
    return []


def plan(recipe, stage) -> str:
    proxy = f", scored at {stage.score_length}" if getattr(stage, "score_length", None) else ""
    return f"{stage.kind} {stage.algorithm} → L'={stage.target_length} ({stage.objective}{proxy})"


def preflight(stage, ctx) -> list[str]:
    """Enough long documents for the objective (needs the tokenised data, not the model)."""
    length = scoring_length(stage)
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


def scoring_length(stage) -> int:
    """The length candidates are scored at: ``score_length`` (a search's proxy) or the target."""
    return getattr(stage, "score_length", None) or stage.target_length


def search_samples(stage, ctx) -> list:
    """Long documents truncated to the target (ppl) or needle-driven samples built in them."""
    from longctx.data.errors import DataError
    from longctx.data.synthetic import needle_ppl_sample
    from longctx.eval.perplexity import truncated_rows

    problems = preflight(stage, ctx)
    if problems:
        raise DataError(problems[0])
    length, tokenizer = scoring_length(stage), ctx.tokenizer()
    long_docs = [d for d in ctx.search_documents() if len(d) >= length]
    if stage.objective == "ppl":
        return truncated_rows(long_docs, length, bos_id=tokenizer.bos_token_id, max_docs=stage.num_samples)
    return [
        needle_ppl_sample(tokenizer, doc, length, stage.needle_depths, seed=ctx.recipe.seed + i)
        for i, doc in enumerate(long_docs[: stage.num_samples])
    ]


@dataclass
class SearchSetup:
    """What both factor searches start from: the stage's model (loaded once), its starting spec,
    the scorer of the factor set being searched, and ``rope.search``'s run settings."""

    model: Any
    start: Any
    scorer: Callable
    run_kwargs: dict


def setup(stage, ctx, factor_set: str) -> SearchSetup:
    """Samples (checked before the model loads), the model, its starting spec and the scorer
    of ``factor_set`` ("long": ``extend``; "short": the readjustment)."""
    from longctx.eval.measure import MeasurementCache
    from longctx.eval.scorer import build_scorer

    samples = search_samples(stage, ctx)
    model = ctx.load_model(stage)
    # the stage's measurements on disk (main process: the only writer): a rerun re-scores nothing
    path = ctx.stage_dir(stage.name) / "measurements.jsonl" if ctx.accelerator.is_main_process else None
    scorer = build_scorer(
        model, samples, stage.objective, factor_set=factor_set, abandon_margin=stage.abandon_margin,
        cache=MeasurementCache(path),
    )  # fmt: skip
    run_kwargs = dict(
        config=stage.settings or None,
        out_dir=ctx.stage_dir(stage.name) / "search",
        seed=ctx.recipe.seed,
        max_evaluations=stage.max_evaluations,
        progress=ctx.accelerator.is_main_process,
    )
    return SearchSetup(model, ctx.spec_for(stage, model), scorer, run_kwargs)


def finish(stage, ctx, result, record: dict) -> dict:
    """Write the found spec (main process) and the stage's result."""
    if ctx.accelerator.is_main_process:
        result.spec.to_json(ctx.stage_dir(stage.name) / "spec.json")
    return {
        "score": result.score,
        "objective": stage.objective,
        "evaluations": result.evaluations,
        "rejected": result.rejected,
        **record,
        "spec": result.spec.to_dict(),
    }


def extend(stage, ctx) -> dict:
    """The long factors at ``target_length``, warm-started from the starting spec (progressive
    extension; a non-longrope start becomes all-one factors of the same geometry)."""
    from longctx.rope import apply_rope
    from longctx.rope.attention_policy import with_attention_policy
    from longctx.rope.search import run_search
    from longctx.rope.search.runner import factor_template

    s = setup(stage, ctx, "long")
    apply_rope(s.model, s.start)
    template, record = s.start.replace(target_length=stage.target_length), {}
    if stage.attention_factor is not None:
        template = with_attention_policy(factor_template(template), "balanced", stage.attention_factor)
        record["attention_factor"] = stage.attention_factor
    return finish(stage, ctx, run_search(stage.algorithm, template, s.scorer, **s.run_kwargs), record)


def _dpe(stage, ctx) -> dict:
    """A positions search (DPE, training-free): key pairs by Q/K norm at lengths ≤ L, then a
    per-group scale sweep (``rope.search.dpe.DPEConfig``)."""
    import torch

    from longctx.eval.scorer import build_scorer
    from longctx.rope import RopeSpec, apply_rope
    from longctx.rope.search import resolve_config
    from longctx.rope.search.dpe import detect_group_scales, select_key_dims

    _, cfg = resolve_config(stage.algorithm, stage.settings or None)
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
        key_dims = select_key_dims(model, short, max(1, round(cfg.key_fraction * base.geometry.n_pairs)))
    template = RopeSpec(
        "dpe", base.base, base.head_dim, base.original_length, stage.target_length, base.partial_rotary_factor,
        params={"group_scales": [1.0] * cfg.groups, "key_dims": list(key_dims), "local_window": cfg.local_window},
    )  # fmt: skip
    scorer = build_scorer(model, samples, stage.objective, factor_set="long")
    result = detect_group_scales(
        template, scorer, groups=cfg.groups, scales=cfg.scales, out_dir=ctx.stage_dir(stage.name),
        progress=ctx.accelerator.is_main_process,
    )  # fmt: skip
    if ctx.accelerator.is_main_process:
        result.spec.to_json(ctx.stage_dir(stage.name) / "spec.json")
    sweeps = [{str(k): v for k, v in sweep.items()} for sweep in result.sweeps]
    return {"objective": stage.objective, "sweeps": sweeps, "spec": result.spec.to_dict()}


def run(stage, ctx) -> dict:
    return _dpe(stage, ctx) if searches(stage) == "positions" else extend(stage, ctx)
