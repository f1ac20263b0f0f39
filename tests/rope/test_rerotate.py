"""rope.rerotate: cached keys re-rotated across L, and generation that matches a fresh forward past L.

Tiny random models (L = 64), prompt 60 tokens, decoded to 100: the sequence passes L at the
5th new token. Short and long factors differ and the attention factor is not 1 (1.3 on the
stock exports; 1.0 short / 1.155 long on the installed ``mscale_short=False`` spec).
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from longctx.rope import apply_rope, to_hf_config
from longctx.rope.rerotate import (
    RerotatingCache,
    RotaryTables,
    _cache_keyword,
    generate_across_length,
    rerotate_keys,
)
from tests.tiny import random_longrope, tiny_config, tiny_model

L, PROMPT, TOTAL = 64, 60, 100
NEW = TOTAL - PROMPT
CROSS = L - PROMPT  # index of the first step whose forward runs past L
TOL = 1e-4


def _model(arch="llama", *, partial=1.0, layers=2, kv_heads=None, installed=None):
    """Stock ``longrope`` export (attention factor 1.3), or ``installed`` spec changes via apply_rope."""
    spec = random_longrope(16, L, partial=partial, attention_factor=1.3)
    if installed is None:
        rope = to_hf_config(spec, arch)["rope_parameters"]
        model = tiny_model(tiny_config(arch, rope_parameters=rope, num_layers=layers, num_kv_heads=kv_heads))
    else:
        spec = spec.replace(attention_factor=None, **installed)
        model = apply_rope(tiny_model(tiny_config(arch, num_layers=layers, num_kv_heads=kv_heads)), spec)
    model.generation_config.eos_token_id = None  # every run decodes NEW tokens
    return model


MODELS = {
    "llama-stock": dict(),
    "llama-installed-mscale": dict(installed={"params": {"mscale_short": False}}),
    "llama-installed-nhat": dict(installed={"n_hat": 8}),
    "llama-mqa": dict(kv_heads=1),
    "qwen2-stock": dict(arch="qwen2"),
    "phi3-partial": dict(arch="phi3", partial=0.5),
}


def _prompt(seed=0, rows=1):
    return torch.randint(3, 128, (rows, PROMPT), generator=torch.Generator().manual_seed(seed))


def _fresh_logits(model, seq, start=PROMPT, **kw):
    with torch.no_grad():
        return [model(input_ids=seq[:, :t], **kw).logits[:, -1].float() for t in range(start, seq.shape[1])]


def _fresh_greedy(model, prompt, n=NEW):
    seq = prompt
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat((seq, model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)), dim=-1)
    return seq


def _gaps(logits, reference):
    return [float((a - b).abs().max()) for a, b in zip(logits, reference, strict=True)]


def _generate(model, prompt, cache):
    return model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=NEW,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        **{_cache_keyword(model): cache},
    )


def _prefill(model, ids):
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, use_cache=True, **{_cache_keyword(model): cache})
    return cache


# ----- the primitive ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_first_layer_keys_equal_a_fresh_forward_past_L(name):
    """Layer 0 caches W_k·embedding, rotated: re-rotation short → long gives the long keys exactly."""
    model = _model(**MODELS[name])
    seq = torch.randint(3, 128, (1, L + 1), generator=torch.Generator().manual_seed(1))
    short = _prefill(model, seq[:, :L])  # max position + 1 = L: the short set
    long = _prefill(model, seq)  # L + 1 tokens: the long set
    before = float((short.layers[0].keys - long.layers[0].keys[..., :L, :]).abs().max())
    values = short.layers[0].values.clone()
    rerotate_keys(short, model)
    after = float((short.layers[0].keys - long.layers[0].keys[..., :L, :]).abs().max())
    assert before > 1e-3  # the two sets do rotate differently
    assert after <= 1e-5, (before, after)
    assert torch.equal(short.layers[0].values, values)
    assert torch.equal(short.layers[0].values, long.layers[0].values[..., :L, :])


def test_round_trip_restores_the_keys_and_partial_dims_stay():
    model = _model(arch="phi3", partial=0.5)
    cache = _prefill(model, _prompt())
    keys = [layer.keys.clone() for layer in cache.layers]
    rerotate_keys(cache, model, from_set="short", to_set="long")
    moved = cache.layers[1].keys
    assert torch.equal(moved[..., 8:], keys[1][..., 8:])  # rotary_dim 8 of head_dim 16: the rest untouched
    assert not torch.allclose(moved[..., :8], keys[1][..., :8])
    rerotate_keys(cache, model, from_set="long", to_set="short")
    for layer, k in zip(cache.layers, keys):
        assert float((layer.keys - k).abs().max()) <= 1e-6


def test_spec_and_explicit_positions():
    """A RopeSpec builds its installed rotary; positions [batch, n] per row (sliding layers take the tail)."""
    spec = random_longrope(16, L, params={"mscale_short": False})
    model = apply_rope(tiny_model(tiny_config("llama")), spec)
    ids = torch.randint(3, 128, (1, 20))
    a, b = _prefill(model, ids), _prefill(model, ids)
    positions = torch.arange(30, 50)[None]
    rerotate_keys(a, model, positions)
    rerotate_keys(b, spec, positions[0])
    assert all(torch.equal(x.keys, y.keys) for x, y in zip(a.layers, b.layers))
    with pytest.raises(ValueError, match="positions for"):
        rerotate_keys(a, model, torch.arange(5))


def test_dynamic_is_refused_and_single_set_methods_never_rerotate():
    dynamic = random_longrope(16, L).replace(method="dynamic", long_factor=None, short_factor=None)
    with pytest.raises(ValueError, match="dynamic"):
        RotaryTables(apply_rope(tiny_model(tiny_config("llama")), dynamic))
    yarn = tiny_model(tiny_config("llama", rope_parameters={"rope_type": "yarn", "factor": 4.0}))
    yarn.generation_config.eos_token_id = None
    cache = RerotatingCache(yarn)
    out = _generate(yarn, _prompt(), cache)
    plain = _generate(yarn, _prompt(), DynamicCache())
    assert cache.rerotations == []
    assert torch.equal(out.sequences, plain.sequences)


# ----- generation ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["llama-stock", "llama-installed-mscale", "llama-installed-nhat"])
def test_one_layer_model_generate_with_rerotating_cache_matches_fresh_forward(name):
    """One layer: every cached key is a rotated position-free vector, so re-rotation is exact;
    plain cached generate (the negative control) drifts past L."""
    model = _model(layers=1, **MODELS[name])
    prompt = _prompt()
    cache = RerotatingCache(model)
    out = _generate(model, prompt, cache)
    gaps = _gaps(out.logits, _fresh_logits(model, out.sequences))
    assert max(gaps) <= TOL, gaps
    assert torch.equal(out.sequences, _fresh_greedy(model, prompt))  # 100 % greedy agreement
    assert cache.rerotations == [("short", "long", L)]  # once, when the sequence first passes L

    plain = _generate(model, prompt, DynamicCache())
    drift = _gaps(plain.logits, _fresh_logits(model, plain.sequences))
    assert max(drift[:CROSS]) <= 1e-5 < 1e-3 < max(drift[CROSS:]), drift


@pytest.mark.parametrize("name", list(MODELS))
def test_reprefill_generation_matches_fresh_forward(name):
    """generate_across_length (default mode): exact past L on 2-layer models, Phi-3 partial rotary
    and MQA included; stock cached generate drifts on the same model (Phi-3 re-prefills itself)."""
    model = _model(**MODELS[name])
    prompt = _prompt()
    out = generate_across_length(model, prompt, NEW, return_dict_in_generate=True, output_logits=True)
    fresh = _fresh_greedy(model, prompt)
    assert torch.equal(out.sequences, fresh)
    gaps = _gaps(out.logits, _fresh_logits(model, out.sequences))
    assert len(gaps) == NEW and max(gaps) <= TOL, gaps
    assert torch.equal(generate_across_length(model, prompt, NEW), fresh)

    plain = _generate(model, prompt, DynamicCache())
    drift = max(_gaps(plain.logits, _fresh_logits(model, plain.sequences))[CROSS:])
    assert drift <= 1e-5 if MODELS[name].get("arch") == "phi3" else drift > 1e-3


@pytest.mark.parametrize("layers", [2, 4])
def test_rerotation_only_reduces_the_drift_of_deeper_layers(layers):
    """Layers > 0 cache keys/values of hidden states computed under the short set: no rotation
    maps them to a fresh forward's. RerotatingCache through generate = the helper's rerotate mode."""
    model = _model(layers=layers)
    prompt = _prompt()
    cache = RerotatingCache(model)
    out = _generate(model, prompt, cache)
    helper = generate_across_length(
        model, prompt, NEW, mode="rerotate", return_dict_in_generate=True, output_logits=True
    )
    assert torch.equal(out.sequences, helper.sequences)
    assert max(_gaps(out.logits, helper.logits)) <= 1e-6
    rerotated = max(_gaps(out.logits, _fresh_logits(model, out.sequences))[CROSS:])
    plain = _generate(model, prompt, DynamicCache())
    drift = max(_gaps(plain.logits, _fresh_logits(model, plain.sequences))[CROSS:])
    assert 1e-5 < rerotated < drift / 2, (rerotated, drift)


def test_phi3_generate_drops_the_cache_itself():
    """transformers' Phi-3 re-prefills at L + 1 whatever cache it was given: exact, no re-rotation."""
    model = _model(arch="phi3", partial=0.5)
    cache = RerotatingCache(model)
    out = _generate(model, _prompt(), cache)
    assert max(_gaps(out.logits, _fresh_logits(model, out.sequences))) <= TOL
    assert cache.rerotations == []
    helper = generate_across_length(model, _prompt(), NEW, mode="rerotate", return_dict_in_generate=True)
    assert helper.cache.rerotations == [("short", "long", L)]  # our loop has no Phi-3 re-prefill


