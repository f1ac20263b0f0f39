"""Packed-row attention without a mask tensor on SDPA: every document its own causal call.

Training packs several documents into one row and must keep them apart. flash-attention's
varlen kernel does that from ``cu_seq_lens`` with no mask; SDPA needs the dense
``[batch, 1, seq, seq]`` block-diagonal mask (:func:`data.packing.attention_mask_4d`), which
costs memory quadratic in the row and makes the CPU kernel compute every block, masked or not
(docs/BENCHMARKS.md, train_throughput: 0.61× a plain step at 4k on ``packed4`` rows).

:data:`SEGMENTS` is an attention function registered with transformers' ``AttentionInterface``
that takes the same varlen kwargs as flash (``cu_seq_lens_q``, from
:func:`data.packing.flash_varlen_kwargs`: the batch flattened to one sequence) and runs causal
SDPA once per group of equal-length documents (documents of one length are stacked into one
batched call, so one-document rows cost one call). Its name is not a mask function of
transformers', so no mask is built at all. Without ``cu_seq_lens_q`` (generation, eval) it is
plain SDPA. Used for training only (``train.fit.fit`` switches to it and back), on
models that take ``set_attn_implementation`` (the AttentionInterface models: Llama, Mistral,
Qwen2, Phi-3, …).
"""

from __future__ import annotations

from contextlib import contextmanager
from itertools import pairwise

import torch
import torch.nn.functional as F

SEGMENTS = "longctx_sdpa_segments"
"""The registered attention name (``model.config._attn_implementation`` while training)."""


def segment_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # [1, heads, tokens, head_dim]: the batch flattened to one sequence
    key: torch.Tensor,  # [1, kv_heads, tokens, head_dim]
    value: torch.Tensor,  # [1, kv_heads, tokens, head_dim]
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal SDPA per document of ``cu_seq_lens_q``; returns ``[1, tokens, heads, head_dim]``."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if query.shape[0] != 1:
        raise ValueError(
            f"{SEGMENTS}: expected the batch flattened to one sequence, got batch {query.shape[0]}"
        )
    # GQA: SDPA's enable_gqa (torch >= 2.5) maps query heads onto their key/value head inside the
    # kernel, so K/V are never repeated heads/kv_heads times (math, flash and CPU flash kernels)
    gqa = query.shape[1] != key.shape[1]
    bounds = cu.tolist()
    by_length: dict[int, list[int]] = {}
    for start, stop in pairwise(bounds):
        if stop > start:
            by_length.setdefault(stop - start, []).append(start)
    dropout_p = dropout if module.training else 0.0
    pieces: dict[int, torch.Tensor] = {}
    for length, starts in by_length.items():
        if len(starts) == 1:  # a view, not a copy: a one-document row costs what plain SDPA does
            q, k, v = (t[:, :, starts[0] : starts[0] + length] for t in (query, key, value))
        else:  # [documents, heads, length, head_dim]: equal-length documents in one batched call
            q, k, v = (torch.cat([t[:, :, s : s + length] for s in starts]) for t in (query, key, value))
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, is_causal=True, scale=scaling, enable_gqa=gqa
        )
        for i, s in enumerate(starts):
            pieces[s] = out[i : i + 1]
    ordered = [pieces[s] for s in sorted(pieces)]
    attn = ordered[0] if len(ordered) == 1 else torch.cat(ordered, dim=2)  # [1, heads, tokens, head_dim]
    return attn.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make :data:`SEGMENTS` a valid ``attn_implementation`` (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(SEGMENTS, segment_sdpa_forward)


def supports_segments(model: torch.nn.Module) -> bool:
    """Whether ``model`` dispatches attention through AttentionInterface (so it can use :data:`SEGMENTS`)."""
    can = getattr(model, "_can_set_attn_implementation", None)
    return bool(can and can() and hasattr(model, "set_attn_implementation"))


@contextmanager
def segment_attention(model: torch.nn.Module):
    """``model`` attends with :data:`SEGMENTS` inside the block and with its own implementation after."""
    register()
    before = model.config._attn_implementation
    model.set_attn_implementation(SEGMENTS)
    try:
        yield model
    finally:
        model.set_attn_implementation(before)


def attention_implementation(choice: str) -> str:
    """The recipe's ``model.attention`` as transformers' ``attn_implementation``.

    ``auto``: flash-attention 2 (varlen over packed rows, no mask) where CUDA and ``flash_attn``
    are present, else SDPA (per-document calls, :data:`SEGMENTS`).
    """
    if choice == "auto":
        import importlib.util

        flash = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
        return "flash_attention_2" if flash else "sdpa"
    return {"flash": "flash_attention_2"}.get(choice, choice)
