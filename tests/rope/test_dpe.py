"""DPE: scale 1 is the plain model; beyond the window positions are remapped per group; no export."""

from __future__ import annotations

import types

import pytest
import torch

from longctx.rope import RopeExportError, RopeSpec, RopeSpecError, apply_rope, to_hf_config
from longctx.rope import dpe_attention as dpe_kernel
from longctx.rope.dpe import remapped_positions
from longctx.rope.dpe_attention import DPEPlan, dpe_attention
from longctx.rope.search.dpe import select_key_dims
from tests.tiny import tiny_config, tiny_model

L = 32


def _dpe(scales=(1.0,) * 8, key_dims=None, window=8) -> RopeSpec:
    params = {"group_scales": list(scales), "local_window": window}
    if key_dims is not None:
        params["key_dims"] = list(key_dims)
    return RopeSpec("dpe", base=10_000.0, head_dim=16, original_length=L, target_length=4 * L, params=params)


def _logits(model, n=4 * L):
    ids = torch.randint(3, 128, (1, n), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_all_scales_one_equals_the_plain_model():
    model = tiny_model(tiny_config("llama", max_position_embeddings=L))
    plain = _logits(model)
    apply_rope(model, _dpe())
    assert model.config._attn_implementation == "longctx_dpe"
    assert torch.allclose(_logits(model), plain, atol=1e-5, rtol=0)
    apply_rope(model, _dpe((1, 1, 1, 1, 16, 16, 16, 16), window=8))
    changed = _logits(model)
    assert torch.allclose(changed[:, :8], plain[:, :8], atol=1e-5)  # within the window: untouched
    assert (changed[:, 8:] - plain[:, 8:]).abs().max() > 1e-4  # beyond it: remapped
    apply_rope(model, RopeSpec("default", base=10_000.0, head_dim=16, original_length=L, target_length=L))
    assert model.config._attn_implementation == "eager"  # another method restores the attention
    assert torch.equal(_logits(model), plain)


def test_remapped_positions_follow_the_rule():
    pos = torch.tensor([0, 5, 16, 37])
    scales = torch.tensor([1.0, 4.0])
    q = remapped_positions(pos, scales, window=8, query=True)
    k = remapped_positions(pos, scales, window=8, query=False)
    assert q[:, 0].tolist() == [0, 5, 16, 37]  # scale 1: unchanged
    assert q[:, 1].tolist() == [p // 4 + 8 - 2 for p in (0, 5, 16, 37)]
    assert k[:, 1].tolist() == [p // 4 for p in (0, 5, 16, 37)]


def _rope(x, pos, inv):  # x: [1, 1, n, d]; pos: [n, d/2] per-pair positions
    ang = pos * inv
    cos, sin = torch.cat((ang.cos(), ang.cos()), -1), torch.cat((ang.sin(), ang.sin()), -1)
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


def test_attention_uses_remapped_positions_beyond_the_window_for_selected_pairs_only():
    torch.manual_seed(0)
    n, d, window = 24, 8, 6
    inv = 1.0 / (10_000.0 ** (torch.arange(0, d, 2).double() / d))
    scales = torch.tensor([1.0, 3.0, 1.0, 2.0])  # pairs 0 and 2 unselected (scale 1)
    q0, k0, v = (torch.randn(1, 1, n, d, dtype=torch.float64) for _ in range(3))
    pos = torch.arange(n).double()
    plain = pos[:, None].expand(n, d // 2)
    module = types.SimpleNamespace(
        _longctx_dpe=DPEPlan(inv, scales, window), num_key_value_groups=1, training=False
    )
    causal = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)[None, None]
    out, _ = dpe_attention(module, _rope(q0, plain, inv), _rope(k0, plain, inv), v, causal, 1.0,
                           position_ids=torch.arange(n)[None])  # fmt: skip
    qf = torch.stack([pos // s + window - window // s for s in scales], -1)
    kf = torch.stack([pos // s for s in scales], -1)
    near = _rope(q0, plain, inv) @ _rope(k0, plain, inv).transpose(2, 3)
    far = _rope(q0, qf, inv) @ _rope(k0, kf, inv).transpose(2, 3)
    local = (pos[:, None] - pos[None, :]) < window
    want = torch.softmax(torch.where(local, near, far) + causal, -1) @ v
    assert torch.allclose(out.transpose(1, 2), want, atol=1e-9)


def test_query_blocks_give_the_same_attention(monkeypatch):
    """Long inputs run in query blocks (bounded memory): the result equals one block."""
    import longctx.rope.dpe_attention as dpe

    torch.manual_seed(1)
    n, d, window = 23, 8, 4
    inv = 1.0 / (10_000.0 ** (torch.arange(0, d, 2).double() / d))
    module = types.SimpleNamespace(
        _longctx_dpe=DPEPlan(inv, torch.tensor([1.0, 2.0, 4.0, 3.0]), window),
        num_key_value_groups=2,
        training=False,
    )
    q = torch.randn(2, 4, n, d, dtype=torch.float64)
    k, v = (torch.randn(2, 2, n, d, dtype=torch.float64) for _ in range(2))
    causal = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)[None, None].expand(2, 1, n, n)
    whole, weights = dpe_attention(module, q, k, v, causal, 0.5)
    assert weights is None  # two merged passes: no attention weights (as SDPA / flash)
    monkeypatch.setattr(dpe, "SCORE_ELEMENTS", 2 * n * 5)  # 5-row chunks clamped to 16: 2 chunks
    blocked, _ = dpe_attention(module, q, k, v, causal, 0.5)
    assert torch.allclose(blocked, whole, atol=1e-12, rtol=0)
    # a mask that broadcasts over queries (decoding) is used as is
    pad = torch.zeros(2, 1, 1, n, dtype=torch.float64)
    pad[0, ..., :3] = float("-inf")
    monkeypatch.setattr(dpe, "QUERY_BLOCK", 1024)
    ref, _ = dpe_attention(module, q, k, v, pad, 0.5)
    monkeypatch.setattr(dpe, "QUERY_BLOCK", 7)
    assert torch.allclose(dpe_attention(module, q, k, v, pad, 0.5)[0], ref, atol=1e-12, rtol=0)


def test_query_blocks_shrink_to_bound_the_score_tensor(monkeypatch):
    """Past the element budget a block has fewer rows (never under 16); the result is unchanged."""
    import longctx.rope.dpe_attention as dpe

    assert dpe.query_block(1, 9, 16384) == 1024  # SmolLM2 at 16k: 151 M entries, within budget
    assert dpe.query_block(1, 32, 131072) == 64  # an 8B model at 128k: 268 M entries per block
    assert dpe.query_block(1, 32, 1 << 24) == 16
    torch.manual_seed(3)
    n, d = 40, 8
    inv = 1.0 / (10_000.0 ** (torch.arange(0, d, 2).double() / d))
    module = types.SimpleNamespace(
        _longctx_dpe=DPEPlan(inv, torch.tensor([1.0, 2.0, 4.0, 3.0]), 6),
        num_key_value_groups=1,
        training=False,
        is_causal=True,
    )
    q, k, v = (torch.randn(1, 2, n, d, dtype=torch.float64) for _ in range(3))
    causal = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)[None, None]
    whole, _ = dpe_attention(module, q, k, v, causal, 0.5)
    monkeypatch.setattr(dpe, "SCORE_ELEMENTS", 2 * n * 17)  # room for 17 rows per block
    assert dpe.query_block(1, 2, n) == 17
    monkeypatch.setattr(dpe, "SCORE_ELEMENTS", 2 * n * 3)  # room for 3: clamped to 16 (16, 16, 8)
    assert dpe.query_block(1, 2, n) == 16
    blocked, _ = dpe_attention(module, q, k, v, causal, 0.5)
    assert torch.allclose(blocked, whole, atol=1e-12, rtol=0)


@pytest.mark.parametrize("window", [3, 6, 40])
def test_causal_attention_skips_future_keys_and_splits_near_far_by_band(monkeypatch, window):
    """A causal module computes only the keys a block can see and, with plain positions, takes
    the near/far band in index space; the result equals the dense reference, also when decoding."""
    import longctx.rope.dpe_attention as dpe

    torch.manual_seed(2)
    n, d = 24, 8
    inv = 1.0 / (10_000.0 ** (torch.arange(0, d, 2).double() / d))
    scales = torch.tensor([1.0, 3.0, 2.0, 4.0])
    q0, k0, v = (torch.randn(1, 1, n, d, dtype=torch.float64) for _ in range(3))
    pos = torch.arange(n).double()
    plain = pos[:, None].expand(n, d // 2)
    qf = torch.stack([pos // s + window - window // s for s in scales], -1)
    kf = torch.stack([pos // s for s in scales], -1)
    near = _rope(q0, plain, inv) @ _rope(k0, plain, inv).transpose(2, 3)
    far = _rope(q0, qf, inv) @ _rope(k0, kf, inv).transpose(2, 3)
    causal = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)[None, None]
    want = torch.softmax(torch.where((pos[:, None] - pos[None, :]) < window, near, far) + causal, -1) @ v
    module = types.SimpleNamespace(
        _longctx_dpe=DPEPlan(inv, scales, window), num_key_value_groups=1, training=False, is_causal=True
    )
    q, k = _rope(q0, plain, inv), _rope(k0, plain, inv)
    monkeypatch.setattr(dpe, "QUERY_BLOCK", 5)
    out, _ = dpe_attention(module, q, k, v, causal, 1.0)
    assert torch.allclose(out.transpose(1, 2), want, atol=1e-6)
    last = 4  # decoding the last rows against the whole cache: keys outnumber queries
    out, _ = dpe_attention(module, q[:, :, -last:], k, v, causal[..., -last:, :], 1.0,
                           position_ids=torch.arange(n - last, n)[None])  # fmt: skip
    assert torch.allclose(out.transpose(1, 2), want[:, :, -last:], atol=1e-6)


def test_key_dims_keep_unselected_pairs_and_selection_by_norms():
    model = tiny_model(tiny_config("llama", max_position_embeddings=L))
    batches = [torch.randint(3, 128, (1, L), generator=torch.Generator().manual_seed(1))]
    dims = select_key_dims(model, batches, top_k=3)
    assert len(dims) == 3 and all(0 <= d < 8 for d in dims)
    plain = _logits(model)
    apply_rope(model, _dpe((16,) * 8, key_dims=()))  # nothing selected: nothing remapped
    assert torch.allclose(_logits(model), plain, atol=1e-5)


def test_dpe_spec_validation_and_export_refusal(tmp_path):
    spec = _dpe((1, 2, 4, 8, 8, 8, 4, 2), key_dims=(1, 5))
    assert RopeSpec.from_json(spec.to_json(tmp_path / "s.json")) == spec
    with pytest.raises(RopeExportError, match="dpe"):
        to_hf_config(spec)
    with pytest.raises(RopeSpecError, match="group_scales"):
        _dpe((1, 2, 3))
    with pytest.raises(RopeSpecError, match=r"group_scales\[0\]"):
        _dpe((0.5,) * 8)
    with pytest.raises(RopeSpecError, match="key_dims"):
        _dpe(key_dims=(9,))


def test_cached_decoding_logits_equal_the_full_forward():
    """Decoding with the KV cache (one query against all cached keys, its position from
    position_ids) gives the logits the full forward gives at that position: the passkey path."""
    from transformers import DynamicCache

    model = tiny_model(tiny_config("llama", max_position_embeddings=L)).eval()
    apply_rope(model, _dpe(scales=(1, 2, 3, 4, 2, 2, 3, 3), window=8))
    ids = torch.randint(3, 128, (1, 98), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        cache = DynamicCache(config=model.config)
        steps = [model(input_ids=ids[:, :90], past_key_values=cache, use_cache=True).logits[:, -1]]
        for t in range(90, 98):
            out = model(
                input_ids=ids[:, t : t + 1],
                past_key_values=cache,
                use_cache=True,
                position_ids=torch.tensor([[t]]),
            )
            steps.append(out.logits[:, -1])
    assert torch.allclose(torch.stack(steps, 1), full[:, 89:], atol=1e-5, rtol=0)


def _dense_dpe(q0, k0, v, inv, scales, window, scale, q_pos, k_pos, rows=None):
    """Reference, float64, from the rule itself: unrotated q0 [b, h, n, d], k0/v [b, kv, m, d]
    (GQA: query head i uses KV head i // (h / kv)); each key scored at normal positions within
    the window, at remapped ones beyond it; causal by index (queries at the last n keys); one
    softmax. ``rows``: only these query rows.  # [b, rows, h, d]"""
    groups = q0.shape[1] // k0.shape[1]
    q0, k0, v = q0.double(), k0.double().repeat_interleave(groups, 1), v.double().repeat_interleave(groups, 1)
    rows = slice(None) if rows is None else rows
    qp, kp = q_pos[rows].double(), k_pos.double()
    qn, kn = _rope(q0[:, :, rows], qp[:, None].expand(-1, len(scales)), inv), _rope(k0, kp[:, None], inv)
    qf = _rope(q0[:, :, rows], torch.stack([qp // s + window - window // s for s in scales], -1), inv)
    kf = _rope(k0, torch.stack([kp // s for s in scales], -1), inv)
    near, far = qn @ kn.transpose(2, 3), qf @ kf.transpose(2, 3)
    scores = torch.where((qp[:, None] - kp[None]) < window, near, far) * scale
    n, m = q_pos.shape[0], k_pos.shape[0]
    index = torch.arange(m - n, m)[rows]
    scores = scores.masked_fill(torch.arange(m)[None] > index[:, None], float("-inf"))
    return (torch.softmax(scores, -1) @ v).transpose(1, 2)


def _causal_module(inv, scales, window, groups):
    return types.SimpleNamespace(
        _longctx_dpe=DPEPlan(inv, scales, window), num_key_value_groups=groups, training=False, is_causal=True
    )


@pytest.mark.parametrize("window", [5, 24, 64, 200])
def test_two_passes_merged_by_log_sum_exp_equal_the_dense_reference(monkeypatch, window):
    """The model's path (causal, no mask tensor): far pass + near chunks merged by their
    log-sum-exps equals one dense softmax, float32 at 1e-5, with several heads and GQA, in
    chunks of 7 rows or one, when decoding (one row, several rows past and within W), with the
    matmul fallback, and when the keys outnumber the queries by more than W."""
    import longctx.rope.dpe_attention as dpe

    torch.manual_seed(5)
    b, heads, kv, n, d = 2, 6, 2, 150, 16
    inv = 1.0 / (10_000.0 ** (torch.arange(0, d, 2).double() / d))
    scales = torch.tensor([1.0, 2.0, 4.0, 1.0, 3.0, 8.0, 1.0, 2.0])  # pairs 0, 3, 6 unselected
    q0, k0, v = torch.randn(b, heads, n, d), torch.randn(b, kv, n, d), torch.randn(b, kv, n, d)
    pos = torch.arange(n)
    plain = pos.double()[:, None].expand(n, d // 2)
    q, k = _rope(q0.double(), plain, inv).float(), _rope(k0.double(), plain, inv).float()
    module, scale = _causal_module(inv, scales, window, heads // kv), d**-0.5
    want = _dense_dpe(q0, k0, v, inv, scales, window, scale, pos, pos)
    out, weights = dpe_attention(module, q, k, v, None, scale)
    assert weights is None and out.shape == (b, n, heads, d) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=0)
    monkeypatch.setattr(dpe, "QUERY_BLOCK", 7)  # near chunks of 7 rows, the last one short
    torch.testing.assert_close(
        dpe_attention(module, q, k, v, None, scale)[0].double(), want, atol=1e-5, rtol=0
    )
    for last in (1, 3, 40, 120):  # decoding: the last rows against the whole cache
        got, _ = dpe_attention(module, q[:, :, -last:], k, v, None, scale, position_ids=pos[None, -last:])
        torch.testing.assert_close(got.double(), want[:, -last:], atol=1e-5, rtol=0)
    monkeypatch.setattr(dpe, "_FUSED_OK", {})
    monkeypatch.setattr(dpe, "_attend_fused", lambda *args: None)  # no fused kernel: matmul chunks
    with pytest.warns(UserWarning, match="matmul"):
        got, _ = dpe_attention(module, q, k, v, None, scale)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)


def test_merge_by_log_sum_exp_is_the_softmax_over_both_key_sets():
    torch.manual_seed(6)
    scores, v = torch.randn(3, 10, dtype=torch.float64) * 30, torch.randn(10, 4, dtype=torch.float64)
    scores[2, :6] = float("-inf")  # row 2: nothing in the first set
    parts = [(torch.softmax(s, -1).nan_to_num(0.0) @ v[keys], torch.logsumexp(s, -1))
             for keys in (slice(0, 6), slice(6, 10)) for s in [scores[:, keys]]]  # fmt: skip
    out, lse = dpe_kernel._merge(*parts[0], *parts[1])
    torch.testing.assert_close(out, torch.softmax(scores, -1) @ v, atol=1e-12, rtol=0)
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1), atol=1e-12, rtol=0)


def test_gradients_flow_through_the_matmul_passes():
    """Under autograd the passes run as matmuls (the fused kernels' LSE has no backward); the
    gradient equals the dense reference's."""
    torch.manual_seed(7)
    n, d, window = 40, 8, 6
    inv = 1.0 / (10_000.0 ** (torch.arange(0, d, 2).double() / d))
    scales = torch.tensor([1.0, 2.0, 4.0, 3.0])
    q0, k0, v = (
        torch.randn(1, 2, n, d, dtype=torch.float64),
        *(torch.randn(1, 1, n, d, dtype=torch.float64) for _ in range(2)),
    )
    pos = torch.arange(n)
    plain = pos.double()[:, None].expand(n, d // 2)
    q0.requires_grad_()
    out, _ = dpe_attention(
        _causal_module(inv, scales, window, 2), _rope(q0, plain, inv), _rope(k0, plain, inv), v, None, 0.5
    )
    (grad,) = torch.autograd.grad(out.square().sum(), q0)
    (want,) = torch.autograd.grad(
        _dense_dpe(q0, k0, v, inv, scales, window, 0.5, pos, pos).square().sum(), q0
    )
    torch.testing.assert_close(grad, want, atol=1e-6, rtol=0)  # the extra rotation is float32


def test_16k_without_a_mask_matches_the_dense_reference():
    """At 16k tokens the model gets no mask tensor (causality inside the kernel: one causal far
    pass, near chunks); rows at the start, around W, in the middle and at the end equal the dense
    reference for those rows (2 query heads on 1 KV head, float32)."""
    torch.manual_seed(4)
    n, d, window = 16384, 8, 1024
    inv = 1.0 / (10_000.0 ** (torch.arange(0, d, 2).double() / d))
    scales = torch.tensor([1.0, 4.0, 8.0, 16.0])
    q0, k0, v = torch.randn(1, 2, n, d), torch.randn(1, 1, n, d), torch.randn(1, 1, n, d)
    pos = torch.arange(n)
    plain = pos.double()[:, None].expand(n, d // 2)
    q, k = _rope(q0.double(), plain, inv).float(), _rope(k0.double(), plain, inv).float()
    out, _ = dpe_attention(_causal_module(inv, scales, window, 2), q, k, v, None, d**-0.5)  # [1, n, 2, d]
    for rows in (slice(0, 128), slice(window - 64, window + 64), slice(8000, 8128), slice(n - 128, n)):
        want = _dense_dpe(q0, k0, v, inv, scales, window, d**-0.5, pos, pos, rows=rows)
        torch.testing.assert_close(out[:, rows].double(), want, atol=1e-5, rtol=0)


def test_the_model_builds_no_mask_for_dpe_and_refuses_padding(monkeypatch):
    import longctx.rope.dpe_attention as dpe

    seen = []
    real = dpe.dpe_attention

    def spy(module, query, key, value, attention_mask, *args, **kwargs):
        seen.append(attention_mask)
        return real(module, query, key, value, attention_mask, *args, **kwargs)

    model = tiny_model(tiny_config("llama", max_position_embeddings=L, attn_implementation="sdpa"))
    plain = _logits(model)
    from transformers import AttentionInterface

    monkeypatch.setitem(AttentionInterface._global_mapping, dpe.ATTN_NAME, spy)
    apply_rope(model, _dpe())
    monkeypatch.setitem(AttentionInterface._global_mapping, dpe.ATTN_NAME, spy)  # _register ran again
    assert torch.allclose(_logits(model), plain, atol=1e-5)  # all scales 1: the sdpa model's logits
    assert seen and all(m is None for m in seen)
    ids = torch.randint(3, 128, (1, 16))
    with pytest.raises(RopeSpecError, match="padded"):
        model(input_ids=ids, attention_mask=torch.tensor([[0] * 4 + [1] * 12]))
    apply_rope(model, RopeSpec("default", base=10_000.0, head_dim=16, original_length=L, target_length=L))
    assert model.config._attn_implementation == "sdpa"  # baselines run on the model's own attention
