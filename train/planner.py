"""Memory planner for ``--dry-run``: per-GPU memory of every stage, training under each launch config.

Everything below is bytes, derived from what a Llama / Mistral / Phi-3 decoder layer of
transformers keeps (``h`` hidden, ``a`` = heads·head_dim, ``k`` = kv_heads·head_dim, ``i``
intermediate, ``V`` vocabulary, ``L`` layers, ``P`` parameters, ``t`` tokens per GPU) and checked
against measured peaks (``benchmarks/planner_memory.py``; docs/BENCHMARKS.md). Two byte widths
describe a precision (:class:`Dtypes`): ``c`` for what the matmuls write (activations) and ``r``
for the residual stream between layers:

- ``AUTOCAST`` (c=2, r=4): fp32 weights under bf16 autocast — DDP and one GPU (accelerate's
  ``mixed_precision: bf16``). The embedding and the residual adds stay fp32, so the stream, the
  checkpoints and the RMSNorm inputs are fp32, and autocast casts a norm's fp32 output to bf16
  once per consuming linear (q, k, v: 3 copies; gate, up: 2).
- ``HALF`` (c=r=2): DeepSpeed's bf16 engine — the module itself in bf16, no autocast.
- ``FP32`` (c=r=4): ``model.dtype: float32``.

Model states per parameter (mixed precision: ``train.precision``; AdamW's m, v in fp32):

- DDP: fp32 weights 4 + fp32 grads 4 + DDP's flat bucket copy of the grads 4 (accelerate keeps
  ``gradient_as_bucket_view`` off) + m, v 8 = 20 B/param on every GPU, and during the forward
  autocast's cache of bf16 weight copies (2 B/param, alive until the forward returns);
- DeepSpeed bf16, 18 B/param: bf16 weights 2 + fp32 master 4 + m, v 8 + fp32 gradient
  accumulation 4 (``data_types.grad_accum_dtype: fp32``, ``train.loop``). ZeRO-2 keeps the bf16
  weights whole: 2 + 16/N; ZeRO-3 shards everything, 18/N, plus the gathered working copy
  (one layer, the prefetched next one and its bf16 grads before the reduce-scatter, 3·c·P_layer,
  or the gathered head c·V·h during the loss, whichever is larger); offload: only that copy.
  (fp32: DDP 20, ZeRO-2 4 + 12/N, ZeRO-3 16/N.)

Activations of a training micro-step with gradient checkpointing at layer boundaries (what
``gradient_checkpointing_enable`` does: non-reentrant ``torch.utils.checkpoint`` per decoder
layer). The step peaks at one of two moments, never both: the loss (its logits are gone before
the first layer recomputes) or the recompute + backward of the top layer. So::

    total = states + stored + max(layer, loss)

- ``stored`` (alive through the whole backward), per token: the L layer inputs, ``L·r·h``, plus
  RoPE's cos and sin ``2·head_dim·r`` and the ids/labels/positions 24.
- ``layer``: one layer's tensors saved for backward when it is recomputed, per token
  (:func:`layer_saved_bytes`)::

      S = 12·h                   the two RMSNorms: the fp32 input (the stream itself when
                                 r = 4, else an fp32 copy) and the normalised product
        + 5·c·h | 2·c·h          the linears' inputs: autocast's 3 + 2 bf16 casts, else 2 shared
        + c·(a + 2k)             q, k after RoPE and v (saved by SDPA / flash-attention)
        + c·a + 4·heads          the attention output and its log-sum-exp
        + 4·c·i                  MLP: gate, act(gate), up, act·up
        [+ c·(a + k)             Phi-3's fused qkv_proj output, alive through its v view]

  plus the peak of its backward (:func:`layer_backward_bytes`): the gradients of act(gate) and of
  up beside the saved tensors, ``2·c·i``, and the incoming gradient ``r·h`` (+ its bf16 cast
  ``c·h`` under autocast); per layer, not per token: the MLP's weight-sized gradient transient
  and, under autocast, the recomputed layer's bf16 weight casts. Llama-3-8B under DeepSpeed bf16:
  S ≈ 49·h, backward peak ≈ 65·h bytes per token.
  Without checkpointing every layer keeps S (+ its input when r = 4) and ``stored`` is L·that.
- ``loss``: the final norm's fp32 input and normalised product, the head's input and its
  gradient, ``(4 + 4|c + c + r)·h`` per token (16·h fp32, 14·h autocast, 10·h bf16), plus by
  loss (:func:`loss_bytes`):

  - transformers' loss materialises the logits: forward ``c·V`` (head output) + its fp32 upcast
    ``4·V`` (when c < 4) + log_softmax's saved output ``4·V``; backward ``12·V`` per token
    (saved output, nll's gradient, log_softmax's gradient) — the term that dominates at 128k;
  - the tiled loss (``train.tiled_loss``, ZeRO-3 and sequence parallelism) does that for one
    slice of ``e ≤ LOGITS_PER_SHARD`` logits, beside the head weight's gradient summed over the
    earlier slices: ``12·e + c·V·h``; or, when the slice's weight gradient is added to that sum
    (out of place: old sum, new gradient, new sum), ``3·c·V·h``, whichever is larger (under
    autocast, at the end, the bf16 sum copied to fp32: ``(c + 4)·V·h``);
  - liger's fused linear cross-entropy (``model.liger`` on/auto; where ``lm_head`` is whole: DDP,
    ZeRO-2) computes the gradients in the forward, a chunk of ``≈ t·h/V`` rows (a power of two)
    at a time: ``c·t·h`` (input gradient) + the chunk's logits and its gradient matmul + the
    weight gradient ``V·h`` in the weight's dtype. Not measured here (Triton needs a GPU).

Sequence parallelism (Ulysses, the recipe's ``sequence_parallel: S``, config
``deepspeed_zero3_ulysses.yaml``) gives each GPU ``t = T / S`` tokens of a T-token row; its
all-to-all leaves the attention output twice (before and after), ``+ c·a`` per token. With
``S > 1`` the other configs are shown as not applicable.

Inference stages (search, readjust, eval) run on one GPU each with the whole model in the
compute dtype, no grad, the cache off except for generation (:func:`inference_memory`):
weights ``c·P`` + per token the embedding output, cos/sin and ids + the largest op of one layer
(the MLP's ``4·c·h + 3·c·i``: embeddings, layer input, residual, normed input, act(gate), up,
their product; Phi-3: ``4·c·i``) + for generation (passkey, NIAH, RULER: ``model.generate``'s
prefill) the KV cache ``2·L·c·k``; perplexity's head runs ``eval.perplexity.default_chunk_size``
positions at a time into one fp32 buffer (64 MiB; a bf16 head's chunk output beside it), so the
vocabulary costs nothing per token.
A 2,097,152-token forward of Llama-2-7B needs ≈ 207 GiB (its MLP's act(gate), up and product: 129).

Not counted: liger's RMSNorm/SwiGLU kernels (they save less than plain torch: the plan is an
upper bound there), DeepSpeed's communication buckets, NCCL and CUDA context, and fragmentation —
``RESERVE_GIB`` of every GPU is kept free for them. LoRA stages are planned as full fine-tunes.
Each real recipe's launch line names the config this plan says fits (tests/train/test_planner.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from longctx.train.tiled_loss import LOGITS_PER_SHARD

GIB = 1024**3
RESERVE_GIB = 2.0
"""GiB of each GPU the plan leaves free: CUDA context, cuBLAS / NCCL workspaces, fragmentation."""
GENERATION_TASKS = frozenset({"passkey", "niah", "ruler", "serving"})
"""Eval tasks that decode with ``model.generate`` (a KV cache of the whole prompt)."""


@dataclass(frozen=True)
class Dtypes:
    compute: int
    """c: bytes of what the matmuls write (activations)."""
    residual: int
    """r: bytes of the residual stream between layers (4 under autocast: fp32 weights)."""

    @property
    def autocast(self) -> bool:
        return self.residual > self.compute


AUTOCAST = Dtypes(2, 4)
HALF = Dtypes(2, 2)
FP32 = Dtypes(4, 4)


@dataclass(frozen=True)
class LaunchConfig:
    name: str
    full: int
    """Bytes per parameter of model states on every GPU (bf16 mixed precision)."""
    sharded: int
    """Bytes per parameter of model states split over the N GPUs (0: offloaded)."""
    zero3: bool = False
    deepspeed: bool = True
    ulysses: bool = False
    full_fp32: int = 0
    sharded_fp32: int = 0
    """The same under ``model.dtype: float32``."""


LAUNCH_CONFIGS = (
    LaunchConfig("multi_gpu_ddp", 20, 0, deepspeed=False, full_fp32=20),
    LaunchConfig("deepspeed_zero2", 2, 16, full_fp32=4, sharded_fp32=12),
    LaunchConfig("deepspeed_zero3", 0, 18, zero3=True, sharded_fp32=16),
    LaunchConfig("deepspeed_zero3_ulysses", 0, 18, zero3=True, ulysses=True, sharded_fp32=16),
    LaunchConfig("deepspeed_zero3_offload", 0, 0, zero3=True),
)
"""In order of speed: the plan recommends the first one that fits."""


@dataclass(frozen=True)
class ModelShape:
    params: int
    hidden: int
    layers: int
    vocab: int
    intermediate: int = 0
    """0: 8/3 · hidden (what a shape built from the first four fields alone assumes)."""
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    fused_qkv: bool = False
    """Phi-3: one qkv_proj (and gate_up_proj)."""

    def __post_init__(self) -> None:
        if not self.intermediate:
            object.__setattr__(self, "intermediate", round(8 * self.hidden / 3))
        if not self.heads:
            object.__setattr__(self, "heads", max(1, self.hidden // 128))
        if not self.kv_heads:
            object.__setattr__(self, "kv_heads", self.heads)
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)

    @property
    def attn_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        h, a, k = self.hidden, self.attn_dim, self.kv_dim
        return 2 * h * a + 2 * h * k + 3 * h * self.intermediate + 2 * h

    @classmethod
    def from_config(cls, config) -> ModelShape:
        h, n_layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
        heads = config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or h // heads
        attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
        mlp = 3 * h * config.intermediate_size
        embed = vocab * h * (1 if getattr(config, "tie_word_embeddings", False) else 2)
        return cls(
            params=embed + n_layers * (attn + mlp + 2 * h) + h, hidden=h, layers=n_layers, vocab=vocab,
            intermediate=config.intermediate_size, heads=heads, kv_heads=kv, head_dim=head_dim,
            fused_qkv=getattr(config, "model_type", "") == "phi3",
        )  # fmt: skip


# ----- training: per-token terms -------------------------------------------------------------------
def stored_bytes(shape: ModelShape, d: Dtypes) -> int:
    """Per token, alive through the backward: the L checkpointed layer inputs ``L·r·h``, cos/sin
    ``2·head_dim·r`` (computed from the stream's dtype) and input ids, labels, positions (24)."""
    return shape.layers * d.residual * shape.hidden + 2 * shape.head_dim * d.residual + 24


def layer_saved_bytes(shape: ModelShape, d: Dtypes) -> int:
    """S: per token, what one decoder layer saves for backward (module docstring)::

    12·h + (5·c·h under autocast, else 2·c·h) + c·(a + 2k) + c·a + 4·heads + 4·c·i [+ c·(a + k)]
    """
    h, a, k, i, c = shape.hidden, shape.attn_dim, shape.kv_dim, shape.intermediate, d.compute
    linear_inputs = (5 if d.autocast else 2) * c * h
    fused = c * (a + k) if shape.fused_qkv else 0
    return 12 * h + linear_inputs + c * (a + 2 * k) + c * a + 4 * shape.heads + 4 * c * i + fused


def layer_backward_bytes(shape: ModelShape, d: Dtypes) -> int:
    """Per token, the peak while one layer's backward runs: S + ``2·c·i`` (the gradients of
    act(gate) and up) + the incoming gradient ``r·h`` (+ ``c·h``, its bf16 cast, under autocast)."""
    h, c = shape.hidden, d.compute
    return (
        layer_saved_bytes(shape, d)
        + 2 * c * shape.intermediate
        + d.residual * h
        + (c * h if d.autocast else 0)
    )


def layer_fixed_bytes(shape: ModelShape, d: Dtypes) -> int:
    """Per layer (not per token) beside its backward: the largest weight gradient (an MLP matrix,
    ``h·i`` in the compute dtype, + its fp32 copy under autocast) and, under autocast, the bf16
    casts of the recomputed layer's weights that its linears saved."""
    grad = shape.hidden * shape.intermediate * (d.compute + (4 if d.autocast else 0))
    return grad + (2 * shape.layer_params if d.autocast else 0)


def loss_bytes(shape: ModelShape, tokens: int, d: Dtypes, kind: str, *, logits_per_shard: int = LOGITS_PER_SHARD,
               weights_cache: int = 0) -> int:  # fmt: skip
    """The loss's peak (bytes, not per token) for ``kind`` "plain" / "tiled" / "fused" (module
    docstring), with the final norm, the head's input and its gradient. ``weights_cache``: bytes
    alive during the forward only (autocast's bf16 weight copies under DDP)."""
    h, V, c, t = shape.hidden, shape.vocab, d.compute, tokens
    final = (4 + (4 if d.residual == 4 else c) + c + d.residual) * h * t
    weight_dtype = 4 if d.autocast else c
    if kind == "plain":
        forward = (c + (4 if c < 4 else 0) + 4) * V * t + weights_cache
        return final + max(forward, 12 * V * t, c * V * t + V * h * (c + weight_dtype))
    if kind == "tiled":
        shards = max(1, math.ceil(t * V / logits_per_shard))
        e = math.ceil(t / shards) * V
        # a slice's log_softmax backward beside the head gradient summed so far; its weight
        # gradient beside the logits' gradient; the autograd engine's out-of-place sum of the two
        # (measured); under autocast, at the end, the bf16 sum copied to fp32
        head_end = (c + 4) * V * h if d.autocast else 0
        return final + max(12 * e + c * V * h, c * e + 2 * c * V * h, 3 * c * V * h, head_end)
    if kind == "fused":  # liger: chunk = next_pow2(ceil(t / ceil(V / h))) rows
        chunk = 1 << max(0, math.ceil(math.log2(max(1, math.ceil(t / math.ceil(V / h))))))
        chunk = min(chunk, t)
        return final + c * t * h + 4 * t + (c * V + c * h) * chunk + V * h * weight_dtype + weights_cache
    raise ValueError(f"loss kind: expected plain, tiled or fused; got {kind!r}")


def training_memory(
    shape: ModelShape,
    tokens: int,
    d: Dtypes,
    *,
    checkpointing: bool = True,
    loss: str = "plain",
    states: float = 0.0,
    weights_cache: int = 0,
    ulysses: bool = False,
    logits_per_shard: int = LOGITS_PER_SHARD,
) -> dict:
    """Bytes of one micro-step on ``tokens`` tokens: ``states`` (given) + ``stored`` + the larger
    of ``layer`` and ``loss``. ``weights_cache``: see :func:`loss_bytes`; ``ulysses``: the
    attention output kept on both sides of the all-to-all."""
    per_layer = layer_backward_bytes(shape, d) + (d.compute * shape.attn_dim if ulysses else 0)
    if checkpointing:
        stored = stored_bytes(shape, d) * tokens
        layer = per_layer * tokens
    else:
        kept = layer_saved_bytes(shape, d) + (d.residual * shape.hidden if d.residual == 4 else 0)
        stored = (shape.layers * kept + 2 * shape.head_dim * d.residual + 24) * tokens
        layer = (per_layer - layer_saved_bytes(shape, d)) * tokens
    layer += layer_fixed_bytes(shape, d)
    loss_peak = loss_bytes(
        shape, tokens, d, loss, logits_per_shard=logits_per_shard, weights_cache=weights_cache
    )
    total = states + stored + max(layer, loss_peak)
    return {"states": states, "stored": stored, "layer": layer, "loss": loss_peak, "total": total}


def _dtypes(dtype: str, deepspeed: bool) -> Dtypes:
    if dtype == "float32":
        return FP32
    return HALF if deepspeed else AUTOCAST


def plan_memory(
    shape: ModelShape,
    tokens: int,
    *,
    gpus: int,
    checkpointing: bool,
    gpu_gib: float,
    fused_loss: bool = False,
    sequence_parallel: int = 1,
    dtype: str = "bfloat16",
) -> list[dict]:
    """One row per launch config: GiB per GPU by part, and whether it fits ``gpu_gib`` less
    ``RESERVE_GIB``. ``fused_loss``: liger's fused linear cross-entropy is available (where it
    applies, see the module docstring). ``sequence_parallel``: the recipe's Ulysses degree S.
    ``dtype``: the recipe's ``model.dtype`` (anything but float32 plans bf16 mixed precision).
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
        d = _dtypes(dtype, cfg.deepspeed)
        fused = fused_loss and not cfg.zero3 and sp == 1  # liger's fused linear cross-entropy
        tiled = cfg.zero3 or sp > 1  # train.tiled_loss: slices of ≤ LOGITS_PER_SHARD logits
        kind = "fused" if fused else "tiled" if tiled else "plain"
        full, sharded = (cfg.full_fp32, cfg.sharded_fp32) if d == FP32 else (cfg.full, cfg.sharded)
        states = shape.params * (full + sharded / gpus)
        if cfg.zero3:  # the gathered working copy: a layer, the prefetched next, their grads; or the head
            states += d.compute * max(3 * shape.layer_params, shape.vocab * shape.hidden)
        cache = 2 * shape.params if d.autocast else 0  # autocast's bf16 weight copies (forward)
        m = training_memory(shape, t, d, checkpointing=checkpointing, loss=kind, states=states,
                            weights_cache=cache, ulysses=sp > 1)  # fmt: skip
        total = m["total"]
        rows.append({"config": cfg.name, "states": states / GIB, "stored": m["stored"] / GIB,
                     "layer": m["layer"] / GIB, "loss": m["loss"] / GIB,
                     "activations": (m["stored"] + m["layer"]) / GIB, "logits": m["loss"] / GIB,
                     "fused_loss": fused, "tiled_loss": tiled, "sequence_parallel": sp, "total": total / GIB,
                     "fits": not note and total <= (gpu_gib - RESERVE_GIB) * GIB, "note": note})  # fmt: skip
    return rows


# ----- inference: search, readjust, eval ------------------------------------------------------------
def forward_bytes(shape: ModelShape, c: int) -> int:
    """Per token, the largest op of one layer's no-grad forward (module docstring), with what the
    model keeps around it: the embedding output and the layer's input."""
    h, a, k, i = shape.hidden, shape.attn_dim, shape.kv_dim, shape.intermediate
    norm = 3 * c * h + 8 * h  # embeddings, input, residual + the fp32 copy and its product
    rope = 3 * c * h + c * (a + 2 * k) + 3 * c * a  # embeddings, input, normed + q k v + 3 q-sized temps
    attention = 3 * c * h + c * (a + 2 * k) + c * a + 4 * shape.heads
    mlp = 4 * c * h + (4 if shape.fused_qkv else 3) * c * i
    return max(norm, rope, attention, mlp)


def kv_cache_bytes(shape: ModelShape, c: int) -> int:
    """Per token of a prompt: k and v of every layer, ``2·L·c·k``."""
    return 2 * shape.layers * c * shape.kv_dim


def inference_memory(shape: ModelShape, tokens: int, c: int = 2, *, generate: bool = False) -> dict:
    """Bytes of one no-grad forward on ``tokens`` tokens, one GPU, weights in ``c`` bytes:
    ``generate`` adds ``model.generate``'s KV cache (prefill; logits of the last position only)
    and one layer's cache growing by a step; otherwise the perplexity head's fp32 buffer."""
    from longctx.eval.perplexity import default_chunk_size

    t = tokens
    weights = c * shape.params
    persistent = (2 * shape.head_dim * c + 16) * t
    working = forward_bytes(shape, c) * t
    # the last hidden state, targets and nll per position, the fp32 buffer and (a bf16 head) the
    # chunk's logits before they are copied into it
    chunk = min(t, default_chunk_size(shape.vocab)) * shape.vocab
    head = c * shape.hidden * t + 20 * t + 4 * chunk + (c * chunk if c < 4 else 0)
    cache = 0
    if generate:
        cache = kv_cache_bytes(shape, c) * t + 2 * c * shape.kv_dim * t
        head = 4 * shape.vocab
    total = weights + persistent + cache + max(working, head)
    return {"weights": weights, "cache": cache, "working": persistent + max(working, head), "total": total}


def longest_fitting(fn, gib: float) -> int:
    """The longest row (tokens) whose ``fn(tokens)["total"]`` fits ``gib`` GiB (0: none)."""
    lo, hi = 0, 1
    while fn(hi)["total"] <= gib * GIB:
        lo, hi = hi, hi * 2
        if hi > 1 << 34:
            return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fn(mid)["total"] <= gib * GIB else (lo, mid)
    return lo


# ----- the --dry-run lines -------------------------------------------------------------------------
def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def format_plan(rows: list[dict], *, params: int, tokens: int, gpus: int, gpu_gib: float) -> list[str]:
    lines = [
        f"memory plan: {_count(params)} parameters, longest row {tokens:,} tokens, {gpus} × {gpu_gib:g} GiB GPUs "
        f"({RESERVE_GIB:g} GiB of each kept free)",
        "  training micro-step per GPU: total = states + stored + max(layer, loss) (they peak at different times)",
        f"  {'accelerate config':<26} {'states':>8} {'stored':>8} {'layer':>8} {'loss':>8} {'total':>8}  fits",
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
            f"  {r['config']:<26} {r['states']:>7.1f}G {r['stored']:>7.1f}G {r['layer']:>7.1f}G "
            f"{r['loss']:>7.1f}G {r['total']:>7.1f}G  {fits}{extra}"
        )
    fitting = [r["config"] for r in rows if r["fits"]]
    if fitting:
        lines.append(f"  → use accelerate_configs/{fitting[0]}.yaml (the fastest that fits)")
    elif rows[-1]["loss"] > rows[-1]["layer"] + rows[-1]["stored"]:
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


def inference_plan(recipe, shape: ModelShape, *, gpu_gib: float) -> list[dict]:
    """One entry per (inference stage, kind of forward): the stage's longest forward on one GPU."""
    c = 4 if recipe.model.dtype == "float32" else 2
    usable = gpu_gib - RESERVE_GIB
    entries = []

    def add(stage, what: str, lengths: list[int], generate: bool) -> None:
        def fn(t: int) -> dict:
            return inference_memory(shape, t, c, generate=generate)

        longest = max(lengths)
        m = fn(longest)
        entries.append({
            "stage": stage.name, "what": what, "tokens": longest, "generate": generate,
            "weights": m["weights"] / GIB, "cache": m["cache"] / GIB, "working": m["working"] / GIB,
            "total": m["total"] / GIB, "fits": m["total"] <= usable * GIB,
            "too_long": [n for n in sorted(set(lengths)) if fn(n)["total"] > usable * GIB],
            "longest_fitting": longest_fitting(fn, usable),
        })  # fmt: skip

    for stage in recipe.stages:
        if stage.kind in ("search", "readjust"):
            what = f"{stage.kind} {stage.algorithm} {stage.objective}"
            add(stage, what, [getattr(stage, "score_length", None) or stage.target_length], generate=False)
        elif stage.kind == "eval":
            ppl = [t for t in stage.tasks if t == "ppl"]
            gen = [t for t in stage.tasks if t in GENERATION_TASKS]
            if ppl:
                add(stage, "eval ppl (chunked head)", list(stage.lengths), generate=False)
            if gen:
                add(stage, f"eval {'/'.join(gen)} (KV cache)", list(stage.lengths), generate=True)
    return entries


def format_inference(entries: list[dict], *, gpu_gib: float, c: int) -> list[str]:
    if not entries:
        return []
    dtype = "fp32" if c == 4 else "bf16"
    lines = [f"  search / readjust / eval, one GPU each ({dtype} weights, no grad; its longest forward):",
             f"    {'stage':<16} {'forward':<36} {'tokens':>10} {'weights':>8} {'cache':>8} {'working':>8} "
             f"{'total':>8}  fits"]  # fmt: skip
    for e in entries:
        fits = "yes" if e["fits"] else f"no (fits ≤ {e['longest_fitting']:,} tokens)"
        lines.append(
            f"    {e['stage']:<16} {e['what']:<36} {e['tokens']:>10,} {e['weights']:>7.1f}G {e['cache']:>7.1f}G "
            f"{e['working']:>7.1f}G {e['total']:>7.1f}G  {fits}"
        )
    bad = [e for e in entries if not e["fits"]]
    for e in bad:
        lengths = ", ".join(f"{n:,}" for n in e["too_long"])
        lines.append(
            f"  → {e['stage']}: {e['what']} at {lengths} tokens does not fit one {gpu_gib:g} GiB GPU "
            f"(longest that fits: {e['longest_fitting']:,} tokens)"
        )
    return lines


def describe_memory(recipe, recipe_file, *, gpus: int, gpu_gib: float) -> list[str]:
    from longctx.train.stages import trains

    shape, why = recipe_model_shape(recipe, recipe_file)
    if shape is None:
        return [f"memory plan: skipped ({why})"]
    stages = [s for s in recipe.stages if trains(s)]
    lines = []
    if stages:
        tokens = max(w.length * s.micro_batch_size for s in stages for w in s.windows)
        kwargs = dict(gpus=gpus, checkpointing=recipe.model.gradient_checkpointing, gpu_gib=gpu_gib,
                      sequence_parallel=recipe.sequence_parallel, dtype=recipe.model.dtype)  # fmt: skip
        fused = recipe.model.liger != "off"
        rows = plan_memory(shape, tokens, fused_loss=fused, **kwargs)
        lines += format_plan(rows, params=shape.params, tokens=tokens, gpus=gpus, gpu_gib=gpu_gib)
        advised = next((r for r in rows if r["fits"]), None)
        if advised is not None and advised["fused_loss"]:
            plain = next(r for r in plan_memory(shape, tokens, **kwargs) if r["config"] == advised["config"])
            lines.append(
                f"    (assumes liger-kernel on the GPUs, model.liger: {recipe.model.liger}; without it "
                f"{advised['config']} takes {plain['total']:.1f}G: {'fits' if plain['fits'] else 'does not fit'})"
            )
    else:
        lines.append(
            f"memory plan: {_count(shape.params)} parameters, no training stage, {gpu_gib:g} GiB GPUs"
        )
    c = 4 if recipe.model.dtype == "float32" else 2
    lines += format_inference(inference_plan(recipe, shape, gpu_gib=gpu_gib), gpu_gib=gpu_gib, c=c)
    return lines
