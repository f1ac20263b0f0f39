"""Schema pieces shared by the recipe and several stage kinds (pydantic v2, strict).

Each stage kind's own settings live in its module (``train/stages/<kind>.py``); this file holds
what more than one of them uses, and the recipe's model / tokenizer / data sections. Importing it
imports no execution code (no accelerate, deepspeed, peft).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelInit(Strict):
    """A Llama-family architecture to train from scratch (the tiny recipe's own base model)."""

    architecture: Literal["llama", "mistral", "qwen2", "qwen3", "phi3"] = "llama"
    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    num_kv_heads: int = Field(2, gt=0)
    intermediate_size: int = Field(256, gt=0)
    rope_theta: float = Field(10_000.0, gt=1)
    original_length: int = Field(256, gt=0)
    """L: the length the base model is pretrained at."""
    tie_embeddings: bool = True
    """Share the input embedding and the LM head (fewer parameters for tiny models)."""
    sliding_window: int | None = Field(None, gt=0)
    """Sliding-window attention of this many keys (Mistral / Phi-3 / Qwen2 style); lifted at load
    when the recipe's longest length passes it (``rope.hf_config.lift_sliding_window``)."""


class ModelCfg(Strict):
    path: str | None = None
    """Local directory of a transformers checkpoint (no hub downloads at run time)."""
    gguf_file: str | None = None
    """A GGUF file inside ``path`` (e.g. SmolLM2 shipped in a pip package)."""
    init: ModelInit | None = None
    """Build a fresh model from this architecture instead of loading ``path``."""
    original_length: int | None = Field(None, gt=0)
    """L, when the config's max_position_embeddings is not the pretraining length
    (Mistral-7B-v0.1 says 32768 but was pretrained at 8192)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto: bfloat16 on CUDA, float32 on CPU."""
    attention: Literal["auto", "flash", "sdpa", "eager"] = "auto"
    liger: Literal["auto", "on", "off"] = "auto"
    """liger-kernel RMSNorm/SwiGLU/RoPE/fused linear cross-entropy (``train.kernels``): auto = on
    where CUDA and the package are present, a logged fallback elsewhere; on = required."""
    gradient_checkpointing: bool = False

    @field_validator("liger", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        """YAML reads a bare ``on`` / ``off`` as a boolean: take it as the word it was."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _one_source(self) -> ModelCfg:
        if (self.path is None) == (self.init is None):
            raise ValueError("set exactly one of model.path (load) or model.init (train from scratch)")
        return self


class TokenizerCfg(Strict):
    path: str | None = None
    """Local tokenizer directory; default: the model's path."""
    demo_vocab_size: int | None = Field(None, gt=255)
    """Train the demo byte-level BPE on the demo corpus with this vocabulary (tiny recipe)."""


class DataCfg(Strict):
    sources: list[dict[str, Any]] = Field(min_length=1)
    """Each passed to ``data.sources.load_documents`` (kinds: hf, local, demo)."""
    num_proc: int = Field(1, ge=1)
    cache_dir: str | None = None
    """Tokenisation cache; default ``<output_dir>/cache``."""
    passkey_share: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of synthetic passkey documents mixed in (so a base model learns to retrieve);
    shorthand for ``synthetic_mix: {passkey: share}``."""
    synthetic_mix: dict[str, float] = {}
    """Share of synthetic retrieval documents per task, mixed into every training stage:
    ``passkey`` or a RULER task of ``data.synthetic.RULER_TASKS`` (e.g. ``niah_single_3``), each
    generated at ½–1× of every window's length from seeds no evaluation or search draws
    (``data.training_mix.TRAIN_SEED_BASE``). The shares add up to < 1."""
    validation: list[dict[str, Any]] = []
    """Documents the factor searches and the readjustment score (as ``sources``); empty: the
    training sources. A model scores lower on text it was trained on, and how much lower moves
    with the RoPE (the tiny base: ppl@128 16.7 on its training books, 73.0 on unseen ones, and a
    larger attention factor helps the first and hurts the second), so a search scored on
    training text can pick factors that lose on new text. Keep these out of ``sources`` and of
    the eval stages' data."""

    @model_validator(mode="after")
    def _synthetic_mix(self) -> DataCfg:
        if self.passkey_share and self.synthetic_mix:
            raise ValueError("set data.passkey_share or data.synthetic_mix, not both")
        from longctx.data.training_mix import SYNTHETIC_TASKS

        unknown = sorted(set(self.synthetic_mix) - set(SYNTHETIC_TASKS))
        if unknown:
            raise ValueError(
                f"synthetic_mix: unknown task(s) {unknown}; expected some of {list(SYNTHETIC_TASKS)}"
            )
        shares = self.synthetic_mix.values()
        if any(v <= 0 for v in shares) or sum(shares) >= 1:
            raise ValueError(
                f"synthetic_mix: shares {dict(self.synthetic_mix)}; expected each > 0, together < 1"
            )
        return self

    def retrieval_mix(self) -> dict[str, float]:
        """The synthetic share per task (``passkey_share`` read as ``{passkey: share}``)."""
        return dict(self.synthetic_mix) or ({"passkey": self.passkey_share} if self.passkey_share else {})


class WindowCfg(Strict):
    length: int = Field(gt=0)
    share: float = Field(gt=0.0, le=1.0)
    rope: Literal["original", "rescaled"]
    """original: short documents (≤ L) with the short/original factors; rescaled: long ones."""


class LoraCfg(Strict):
    """LoRA through peft; the stage's saved model is the merged one (stock weights)."""

    r: int = Field(16, gt=0)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]
    trainable: list[Literal["embed", "norm"]] = []
    """Also train these base parameters fully — LongLoRA (arXiv 2309.12307 §3.3) found trainable
    embeddings and norms necessary for long-context adaptation with LoRA."""


class TrainStage(Strict):
    """What pretrain and finetune share: the optimizer, the schedule, the windows, checkpoints."""

    name: str
    model_from: str | None = None
    """Stage whose model this one starts from; default: the latest earlier model-producing stage."""
    steps: int = Field(gt=0)
    micro_batch_size: int = Field(1, gt=0)
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(gt=0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    checkpoint_every: int = Field(50, gt=0)
    keep_checkpoints: int = Field(2, gt=0)
    log_every: int = Field(10, gt=0)
    windows: list[WindowCfg] = Field(min_length=1)
    lora: LoraCfg | None = None
    """Train LoRA adapters (plus ``lora.trainable`` base parameters) instead of all weights."""


class FactorSearchSettings(Strict):
    """What a search and a readjustment share: the model, the objective and its samples."""

    name: str
    model_from: str | None = None
    spec_from: str | None = None
    """An earlier spec to warm-start from (progressive extension / DCIS historical factors)."""
    algorithm: str = "longrope2"
    target_length: int = Field(gt=0)
    objective: Literal["ppl", "needle_ppl"] = "needle_ppl"
    num_samples: int = Field(4, gt=0)
    """Documents (ppl) or needle samples (needle_ppl) the objective averages over (paper: 5 / 10)."""
    needle_depths: list[float] = [0.2, 0.5, 0.8]
    """Depths of the needles in each needle-driven sample (LongRoPE2 §3.2)."""
    max_evaluations: int | None = Field(None, gt=0)
    """Stop after this many distinct candidates (the best so far is kept)."""
    abandon_margin: float | None = Field(None, ge=0)
    """Stop scoring a candidate once its running perplexity exceeds the cut by this fraction."""
    settings: dict[str, Any] = Field(default_factory=dict)
    """Algorithm parameters (population, generations, ranges...) — validated by the algorithm."""


def declared_length(recipe) -> int | None:
    """L when the recipe states it (``model.init`` or ``model.original_length``), else the local
    checkpoint's config.json read at validation; None when neither is at hand (a GGUF file, or
    a checkpoint not yet downloaded: then known when the run starts)."""
    if recipe.model.init is not None:
        return recipe.model.init.original_length
    if recipe.model.original_length is not None:
        return recipe.model.original_length
    return getattr(recipe, "_config_length", None)


def longest_length(recipe) -> int:
    """The longest sequence any stage trains, searches or evaluates at (0 when none names one)."""
    lengths = [0]
    for stage in recipe.stages:
        lengths += [w.length for w in getattr(stage, "windows", None) or []]
        lengths += list(getattr(stage, "lengths", None) or [])
        lengths.append(getattr(stage, "target_length", None) or 0)
    return max(lengths)


def window_errors(recipe, stage: TrainStage, where: str) -> list[str]:
    """A training stage's windows: shares sum to 1, rescaled windows longer than L."""
    lines = []
    total = sum(w.share for w in stage.windows)
    if abs(total - 1.0) > 1e-6:
        lines.append(f"{where}.windows: shares must sum to 1, got {total:g}")
    L = declared_length(recipe)
    for j, w in enumerate(stage.windows):
        if L is not None and w.rope == "rescaled" and w.length <= L:
            lines.append(f"{where}.windows[{j}].length: a rescaled window must be longer than L={L}")
    return lines


def train_plan(stage: TrainStage) -> str:
    longest = max(w.length for w in stage.windows)
    tokens = stage.steps * stage.grad_accum * stage.micro_batch_size * longest
    windows = [(w.length, w.share, w.rope) for w in stage.windows]
    return f"{stage.steps} steps, ≤{tokens:,} tokens/process, windows {windows}"


def about(n: float) -> str:
    """A token count as a recipe comment writes it: 0.23B, 52M, 640k."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale or unit == "k":
            v = n / scale
            return f"{v:.2g}{unit}" if v < 100 else f"{v:.0f}{unit}"
    raise AssertionError  # unreachable


def batch_plan(stage: TrainStage, gpus: int, sequence_parallel: int = 1) -> dict:
    """What one optimizer step of a training stage consumes on ``gpus`` processes.

    Every micro-batch is ``micro_batch_size`` rows of ONE window (``data.mixed``), chosen so each
    window's share of TOKENS is met: window i takes a fraction ∝ share_i / length_i of the
    micro-batches, so a row holds 1 / Σ(share_i / length_i) tokens on average. The ranks of a
    sequence-parallel group process the same rows, so the data-parallel size — what multiplies
    the batch — is ``gpus / sequence_parallel``."""
    dp = max(gpus // sequence_parallel, 1)
    rows = stage.micro_batch_size * stage.grad_accum * dp
    row_tokens = 1.0 / sum(w.share / w.length for w in stage.windows)
    per_step = rows * row_tokens
    return {
        "gpus": gpus, "data_parallel": dp, "sequence_parallel": sequence_parallel, "rows": rows,
        "row_tokens": row_tokens, "tokens_per_step": per_step, "tokens": per_step * stage.steps,
    }  # fmt: skip


def batch_comment(plan: dict) -> str:
    """The form a recipe's ``steps:`` comment states a stage's batch in (tests compare them)."""
    return f"on {plan['gpus']} processes: global batch {plan['rows']} rows, ≈{about(plan['tokens'])} tokens"


def describe_batch(recipe, gpus: int) -> list[str]:
    """``--dry-run``: per training stage, the global batch and the tokens it trains on."""
    lines = [f"batch (on {gpus} processes; --gpus):"]
    sp = recipe.sequence_parallel
    for stage in recipe.stages:
        if not isinstance(stage, TrainStage):
            continue
        p = batch_plan(stage, gpus, sp)
        lines.append(
            f"  {stage.name}: {gpus} = {p['data_parallel']} data-parallel × {sp} sequence-parallel; "
            f"global batch {p['rows']} rows ({stage.micro_batch_size} × grad_accum {stage.grad_accum} × "
            f"{p['data_parallel']}) of ≈{p['row_tokens']:,.0f} tokens = ≈{p['tokens_per_step']:,.0f} "
            f"tokens/step; {stage.steps:,} steps ≈ {about(p['tokens'])} tokens"
        )
        if gpus % sp:
            lines.append(f"    (sequence_parallel {sp} does not divide {gpus}: the run would refuse)")
    return lines
