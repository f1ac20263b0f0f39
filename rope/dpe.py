"""``dpe``: Dimension-wise Positional Embeddings manipulation (arXiv 2504.18857), training-free.

DPE keeps the pretrained frequencies and changes POSITIONS, per group of rotary pairs:
the pairs are split into equal groups, each with its own scale ``s_g`` (its detected
effective length); only the selected key pairs (``key_dims``, chosen by Q/K norms) are
remapped, the others keep their original positions. Per METHODS.md §DPE step 3 (a
Self-Extend-like rule): keys within the local window ``W`` of a query use normal
positions; beyond it, the query takes ``q // s_g + W − W // s_g`` and the key ``k // s_g``
in group g. Each key lies in exactly one of the two parts, so merging the parts' softmaxes
by log-sum-exp weights is one softmax over the scores taken from the part the key
belongs to — which is what :func:`dpe_attention` computes.

Installed by ``rope.apply_rope``: the rotary module yields the ORIGINAL RoPE, and the
attention implementation "longctx_dpe" (registered with transformers'
``AttentionInterface``) adds, to the already rotated q/k, the extra rotation that moves
each selected pair from its original position to the remapped one (rotations compose:
``R(p')x = R(p'−p)R(p)x``). Eager math on every device; no KV-cache / packed positions
(keys are taken at positions ``0…k_len-1`` when their count differs from the queries').
Whatever the model's own attention (SDPA, flash), DPE runs this kernel and its mask function
builds no mask (:func:`no_mask`): causality is kept inside, block by block; see ``PEAK_MEMORY``.
A stock config cannot express any of this: export raises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from longctx.rope.errors import RopeExportError, RopeSpecError
from longctx.rope.tables import RopeFrequencies

if TYPE_CHECKING:
    from longctx.rope.spec import RopeSpec

ATTN_NAME = "longctx_dpe"


@dataclass(frozen=True)
class Params:
    group_scales: tuple[float, ...] = ()
    """Scale per pair group (8 groups in the paper), each ≥ 1; 1 = original positions."""
    key_dims: tuple[int, ...] | None = None
    """Pair indices that are remapped (top-k by Q/K norm); None = all pairs."""
    local_window: int = 1024
    """W: keys closer than W to the query keep normal positions (paper: 1024)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "group_scales", tuple(self.group_scales))
        if self.key_dims is not None:
            object.__setattr__(self, "key_dims", tuple(self.key_dims))
        if not self.group_scales:
            raise RopeSpecError("params.group_scales: expected one scale per pair group (e.g. 8 values)")
        for i, s in enumerate(self.group_scales):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 1:
                raise RopeSpecError(f"params.group_scales[{i}]: expected a number >= 1, got {s!r}")
        if (
            isinstance(self.local_window, bool)
            or not isinstance(self.local_window, int)
            or self.local_window < 1
        ):
            raise RopeSpecError(f"params.local_window: expected an integer >= 1, got {self.local_window!r}")


def validate(spec: RopeSpec) -> None:
    p, n = spec.method_params, spec.geometry.n_pairs
    if n % len(p.group_scales):
        raise RopeSpecError(
            f"params.group_scales: {len(p.group_scales)} groups do not split {n} rotary pairs equally"
        )
    for d in p.key_dims or ():
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < n:
            raise RopeSpecError(f"params.key_dims: expected pair indices in 0..{n - 1}, got {d!r}")
    if p.key_dims is not None and len(set(p.key_dims)) != len(p.key_dims):
        raise RopeSpecError("params.key_dims: expected distinct pair indices")


def compute(spec: RopeSpec, seq_len=None, device=None) -> RopeFrequencies:
    """The original frequencies (DPE moves positions, not frequencies), attention factor 1."""
    return RopeFrequencies.single(spec.geometry.base_inv_freq(device))


def hf_parameters(spec: RopeSpec):
    raise RopeExportError(
        "method 'dpe': per-group position remapping of selected pairs cannot be expressed in a "
        "stock config (no rope_type does it); keep loading the model through rope.apply_rope"
    )


