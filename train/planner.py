"""Memory planner for ``--dry-run``: per-GPU memory of a training stage under each launch config.

Estimates (bytes per GPU, N GPUs, bf16 compute with fp32 master weights and AdamW — ZeRO paper,
Rajbhandari et al., arXiv 1910.02054 §3: 16 B/param of model states):

- DDP: 16·P on every GPU; ZeRO-2: 2·P + 14·P/N; ZeRO-3: 16·P/N; ZeRO-3 + offload: ≈ 0 for
  the model states (host RAM takes them);
- activations for one row of T tokens, t = T / S per GPU under Ulysses sequence parallelism of
  degree S (``sequence_parallel``): with gradient checkpointing, each layer keeps its input
  (2·t·h bytes) plus one layer's working set recomputed (≈ 34·t·h bytes, Korthikanti et al.,
  arXiv 2205.05198 Table 2, attention scores not materialised by flash/SDPA); without it, every
  layer's working set;
- logits + loss: materialised, the bf16 logits, their fp32 upcast and gradient, 8·t·V bytes —
  the term that dominates at 128k. liger's fused linear cross-entropy (``model.liger`` on/auto,
  a GPU launch) computes them a chunk at a time: ≈ 8·t·h bytes (its chunk is t·h/V rows of V
  logits, plus the hidden-state gradient); it applies where ``lm_head`` is whole (DDP, ZeRO-2).
  Under ZeRO-3 and sequence parallelism the loop's tiled loss (``train.tiled_loss``) keeps one
  slice of ≤ 2^28 logits alive: ≤ 8·2^28 bytes.

Sequence parallelism runs under ``deepspeed_zero3_ulysses.yaml`` (ZeRO-3 + Ulysses); with
``sequence_parallel: S > 1`` the other configs are shown as not applicable. These are estimates
(±20 %): they ignore fragmentation, communication buffers and kernels' workspace. They are meant
to pick a launch config before a GPU-hour is spent; each real recipe's launch line names the
config this plan says fits (tests/train/test_planner.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from longctx.train.tiled_loss import LOGITS_PER_SHARD

GIB = 1024**3


@dataclass(frozen=True)
class LaunchConfig:
    name: str
    full: int
    """Bytes per parameter of model states on every GPU."""
    sharded: int
    """Bytes per parameter of model states split over the N GPUs (0: offloaded)."""
    zero3: bool = False
    deepspeed: bool = True
    ulysses: bool = False


LAUNCH_CONFIGS = (
    LaunchConfig("multi_gpu_ddp", 16, 0, deepspeed=False),
    LaunchConfig("deepspeed_zero2", 2, 14),
    LaunchConfig("deepspeed_zero3", 0, 16, zero3=True),
    LaunchConfig("deepspeed_zero3_ulysses", 0, 16, zero3=True, ulysses=True),
    LaunchConfig("deepspeed_zero3_offload", 0, 0, zero3=True),
)
"""In order of speed: the plan recommends the first one that fits."""


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
    shape: ModelShape,
    tokens: int,
    *,
    gpus: int,
    checkpointing: bool,
    gpu_gib: float,
    fused_loss: bool = False,
    sequence_parallel: int = 1,
) -> list[dict]:
    """One row per launch config: GiB per GPU by part, and whether it fits ``gpu_gib``.

    ``fused_loss``: liger's fused linear cross-entropy is available (where it applies, see the
    module docstring). ``sequence_parallel``: the recipe's Ulysses degree S.
    """
    rows = []
    for cfg in LAUNCH_CONFIGS:
        sp = sequence_parallel if cfg.ulysses else 1
        if cfg.ulysses and sequence_parallel == 1:
            continue  # the Ulysses config is for recipes that set sequence_parallel
        note = ""
        if sequence_parallel > 1 and not cfg.ulysses:
            note = "n/a: sequence_parallel launches with deepspeed_zero3_ulysses"
        t = tokens // sp
        act = activation_bytes(shape, t, checkpointing)
        fused = fused_loss and not cfg.zero3 and sp == 1  # liger's fused linear cross-entropy
        tiled = cfg.zero3 or sp > 1  # train.tiled_loss: slices of ≤ LOGITS_PER_SHARD logits
        if fused:
            logits = 8 * t * shape.hidden
        elif tiled:
            logits = min(8 * t * shape.vocab, 8 * LOGITS_PER_SHARD)
        else:
            logits = 8 * t * shape.vocab
        states = shape.params * (cfg.full + cfg.sharded / gpus)
        total = states + act + logits
        rows.append({"config": cfg.name, "states": states / GIB, "activations": act / GIB, "logits": logits / GIB,
                     "fused_loss": fused, "tiled_loss": tiled and logits < 8 * t * shape.vocab, "sequence_parallel": sp, "total": total / GIB,
                     "fits": not note and total <= gpu_gib * GIB, "note": note})  # fmt: skip
    return rows


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def format_plan(rows: list[dict], *, params: int, tokens: int, gpus: int, gpu_gib: float) -> list[str]:
    lines = [
        f"memory plan: {_count(params)} parameters, longest row {tokens:,} tokens, {gpus} × {gpu_gib:g} GiB GPUs",
        f"  {'accelerate config':<26} {'states':>8} {'activ.':>8} {'logits':>8} {'total':>8}  fits",
    ]
    for r in rows:
        how = []
        if r.get("fused_loss"):
            how.append("liger fused loss")
        if r.get("tiled_loss"):
            how.append("tiled loss")
        if r.get("sequence_parallel", 1) > 1:
            how.append(f"rows split over {r['sequence_parallel']} GPUs")
        extra = f"  ({'; '.join(how)})" if how else ""
        fits = r.get("note") or ("yes" if r["fits"] else "no")
        lines.append(
            f"  {r['config']:<26} {r['states']:>7.1f}G {r['activations']:>7.1f}G {r['logits']:>7.1f}G "
            f"{r['total']:>7.1f}G  {fits}{extra}"
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
    from longctx.train.stages import trains

    stages = [s for s in recipe.stages if trains(s)]
    if not stages:
        return ["memory plan: no training stage"]
    shape, why = recipe_model_shape(recipe, recipe_file)
    if shape is None:
        return [f"memory plan: skipped ({why})"]
    tokens = max(w.length * s.micro_batch_size for s in stages for w in s.windows)
    rows = plan_memory(
        shape, tokens, gpus=gpus, checkpointing=recipe.model.gradient_checkpointing, gpu_gib=gpu_gib,
        fused_loss=recipe.model.liger != "off", sequence_parallel=recipe.sequence_parallel,
    )  # fmt: skip
    return format_plan(rows, params=shape.params, tokens=tokens, gpus=gpus, gpu_gib=gpu_gib)
