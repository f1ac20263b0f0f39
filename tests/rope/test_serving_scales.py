"""The export states its attention scale for every engine: transformers reads
``attention_factor``; vLLM / TGI / MLX read ``short_mscale`` / ``long_mscale`` and ignore it
(without them they compute sqrt(1 + ln(max_pos / L) / ln L)). Each engine's documented rule,
reimplemented from the exported config, gives the cos/sin scale our spec applies."""

from __future__ import annotations

import math

import pytest
import torch

from longctx.rope import RopeSpec
from longctx.rope.attention_policy import with_attention_policy
from longctx.rope.hf_config import to_hf_config
from longctx.rope.longrope import attention_factors

L, TARGET = 8192, 65536
LONG = tuple(1.0 + 0.5 * i for i in range(32))


def _transformers_rule(config: dict) -> tuple[float, float]:
    rp = config["rope_parameters"]
    orig = rp["original_max_position_embeddings"]
    factor = rp.get("factor", config["max_position_embeddings"] / orig)
    default = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(orig))
    scale = rp.get("attention_factor", default)
    return scale, scale  # one factor for both sets


def _vllm_rule(config: dict) -> tuple[float, float]:
    """vLLM ``Phi3LongRoPEScaledRotaryEmbedding`` (TGI and MLX's SuScaledRotaryEmbedding alike)."""
    rp = config["rope_scaling"]
    orig = rp["original_max_position_embeddings"]
    scale = config["max_position_embeddings"] / orig
    default = 1.0 if scale <= 1 else math.sqrt(1 + math.log(scale) / math.log(orig))
    short, long = rp.get("short_mscale"), rp.get("long_mscale")
    return (default if short is None else short), (default if long is None else long)


def _specs() -> dict[str, RopeSpec]:
    hf = RopeSpec("longrope", 10_000.0, 64, L, TARGET, long_factor=LONG)
    return {
        "hf default": hf,
        "balanced 1.05": with_attention_policy(hf, "balanced", 1.05),
        "attention_factor 1.0": with_attention_policy(hf, "balanced", 1.0),
    }


@pytest.mark.parametrize("name", list(_specs()))
def test_every_engine_rule_reads_the_spec_scale_from_the_export(name):
    spec = _specs()[name]
    config = to_hf_config(spec)
    ours = attention_factors(spec)
    assert _transformers_rule(config) == pytest.approx(ours, abs=1e-12)
    assert _vllm_rule(config) == pytest.approx(ours, abs=1e-12)


def test_without_the_mscale_keys_vllm_would_serve_another_scale():
    """The negative control: before, an export at attention_factor 1.0 left vLLM to its own
    default (1.10 at 8×): short and long inputs served at another scale than measured."""
    config = to_hf_config(_specs()["attention_factor 1.0"])
    for key in ("short_mscale", "long_mscale"):
        del config["rope_scaling"][key]
    assert _vllm_rule(config)[1] == pytest.approx(math.sqrt(1 + math.log(8) / math.log(L)))
    assert _vllm_rule(config)[1] != pytest.approx(1.0)


@pytest.mark.parametrize("model_type", ["llama", "phi3"])
def test_stock_transformers_loads_the_keys_and_computes_the_same_rotation(model_type):
    """The two extra keys are only logged by transformers: its rotary embedding's cos/sin on a
    config carrying them equals the one without them."""
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    spec = _specs()["balanced 1.05"]
    keys = to_hf_config(spec, model_type=model_type)
    geometry = dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=4, head_dim=64)
    with_keys = AutoConfig.for_model(model_type, **geometry, **keys)
    plain = {k: dict(v) if isinstance(v, dict) else v for k, v in keys.items()}
    for key in ("rope_parameters", "rope_scaling"):
        plain[key].pop("short_mscale"), plain[key].pop("long_mscale")
    without = AutoConfig.for_model(model_type, **geometry, **plain)
    x, pos = torch.zeros(1, 1, 64), torch.tensor([[0, TARGET - 3, TARGET - 2, TARGET - 1]])  # cos(0) = 1
    a, b = LlamaRotaryEmbedding(with_keys)(x, pos), LlamaRotaryEmbedding(without)(x, pos)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert float(a[0].abs().max()) == pytest.approx(1.05, rel=1e-6)
