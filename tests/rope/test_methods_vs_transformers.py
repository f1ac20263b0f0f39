"""Our inv_freq / attention factor equal transformers' ROPE_INIT_FUNCTIONS, bit for bit."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from longctx.rope import RopeSpec, to_hf_config

BASES = [10_000.0, 500_000.0, 1_000_000.0]
GEOMETRIES = [(64, 1.0), (128, 1.0), (96, 1.0), (128, 0.5), (80, 0.4)]  # (head_dim, partial)
LENGTHS = [(2048, 8192), (4096, 131072), (8192, 65536), (4096, 4096 * 3 + 7)]


def _hf_config(spec: RopeSpec) -> LlamaConfig:
    hf = to_hf_config(spec)
    return LlamaConfig(
        hidden_size=spec.head_dim * 4,
        num_attention_heads=4,
        head_dim=spec.head_dim,
        num_hidden_layers=1,
        intermediate_size=8,
        vocab_size=8,
        max_position_embeddings=hf["max_position_embeddings"],
        rope_parameters=dict(hf["rope_parameters"]),
    )


def _hf_default(config: LlamaConfig) -> tuple[torch.Tensor, float]:
    """transformers' default RoPE (which Llama computes in its rotary class) with partial rotary."""
    base = config.rope_parameters["rope_theta"]
    dim = int(config.head_dim * config.rope_parameters.get("partial_rotary_factor", 1.0))
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)), 1.0


def _specs(method: str, base: float, head_dim: int, partial: float, short: int, long: int):
    common = dict(base=base, head_dim=head_dim, partial_rotary_factor=partial, original_length=short)
    n_pairs = int(head_dim * partial) // 2
    rng = random.Random(f"{method}{base}{head_dim}{partial}{short}{long}")
    if method == "default":
        yield RopeSpec("default", **{**common, "target_length": short})
    elif method in ("linear", "dynamic"):
        yield RopeSpec(method, **common, target_length=long)
        yield RopeSpec(method, **common, target_length=long, params={"factor": 3.5})
    elif method == "yarn":
        yield RopeSpec("yarn", **common, target_length=long)
        yield RopeSpec("yarn", **common, target_length=long, params={"beta_fast": 16.0, "beta_slow": 2.0})
        yield RopeSpec("yarn", **common, target_length=long, params={"truncate": False, "factor": 5.0})
        yield RopeSpec("yarn", **common, target_length=long, params={"mscale": 0.707, "mscale_all_dim": 1.0})
        yield RopeSpec("yarn", **common, target_length=long, attention_factor=1.3)
    elif method == "llama3":
        yield RopeSpec("llama3", **common, target_length=long)
        yield RopeSpec(
            "llama3",
            **common,
            target_length=long,
            params={"factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0},
        )
    elif method == "longrope":
        lf = sorted(rng.uniform(1.0, 2 * long / short) for _ in range(n_pairs))
        sf = sorted(rng.uniform(1.0, 1.5) for _ in range(n_pairs))
        yield RopeSpec("longrope", **common, target_length=long, long_factor=lf, short_factor=sf)
        yield RopeSpec("longrope", **common, target_length=long, long_factor=lf, attention_factor=1.1)


HF_METHODS = ["default", "linear", "dynamic", "yarn", "llama3", "longrope"]


@pytest.mark.parametrize("method", HF_METHODS)
def test_inv_freq_and_attention_factor_equal_transformers(method):
    n_checked = 0
    for base, (head_dim, partial), (short, long) in itertools.product(BASES, GEOMETRIES, LENGTHS):
        for spec in _specs(method, base, head_dim, partial, short, long):
            config = _hf_config(spec)
            hf_type = config.rope_parameters["rope_type"]
            init = _hf_default if hf_type == "default" else ROPE_INIT_FUNCTIONS[hf_type]
            for seq_len, kind in ((None, "short"), (spec.original_length + 1, "long")):
                if hf_type == "default":
                    ref_inv, ref_attn = init(config)
                else:
                    ref_inv, ref_attn = init(config, None, seq_len=seq_len)
                freqs = spec.frequencies(seq_len=seq_len)
                ours = freqs.long_inv_freq if kind == "long" else freqs.short_inv_freq
                attn = freqs.long_attention_factor if kind == "long" else freqs.short_attention_factor
                assert ours.dtype == ref_inv.dtype == torch.float32
                assert torch.equal(ours, ref_inv), (spec, kind, (ours - ref_inv).abs().max())
                assert attn == pytest.approx(ref_attn, rel=0, abs=0), (spec, kind)
                n_checked += 1
    assert n_checked >= len(BASES) * len(GEOMETRIES) * len(LENGTHS) * 2


def test_dynamic_matches_transformers_at_tensor_lengths():
    """transformers passes the length as a tensor (max(position_ids)+1); dtypes must follow."""
    spec = RopeSpec("dynamic", 500_000.0, 128, 4096, 16384)
    config = _hf_config(spec)
    for n in (4097, 5000, 16384, 40000):
        seq_len = torch.tensor(n)
        ref, _ = ROPE_INIT_FUNCTIONS["dynamic"](config, None, seq_len=seq_len)
        assert torch.equal(spec.frequencies(seq_len=seq_len).long_inv_freq, ref)
