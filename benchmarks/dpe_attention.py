"""DPE attention: two fused passes merged by log-sum-exp vs the block loop vs plain SDPA.

    python benchmarks/dpe_attention.py [--lengths 2048,4096,8192,16384] [--window 1024] [--reps 2]

One SmolLM2-shaped attention layer (9 query heads, 3 KV heads, head dim 64, θ = 1e5, two pair
groups at scales 2 and 4, a third of the pairs selected) on one row of random q/k/v, causal, no
mask tensor (what the model passes, ``rope.dpe_attention.no_mask``). Three variants in the same process:

- ``ours``: ``rope.dpe_attention.dpe_attention`` — the far part as one causal fused attention call, the
  near part (keys closer than W) as one causal call for the first W rows, then in chunks of
  ``min(1024, max(256, W // 2))`` queries with a band bias, merged exactly by log-sum-exps;
- ``block loop``: the previous ``dpe_attention`` (kept here as :func:`_block_loop_attention`):
  eager matmuls + softmax per block of ``query_block`` rows (1024 here, 64 for an 8B model at
  128k), near and far scores picked per entry;
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)`` on the same
  q/k/v, i.e. plain RoPE attention without DPE: the floor DPE's two parts are measured against.

Time: best of ``--reps`` per variant, the variants interleaved. ``diff``: the largest absolute
difference between ours and the block loop (float32).
"""

from __future__ import annotations

import argparse
import time
import types

import torch

from longctx.checkout import checkout_root
from longctx.rope.dpe_attention import DPEPlan, _rotate, dpe_attention, query_block, remap_angles

ROOT = checkout_root(purpose="benchmarks")

HEADS, KV_HEADS, HEAD_DIM, THETA = 9, 3, 64, 1e5


def _block_loop_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Baseline: the block-loop ``dpe_attention`` before the two-pass merge (its code, minus the
    attention weights it returned for one block)."""
    from transformers.models.llama.modeling_llama import repeat_kv

    plan: DPEPlan = module._longctx_dpe
    b, _, q_len, _ = query.shape
    k_len = key.shape[-2]
    q_pos, k_pos, dq, dk = remap_angles(plan, query, key, kwargs.get("position_ids"))
    key_states, value_states = (
        repeat_kv(key, module.num_key_value_groups),
        repeat_kv(value, module.num_key_value_groups),
    )
    far_k = _rotate(key_states, dk.float()).transpose(2, 3)
    far_q = _rotate(query, dq.float())
    near_k = key_states.transpose(2, 3)
    offset = k_len - q_len
    causal = bool(getattr(module, "is_causal", False))
    plain = q_pos.shape[-1] == q_len and bool(
        (q_pos == torch.arange(offset, k_len, device=query.device)).all()
    )
    outs = []
    block = query_block(b, query.shape[1], k_len)
    for start in range(0, q_len, block):
        end = min(start + block, q_len)
        rows = slice(start, end)
        hi = end + offset if causal else k_len
        if plain:
            near_lo = min(max(0, start + offset - plan.window + 1), hi)
            far_hi = min(max(0, end + offset - plan.window), hi)
        else:
            near_lo, far_hi = 0, hi
        weights = torch.empty(b, query.shape[1], end - start, hi, dtype=query.dtype, device=query.device)
        if near_lo:
            torch.matmul(far_q[:, :, rows], far_k[..., :near_lo], out=weights[..., :near_lo])
        if far_hi < hi:
            torch.matmul(query[:, :, rows], near_k[..., far_hi:hi], out=weights[..., far_hi:hi])
        if near_lo < far_hi:
            band = slice(near_lo, far_hi)
            near = torch.matmul(query[:, :, rows], near_k[..., band])
            far = torch.matmul(far_q[:, :, rows], far_k[..., band])
            local = (q_pos[:, rows, None] - k_pos[:, None, band]) < plan.window
            weights[..., band] = torch.where(local[:, None], near, far)
            del near, far
        weights *= scaling
        if attention_mask is not None:
            mask = attention_mask[..., :hi]
            weights += mask if mask.shape[-2] == 1 else mask[..., rows, :]
        elif causal and end - start > 1:
            diag = slice(start + offset, hi)
            later = torch.arange(start + offset, hi, device=query.device)[None, :] > (
                torch.arange(start, end, device=query.device)[:, None] + offset
            )
            weights[..., diag].masked_fill_(later, float("-inf"))
        weights = torch.nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
        weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
        outs.append(torch.matmul(weights, value_states[:, :, :hi]))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def _sdpa(module, query, key, value, attention_mask, scaling):
    """Plain causal SDPA on the same tensors (no DPE), output in the same [b, q, h, d] layout."""
    groups = module.num_key_value_groups
    k, v = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    out = torch.nn.functional.scaled_dot_product_attention(query, k, v, is_causal=True, scale=scaling)
    return out.transpose(1, 2), None


def _inputs(n: int, window: int):
    g = torch.Generator().manual_seed(0)
    inv = 1.0 / THETA ** (torch.arange(0, HEAD_DIM, 2).double() / HEAD_DIM)
    scales = torch.ones(HEAD_DIM // 2)
    scales[4:16:3], scales[16:32:3] = 2.0, 4.0  # two groups, a third of the pairs selected
    module = types.SimpleNamespace(
        _longctx_dpe=DPEPlan(inv, scales, window),
        num_key_value_groups=HEADS // KV_HEADS,
        training=False,
        is_causal=True,
    )
    q = torch.randn(1, HEADS, n, HEAD_DIM, generator=g)
    k, v = (torch.randn(1, KV_HEADS, n, HEAD_DIM, generator=g) for _ in range(2))
    return module, q, k, v, None, HEAD_DIM**-0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="2048,4096,8192,16384")
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), window {args.window}")
    print("| tokens | W | block loop s | ours s | sdpa s | block loop / ours | ours / sdpa | diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    variants = (_block_loop_attention, dpe_attention, _sdpa)
    with torch.inference_mode():
        warm = _inputs(256, 64)
        for fn in variants:  # first calls pay one-off setup (and ours' one fused-kernel check)
            fn(*warm)
        for n in (int(x) for x in args.lengths.split(",")):
            inputs = _inputs(n, args.window)
            times, outs = [float("inf")] * 3, [None] * 3
            for _ in range(args.reps):  # interleaved: load from other jobs hits all three alike
                for i, fn in enumerate(variants):
                    t = time.perf_counter()
                    outs[i] = fn(*inputs)[0]
                    times[i] = min(times[i], time.perf_counter() - t)
            loop_s, ours_s, sdpa_s = times
            diff = (outs[1] - outs[0]).abs().max().item()
            print(
                f"| {n} | {args.window} | {loop_s:.3f} | {ours_s:.3f} | {sdpa_s:.3f} | "
                f"{loop_s / ours_s:.2f}× | {ours_s / sdpa_s:.2f}× | {diff:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
