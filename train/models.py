"""Model configs built from a few numbers: the tiny recipe's base model, tests and benchmarks.

One builder for every supported architecture, so the recipe's ``model.init``, the tests'
2-layer models and the benchmarks' models agree on what a config of L tokens looks like
(``max_position_embeddings`` = ``original_max_position_embeddings`` = L, default RoPE).
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
)

ARCHITECTURES: dict[str, type[PretrainedConfig]] = {
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
    "phi3": Phi3Config,
}


def model_config(
    arch: str = "llama",
    *,
    vocab_size: int,
    hidden_size: int,
    num_heads: int,
    num_layers: int,
    original_length: int,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    rope_theta: float = 10_000.0,
    rope_parameters: dict | None = None,
    partial_rotary_factor: float | None = None,
    tie_embeddings: bool = False,
    **extra,
) -> PretrainedConfig:
    """A config of ``arch`` pretrained at L = ``original_length`` with the default RoPE.

    ``rope_parameters`` entries override the default ones; ``extra`` goes to the config class
    (token ids, ``attn_implementation``, ...).
    """
    params = {"rope_type": "default", "rope_theta": rope_theta}
    if partial_rotary_factor is not None:
        params["partial_rotary_factor"] = partial_rotary_factor
    params.update(rope_parameters or {})
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or max(1, num_heads // 2),
        num_hidden_layers=num_layers,
        max_position_embeddings=original_length,
        rope_parameters=params,
        tie_word_embeddings=tie_embeddings,
        head_dim=hidden_size // num_heads,
    )
    if arch == "phi3":  # Phi3Config's own top-level L (default 4096) wins over the rope dict
        kwargs["original_max_position_embeddings"] = params.get(
            "original_max_position_embeddings", original_length
        )
    if arch in ("mistral", "qwen2", "qwen3"):
        kwargs["sliding_window"] = None
    kwargs.update(extra)
    return ARCHITECTURES[arch](**kwargs)


def init_model(config: PretrainedConfig, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A randomly initialised model of ``config``, the same for the same seed."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, **kwargs)
