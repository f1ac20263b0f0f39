"""The DPE attention kernel (``rope.dpe``'s remapping applied inside attention).

Each key lies in exactly one of two parts — within the local window ``W`` of its query (normal
positions) or beyond it (remapped positions) — so merging the parts' softmaxes by log-sum-exp
weights is one softmax over the scores taken from the part the key belongs to: the near part
and the far part are two attention passes (torch's fused kernels that also return the
log-sum-exp, else chunked matmuls), merged by ``(e^l1 o1 + e^l2 o2) / (e^l1 + e^l2)``.

Installed by ``rope.apply_rope``: the rotary module yields the ORIGINAL RoPE, and the
attention implementation "longctx_dpe" (registered with transformers'
``AttentionInterface``) adds, to the already rotated q/k, the extra rotation that moves
each selected pair from its original position to the remapped one (rotations compose:
``R(p')x = R(p'−p)R(p)x``). Fused kernels on CPU and CUDA (matmul chunks elsewhere, under
autograd and with dropout); no KV-cache / packed positions
(keys are taken at positions ``0…k_len-1`` when their count differs from the queries').
Whatever the model's own attention (SDPA, flash), DPE runs this kernel and its mask function
builds no mask (:func:`no_mask`): causality is kept inside (the far pass is one causal call,
the near pass a band per query chunk); see ``PEAK_MEMORY``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from longctx.rope.dpe import pair_scales, remapped_positions
from longctx.rope.errors import RopeSpecError

if TYPE_CHECKING:
    from longctx.rope.spec import RopeSpec


ATTN_NAME = "longctx_dpe"


_FUSED_OK: dict[tuple, bool] = {}


def _rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate HF-layout pairs (j, j + d/2) of ``x`` [b, h, n, d] by ``angle`` [b, n, d/2]."""
    half = angle.shape[-1]
    cos = torch.cat((angle.cos(), angle.cos()), -1)[:, None].to(x.dtype)  # [b, 1, n, d]
    sin = torch.cat((angle.sin(), angle.sin()), -1)[:, None].to(x.dtype)
    rot = x[..., : 2 * half]
    rotated = torch.cat((-rot[..., half:], rot[..., :half]), -1)
    return torch.cat((rot * cos + rotated * sin, x[..., 2 * half :]), -1)


@dataclass
class DPEPlan:
    """What one attention layer needs: original inv_freq, per-pair scales and the window."""

    inv_freq: torch.Tensor  # [d/2]
    scales: torch.Tensor  # [d/2]
    window: int


QUERY_BLOCK = 1024
"""Most query rows per chunk: the near pass takes ``min(QUERY_BLOCK, max(256, W // 2))`` rows at a
time, each chunk against its ``rows + W − 1`` keys in one fused call (≤ 1.5× the W keys a row
needs for W ≥ 512); the general path and the matmul fallback take at most this many rows per
score tensor (fewer past ``SCORE_ELEMENTS``)."""


SCORE_ELEMENTS = 1 << 28
"""Most entries per score (or bias) tensor of the general path and of the matmul fallback
[b, heads, rows, keys]: past ``QUERY_BLOCK · b · heads · keys`` of this, chunks shrink (down to 16
rows), so one chunk's float32 softmax stays ≤ 1 GiB at any length."""


PEAK_MEMORY = """Peak memory of one layer's call, b rows of L tokens, H heads of d dims:
K, V and the far K repeated to H heads, Q rotated to far positions, the far pass's output and the
result: 6 · b·H·L·d elements of the model's dtype (1 GiB each for an 8B model at 128k in bf16),
plus float32 log-sum-exps [b, H, L], plus per near chunk a bias [rows, rows + W − 1] and float32
merge buffers [b, H, rows, d]. The fused kernels (CPU flash, CUDA memory-efficient) keep only
tiles of the scores; the matmul fallback holds ≤ SCORE_ELEMENTS scores per chunk. No [L, L]
tensor at any length."""


NEG_INF = float("-inf")


