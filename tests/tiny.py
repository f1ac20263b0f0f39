"""Tiny random models built from configs, for tests (2 layers, 64 dims; never from a hub)."""

from __future__ import annotations

import random

import torch
from transformers import PretrainedConfig

from longctx.rope import RopeSpec
from longctx.train.models import ARCHITECTURES, init_model, model_config

__all__ = ["ARCHITECTURES", "random_logits", "random_longrope", "tiny_config", "tiny_model"]


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


def random_longrope(
    head_dim: int, L: int, *, partial: float = 1.0, seed: int = 0, low: float = 1.0, **kw
) -> RopeSpec:
    """A ``longrope`` spec for L → 4L with random long factors in [low, 8] and short ones in [0.8, 1.3]."""
    n_pairs = int(head_dim * partial) // 2
    rng = random.Random(seed)
    return RopeSpec(
        "longrope", base=10_000.0, head_dim=head_dim, partial_rotary_factor=partial, original_length=L,
        target_length=4 * L, long_factor=[rng.uniform(low, 8.0) for _ in range(n_pairs)],
        short_factor=[rng.uniform(0.8, 1.3) for _ in range(n_pairs)], **kw,
    )  # fmt: skip


def random_logits(model, length: int, seed: int = 1) -> torch.Tensor:
    """Logits of 2 random rows of ``length`` tokens (ids from 3), without grad."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (2, length), generator=g)
    with torch.no_grad():
        return model(input_ids=ids).logits
