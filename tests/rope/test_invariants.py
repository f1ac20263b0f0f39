"""Invariants of the methods, n̂ start positions, LongRoPE2 critical dimension, reading configs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from longctx.rope import RopeSpec, apply_rope, factor_set, from_hf_config, to_hf_config
from longctx.rope.longrope2 import long_factor_from_upper, theoretical_critical_dim
from tests.tiny import tiny_config, tiny_model

COMMON = dict(base=10_000.0, head_dim=64, original_length=4096)


def test_linear_is_default_divided_by_scale():
    for target in (8192, 4096 * 8, 4096 * 5 + 3):
        lin = RopeSpec("linear", **COMMON, target_length=target)
        base = RopeSpec("default", **{**COMMON, "target_length": 4096}).inv_freq()
        torch.testing.assert_close(lin.inv_freq(), base / (target / 4096), rtol=1e-6, atol=0)
        assert lin.factors() == pytest.approx([target / 4096] * 32, rel=1e-6)


def test_all_one_factors_are_default_rope():
    ones = RopeSpec("longrope", **COMMON, target_length=16384, long_factor=[1.0] * 32, attention_factor=1.0)
    default = RopeSpec("default", **{**COMMON, "target_length": 4096})
    assert torch.equal(ones.inv_freq("long"), default.inv_freq())
    assert torch.equal(ones.inv_freq("short"), default.inv_freq())


def test_yarn_lies_between_default_and_pi():
    yarn = RopeSpec("yarn", **COMMON, target_length=32768).factors()
    assert yarn[0] == pytest.approx(1.0) and yarn[-1] == pytest.approx(8.0, rel=1e-6)
    assert all(1 - 1e-6 <= f <= 8 + 1e-5 for f in yarn)
    assert all(a <= b + 1e-6 for a, b in itertools.pairwise(yarn)), "non-decreasing"


def test_ntk_factors_follow_the_base_change():
    spec = RopeSpec("ntk", **COMMON, target_length=4096 * 16)
    d = 64
    expected = [16 ** (2 * i / (d - 2)) for i in range(32)]
    assert spec.factors() == pytest.approx(expected, rel=2e-6)


def test_longrope2_critical_dim_and_ntk_fill():
    # LongRoPE2 paper: Llama-3-8B (b=500000, d=128, L=8192) has d_tcd = 35
    assert theoretical_critical_dim(500_000.0, 128, 8192) == 35
    rcd = 35
    upper = [16.0 + 0.1 * i for i in range(64 - rcd)]
    lf = long_factor_from_upper(upper, rcd)
    spec = RopeSpec("longrope2", 500_000.0, 128, 8192, 131072, long_factor=lf)
    assert spec.long_factor[rcd:] == tuple(upper)
    for i in range(rcd):
        assert spec.long_factor[i] == pytest.approx(upper[0] ** (i / rcd), rel=1e-12)
    # an overridden critical dimension (the released Llama-3 factors use 33)
    lf33 = long_factor_from_upper([20.0] * 31, 33)
    assert RopeSpec("longrope2", 500_000.0, 128, 8192, 131072, long_factor=lf33, params={"critical_dim": 33})
    with pytest.raises(ValueError, match=r"long_factor\[1\].*NTK shape below critical_dim 35"):
        bad = list(lf)
        bad[1] *= 1.01
        RopeSpec("longrope2", 500_000.0, 128, 8192, 131072, long_factor=bad)
    # exports as stock longrope
    assert to_hf_config(spec)["rope_parameters"]["rope_type"] == "longrope"


def test_n_hat_positions_match_original_rope_exactly():
    spec = RopeSpec("longrope", 10_000.0, 16, 64, 256, long_factor=[float(i + 2) for i in range(8)], n_hat=4)
    default = RopeSpec("default", 10_000.0, 16, 64, 64)
    model = apply_rope(tiny_model(tiny_config("llama")), spec)
    rotary = model.model.rotary_emb
    x = torch.zeros(1, 1, 1)
    pos = torch.arange(200)[None]
    cos, sin = rotary(x, pos)  # long set (200 > 64)
    orig = apply_rope(tiny_model(tiny_config("llama")), default).model.rotary_emb
    ocos, osin = orig(x, pos)
    assert torch.equal(cos[:, :4], ocos[:, :4]) and torch.equal(sin[:, :4], osin[:, :4])
    assert not torch.allclose(cos[:, 4:], ocos[:, 4:])
    no_hat = apply_rope(tiny_model(tiny_config("llama")), spec.replace(n_hat=0)).model.rotary_emb
    assert torch.equal(cos[:, 4:], no_hat(x, pos)[0][:, 4:])
    # under the short set n̂ changes nothing
    with factor_set(model, "short"):
        short_cos, _ = rotary(x, pos)
    with factor_set(apply_rope(tiny_model(tiny_config("llama")), spec.replace(n_hat=0)), "short") as m:
        assert torch.equal(short_cos, m.model.rotary_emb(x, pos)[0])


def test_mscale_policy_long_only_keeps_short_rows_exactly_original():
    lf = [2.0] * 8
    spec = RopeSpec("longrope", 10_000.0, 16, 64, 512, long_factor=lf, params={"mscale_short": False})
    freqs = spec.frequencies()
    assert freqs.short_attention_factor == 1.0
    assert freqs.long_attention_factor == pytest.approx(math.sqrt(1 + math.log(8) / math.log(64)))
    with pytest.raises(ValueError, match="mscale_short"):
        to_hf_config(spec)


def test_from_hf_config_reads_phi3_128k_style_longrope():
    short = [1.05, 1.05, 1.05, 1.1, 1.1, 1.1, 1.2, 1.3] * 6
    long = [1.08 + i for i in range(48)]
    config = {  # shape of microsoft/Phi-3-mini-128k-instruct's config.json (v4 keys)
        "model_type": "phi3",
        "hidden_size": 3072,
        "num_attention_heads": 32,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "longrope", "long_factor": long, "short_factor": short},
    }
    spec = from_hf_config(config)
    assert (spec.method, spec.original_length, spec.target_length, spec.rotary_dim) == (
        "longrope",
        4096,
        131072,
        96,
    )
    assert spec.long_factor == tuple(long) and spec.short_factor == tuple(short)
    assert spec.frequencies().long_attention_factor == pytest.approx(
        math.sqrt(1 + math.log(32) / math.log(4096))
    )


def test_from_hf_config_reads_yarn_and_llama3():
    qwen = {  # Qwen2.5 YaRN instructions: rope_scaling factor 4 over 32768
        "hidden_size": 3584,
        "num_attention_heads": 28,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
    }
    spec = from_hf_config(qwen)
    assert (spec.method, spec.original_length, spec.target_length) == ("yarn", 32768, 131072)
    llama31 = {
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    }
    spec = from_hf_config(llama31)
    assert (spec.method, spec.original_length, spec.target_length) == ("llama3", 8192, 131072)
    assert from_hf_config({**llama31, **to_hf_config(spec)}) == spec


def test_spec_json_round_trip(tmp_path):
    spec = RopeSpec(
        "longrope", **COMMON, target_length=65536, long_factor=[1.5] * 32, n_hat=4, attention_factor=1.2
    )
    path = spec.to_json(tmp_path / "spec.json")
    assert RopeSpec.from_json(path) == spec
    assert [p.name for p in tmp_path.iterdir()] == ["spec.json"]