def query_block(batch: int, heads: int, keys: int) -> int:
    """Rows per chunk for this many key columns (``QUERY_BLOCK`` at most, 16 at least)."""
    return max(16, min(QUERY_BLOCK, SCORE_ELEMENTS // max(1, batch * heads * keys)))


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _attend_matmul(q, k, v, scale, causal=False, bias=None, dropout=0.0):
    """``softmax(q·kᵀ·scale + bias) v`` and its log-sum-exp per row, in query chunks of plain
    matmuls (any device, dropout). ``causal``: row t sees keys ≤ t. A row that sees no key gets
    log-sum-exp −inf and output 0.  # [b, h, n, dv], [b, h, n]"""
    b, h, n, _ = q.shape
    m = k.shape[-2]
    acc = _acc_dtype(q.dtype)
    out = q.new_empty(b, h, n, v.shape[-1])
    lse = torch.empty(b, h, n, dtype=acc, device=q.device)
    rows = query_block(b, h, m)
    for s in range(0, n, rows):
        e = min(s + rows, n)
        hi = min(e, m) if causal else m
        w = torch.matmul(q[:, :, s:e], k[:, :, :hi].transpose(-1, -2)).to(acc).mul_(scale)
        if bias is not None:
            w += bias[..., s:e, :hi] if bias.shape[-2] != 1 else bias[..., :hi]
        if causal:
            later = torch.arange(hi, device=q.device)[None] > torch.arange(s, e, device=q.device)[:, None]
            w.masked_fill_(later, NEG_INF)
        part = torch.logsumexp(w, -1)
        lse[:, :, s:e] = part
        w = torch.exp(w - part.masked_fill(part == NEG_INF, 0.0)[..., None])  # not in place: autograd
        if dropout:
            w = torch.nn.functional.dropout(w, p=dropout, training=True)
        out[:, :, s:e] = torch.matmul(w.to(v.dtype), v[:, :, :hi])
    return out, lse


def _attend_fused(q, k, v, scale, causal=False, bias=None):
    """The same from torch's fused kernel that also returns the log-sum-exp (private aten ops:
    CPU flash attention, CUDA memory-efficient attention); None where there is none."""
    if q.device.type == "cpu":
        op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
        if op is None:
            return None
        out, lse = op(q, k, v, 0.0, causal, attn_mask=bias, scale=scale)
    elif q.device.type == "cuda":
        op = getattr(torch.ops.aten, "_scaled_dot_product_efficient_attention", None)
        if op is None:
            return None
        if bias is not None:  # the kernel wants [b, h, n, m] with 16-aligned rows
            m = bias.shape[-1]
            padded = bias.new_empty(*bias.shape[:-1], -(-m // 16) * 16)
            padded[..., :m] = bias
            bias = padded[..., :m].expand(q.shape[0], q.shape[1], q.shape[2], m)
        out, lse = op(q, k, v, bias, True, 0.0, causal, scale=scale)[:2]
        lse = lse[..., : q.shape[-2]]  # padded to a multiple of 32 rows on some versions
    else:
        return None
    return out, lse.to(_acc_dtype(q.dtype))


def _fused_works(q: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether :func:`_attend_fused` runs and agrees with :func:`_attend_matmul` for this device,
    dtype and head dims (checked once on a tiny causal and a masked case): private ops may be
    missing or differ across torch versions, and then the matmul path runs instead."""
    key = (q.device.type, q.dtype, q.shape[-1], v.shape[-1])
    if key not in _FUSED_OK:
        g = torch.Generator().manual_seed(0)
        tol = 1e-3 if q.dtype in (torch.float32, torch.float64) else 5e-2

        def rand(*shape):
            return torch.randn(*shape, generator=g).to(q.device, q.dtype)

        qs, ks, vs = rand(1, 2, 19, q.shape[-1]), rand(1, 2, 23, q.shape[-1]), rand(1, 2, 23, v.shape[-1])
        hide = torch.rand(19, 23, generator=g) < 0.4
        hide[:, 0] = False
        bias = torch.zeros(19, 23).masked_fill(hide, NEG_INF).to(q.device, q.dtype)[None, None]
        ok = True
        try:
            for args in ((qs, ks[:, :, :19], vs[:, :, :19], 0.3, True, None), (qs, ks, vs, 0.3, False, bias)):
                fused = _attend_fused(*args)
                want = _attend_matmul(*(a.double() if torch.is_tensor(a) else a for a in args))
                ok = (
                    ok
                    and fused is not None
                    and all(
                        got.shape == ref.shape and float((got.double() - ref).abs().max()) < tol
                        for got, ref in zip(fused, want)
                    )
                )
        except (RuntimeError, NotImplementedError, TypeError):
            ok = False
        if not ok and q.device.type in ("cpu", "cuda"):
            warnings.warn(
                f"dpe attention: no fused attention with log-sum-exp for {key}; using matmul chunks",
                stacklevel=3,
            )
        _FUSED_OK[key] = ok
    return _FUSED_OK[key]


def _attend(q, k, v, scale, causal=False, bias=None, dropout=0.0):
    """Attention over one key set with its log-sum-exp: fused where it works, else matmuls.
    ``bias``: additive [.., n, m] (−inf = hidden); ``causal``: top-left (row t sees keys ≤ t)."""
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if not dropout and not grad and _fused_works(q, v):  # the fused ops' LSE has no backward
        out, lse = _attend_fused(q, k, v, scale, causal, bias)
        if bias is not None:  # a row with no visible key: −inf and 0 (the CPU kernel gives lse 0)
            empty = (bias == NEG_INF).all(-1)
            if bool(empty.any()):
                lse = lse.masked_fill(empty, NEG_INF)
                out = out.masked_fill(empty[..., None], 0.0)
        return out, lse
    return _attend_matmul(q, k, v, scale, causal, bias, dropout)


def _merge(o1, l1, o2, l2):
    """Attention over two disjoint key sets → attention over their union, exactly:
    ``(e^l1 o1 + e^l2 o2) / (e^l1 + e^l2)`` (weights taken as ``e^(l − logaddexp(l1, l2))``, so
    nothing overflows; a side at −inf weighs 0). Float32 (or wider) out, with the merged LSE."""
    lse = torch.logaddexp(l1, l2)
    acc = lse.dtype
    out = o1.to(acc) * torch.exp(l1 - lse)[..., None] + o2.to(acc) * torch.exp(l2 - lse)[..., None]
    return out, lse


def _float_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:  # True = attend (transformers' boolean masks)
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, NEG_INF)
    return mask.to(dtype)


def _banded(query, key, value, far_q, far_k, scaling, window, out):
    """Causal, plain positions (query row r at key index r + offset), no mask tensor: the far pass
    is one causal fused call (rows with a key ≥ W behind them against keys up to W before the
    last one, top-left aligned) plus, when decoding past W, one call over the keys every row
    sees; the near pass runs in chunks against their ``rows + W − 1`` keys with a band bias
    (its first W rows of a prefill as one causal call: they have no far keys)."""
    q_len, k_len = query.shape[-2], key.shape[-2]
    offset = k_len - q_len
    first = max(0, window - offset)  # first row with far keys: row r sees far keys j ≤ r + offset − W
    far = None
    if first < q_len:
        seen = max(0, offset - window)  # far keys [0, seen) are seen by every row
        last = k_len - window  # far keys [seen, last): the causal square
        fq = far_q[:, :, first:]
        far = _attend(fq, far_k[:, :, seen:last], value[:, :, seen:last], scaling, causal=True)
        if seen:
            far = _merge(*far, *_attend(fq, far_k[:, :, :seen], value[:, :, :seen], scaling))
    head = min(q_len, window) if offset == 0 else 0  # rows < W see every earlier key: plain causal
    if head:
        o, _ = _attend(query[:, :, :head], key[:, :, :head], value[:, :, :head], scaling, causal=True)
        out[:, :head] = o.transpose(1, 2)
    rows = min(QUERY_BLOCK, max(256, window // 2))  # scored keys per row: rows + W − 1
    for start in range(head, q_len, rows):
        end = min(start + rows, q_len)
        lo, hi = max(0, start + offset - window + 1), end + offset  # keys near to some row
        i = torch.arange(start + offset, end + offset, device=query.device)[:, None]
        j = torch.arange(lo, hi, device=query.device)[None]
        hidden = (j > i) | (j <= i - window)
        bias = None
        if bool(hidden.any()):
            bias = torch.zeros(hidden.shape, dtype=query.dtype, device=query.device).masked_fill_(
                hidden, NEG_INF
            )
        o, lse = _attend(query[:, :, start:end], key[:, :, lo:hi], value[:, :, lo:hi], scaling, bias=bias)
        if far is not None and end > first:
            a = max(start, first) - start  # chunk rows from a on have far keys too
            fo, fl = (
                far[0][:, :, start + a - first : end - first],
                far[1][..., start + a - first : end - first],
            )
            merged, _ = _merge(o[:, :, a:], lse[..., a:], fo, fl)
            out[:, start + a : end] = merged.transpose(1, 2)
            end = start + a
        out[:, start:end] = o[:, :, : end - start].transpose(1, 2)


def _general(query, key, value, far_q, far_k, scaling, window, q_pos, k_pos, causal, mask, dropout, out):
    """Any positions, an optional additive (or boolean) mask, non-causal modules, dropout: per
    query chunk both passes over the chunk's keys, each hiding the other's keys by a bias."""
    b, heads, q_len, _ = query.shape
    k_len = key.shape[-2]
    offset = k_len - q_len
    rows = query_block(b, heads, k_len)
    for start in range(0, q_len, rows):
        end = min(start + rows, q_len)
        hi = end + offset if causal else k_len
        local = (q_pos[:, start:end, None] - k_pos[:, None, :hi] < window)[:, None]  # [b, 1, rows, hi]
        if causal:
            later = (
                torch.arange(hi, device=query.device)
                > torch.arange(start, end, device=query.device)[:, None] + offset
            )
        else:
            later = torch.zeros((), dtype=torch.bool, device=query.device)
        base = torch.zeros((), dtype=query.dtype, device=query.device)
        if mask is not None:
            base = _float_bias(
                mask[..., :hi] if mask.shape[-2] == 1 else mask[..., start:end, :hi], query.dtype
            )
        near_bias = torch.where(~local | later, NEG_INF, base)
        far_bias = torch.where(local | later, NEG_INF, base)
        near = _attend(
            query[:, :, start:end], key[:, :, :hi], value[:, :, :hi], scaling, bias=near_bias, dropout=dropout
        )
        far = _attend(
            far_q[:, :, start:end],
            far_k[:, :, :hi],
            value[:, :, :hi],
            scaling,
            bias=far_bias,
            dropout=dropout,
        )
        out[:, start:end] = _merge(*near, *far)[0].transpose(1, 2)


def remap_angles(plan: DPEPlan, query: torch.Tensor, key: torch.Tensor, q_pos: torch.Tensor | None):
    """(query positions [b, q], key positions [b, k], extra query / key angles [b, n, d/2], float64): what
    rotating a query / key from its original position to its DPE position adds. Default positions
    are 0… for the queries and the keys (the keys' own when there are more of them: decoding)."""
    b, _, q_len, _ = query.shape
    k_len = key.shape[-2]
    q_pos = torch.arange(q_len, device=query.device)[None].expand(b, -1) if q_pos is None else q_pos
    k_pos = q_pos if k_len == q_len else torch.arange(k_len, device=query.device)[None].expand(b, -1)
    inv = plan.inv_freq.double().to(query.device)
    dq = (remapped_positions(q_pos, plan.scales, plan.window, True) - q_pos[..., None]) * inv
    dk = (remapped_positions(k_pos, plan.scales, plan.window, False) - k_pos[..., None]) * inv
    return q_pos, k_pos, dq, dk


def dpe_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """DPE's two-part attention (see module docstring): the near part (keys closer than W, original
    positions) and the far part (remapped positions) as two attention passes, merged exactly by
    their log-sum-exps. Returns ``(output [b, q, heads, d], None)``: no attention weights."""
    from transformers.models.llama.modeling_llama import repeat_kv

    plan: DPEPlan = module._longctx_dpe
    b, heads, q_len, _ = query.shape  # query: [b, heads, q, d] (already rotated at original positions)
    k_len = key.shape[-2]
    q_pos, k_pos, dq, dk = remap_angles(plan, query, key, kwargs.get("position_ids"))
    groups = module.num_key_value_groups
    far_k = repeat_kv(_rotate(key, dk.float()), groups)  # rotated per KV head, then repeated
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    far_q = _rotate(query, dq.float())
    offset = k_len - q_len  # query row r sits at key index r + offset
    # causality is ours: a causal module never gets a mask tensor (``no_mask``); an explicit mask
    # (tests, padding-free decoding) is still applied on top
    causal = bool(getattr(module, "is_causal", False))
    dropout = dropout if module.training else 0.0
    plain = q_pos.shape[-1] == q_len and bool(
        (q_pos == torch.arange(offset, k_len, device=query.device)).all()
    )
    out = query.new_empty(b, q_len, heads, value.shape[-1])
    if causal and plain and attention_mask is None and not dropout:
        _banded(query, key, value, far_q, far_k, scaling, plan.window, out)
    else:
        _general(query, key, value, far_q, far_k, scaling, plan.window, q_pos, k_pos, causal,
                 attention_mask, dropout, out)  # fmt: skip
    return out, None


def no_mask(*args, attention_mask: torch.Tensor | None = None, **kwargs) -> None:
    """The mask function of "longctx_dpe": none. :func:`dpe_attention` keeps causality itself
    (an [L, L] mask is 32 GiB in bf16 at 128k); a padded batch cannot be expressed without one
    and is refused."""
    if attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask.all()):
        raise RopeSpecError("dpe attention: padded batches are not supported (evaluate one row at a time)")
    return None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, dpe_attention)
    AttentionMaskInterface.register(ATTN_NAME, no_mask)


def _attention_modules(model) -> list:
    return [m for m in model.modules() if hasattr(m, "num_key_value_groups") and hasattr(m, "q_proj")]


def sync_attention(model, spec: RopeSpec) -> None:
    """``apply_rope``'s hook: install DPE attention for a ``dpe`` spec, restore it otherwise."""
    config = model.config
    if spec.method != "dpe":
        previous = getattr(config, "_longctx_attn_before_dpe", None)
        if previous is not None:
            config._attn_implementation = previous
            del config._longctx_attn_before_dpe
        return
    _register()
    if getattr(config, "_longctx_attn_before_dpe", None) is None:
        config._longctx_attn_before_dpe = config._attn_implementation
    config._attn_implementation = ATTN_NAME
    plan_scales = pair_scales(spec)
    for attn in _attention_modules(model):
        device = attn.q_proj.weight.device
        attn._longctx_dpe = DPEPlan(
            spec.geometry.base_inv_freq(device), plan_scales.to(device), spec.method_params.local_window
        )