def pair_scales(spec: RopeSpec) -> torch.Tensor:
    """Scale per pair [d/2]: its group's scale if selected, else 1 (original positions)."""
    p, n = spec.method_params, spec.geometry.n_pairs
    per_group = n // len(p.group_scales)
    scales = torch.tensor([float(p.group_scales[i // per_group]) for i in range(n)])
    if p.key_dims is not None:
        keep = torch.ones(n, dtype=torch.bool)
        keep[list(p.key_dims)] = False
        scales[keep] = 1.0
    return scales


def remapped_positions(pos: torch.Tensor, scales: torch.Tensor, window: int, query: bool) -> torch.Tensor:
    """Beyond-window positions per pair: query ``p // s + W − W // s``, key ``p // s``.  # [..., d/2]"""
    p = pos[..., None].double()
    s = scales.double().to(pos.device)
    moved = torch.floor(p / s)
    if query:
        moved = moved + window - torch.floor(window / s)
    return moved


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
"""Queries per block: the score tensors are [b, heads, block, keys] instead of [b, heads, n, n]
(at 16k tokens and 9 heads, 0.6 GB per tensor instead of 10 GB). Same math row by row. In a causal
module a block scores only the keys up to its last row, and with unpacked positions each key range
that is all-near or all-far is computed once: 3.5–4.5× faster than both parts over every key at
2k–16k tokens with W = 4096 (benchmarks/dpe_attention.py, docs/BENCHMARKS.md)."""

SCORE_ELEMENTS = 1 << 28
"""Most entries per score tensor [b, heads, block, keys]: past ``QUERY_BLOCK · b · heads · keys``
of this, blocks shrink (down to 16 rows), so one block's float32 softmax stays ≤ 1 GiB at any
length (an 8B model with 32 heads takes 64-row blocks at 128k instead of 16 GiB per tensor)."""


PEAK_MEMORY = """Peak memory of one layer's call, b rows of L tokens, H heads of d dims:
K and V repeated to H heads, K and Q rotated to far positions: 4 · b·H·L·d elements of the
model's dtype (1 GiB each for an 8B model at 128k in bf16), plus per query block a score tensor
of ≤ SCORE_ELEMENTS entries in the model's dtype, its float32 softmax and, in the band, two more
of the model's dtype (≤ 3 GiB at SCORE_ELEMENTS = 2^28). No [L, L] tensor at any length."""


def query_block(batch: int, heads: int, keys: int) -> int:
    """Rows per query block for this many key columns (``QUERY_BLOCK`` at most, 16 at least)."""
    return max(16, min(QUERY_BLOCK, SCORE_ELEMENTS // max(1, batch * heads * keys)))


def dpe_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention with DPE's two-part positions (see module docstring), in query blocks."""
    from transformers.models.llama.modeling_llama import repeat_kv

    plan: DPEPlan = module._longctx_dpe
    b, _, q_len, _ = query.shape  # query: [b, heads, q, d] (already rotated at original positions)
    k_len = key.shape[-2]
    q_pos = kwargs.get("position_ids")
    q_pos = torch.arange(q_len, device=query.device)[None].expand(b, -1) if q_pos is None else q_pos
    k_pos = q_pos if k_len == q_len else torch.arange(k_len, device=query.device)[None].expand(b, -1)
    inv = plan.inv_freq.double().to(query.device)
    dq = (remapped_positions(q_pos, plan.scales, plan.window, True) - q_pos[..., None]) * inv
    dk = (remapped_positions(k_pos, plan.scales, plan.window, False) - k_pos[..., None]) * inv
    key_states, value_states = (
        repeat_kv(key, module.num_key_value_groups),
        repeat_kv(value, module.num_key_value_groups),
    )
    far_k = _rotate(key_states, dk.float()).transpose(2, 3)
    far_q = _rotate(query, dq.float())
    near_k = key_states.transpose(2, 3)
    offset = k_len - q_len  # query row r sits at key index r + offset
    # causality is ours: a causal module never gets a mask tensor (``no_mask``); an explicit 4-D
    # mask (tests, padding-free decoding) is still applied on top
    causal = bool(getattr(module, "is_causal", False))
    # Positions equal to key indices (no packing): the near/far split is a band in index space.
    plain = q_pos.shape[-1] == q_len and bool(
        (q_pos == torch.arange(offset, k_len, device=query.device)).all()
    )
    outs, all_weights = [], []
    block = query_block(b, query.shape[1], k_len)
    for start in range(0, q_len, block):
        end = min(start + block, q_len)
        rows = slice(start, end)
        hi = end + offset if causal else k_len  # later keys are masked for every row of the block
        if plain:  # keys before near_lo are far for every row, keys from far_hi on are near
            near_lo = min(max(0, start + offset - plan.window + 1), hi)
            far_hi = min(max(0, end + offset - plan.window), hi)
        else:
            near_lo, far_hi = 0, hi
        weights = torch.empty(b, query.shape[1], end - start, hi, dtype=query.dtype, device=query.device)
        if near_lo:
            torch.matmul(far_q[:, :, rows], far_k[..., :near_lo], out=weights[..., :near_lo])
        if far_hi < hi:
            torch.matmul(query[:, :, rows], near_k[..., far_hi:hi], out=weights[..., far_hi:hi])
        if near_lo < far_hi:  # keys that are near for some rows and far for others
            band = slice(near_lo, far_hi)
            near = torch.matmul(query[:, :, rows], near_k[..., band])
            far = torch.matmul(far_q[:, :, rows], far_k[..., band])
            local = (q_pos[:, rows, None] - k_pos[:, None, band]) < plan.window  # [b, block, keys]
            weights[..., band] = torch.where(local[:, None], near, far)
            del near, far
        weights *= scaling
        if attention_mask is not None:
            mask = attention_mask[..., :hi]
            weights += mask if mask.shape[-2] == 1 else mask[..., rows, :]
        elif causal and end - start > 1:  # the block's own diagonal: row r sees keys up to r + offset
            diag = slice(start + offset, hi)
            later = torch.arange(start + offset, hi, device=query.device)[None, :] > (
                torch.arange(start, end, device=query.device)[:, None] + offset
            )  # [block, block]
            weights[..., diag].masked_fill_(later, float("-inf"))
        weights = torch.nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
        weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
        outs.append(torch.matmul(weights, value_states[:, :, :hi]))
        if q_len <= block:
            all_weights.append(weights)
    out = torch.cat(outs, dim=2).transpose(1, 2).contiguous()  # [b, q, h, d]
    return out, (all_weights[0] if all_weights else None)


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


@torch.no_grad()
def key_dim_scores(model, batches: list[torch.Tensor]) -> torch.Tensor:
    """Mean ‖q_pair‖·‖k_pair‖ per rotary pair over layers, heads and tokens (DPE step 2).  # [d/2]

    Rotation keeps a pair's norm, so the projections before RoPE give the same norms.
    """
    layers = _attention_modules(model)
    rot = int(layers[0].head_dim * getattr(model.config, "partial_rotary_factor", 1.0) or layers[0].head_dim)
    half, found = rot // 2, []

    def pair_norm(x, head_dim):  # x: [b, seq, heads*head_dim] → [d/2]
        x = x.view(*x.shape[:-1], -1, head_dim)[..., :rot].float()
        return (x[..., :half] ** 2 + x[..., half:rot] ** 2).sqrt().mean(dim=(0, 1, 2))

    hooks = []
    for attn in layers:
        store: dict = {}
        hooks.append(
            attn.q_proj.register_forward_hook(
                lambda m, i, o, s=store, a=attn: s.__setitem__("q", pair_norm(o, a.head_dim))
            )
        )
        hooks.append(
            attn.k_proj.register_forward_hook(
                lambda m, i, o, s=store, a=attn: s.__setitem__("k", pair_norm(o, a.head_dim))
            )
        )
        found.append(store)
    total = torch.zeros(half)
    try:
        for ids in batches:
            model(input_ids=ids)
            total += sum(s["q"] * s["k"] for s in found).cpu()
    finally:
        for h in hooks:
            h.remove()
    return total / (len(batches) * len(layers))


def select_key_dims(model, batches: list[torch.Tensor], top_k: int) -> tuple[int, ...]:
    """The ``top_k`` pairs by Q/K norm product (paper: 48 of 64 in the README, 32 in the script)."""
    scores = key_dim_scores(model, batches)
    if not 1 <= top_k <= scores.numel():
        raise RopeSpecError(f"top_k: expected 1..{scores.numel()} pairs, got {top_k}")
    return tuple(sorted(int(i) for i in torch.topk(scores, top_k).indices))
