"""Stage functions ``run_<kind>(stage, ctx) -> result dict`` and their one registry, ``STAGES``.

Each stage reads what it names from earlier stages (model, RoPE spec) and writes
``<output_dir>/<stage>/``; ``train/run.py`` writes ``result.json`` and the completion marker.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from safetensors.torch import save_file

from rope import RopeSpec, apply_rope, save_extended
from train.attention import SEGMENTS, segment_attention, supports_segments
from train.context import RunContext
from train.kernels import apply_liger
from train.loop import train_loop
from train.lora import merged, trainable_names, wrap_lora


def _save_model(ctx: RunContext, model, spec: RopeSpec, stage_dir: Path, lora=None) -> None:
    """Weights with the base config (any spec installs on it) + the spec, atomically.

    LoRA: the merged weights, plus ``adapter.safetensors`` (the trained tensors: adapters and
    LongLoRA's embed/norm). The merge runs on a plain CPU copy filled from the gathered state
    dict, never on the engine's parameters, which ZeRO-3 may hold as empty shards.
    """
    ctx.accelerator.wait_for_everyone()
    unwrapped = ctx.accelerator.unwrap_model(model)
    state_dict = ctx.accelerator.get_state_dict(model)  # every rank: ZeRO-3 gathers the shards here
    if ctx.accelerator.is_main_process:
        tmp = stage_dir / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if lora is not None:
            trained = set(trainable_names(unwrapped))
            adapter = {k: v.detach().cpu().contiguous() for k, v in state_dict.items() if k in trained}
            save_file(adapter, stage_dir / ".adapter.tmp")
            os.replace(stage_dir / ".adapter.tmp", stage_dir / "adapter.safetensors")
            unwrapped = _merged_copy(ctx, unwrapped, lora, state_dict)
            state_dict = unwrapped.state_dict()
        unwrapped.save_pretrained(tmp, state_dict=state_dict)
        ctx.tokenizer().save_pretrained(tmp)
        spec.to_json(tmp / "spec.json")
        if (stage_dir / "model").exists():
            shutil.rmtree(stage_dir / "model")
        os.replace(tmp, stage_dir / "model")
        spec.to_json(stage_dir / "spec.json")
    ctx.accelerator.wait_for_everyone()


def _merged_copy(ctx: RunContext, peft_model, lora, state_dict: dict):
    """A plain (never partitioned) copy of the adapted model, its adapters folded in."""
    from transformers import AutoModelForCausalLM

    from train.context import _outside_zero_init

    config = peft_model.get_base_model().config
    with _outside_zero_init(ctx.accelerator):
        plain = AutoModelForCausalLM.from_config(config, dtype=peft_model.get_base_model().dtype)
    plain = wrap_lora(plain, lora, seed=ctx.recipe.seed)
    missing, unexpected = plain.load_state_dict({k: v.cpu() for k, v in state_dict.items()}, strict=False)
    tied = config.tie_word_embeddings
    missing = [k for k in missing if not (tied and k.endswith("lm_head.weight"))]  # shared with the embedding
    if missing or unexpected:
        raise RuntimeError(
            f"LoRA merge: gathered state dict does not fit (missing {missing}, unexpected {unexpected})"
        )
    return merged(plain)


def _batches(ctx: RunContext, stage):
    from data.mixed import MixedWindowSampler, Window

    windows = [Window(length=w.length, share=w.share, rope=w.rope) for w in stage.windows]
    sampler = MixedWindowSampler(
        ctx.training_documents(stage.windows),
        windows,
        original_length=ctx.original_length,
        micro_batch_size=stage.micro_batch_size,
        seed=ctx.recipe.seed,
        pad_id=ctx.tokenizer().pad_token_id or 0,
    )
    # the loop counts global micro-batches and splits them over ranks itself
    return lambda micro_index: sampler.iter_from(micro_index * stage.micro_batch_size)


def _zero3(ctx: RunContext) -> bool:
    plugin = getattr(ctx.accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def _train(stage, ctx: RunContext, spec: RopeSpec) -> dict:
    model = bare = apply_rope(ctx.load_model(stage), spec)
    # on the bare model (before LoRA / the engine wrap it), after our rotary is installed
    apply_liger(model, ctx.recipe.model.liger, lambda m: ctx.log(f"[{stage.name}] {m}"), zero3=_zero3(ctx))
    n = ctx.recipe.sequence_parallel
    if n > 1:
        ctx.log(f"[{stage.name}] Ulysses sequence parallelism: each row split over {n} processes")
        if ctx.attention == "sdpa" and any(w.rope == "original" for w in stage.windows):
            ctx.log(
                f"[{stage.name}] warning: under Ulysses, sdpa drops the document mask of packed rows "
                "(they attend across documents); attention: flash keeps documents apart"
            )
    if stage.lora is not None:
        model = wrap_lora(model, stage.lora, seed=ctx.recipe.seed)
        ctx.log(f"[{stage.name}] LoRA: {len(trainable_names(model))} trainable tensors")
    stage_dir = ctx.stage_dir(stage.name)
    # SDPA keeps packed documents apart without a mask: one causal call per document
    segments = ctx.attention == "sdpa" and n == 1 and supports_segments(bare)
    if segments:
        ctx.log(f"[{stage.name}] attention: sdpa per document ({SEGMENTS}), no mask tensor")
    with segment_attention(bare) if segments else nullcontext():
        result = train_loop(
            model,
            _batches(ctx, stage),
            stage,
            stage_dir,
            ctx.accelerator,
            varlen=ctx.attention == "flash_attention_2" or segments,
            sequence_parallel=n,
        )
    _save_model(ctx, result.model, spec, stage_dir, lora=stage.lora)
    return {
        "steps": result.steps,
        "final_loss": result.final_loss,
        "first_loss": result.losses[0] if result.losses else None,
        "tokens": result.tokens,
        "seconds": result.seconds,
        "resumed_from_step": result.resumed_from,
        "spec": spec.to_dict(),
    }


def run_pretrain(stage, ctx: RunContext) -> dict:
    """Train the base model at its original length with its own (default) RoPE."""
    model = ctx.load_model(stage)
    return _train(stage, ctx, ctx.base_spec(model))


def run_finetune(stage, ctx: RunContext) -> dict:
    """Mixed-context-window fine-tuning with the spec from ``spec_from`` (LongRoPE2 §3.3)."""
    model = ctx.load_model(stage)
    return _train(stage, ctx, ctx.spec_for(stage, model))


def run_export(stage, ctx: RunContext) -> dict:
    """A checkpoint stock transformers loads with identical logits (``rope.save_extended``)."""
    model = ctx.load_model(stage)
    spec = ctx.spec_for(stage, model)
    out = ctx.stage_dir(stage.name) / "model"
    if ctx.accelerator.is_main_process:
        save_extended(apply_rope(model, spec), spec, out, tokenizer=ctx.tokenizer())
    ctx.accelerator.wait_for_everyone()
    spec.to_json(ctx.stage_dir(stage.name) / "spec.json")
    return {"path": str(out), "spec": spec.to_dict()}


def _search_samples(ctx: RunContext, stage, tokenizer) -> list:
    """Long documents truncated to the target (ppl) or needle-driven samples built in them."""
    from data.synthetic import needle_ppl_sample
    from eval.perplexity import truncated_rows

    length = stage.target_length
    long_docs = [d for d in ctx.documents() if len(d) >= length]
    if len(long_docs) < stage.num_samples:
        lengths = sorted((len(d) for d in ctx.documents()), reverse=True)[:5]
        raise ValueError(
            f"{stage.name}: {stage.objective} at {length} tokens needs {stage.num_samples} documents of >= {length} "
            f"tokens; found {len(long_docs)} (longest: {lengths}); add longer sources or lower num_samples"
        )
    if stage.objective == "ppl":
        return truncated_rows(long_docs, length, bos_id=tokenizer.bos_token_id, max_docs=stage.num_samples)
    return [
        needle_ppl_sample(tokenizer, doc, length, stage.needle_depths, seed=ctx.recipe.seed + i)
        for i, doc in enumerate(long_docs[: stage.num_samples])
    ]


def _search(stage, ctx: RunContext, field: str) -> dict:
    from eval.scorer import build_scorer
    from rope.search import readjust, run_search

    model = ctx.load_model(stage).eval()
    previous = ctx.spec_for(stage, model)
    stage_dir = ctx.stage_dir(stage.name)
    kwargs = dict(
        config=stage.settings or None,
        out_dir=stage_dir / "search",
        seed=ctx.recipe.seed,
        max_evaluations=stage.max_evaluations,
        progress=ctx.accelerator.is_main_process,
    )
    samples = _search_samples(ctx, stage, ctx.tokenizer())
    apply_rope(model, previous)
    kind = "long" if field == "long_factor" else "short"
    scorer = build_scorer(
        model, samples, stage.objective, factor_set=kind, abandon_margin=stage.abandon_margin
    )
    if field == "long_factor":
        # run_search turns a non-longrope template into all-one factors with the same geometry
        result = run_search(
            stage.algorithm, previous.replace(target_length=stage.target_length), scorer, **kwargs
        )
    else:
        result = readjust(
            stage.algorithm, previous, scorer, stage.target_length, max_factor=stage.max_factor, **kwargs
        )
    if ctx.accelerator.is_main_process:
        result.spec.to_json(stage_dir / "spec.json")
    ctx.accelerator.wait_for_everyone()
    return {
        "score": result.score,
        "objective": stage.objective,
        "evaluations": result.evaluations,
        "rejected": result.rejected,
        "spec": result.spec.to_dict(),
    }


DPE_SETTINGS = {"groups": 8, "key_fraction": 0.75, "local_window": 1024, "scales": None}
"""DPE defaults (arXiv 2504.18857): 8 groups, top 48 of 64 pairs (README), W = 1024, sweep 1…L'/W."""


def _dpe(stage, ctx: RunContext) -> dict:
    """Training-free DPE: key pairs by Q/K norm at lengths ≤ L, then a per-group scale sweep."""
    import torch

    from eval.scorer import build_scorer
    from rope.dpe import select_key_dims
    from rope.search.dpe import detect_group_scales

    cfg = {**DPE_SETTINGS, **stage.settings}
    model = ctx.load_model(stage).eval()
    base = ctx.base_spec(model)
    apply_rope(model, base)
    short = [torch.tensor([d[: base.original_length]]) for d in ctx.documents()[: stage.num_samples]]
    with torch.no_grad():
        key_dims = select_key_dims(model, short, max(1, round(cfg["key_fraction"] * base.geometry.n_pairs)))
    template = RopeSpec(
        "dpe", base.base, base.head_dim, base.original_length, stage.target_length, base.partial_rotary_factor,
        params={"group_scales": [1.0] * cfg["groups"], "key_dims": list(key_dims), "local_window": cfg["local_window"]},
    )  # fmt: skip
    samples = _search_samples(ctx, stage, ctx.tokenizer())
    scorer = build_scorer(model, samples, stage.objective, factor_set="long")
    result = detect_group_scales(
        template, scorer, groups=cfg["groups"], scales=cfg["scales"], out_dir=ctx.stage_dir(stage.name),
        progress=True,
    )  # fmt: skip
    if ctx.accelerator.is_main_process:
        result.spec.to_json(ctx.stage_dir(stage.name) / "spec.json")
    sweeps = [{str(k): v for k, v in sweep.items()} for sweep in result.sweeps]
    return {"objective": stage.objective, "sweeps": sweeps, "spec": result.spec.to_dict()}


def run_search_stage(stage, ctx: RunContext) -> dict:
    """Search ``long_factor`` at ``target_length`` (LongRoPE / LongRoPE2 / DCIS), warm-started
    from the latest earlier spec when there is one (progressive extension); or DPE's scales."""
    if stage.algorithm == "dpe":
        return _dpe(stage, ctx)
    return _search(stage, ctx, "long_factor")


def run_readjust(stage, ctx: RunContext) -> dict:
    """Search ``short_factor`` at a length <= L on the final model (LongRoPE §3.3)."""
    return _search(stage, ctx, "short_factor")


def _run_spec(ctx: RunContext, stage, run, model) -> RopeSpec:
    """The RoPE of one eval run: a stage's spec, the base RoPE, or a baseline built for L'."""
    base = ctx.base_spec(model)
    if run.rope == "original":
        return base
    if run.rope == "spec":
        source = ctx.spec_source(run) if run.spec_from else ctx.spec_source(stage)
        return RopeSpec.from_json(ctx.stage_dir(source) / "spec.json") if source else base
    target = stage.target_length or max(stage.lengths)
    # run.rope is validated to one of linear / ntk / yarn here: the method of the same name
    return RopeSpec(
        run.rope, base.base, base.head_dim, base.original_length, target, base.partial_rotary_factor
    )


def run_eval(stage, ctx: RunContext) -> dict:
    """Perplexity / passkey / NIAH / RULER for each run, with report.md and plots (``eval``)."""
    from eval.report import write_json_atomic, write_report
    from eval.tasks import EVAL_TASKS, EvalSettings
    from train.recipe import EvalRun

    settings = EvalSettings(
        lengths=stage.lengths,
        depths=stage.depths,
        samples=stage.samples,
        seed=ctx.recipe.seed,
        ppl_data=stage.ppl_data,
        ppl_docs=stage.ppl_docs,
        progress=ctx.accelerator.is_main_process,
    )
    runs = stage.runs or [EvalRun(name=stage.name, model_from=stage.model_from, spec_from=stage.spec_from)]
    out = ctx.stage_dir(stage.name)
    results = {"lengths": stage.lengths, "tasks": stage.tasks, "runs": []}
    loaded: dict = {}
    for run in runs:
        source = ctx.model_source(run) if run.model_from else ctx.model_source(stage)
        if source not in loaded:  # one model in memory at a time
            loaded = {source: ctx.load_model_from(source).eval()}
        model = loaded[source]
        spec = _run_spec(ctx, stage, run, model)
        apply_rope(model, spec)
        label = f"{spec.method} L={spec.original_length}→{spec.target_length}" + (
            f", n̂={spec.n_hat}" if spec.n_hat else ""
        )
        entry = {
            "name": run.name,
            "model": source or "recipe model",
            "spec": label,
            "rope": spec.to_dict(),
            "tasks": {},
        }
        for task in stage.tasks:
            ctx.log(f"[{stage.name}] {run.name}: {task}")
            entry["tasks"][task] = EVAL_TASKS[task](model, ctx.tokenizer(), settings)
        results["runs"].append(entry)
        if ctx.accelerator.is_main_process:
            write_json_atomic(results, out / "results.json")
    if ctx.accelerator.is_main_process:
        files = write_report(results, out)
        ctx.log(f"[{stage.name}] report: {out / 'report.md'} (+ {len(files) - 1} files)")
    return {
        "results": str(out / "results.json"),
        "report": str(out / "report.md"),
        "summary": _summary(results),
    }


def _summary(results: dict) -> dict:
    """Per run: perplexity and passkey accuracy by length (the headline numbers)."""
    out = {}
    for run in results["runs"]:
        tasks = run["tasks"]
        line = {}
        if "ppl" in tasks:
            line["ppl"] = {str(k): v["ppl"] for k, v in tasks["ppl"]["by_length"].items()}
        if "passkey" in tasks:
            line["passkey"] = tasks["passkey"]["by_length"]
        out[run["name"]] = line
    return out


STAGES: dict[str, Callable[..., dict]] = {
    "pretrain": run_pretrain,
    "finetune": run_finetune,
    "export": run_export,
    "search": run_search_stage,
    "readjust": run_readjust,
    "eval": run_eval,
}


def stage_unavailable(stage) -> str | None:
    """Why a stage cannot run in this installation (checked at validation), or None."""
    if stage.kind not in STAGES:
        return f"kind {stage.kind!r}: its machinery has not landed in this version (available: {', '.join(STAGES)})"
    if stage.kind in ("pretrain", "finetune") and importlib.util.find_spec("data.mixed") is None:
        return f"kind {stage.kind!r}: data.mixed (mixed-window sampler) is not installed"
    if stage.kind == "search" and stage.algorithm == "dpe":
        unknown = sorted(set(stage.settings) - set(DPE_SETTINGS))
        return (
            f"settings.{unknown[0]}: unknown DPE setting (allowed: {', '.join(DPE_SETTINGS)})"
            if unknown
            else None
        )
    if stage.kind in ("search", "readjust"):
        from rope.search import resolve_config
        from rope.search.space import SearchConfigError

        try:
            resolve_config(stage.algorithm, stage.settings or None)
        except (SearchConfigError, TypeError) as err:
            return f"settings: {err}"
    return None
