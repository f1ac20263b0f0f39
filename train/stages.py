"""Stage functions ``run_<kind>(stage, ctx) -> result dict`` and their one registry, ``STAGES``.

Each stage reads what it names from earlier stages (model, RoPE spec) and writes
``<output_dir>/<stage>/``; ``train/run.py`` writes ``result.json`` and the completion marker.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from rope import RopeSpec, apply_rope, save_extended
from train.context import RunContext
from train.loop import train_loop


def _save_model(ctx: RunContext, model, spec: RopeSpec, stage_dir: Path) -> None:
    """Weights with the base config (any spec installs on it) + the spec, atomically."""
    ctx.accelerator.wait_for_everyone()
    if ctx.accelerator.is_main_process:
        unwrapped = ctx.accelerator.unwrap_model(model)
        tmp = stage_dir / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped.save_pretrained(tmp, state_dict=ctx.accelerator.get_state_dict(model))
        ctx.tokenizer().save_pretrained(tmp)
        spec.to_json(tmp / "spec.json")
        if (stage_dir / "model").exists():
            shutil.rmtree(stage_dir / "model")
        os.replace(tmp, stage_dir / "model")
        spec.to_json(stage_dir / "spec.json")
    ctx.accelerator.wait_for_everyone()


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


def _train(stage, ctx: RunContext, spec: RopeSpec) -> dict:
    model = apply_rope(ctx.load_model(stage), spec)
    stage_dir = ctx.stage_dir(stage.name)
    result = train_loop(
        model,
        _batches(ctx, stage),
        stage,
        stage_dir,
        ctx.accelerator,
        use_flash=ctx.attention == "flash_attention_2",
    )
    _save_model(ctx, model, spec, stage_dir)
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


STAGES: dict[str, Callable[..., dict]] = {
    "pretrain": run_pretrain,
    "finetune": run_finetune,
    "export": run_export,
}


def stage_unavailable(stage) -> str | None:
    """Why a stage cannot run in this installation (checked at validation), or None."""
    if stage.kind not in STAGES:
        return f"kind {stage.kind!r}: its machinery has not landed in this version (available: {', '.join(STAGES)})"
    if stage.kind in ("pretrain", "finetune") and importlib.util.find_spec("data.mixed") is None:
        return f"kind {stage.kind!r}: data.mixed (mixed-window sampler) is not installed"
    return None
