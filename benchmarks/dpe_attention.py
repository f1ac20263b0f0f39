"""DPE attention: ours (causal key range, near/far bands) vs both parts over every key.

    python benchmarks/dpe_attention.py [--lengths 2048,4096,8192] [--window 1024] [--reps 2]

One SmolLM2-shaped attention layer (9 query heads, 3 KV heads, head dim 64, θ = 1e5, two pair
groups at scales 2 and 4, a third of the pairs selected) on one row of random q/k/v, with
transformers' causal mask. The baseline is the same blocked eager attention that scores the
near AND the far part against every key and picks per entry (what ``dpe_attention`` did before
it skipped future keys and split by band), run in the same process. Time: best of ``--reps``,
interleaved. The table also prints the largest absolute difference of the outputs.
"""

from __future__ import annotations

import argparse
import time
import types
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from longctx.rope.dpe import QUERY_BLOCK, DPEPlan, _rotate, dpe_attention, remapped_positions  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, THETA = 9, 3, 64, 1e5


def dense_two_part(module, query, key, value, attention_mask, scaling):
    """Baseline: per query block, both parts against all keys, ``where`` by distance."""
    plan: DPEPlan = module._longctx_dpe
    groups = module.num_key_value_groups
    n = query.shape[-2]
    pos = torch.arange(n)[None]
    inv = plan.inv_freq.double()
    dq = (remapped_positions(pos, plan.scales, plan.window, True) - pos[..., None]) * inv
    dk = (remapped_positions(pos, plan.scales, plan.window, False) - pos[..., None]) * inv
    k, v = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    far_k, far_q = _rotate(k, dk.float()).transpose(2, 3), _rotate(query, dq.float())
    outs = []
    for start in range(0, n, QUERY_BLOCK):
        rows = slice(start, min(start + QUERY_BLOCK, n))
        near = query[:, :, rows] @ k.transpose(2, 3) * scaling
        far = far_q[:, :, rows] @ far_k * scaling
        local = (pos[:, rows, None] - pos[:, None, :]) < plan.window
        w = torch.where(local[:, None], near, far) + attention_mask[..., rows, :]
        outs.append(torch.softmax(w, -1, dtype=torch.float32) @ v)
    return torch.cat(outs, 2).transpose(1, 2)


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
    mask = torch.full((n, n), float("-inf")).triu(1)[None, None]  # [1, 1, n, n]
    return module, q, k, v, mask


def _best(fn, reps: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="2048,4096,8192")
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    print(f"torch threads {torch.get_num_threads()}, window {args.window}, query block {QUERY_BLOCK}")
    print("| tokens | dense two-part s | ours s | speed-up | max abs diff |")
    print("|---:|---:|---:|---:|---:|")
    with torch.inference_mode():
        warm = (*_inputs(256, 64), HEAD_DIM**-0.5)
        dense_two_part(*warm), dpe_attention(*warm)  # first calls pay one-off setup
        for n in (int(x) for x in args.lengths.split(",")):
            inputs = (*_inputs(n, args.window), HEAD_DIM**-0.5)
            base_s, base = _best(partial(dense_two_part, *inputs), args.reps)
            ours_s, ours = _best(lambda inputs=inputs: dpe_attention(*inputs)[0], args.reps)
            diff = (ours - base).abs().max().item()
            print(f"| {n} | {base_s:.3f} | {ours_s:.3f} | {base_s / ours_s:.2f}× | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
