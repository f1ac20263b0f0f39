"""What every stage shares: the recipe, the output tree, the accelerator, the tokenizer, the data.

Stage outputs live in ``<output_dir>/<stage name>/``: ``model/`` (weights with the BASE
config, so any later spec can be installed on it), ``spec.json`` (the RoPE spec the stage
produced or trained with), ``result.json``, and ``COMPLETE`` written last.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from longctx.rope import RopeSpec, from_hf_config
from longctx.rope.hf_config import lift_sliding_window
from longctx.train.attention import attention_implementation
from longctx.train.models import init_model, model_config
from longctx.train.precision import Precision
from longctx.train.recipe import Recipe, resolve_path, source_stage


@contextlib.contextmanager
def outside_zero_init(accelerator: Accelerator):
    """Build a fresh model outside DeepSpeed's ``zero.Init``: under ZeRO-3 transformers would
    otherwise initialise it partitioned, with different random weights than one process gets,
    so the same seed would not give the same base model. (Loaded checkpoints are unaffected.)"""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None or not is_deepspeed_zero3_enabled():
        yield
        return
    from transformers.integrations import deepspeed as hf_deepspeed

    # put back the SAME config object, not one rebuilt from the plugin: after a training stage
    # the plugin's config holds that stage's concrete batch sizes, and zero.Init of the next
    # training model then checks train_batch_size against the WORLD size (no SP groups yet):
    # measured on the 2048k recipe's second fine-tune under ZeRO-3 + Ulysses, "4 != 1 * 4 * 2"
    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def plain_from_gguf(model: torch.nn.Module) -> torch.nn.Module:
    """A GGUF-loaded model as a plain transformers model (same weights, dequantised).

    transformers marks GGUF loads with a ``quantization_config`` and then refuses
    ``save_pretrained``; the fine-tune and export stages must save, so rebuild the model from
    its config without it and load the (already dequantised) state dict.
    """
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain


@dataclass
class RunContext:
    recipe: Recipe
    recipe_file: Path
    accelerator: Accelerator
    _tokenizer: object = None
    _documents: list[list[int]] | None = None
    _validation: list[list[int]] | None = None
    _cache: dict = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return Path(self.recipe.output_dir)

    def stage_dir(self, name: str) -> Path:
        return self.out / name

    def log(self, message: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(message, file=sys.stderr)

    # ----- which earlier stage a stage reads ---------------------------------------------------
    def model_source(self, stage) -> str | None:
        return source_stage(self.recipe, stage, "model_from")

    def spec_source(self, stage) -> str | None:
        return source_stage(self.recipe, stage, "spec_from")

    # ----- model, tokenizer, spec ----------------------------------------------------------
    @property
    def precision(self) -> Precision:
        return Precision.of(self.recipe.model.dtype)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def attention(self) -> str:
        return attention_implementation(self.recipe.model.attention)

    def tokenizer(self):
        if self._tokenizer is None:
            cfg = self.recipe.tokenizer
            if cfg.demo_vocab_size is not None:
                from longctx.data.tokenizer import train_demo_tokenizer

                with self.accelerator.main_process_first():
                    self._tokenizer = train_demo_tokenizer(
                        self.out / "tokenizer", vocab_size=cfg.demo_vocab_size
                    )
            else:
                path = cfg.path or self.recipe.model.path
                self._tokenizer = AutoTokenizer.from_pretrained(
                    resolve_path(self.recipe_file, path),
                    local_files_only=True,
                    gguf_file=self.recipe.model.gguf_file,
                )
        return self._tokenizer

    def load_model(self, stage, *, training: bool = False, device=None) -> torch.nn.Module:
        """The model a stage starts from (an earlier stage's output, the recipe's path, or a fresh
        init), loaded once: see :meth:`load_model_from`."""
        return self.load_model_from(self.model_source(stage), training=training, device=device)

    def load_model_from(self, source: str | None, *, training: bool = False, device=None) -> torch.nn.Module:
        """Stage ``source``'s saved model, or the recipe's own model when ``source`` is None.

        Training: parameters in the precision policy's master dtype (fp32), left where they are
        for ``accelerator.prepare`` to place. Otherwise: the compute dtype, in eval mode, on
        ``device`` (default: the accelerator's device).
        """
        kwargs = dict(dtype=self.precision.load_dtype(training), attn_implementation=self.attention)
        if source is None and self.recipe.model.init is None:  # a pretrained model: its quirks
            path = resolve_path(self.recipe_file, self.recipe.model.path)
            config = AutoConfig.from_pretrained(
                path, local_files_only=True, gguf_file=self.recipe.model.gguf_file
            )
            kwargs["config"] = self._full_attention(config)
        # a training model is loaded partitioned under ZeRO-3 (zero3_init_flag: each rank reads its
        # shard, never the whole model); a model that runs outside the engine is loaded whole
        with contextlib.nullcontext() if training else outside_zero_init(self.accelerator):
            if source is not None:
                model = AutoModelForCausalLM.from_pretrained(
                    self.stage_dir(source) / "model", local_files_only=True, **kwargs
                )
            elif self.recipe.model.init is not None:
                model = self._init_model(**kwargs)
            else:
                path = resolve_path(self.recipe_file, self.recipe.model.path)
                model = AutoModelForCausalLM.from_pretrained(
                    path, local_files_only=True, gguf_file=self.recipe.model.gguf_file, **kwargs
                )
                if self.recipe.model.gguf_file is not None:
                    model = plain_from_gguf(model)
        if training:
            if self.recipe.model.gradient_checkpointing:
                model.gradient_checkpointing_enable()
            return model
        return model.eval().to(self.device if device is None else device)

    def release(self, *objects) -> None:
        """Drop what a stage prepared: accelerate's references to its model / optimizer / engine
        (DeepSpeed's engine destroyed), the Ulysses process groups, then collect and return cached
        device memory."""
        from longctx.train.sequence_parallel import release_groups

        self.accelerator.free_memory(*objects)
        release_groups()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _init_model(self, dtype, attn_implementation) -> torch.nn.Module:
        init = self.recipe.model.init
        tok = self.tokenizer()
        config = model_config(
            init.architecture,
            vocab_size=len(tok),
            hidden_size=init.hidden_size,
            intermediate_size=init.intermediate_size,
            num_heads=init.num_heads,
            num_kv_heads=init.num_kv_heads,
            num_layers=init.num_layers,
            original_length=init.original_length,
            original_max_position_embeddings=init.original_length,
            rope_theta=init.rope_theta,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_embeddings=init.tie_embeddings,
            **({"sliding_window": init.sliding_window} if init.sliding_window else {}),
        )
        config = self._full_attention(config)
        with outside_zero_init(self.accelerator):
            return init_model(config, self.recipe.seed, dtype=dtype, attn_implementation=attn_implementation)

    def _full_attention(self, config):
        """``config`` without its sliding window when the recipe runs past it (logged once)."""
        from longctx.train.schema import longest_length

        longest = longest_length(self.recipe)
        window = lift_sliding_window(config, longest)
        if window is not None and not self._cache.get("lifted"):
            self._cache["lifted"] = True
            self.log(
                f"model: sliding_window {window} lifted (full attention): the recipe runs to {longest:,} tokens"
            )
        return config

    def base_spec(self, model) -> RopeSpec:
        """The pretrained model's own RoPE (original length L, original base)."""
        spec = from_hf_config(model.config)
        declared = self.recipe.model.original_length
        if declared is not None and spec.method == "default":
            spec = spec.replace(original_length=declared, target_length=declared)
        return spec

    def baseline_spec(self, model, method: str, target_length: int) -> RopeSpec:
        """A training-free baseline (``linear`` = PI, ``ntk``, ``yarn``) for ``target_length``, on the
        pretrained model's own RoPE geometry."""
        base = self.base_spec(model)
        return RopeSpec(
            method, base.base, base.head_dim, base.original_length, target_length, base.partial_rotary_factor
        )

    def spec_for(self, stage, model) -> RopeSpec:
        source = self.spec_source(stage)
        if source is None:
            return self.base_spec(model)
        return RopeSpec.from_json(self.stage_dir(source) / "spec.json")

    @property
    def original_length(self) -> int:
        """L: the recipe's when it states one, else the recipe model's config (no weights loaded)."""
        if "L" not in self._cache:
            from longctx.train.schema import declared_length

            L = declared_length(self.recipe)
            if L is None:
                path = resolve_path(self.recipe_file, self.recipe.model.path)
                config = AutoConfig.from_pretrained(
                    path, local_files_only=True, gguf_file=self.recipe.model.gguf_file
                )
                L = from_hf_config(config).original_length
            self._cache["L"] = L
        return self._cache["L"]

    # ----- data ----------------------------------------------------------------------------
    def documents(self) -> list[list[int]]:
        """Token ids of every document of the recipe's sources (tokenised once, cached on disk)."""
        if self._documents is None:
            self._documents = self._tokenized(self.recipe.data.sources)
        return self._documents

    def search_documents(self) -> list[list[int]]:
        """What factor searches and the readjustment score: ``data.validation`` when the recipe
        gives it, else the training documents."""
        if not self.recipe.data.validation:
            return self.documents()
        if self._validation is None:
            self._validation = self._tokenized(self.recipe.data.validation)
        return self._validation

    def _tokenized(self, sources) -> list[list[int]]:
        import datasets

        from longctx.data.sources import load_documents
        from longctx.data.tokenize import tokenize_documents

        cfg = self.recipe.data
        parts = [load_documents(src) for src in sources]
        ds = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
        cache = Path(cfg.cache_dir) if cfg.cache_dir else self.out / "cache"
        with self.accelerator.main_process_first():
            tokenized = tokenize_documents(ds, self.tokenizer(), num_proc=cfg.num_proc, cache_dir=cache)
        return [list(ids) for ids in tokenized["input_ids"]]

    def training_documents(self, windows) -> list[list[int]]:
        """Documents for a training stage (``data.training_mix.training_documents``)."""
        from longctx.data.training_mix import training_documents

        return training_documents(
            self.documents(),
            [(w.length, w.rope) for w in windows],
            original_length=self.original_length,
            tokenizer=self.tokenizer(),
            mix=self.recipe.data.retrieval_mix(),
            seed=self.recipe.seed,
            log=self.log,
        )
