"""Chunked perplexity vs the naive ``model(labels=...)`` path: peak memory and time ratios.

    python benchmarks/eval_ppl.py [--lengths 1024,2048,4096,8192] [--reps 3] [--device cpu|cuda]

A tiny random Llama with a 32k vocabulary (so the LM head dominates, as in a real model at
long length) scores one row per length both ways. Peak memory: each (variant, length) runs
in a fresh subprocess so peaks do not leak between them. Peak memory is the growth over the resident
memory after a 256-token warm-up: on CPU from ``getrusage(RUSAGE_SELF).ru_maxrss`` (the kernel's
high-water mark, which sees torch's allocations), on CUDA from ``torch.cuda.max_memory_allocated``.
Time: best of ``--reps`` calls, naive and ours interleaved in one process. Target (issue 4): ours ≤ 1/3 of naive memory at 8k, time ≤ 1.1×.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from longctx.checkout import checkout_root

ROOT = checkout_root(purpose="benchmarks")


def _model(device: str, max_len: int):
    from longctx.train.models import init_model, model_config

    cfg = model_config(
        "llama",
        vocab_size=32_000,
        hidden_size=256,
        num_heads=4,
        num_layers=4,
        original_length=max_len,
        attn_implementation="sdpa",
    )
    return init_model(cfg, 0).eval().to(device)


def _score(variant: str, model, ids):
    import torch

    from longctx.eval.perplexity import perplexity

    if variant == "ours":
        return perplexity(model, [ids[0]])
    with torch.inference_mode():
        return float(torch.exp(model(ids, labels=ids).loss))


def _ids(length: int, device: str):
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(3, 32_000, (1, length), generator=g).to(device)  # [1, length]


def _current_bytes(device: str) -> int:
    import psutil
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    return psutil.Process().memory_info().rss


def _peak_bytes(device: str) -> int:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def child(variant: str, length: int, device: str) -> dict:
    """Peak memory growth of one variant at one length, in this (fresh) process."""
    import torch

    model = _model(device, length)
    ids = _ids(length, device)
    _score(variant, model, ids[:, :256])  # warm-up: kernels, allocator, lazy imports
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = _current_bytes(device)
    ppl = _score(variant, model, ids)
    return {"peak_mib": max(0, _peak_bytes(device) - base) / 2**20, "ppl": ppl}


def best_times(lengths: list[int], reps: int, device: str) -> dict[int, dict[str, float]]:
    """Best-of-``reps`` seconds per variant, naive and ours interleaved in one process so that
    load from other processes on a shared machine hits both alike."""
    import torch

    model = _model(device, max(lengths))
    out = {}
    for n in lengths:
        ids = _ids(n, device)
        _score("ours", model, ids[:, :256])
        times: dict[str, list[float]] = {"naive": [], "ours": []}
        for _ in range(reps):
            for variant in ("naive", "ours"):
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                _score(variant, model, ids)
                if device == "cuda":
                    torch.cuda.synchronize()
                times[variant].append(time.perf_counter() - t0)
        out[n] = {k: min(v) for k, v in times.items()}
    return out


def _run_child(variant: str, length: int, device: str) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--lengths", str(length), "--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="1024,2048,4096,8192")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--child", choices=["ours", "naive"], help=argparse.SUPPRESS)
    args = p.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    if args.child:
        print(json.dumps(child(args.child, lengths[0], args.device)))
        return
    # Memory children first: on Linux a child's ru_maxrss starts from its parent's high-water
    # mark (kept across fork + exec), so the parent must not have run a long row yet.
    peaks = {n: {v: _run_child(v, n, args.device) for v in ("naive", "ours")} for n in lengths}
    import torch

    torch.set_num_threads(min(os.cpu_count() or 1, 16))
    times = best_times(lengths, args.reps, args.device)
    print(
        f"tiny Llama (4 layers, 256 dims, vocab 32000, sdpa) on {args.device}; best of {args.reps} interleaved"
    )
    print(
        "| tokens | naive MiB | ours MiB | mem ours/naive | naive s | ours s | time ours/naive | ppl match |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for n in lengths:
        naive = peaks[n]["naive"] | {"seconds": times[n]["naive"]}
        ours = peaks[n]["ours"] | {"seconds": times[n]["ours"]}
        match = abs(ours["ppl"] / naive["ppl"] - 1) < 1e-4
        print(
            f"| {n} | {naive['peak_mib']:.0f} | {ours['peak_mib']:.0f} | "
            f"{ours['peak_mib'] / max(naive['peak_mib'], 1e-9):.2f} | {naive['seconds']:.3f} | "
            f"{ours['seconds']:.3f} | {ours['seconds'] / naive['seconds']:.2f} | {'yes' if match else 'NO'} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
