"""The attention factor as a recorded policy: round trip through JSON and the HF config, the HF
export refuses what stock transformers cannot express, vLLM's keys carry every policy, the
balanced factor trades short against long, and short_original restores a damaged short path."""

from __future__ import annotations

import math

import pytest
import torch

from longctx.rope import RopeExportError, RopeSpec, apply_rope, from_hf_config, to_hf_config
from longctx.rope.attention_policy import (
    attention_policy,
    balance_attention_factor,
    serving_parameters,
    with_attention_policy,
)
from tests.tiny import tiny_config, tiny_model

L = 64


def _spec(**kw) -> RopeSpec:
    return RopeSpec("longrope", 10_000.0, 16, L, 8 * L, long_factor=tuple(1.0 + i for i in range(8)), **kw)


def test_policies_round_trip_and_export(tmp_path):
    base = _spec()
    hf_factor = math.sqrt(1 + math.log(8) / math.log(L))
    assert attention_policy(base) == "hf"
    balanced = with_attention_policy(base, "balanced", 1.05)
    short_original = with_attention_policy(base, "short_original")
    for spec, name in ((balanced, "balanced"), (short_original, "short_original")):
        again = RopeSpec.from_json(spec.to_json(tmp_path / f"{name}.json"))
        assert again == spec and attention_policy(again) == name
    freqs = short_original.frequencies()
    assert freqs.short_attention_factor == 1.0 and freqs.long_attention_factor == pytest.approx(hf_factor)
    # stock HF: one factor for both sets; the balanced one round-trips through its config
    assert from_hf_config_of(balanced).attention_factor == pytest.approx(1.05)
    with pytest.raises(RopeExportError, match="one attention factor to both"):
        to_hf_config(short_original)
    # vLLM reads short_mscale / long_mscale (and ignores attention_factor)
    served = serving_parameters(short_original)
    assert served["short_mscale"] == 1.0 and served["long_mscale"] == pytest.approx(hf_factor)
    assert serving_parameters(balanced)["short_mscale"] == serving_parameters(balanced)["long_mscale"] == 1.05


def from_hf_config_of(spec: RopeSpec) -> RopeSpec:
    from transformers import LlamaConfig

    cfg = tiny_config("llama", max_position_embeddings=L)
    params = to_hf_config(spec)
    config = LlamaConfig(**{**cfg.to_dict(), **params})
    return from_hf_config(config)


def _short(specs):
    """Synthetic short-input perplexity: best at factor 1."""
    return [1.0 + 4 * (s.attention_factor - 1.0) ** 2 for s in specs]


def _long(specs):
    """Synthetic long-input perplexity: best at factor 1.2."""
    return [1.0 + 4 * (s.attention_factor - 1.2) ** 2 for s in specs]


def test_balance_picks_the_smallest_worse_relative_loss():
    """Short inputs are best at f = 1, long ones at f = 1.2 (synthetic scores)."""
    template = _spec()

    chosen, rows = balance_attention_factor(template, _short, _long, points=13)
    assert attention_policy(chosen) == "balanced" and len(rows) == 13
    assert rows[0]["factor"] == 1.0 and rows[-1]["factor"] == pytest.approx(
        template.frequencies().long_attention_factor
    )
    assert chosen.attention_factor == pytest.approx(min(rows, key=lambda r: r["worse"])["factor"])
    assert 1.0 < chosen.attention_factor < 1.2  # between the two optima: neither side gets all it wants


def test_balance_with_a_short_tolerance_keeps_short_inputs_within_budget():
    """With a short-quality budget the factor is the best for long inputs among those costing
    short inputs at most (1 + t) × short(1): here f ≤ 1.05 (short = 1 + 4 (f-1)² ≤ 1.01)."""
    template = _spec()

    minimax, _ = balance_attention_factor(template, _short, _long, points=41)
    chosen, rows = balance_attention_factor(template, _short, _long, points=41, short_tolerance=0.01)
    allowed = [r for r in rows if r["short"] <= 1.01]
    assert chosen.attention_factor == pytest.approx(max(r["factor"] for r in allowed))
    assert _short([chosen])[0] <= 1.01 < _short([minimax])[0]  # the minimax choice breaks the budget
    strict, _ = balance_attention_factor(template, _short, _long, points=41, short_tolerance=0.0)
    assert strict.attention_factor == 1.0


def test_short_original_restores_a_damaged_short_path():
    """A stock-HF spec whose shared factor (1.6) damages short inputs; under short_original the
    short path is the pretrained RoPE again: the base's logits at L, exactly."""
    model = tiny_model(tiny_config("llama", max_position_embeddings=L))
    ids = torch.randint(3, 128, (1, L), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(input_ids=ids).logits
        damaged = apply_rope(model, _spec(attention_factor=1.6))(input_ids=ids).logits
        repaired = apply_rope(model, with_attention_policy(_spec(attention_factor=1.6), "short_original"))(
            input_ids=ids
        ).logits
    assert (damaged - base).abs().max() > 1e-2
    torch.testing.assert_close(repaired, base, rtol=0, atol=1e-5)
