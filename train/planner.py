"""Memory planner for ``--dry-run``: per-GPU memory of a training stage under each launch config.

Estimates (bytes per GPU, N GPUs, bf16 mixed precision with AdamW — ZeRO paper, Rajbhandari
et al., arXiv 1910.02054 §3: 2 B weights + 2 B grads + 12 B fp32 master/m/v = 16 B/param):

- DDP: 16·P on every GPU; ZeRO-2: 2·P + 14·P/N; ZeRO-3: 16·P/N; ZeRO-3 + offload: ≈ 0 for
  the model states (host RAM takes 14·P/N + the 2·P weights);
- activations for one row of T tokens: with gradient checkpointing, each layer keeps its input
  (2·T·h bytes) plus one layer's working set recomputed (≈ 34·T·h bytes, Korthikanti et al.,
  arXiv 2205.05198 Table 2, attention scores not materialised by flash/SDPA); without it, every
  layer's working set;
- logits + loss: the LM head's fp32 logits and their gradient, 8·T·V bytes — the term that
  dominates at 128k (liger's fused linear cross-entropy removes it).

These are estimates (±20 %): they ignore fragmentation, communication buffers and kernels'
workspace. They are meant to pick a launch config before a GPU-hour is spent.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
STATES_PER_PARAM = {"multi_gpu_ddp": (16, 0), "deepspeed_zero2": (2, 14), "deepspeed_zero3": (0, 16)}
"""config → (bytes per parameter on every GPU, bytes per parameter sharded over the N GPUs)."""


@dataclass(frozen=True)
class ModelShape:
    params: int
    hidden: int
    layers: int
    vocab: int

    @classmethod
    def from_config(cls, config) -> ModelShape:
        h, n_layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
        heads = config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or h // heads
        attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
        mlp = 3 * h * config.intermediate_size
        embed = vocab * h * (1 if getattr(config, "tie_word_embeddings", False) else 2)
        return cls(params=embed + n_layers * (attn + mlp + 2 * h) + h, hidden=h, layers=n_layers, vocab=vocab)


def activation_bytes(shape: ModelShape, tokens: int, checkpointing: bool) -> int:
    working = 34 * tokens * shape.hidden
    if checkpointing:
        return shape.layers * 2 * tokens * shape.hidden + working
    return shape.layers * working


def plan_memory(
    shape: ModelShape, tokens: int, *, gpus: int, checkpointing: bool, gpu_gib: float
) -> list[dict]:
    """One row per launch config: GiB per GPU by part, and whether it fits ``gpu_gib``."""
    act = activation_bytes(shape, tokens, checkpointing)
    logits = 8 * tokens * shape.vocab
    rows = []
    for config, (full, sharded) in STATES_PER_PARAM.items():
        states = shape.params * (full + sharded / gpus)
        total = states + act + logits
        rows.append({"config": config, "states": states / GIB, "activations": act / GIB,
                     "logits": logits / GIB, "total": total / GIB, "fits": total <= gpu_gib * GIB})  # fmt: skip
    act_offload = act + logits
    rows.append({"config": "deepspeed_zero3_offload", "states": 0.0, "activations": act / GIB,
                 "logits": logits / GIB, "total": act_offload / GIB, "fits": act_offload <= gpu_gib * GIB})  # fmt: skip
    return rows


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def format_plan(rows: list[dict], *, params: int, tokens: int, gpus: int, gpu_gib: float) -> list[str]:
    lines = [
        f"memory plan: {_count(params)} parameters, longest row {tokens:,} tokens, {gpus} × {gpu_gib:g} GiB GPUs",
        f"  {'accelerate config':<26} {'states':>8} {'activ.':>8} {'logits':>8} {'total':>8}  fits",
    ]
    for r in rows:
        lines.append(
            f"  {r['config']:<26} {r['states']:>7.1f}G {r['activations']:>7.1f}G {r['logits']:>7.1f}G "
            f"{r['total']:>7.1f}G  {'yes' if r['fits'] else 'no'}"
        )
    fitting = [r["config"] for r in rows if r["fits"]]
    if fitting:
        lines.append(f"  → use accelerate_configs/{fitting[0]}.yaml (the fastest that fits)")
    elif rows[-1]["logits"] > rows[-1]["activations"]:
        lines.append(
            "  → nothing fits; the fp32 logits dominate: use liger's fused linear cross-entropy (extra gpu), "
            "a shorter row, or sequence parallelism"
        )
    else:
        lines.append(
            "  → nothing fits: enable gradient checkpointing, shorten the row, add GPUs or use sequence parallelism"
        )
    return lines


def recipe_model_shape(recipe, recipe_file) -> tuple[ModelShape | None, str]:
    """The recipe model's shape from its config only (no weights), or None with the reason."""
    from transformers import AutoConfig

    from longctx.train.recipe import resolve_path

    init = recipe.model.init
    if init is not None:
        vocab = recipe.tokenizer.demo_vocab_size or 32_000
        config = AutoConfig.for_model(
            init.architecture, vocab_size=vocab, hidden_size=init.hidden_size, num_hidden_layers=init.num_layers,
            num_attention_heads=init.num_heads, num_key_value_heads=init.num_kv_heads,
            intermediate_size=init.intermediate_size, tie_word_embeddings=init.tie_embeddings,
        )  # fmt: skip
        return ModelShape.from_config(config), ""
    path = resolve_path(recipe_file, recipe.model.path)
    if not (path / "config.json").exists():
        return None, f"no {path}/config.json here to size the model from"
    return ModelShape.from_config(AutoConfig.from_pretrained(path, local_files_only=True)), ""


def describe_memory(recipe, recipe_file, *, gpus: int, gpu_gib: float) -> list[str]:
    stages = [s for s in recipe.stages if s.kind in ("pretrain", "finetune")]
    if not stages:
        return ["memory plan: no training stage"]
    shape, why = recipe_model_shape(recipe, recipe_file)
    if shape is None:
        return [f"memory plan: skipped ({why})"]
    tokens = max(w.length * s.micro_batch_size for s in stages for w in s.windows)
    rows = plan_memory(
        shape, tokens, gpus=gpus, checkpointing=recipe.model.gradient_checkpointing, gpu_gib=gpu_gib
    )
    return format_plan(rows, params=shape.params, tokens=tokens, gpus=gpus, gpu_gib=gpu_gib)
