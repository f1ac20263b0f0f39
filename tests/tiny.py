"""Tiny random models built from configs, for tests (2 layers, 64 dims; never from a hub)."""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

from longctx.train.models import ARCHITECTURES, init_model, model_config

__all__ = ["ARCHITECTURES", "tiny_config", "tiny_model"]


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
    extra = {"attn_implementation": "eager", "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, **extra}
    return model_config(
        arch,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_heads=num_heads,
        num_layers=num_layers,
        original_length=max_position_embeddings,
        rope_theta=rope_theta,
        rope_parameters=rope_parameters,
        partial_rotary_factor=partial_rotary_factor,
        **extra,
    )


def tiny_model(config: PretrainedConfig, seed: int = 0) -> torch.nn.Module:
    return init_model(config, seed).eval()