def test_left_padded_batch_matches_a_fresh_padded_forward():
    model = _model()
    prompt = _prompt(rows=2)
    mask = torch.ones_like(prompt)
    mask[1, :6] = 0  # row 1: 54 real tokens, left-padded
    prompt[1, :6] = 0
    out = generate_across_length(
        model, prompt, NEW, attention_mask=mask, return_dict_in_generate=True, output_logits=True
    )
    seq = out.sequences
    full_mask = torch.cat((mask, torch.ones(2, NEW, dtype=mask.dtype)), dim=-1)
    positions = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 1)
    with torch.no_grad():
        fresh = [
            model(input_ids=seq[:, :t], attention_mask=full_mask[:, :t], position_ids=positions[:, :t])
            .logits[:, -1]
            .float()
            for t in range(PROMPT, seq.shape[1])
        ]
    assert max(_gaps(out.logits, fresh)) <= TOL
    assert torch.equal(seq[:, PROMPT:], torch.stack(fresh).argmax(-1).T)


def test_crop_back_under_L_rotates_back_to_short():
    """Assisted decoding crops the cache: a forward back within L re-rotates long → short."""
    model = _model(layers=1)
    ids = torch.randint(3, 128, (1, L + 2), generator=torch.Generator().manual_seed(2))
    cache = RerotatingCache(model)
    kw = {_cache_keyword(model): cache}
    with torch.no_grad():
        model(input_ids=ids[:, : L + 2], use_cache=True, **kw)  # long from the start
        cache.crop(-(L + 2 - 40))
        step = model(input_ids=ids[:, 40:41], use_cache=True, **kw).logits[:, -1]
    assert cache.rerotations == [("long", "short", 40)]
    assert cache.positions.shape[-1] == 41
    with torch.no_grad():
        fresh = model(input_ids=ids[:, :41]).logits[:, -1]
    assert float((step - fresh).abs().max()) <= TOL


def test_rerotate_keys_on_a_rerotating_cache_uses_its_positions_and_sets():
    """Re-rotating by hand ahead of the crossing: the next long forward then has nothing to do."""
    model = _model()
    ids = torch.randint(3, 128, (1, L + 1), generator=torch.Generator().manual_seed(3))
    auto_cache, hand_cache = (RerotatingCache(model), RerotatingCache(model))
    with torch.no_grad():
        for cache in (auto_cache, hand_cache):
            model(input_ids=ids[:, :L], use_cache=True, **{_cache_keyword(model): cache})
        rerotate_keys(hand_cache, model)
        auto, hand = (
            model(input_ids=ids[:, L:], use_cache=True, **{_cache_keyword(model): c}).logits
            for c in (auto_cache, hand_cache)
        )
    assert auto_cache.rerotations == [("short", "long", L)] and hand_cache.rerotations == []
    assert torch.equal(auto, hand)
