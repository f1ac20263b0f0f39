"""Tiny random models built from configs, for tests (2 layers, 64 dims; never from a hub)."""

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

ARCHITECTURES = {
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
    "phi3": Phi3Config,
}


def tiny_config(
    arch: str = "llama",
    *,
    vocab_size: int = 128,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_layers: int = 2,
    max_position_embeddings: int = 64,
    rope_theta: float = 10_000.0,
    rope_parameters: dict | None = None,
    partial_rotary_factor: float | None = None,
    **extra,
) -> PretrainedConfig:
    """A 2-layer config of ``arch`` whose pretrained length L is ``max_position_embeddings``."""
    params = {"rope_type": "default", "rope_theta": rope_theta}
    if partial_rotary_factor is not None:
        params["partial_rotary_factor"] = partial_rotary_factor
    params.update(rope_parameters or {})
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads // 2,
        num_hidden_layers=num_layers,
        max_position_embeddings=max_position_embeddings,
        rope_parameters=params,
        attn_implementation="eager",
        tie_word_embeddings=False,
        head_dim=hidden_size // num_heads,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if arch == "phi3":  # Phi3Config's own top-level L (default 4096) wins over the rope dict
        kwargs["original_max_position_embeddings"] = params.get(
            "original_max_position_embeddings", max_position_embeddings
        )
    if arch in ("mistral", "qwen2", "qwen3"):
        kwargs["sliding_window"] = None
    kwargs.update(extra)
    return ARCHITECTURES[arch](**kwargs)


def tiny_model(config: PretrainedConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    return model.eval()
