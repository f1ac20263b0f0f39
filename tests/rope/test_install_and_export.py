"""Installed rotary == transformers' native one; stock reload of an export gives identical logits."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from longctx.rope import (
    SPEC_FILE,
    RopeSpec,
    ScaledRotaryEmbedding,
    apply_rope,
    factor_set,
    from_hf_config,
    save_extended,
    to_hf_config,
)
from tests.tiny import ARCHITECTURES, random_logits, random_longrope, tiny_config, tiny_model

L = 64  # pretrained length of the tiny models
HEAD_DIM = 16


def _partial(arch: str) -> float:
    return 0.5 if arch == "phi3" else 1.0  # Phi-3 supports partial rotary; the others rotate all dims


def _random_longrope(arch: str, seed: int = 0, **kw) -> RopeSpec:
    return random_longrope(HEAD_DIM, L, partial=_partial(arch), seed=seed, **kw)


def _method_specs(arch: str):
    partial = _partial(arch)
    common = dict(base=10_000.0, head_dim=HEAD_DIM, partial_rotary_factor=partial, original_length=L)
    yield RopeSpec("linear", **common, target_length=4 * L)
    yield RopeSpec("dynamic", **common, target_length=4 * L)
    yield RopeSpec("yarn", **common, target_length=8 * L)
    yield RopeSpec("llama3", **common, target_length=8 * L)
    yield _random_longrope(arch)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_installed_rotary_matches_native_transformers_model(arch):
    for spec in _method_specs(arch):
        if arch == "phi3" and spec.method != "longrope":
            continue  # Phi3Config only accepts longrope natively (apply_rope installs the others fine)
        hf = to_hf_config(spec)
        for length in (L, L + 1, 3 * L):
            native = tiny_model(
                tiny_config(
                    arch,
                    partial_rotary_factor=_partial(arch),
                    rope_parameters=dict(hf["rope_parameters"]),
                    max_position_embeddings=hf["max_position_embeddings"],
                )
            )
            ours = apply_rope(tiny_model(tiny_config(arch, partial_rotary_factor=_partial(arch))), spec)
            assert isinstance(ours.model.rotary_emb, ScaledRotaryEmbedding)
            torch.testing.assert_close(
                random_logits(ours, length), random_logits(native, length), rtol=0, atol=0
            )


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_export_reloads_in_stock_transformers_with_identical_logits(arch, tmp_path):
    spec = _random_longrope(arch, seed=3)
    model = apply_rope(tiny_model(tiny_config(arch, partial_rotary_factor=_partial(arch))), spec)
    out = save_extended(model, spec, tmp_path / "export")
    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert not any(isinstance(m, ScaledRotaryEmbedding) for m in reloaded.modules()), "stock classes only"
    for length in (L // 2, L, L + 1, 3 * L):
        torch.testing.assert_close(
            random_logits(reloaded, length), random_logits(model, length), rtol=0, atol=1e-5
        )
    cfg = json.loads((out / "config.json").read_text())
    v5 = dict(cfg["rope_parameters"])
    assert cfg["rope_scaling"] == v5, "v4 rope_scaling must be identical to v5 rope_parameters"
    assert cfg["rope_theta"] == v5["rope_theta"] == spec.base
    assert cfg["original_max_position_embeddings"] == v5["original_max_position_embeddings"] == L
    assert cfg["max_position_embeddings"] == 4 * L
    assert RopeSpec.from_json(out / SPEC_FILE) == spec
    assert from_hf_config(AutoConfig.from_pretrained(out)) == spec


def test_v4_only_config_reads_the_same(tmp_path):
    """An engine that only reads rope_scaling + top-level keys sees the same RoPE."""
    spec = _random_longrope("llama", seed=4)
    model = apply_rope(tiny_model(tiny_config("llama")), spec)
    out = save_extended(model, spec, tmp_path / "export")
    cfg = json.loads((out / "config.json").read_text())
    del cfg["rope_parameters"]
    (out / "config.json").write_text(json.dumps(cfg))
    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    torch.testing.assert_close(random_logits(reloaded, 3 * L), random_logits(model, 3 * L), rtol=0, atol=1e-5)


def test_export_of_other_methods_round_trips(tmp_path):
    for spec in _method_specs("llama"):
        model = apply_rope(tiny_model(tiny_config("llama")), spec)
        out = save_extended(model, spec, tmp_path / spec.method)
        reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
        torch.testing.assert_close(
            random_logits(reloaded, 3 * L), random_logits(model, 3 * L), rtol=0, atol=1e-5
        )


def test_export_overwrites_atomically(tmp_path):
    model = tiny_model(tiny_config("llama"))
    first, second = _random_longrope("llama", seed=5), _random_longrope("llama", seed=6)
    save_extended(apply_rope(model, first), first, tmp_path / "out")
    save_extended(apply_rope(model, second), second, tmp_path / "out")
    assert RopeSpec.from_json(tmp_path / "out" / SPEC_FILE) == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no temp or backup dirs left behind"


def test_factor_set_choice_is_automatic_or_forced():
    spec = _random_longrope("llama", seed=7)
    model = apply_rope(tiny_model(tiny_config("llama")), spec)
    rotary = model.model.rotary_emb
    x = torch.zeros(1, 1, 8)
    short_pos, long_pos = torch.arange(L)[None], torch.arange(L + 1)[None]
    long_cos, _ = rotary(x, long_pos)
    short_cos, _ = rotary(x, short_pos)
    with factor_set(model, "long"):
        forced_long, _ = rotary(x, short_pos)
    with factor_set(model, "rescaled"):  # the data pipeline's row kind name
        assert torch.equal(rotary(x, short_pos)[0], forced_long)
    with factor_set(model, "short"):
        forced_short, _ = rotary(x, long_pos)
    torch.testing.assert_close(forced_long, long_cos[:, :L], rtol=0, atol=0)
    torch.testing.assert_close(forced_short[:, :L], short_cos, rtol=0, atol=0)
    assert not torch.equal(forced_long, short_cos)
    assert rotary.factor_set is None, "context manager restores the automatic rule"
    # a sequence-parallel shard of a long row only sees positions < L, yet must use long factors
    shard = torch.arange(8)[None]
    with factor_set(model, "long"):
        torch.testing.assert_close(rotary(x, shard)[0], long_cos[:, :8], rtol=0, atol=0)
