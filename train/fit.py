"""The body of a training stage (pretrain, finetune): load once → install the spec → kernels /
LoRA → prepare → the loop → save → release.

The model is loaded in the precision policy's master dtype (``train.precision``: fp32 weights
under bf16 compute), so AdamW updates fp32 weights; compute runs under the accelerator's autocast
(DeepSpeed: its bf16 mode, fp32 master weights and gradient accumulation). Everything the stage
prepared — engine, optimizer, accelerate's registrations, cached device memory — is released
before the next stage starts, so its checkpoints hold this stage's state only.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from safetensors.torch import save_file

from longctx.rope import RopeSpec, apply_rope
from longctx.train import sequence_parallel as sp
from longctx.train.attention import SEGMENTS, segment_attention, supports_segments
from longctx.train.context import RunContext, outside_zero_init
from longctx.train.kernels import apply_liger
from longctx.train.loop import train_loop
from longctx.train.lora import merged, trainable_names, wrap_lora


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

    config = peft_model.get_base_model().config
    with outside_zero_init(ctx.accelerator):
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
    from longctx.data.mixed import MixedWindowSampler, Window

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


def _retention(stage, ctx: RunContext):
    """The frozen teacher of ``stage.retention``: the starting model in the compute dtype, on the
    device, outside any engine, under the spec it was saved with (its stage's, else the base
    RoPE) and its short factor set; SDPA, or eager under sequence parallelism (never Ulysses')."""
    if getattr(stage, "retention", None) is None:
        return None
    from longctx.rope import set_factor_set
    from longctx.train.loop import Retention

    teacher = ctx.load_model(stage)
    teacher.requires_grad_(False)
    teacher.set_attn_implementation("eager" if ctx.recipe.sequence_parallel > 1 else "sdpa")
    source = ctx.model_source(stage)
    saved = ctx.stage_dir(source) / "spec.json" if source else None
    apply_rope(teacher, RopeSpec.from_json(saved) if saved and saved.exists() else ctx.base_spec(teacher))
    set_factor_set(teacher, "original")
    ctx.log(
        f"[{stage.name}] retention: KL to the frozen starting model on short rows, weight {stage.retention.kl_weight}"
    )
    return Retention(teacher, stage.retention.kl_weight)


def _zero3(ctx: RunContext) -> bool:
    plugin = getattr(ctx.accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def fit(stage, ctx: RunContext, spec_of: Callable) -> dict:
    """Train ``stage`` from its source model with the spec ``spec_of(model)`` and save it (the
    runner releases the engine and optimizer when the stage returns)."""
    batches = _batches(ctx, stage)  # the data first: a data error costs no model load
    model = ctx.load_model(stage, training=True)
    spec = spec_of(model)
    apply_rope(model, spec)
    # on the bare model (before LoRA / the engine wrap it), after our rotary is installed
    unpatch = apply_liger(
        model, ctx.recipe.model.liger, lambda m: ctx.log(f"[{stage.name}] {m}"), zero3=_zero3(ctx)
    )
    try:
        return _fit(stage, ctx, model, spec, batches)
    finally:
        if unpatch is not None:
            unpatch()  # liger's module-level swaps end with this stage


def _fit(stage, ctx: RunContext, model, spec: RopeSpec, batches) -> dict:
    bare = model
    n = ctx.recipe.sequence_parallel
    if n > 1:
        ctx.log(f"[{stage.name}] Ulysses sequence parallelism: each row split over {n} processes")
    if stage.lora is not None:
        model = wrap_lora(model, stage.lora, seed=ctx.recipe.seed)
        ctx.log(f"[{stage.name}] LoRA: {len(trainable_names(model))} trainable tensors")
    stage_dir = ctx.stage_dir(stage.name)
    tiled = _zero3(ctx) or n > 1
    if tiled:
        ctx.log(f"[{stage.name}] loss: tiled over lm_head (no [tokens, vocab] logits; train.tiled_loss)")
    # SDPA keeps packed documents apart without a mask: one causal call per document
    segments = ctx.attention == "sdpa" and supports_segments(bare)
    varlen = ctx.attention == "flash_attention_2" or segments  # batches flattened, cu_seq_lens
    if ctx.attention == "sdpa" and n > 1:
        if not segments:  # Ulysses drops every mask: packed documents would attend to each other
            raise ValueError(
                f"{stage.name}: {type(bare).__name__} does not dispatch attention through transformers' "
                f"AttentionInterface, so sdpa under sequence_parallel={n} cannot keep packed documents "
                "apart; use model.attention: flash"
            )
        sp.segments_under_ulysses()  # DeepSpeed's wrapper takes it as its core attention
        ctx.log(f"[{stage.name}] attention: sdpa per document under Ulysses (whole-sequence cu_seq_lens)")
        segments = False  # the model keeps "sdpa": DeepSpeed wraps that name
    elif segments:
        ctx.log(f"[{stage.name}] attention: sdpa per document ({SEGMENTS}), no mask tensor")
    retention = _retention(stage, ctx)
    with segment_attention(bare) if segments else nullcontext():
        result = train_loop(
            model,
            batches,
            stage,
            stage_dir,
            ctx.accelerator,
            varlen=varlen,
            sequence_parallel=n,
            tiled_loss=tiled,
            retention=retention,
        )
    _save_model(ctx, result.model, spec, stage_dir, lora=stage.lora)
    return {
        "steps": result.steps,
        "final_loss": result.final_loss,
        "first_loss": result.losses[0] if result.losses else None,
        "tokens": result.tokens,
        "seconds": result.seconds,
        "resumed_from_step": result.resumed_from,
        "precision": ctx.precision.describe(),
        "spec": spec.to_dict(),
    }
