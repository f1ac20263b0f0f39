"""What every stage shares: the recipe, the output tree, the accelerator, the tokenizer, the data.

Stage outputs live in ``<output_dir>/<stage name>/``: ``model/`` (weights with the BASE
config, so any later spec can be installed on it), ``spec.json`` (the RoPE spec the stage
produced or trained with), ``result.json``, and ``COMPLETE`` written last.
"""

from __future__ import annotations

import contextlib
import copy
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from rope import RopeSpec, from_hf_config
from train.recipe import Recipe, resolve_path, source_stage


@contextlib.contextmanager
def _outside_zero_init(accelerator: Accelerator):
    """Build a fresh model outside DeepSpeed's ``zero.Init``: under ZeRO-3 transformers would
    otherwise initialise it partitioned, with different random weights than one process gets,
    so the same seed would not give the same base model. (Loaded checkpoints are unaffected.)"""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None or not is_deepspeed_zero3_enabled():
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


ARCH_CONFIGS = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3"}


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
    def dtype(self) -> torch.dtype:
        choice = self.recipe.model.dtype
        if choice == "auto":
            return torch.bfloat16 if torch.cuda.is_available() else torch.float32
        return getattr(torch, choice)

    @property
    def attention(self) -> str:
        choice = self.recipe.model.attention
        if choice == "auto":
            return "sdpa"
        return "flash_attention_2" if choice == "flash" else choice

    def tokenizer(self):
        if self._tokenizer is None:
            cfg = self.recipe.tokenizer
            if cfg.demo_vocab_size is not None:
                from data.tokenizer import train_demo_tokenizer

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

    def load_model(self, stage) -> torch.nn.Module:
        """The model a stage starts from: an earlier stage's output, the recipe's path, or a fresh init."""
        return self.load_model_from(self.model_source(stage))

    def load_model_from(self, source: str | None) -> torch.nn.Module:
        """Stage ``source``'s saved model, or the recipe's own model when ``source`` is None."""
        kwargs = dict(dtype=self.dtype, attn_implementation=self.attention)
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
        if self.recipe.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model

    def _init_model(self, dtype, attn_implementation) -> torch.nn.Module:
        init = self.recipe.model.init
        tok = self.tokenizer()
        config = AutoConfig.for_model(
            ARCH_CONFIGS[init.architecture],
            vocab_size=len(tok),
            hidden_size=init.hidden_size,
            intermediate_size=init.intermediate_size,
            num_attention_heads=init.num_heads,
            num_key_value_heads=init.num_kv_heads,
            num_hidden_layers=init.num_layers,
            head_dim=init.hidden_size // init.num_heads,
            max_position_embeddings=init.original_length,
            original_max_position_embeddings=init.original_length,
            rope_parameters={"rope_type": "default", "rope_theta": init.rope_theta},
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=init.tie_embeddings,
        )
        torch.manual_seed(self.recipe.seed)
        with _outside_zero_init(self.accelerator):
            return AutoModelForCausalLM.from_config(
                config, dtype=dtype, attn_implementation=attn_implementation
            )

    def base_spec(self, model) -> RopeSpec:
        """The pretrained model's own RoPE (original length L, original base)."""
        spec = from_hf_config(model.config)
        declared = self.recipe.model.original_length
        if declared is not None and spec.method == "default":
            spec = spec.replace(original_length=declared, target_length=declared)
        return spec

    def spec_for(self, stage, model) -> RopeSpec:
        source = self.spec_source(stage)
        if source is None:
            return self.base_spec(model)
        return RopeSpec.from_json(self.stage_dir(source) / "spec.json")

    @property
    def original_length(self) -> int:
        if "L" not in self._cache:
            init = self.recipe.model.init
            if init is not None:
                self._cache["L"] = init.original_length
            elif self.recipe.model.original_length is not None:
                self._cache["L"] = self.recipe.model.original_length
            else:
                self._cache["L"] = self.base_spec(self.load_model(self.recipe.stages[0])).original_length
        return self._cache["L"]

    # ----- data ----------------------------------------------------------------------------
    def documents(self) -> list[list[int]]:
        """Token ids of every document of the recipe's sources (tokenised once, cached on disk)."""
        if self._documents is None:
            import datasets

            from data.sources import load_documents
            from data.tokenize import tokenize_documents

            cfg = self.recipe.data
            parts = [load_documents(src) for src in cfg.sources]
            ds = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
            cache = Path(cfg.cache_dir) if cfg.cache_dir else self.out / "cache"
            with self.accelerator.main_process_first():
                tokenized = tokenize_documents(ds, self.tokenizer(), num_proc=cfg.num_proc, cache_dir=cache)
            self._documents = [list(ids) for ids in tokenized["input_ids"]]
        return self._documents

    def training_documents(self, windows) -> list[list[int]]:
        """Documents for a training stage: long ones whole, plus ≤ L pieces for original windows.

        Short rows are packed from documents ≤ L (LongRoPE2 §3.3). When a corpus has only long
        documents (the KJV books), they are also cut into L-token pieces so short rows exist;
        synthetic passkey documents are mixed in at ``data.passkey_share``: ≤ L ones among the
        short documents (as many as the share asks of their count), and for each rescaled window
        ones of half to all its length among the long documents, as many as the share asks of
        the long documents' TOKENS (the sampler splits a long document over many rows, so a
        count per document would leave long rows almost without passkeys on a corpus of books).
        """
        L, docs = self.original_length, self.documents()
        out = list(docs)
        if any(w.rope == "original" for w in windows) and not any(len(d) <= L for d in docs):
            pieces = [d[i : i + L] for d in docs for i in range(0, len(d) - L // 4, L)]
            self.log(
                f"data: no document <= L={L}; cut {len(docs)} documents into {len(pieces)} pieces of <= {L} tokens"
            )
            out += pieces
        share = self.recipe.data.passkey_share
        if share > 0:
            out += self._passkey_documents(L, round(share / (1 - share) * sum(len(d) <= L for d in out)))
            long_tokens = sum(len(d) for d in docs if len(d) > L)
            for length in sorted({w.length for w in windows if w.rope == "rescaled"}):
                # long rows retrieve too: passkey documents of L' / 2 … L' tokens (¾ L' on average)
                count = round(share / (1 - share) * long_tokens / (0.75 * length))
                out += self._passkey_documents(length, max(1, count))
        return out

    def _passkey_documents(self, length: int, count: int) -> list[list[int]]:
        from data.errors import DataError
        from data.synthetic import passkey_sample

        # ≤ L documents: the stream the base was pretrained on; each long length its own stream
        # and keys (seeds from length·10⁶), so long rows never repeat a short document's key
        short = length == self.original_length
        rng = random.Random(self.recipe.seed if short else f"{self.recipe.seed}:{length}")
        first = 0 if short else length * 1_000_000
        tok = self.tokenizer()
        docs = []
        for i in range(count):
            # one token short of the length, so the EOS never cuts the answer off
            want, depth = rng.randint(length // 2, length - 1), rng.random()
            try:
                sample = passkey_sample(tok, length=want, depth=depth, seed=first + i)
            except DataError:  # shorter than the fixed prompt: use the longest length that fits
                try:
                    sample = passkey_sample(tok, length=length - 1, depth=depth, seed=first + i)
                except DataError as err:
                    raise DataError(
                        f"data.passkey_share: passkey documents do not fit in L={length} ({err})"
                    ) from None
            eos = [] if tok.eos_token_id is None else [tok.eos_token_id]
            docs.append([*sample.input_ids, *eos])
        self.log(f"data: mixed in {count} synthetic passkey documents of <= {length} tokens")
        return docs
