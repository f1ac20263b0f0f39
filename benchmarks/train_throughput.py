"""Training throughput and peak memory: our ``train.loop.train_loop`` vs a plain transformers step.

    python benchmarks/train_throughput.py [--lengths 512,1024,2048,4096] [--warmup 2] [--steps 5]
        [--variants single,packed4] [--repeats 1] [--threads 1] [--device cpu|cuda]

Same model, same data, same optimizer settings on both sides:

- model: a tiny random Llama (4 layers, hidden 256, 8 heads, 4 KV heads, vocab 8192, untied
  head), SDPA attention, float32, built from the same seed;
- data: rows of N random tokens built once with ``data.packing`` (one micro-batch = one row).
  ``single``: one document per row, so both sides take SDPA's causal fast path (no mask tensor);
  ``packed4``: four documents of N/4 tokens per row. Ours keeps them apart as the runner does
  on SDPA (:mod:`train.attention`: the batch flattened with ``cu_seq_lens``, one causal SDPA
  call per group of equal-length documents, positions restarting per document, no mask
  tensor); the plain step does what a plain loop does with packed rows — causal attention
  across the whole row, documents seeing each other — so the ``packed4`` ratio is the price of
  keeping documents apart (plus the loop's own cost, which ``single`` isolates);
- plain: ``loss = model(input_ids=..., labels=...).loss; loss.backward(); opt.step();
  opt.zero_grad()`` with ``torch.optim.AdamW`` (lr 1e-4, betas 0.9/0.95, no weight decay);
- ours: the real ``train_loop`` under ``train.run.make_accelerator()``, with our
  ``ScaledRotaryEmbedding`` installed by ``rope.apply_rope`` (the model's own default RoPE, L = N,
  rows of kind "original"), and everything the loop does per step: ``set_factor_set``,
  ``model_inputs`` (flattened varlen batch), the finite-loss check, ``loss.item()``, the
  cross-process loss reduce, gradient clipping, the LR schedule, the progress bar, logging.

Timing without touching the loop, both loops' steps interleaved in one process so that load from
other processes on a shared machine hits both alike: ours runs ``train_loop`` on its batch
stream, and each time it fetches batch k the stream first runs plain step k on batch k (a
second model from the same seed, its own AdamW), timed on its own, then hands batch k to
ours. ``train_loop`` fetches batch k+1 only once its step k is complete (optimizer step, schedule,
logging included), so ours' step k = (next fetch) − (end of plain step k). CUDA is synchronised
at each stamp. A run does ``warmup + steps + 1`` steps; reported: the median of the ``steps`` steps
after the warm-up (``--repeats``: the fastest of several runs). The extra last step is never
timed: ``train_loop`` always logs and saves a checkpoint after its final step, which belongs to
run length, not throughput (``checkpoint_every`` is set beyond the run, so no other step saves).

Peak memory: each (variant, length, loop) runs alone (1 warm-up + 1 measured step) in a fresh
subprocess, all launched before the parent touches torch (on Linux a child's ``ru_maxrss`` starts
from its parent's high-water mark). Peak = the process's high-water mark read at the fetch after
the measured step (so before the final checkpoint) minus its resident memory after importing both
loops' modules and building model and data: optimizer state, gradients, the steps' activations
and masks. CPU:
``getrusage(RUSAGE_SELF).ru_maxrss``; CUDA: ``torch.cuda.max_memory_allocated`` minus
``memory_allocated``. "MiB per 1k tokens" is the increment over the previous length divided by the
added tokens: constant when memory grows linearly with length, growing when it grows faster.
``first loss match``: on ``single`` rows both sides must compute the same first loss (same model,
same data).

CPU threads: on a machine whose cores are busy with other jobs, torch's default intra-op threads
spin against each other (measured here: 8.3 s per 512-token step with 2 threads vs 0.7 s with 1);
``--threads 1`` gives both loops the same single core.

Targets (acceptance): ours ≥ 0.95× plain tokens/s; memory growing linearly with length.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from longctx.checkout import checkout_root

ROOT = checkout_root(purpose="benchmarks")

VOCAB = 8192
LR, BETAS = 1e-4, (0.9, 0.95)
DOCS_PER_ROW = {"single": 1, "packed4": 4}


def _model(device: str, length: int):
    from longctx.train.models import init_model, model_config

    cfg = model_config(
        "llama",
        vocab_size=VOCAB,
        hidden_size=256,
        num_heads=8,
        num_layers=4,
        original_length=length,
        attn_implementation="sdpa",
    )
    return init_model(cfg, 0).eval().to(device)


def _batches(variant: str, length: int, count: int) -> list[dict]:
    """``count`` one-row micro-batches of ``length`` tokens, ``DOCS_PER_ROW[variant]`` documents each."""
    import torch

    from longctx.data.packing import collate_rows, pack_documents

    per_row = DOCS_PER_ROW[variant]
    g = torch.Generator().manual_seed(0)
    docs = [
        torch.randint(3, VOCAB, (length // per_row,), generator=g).tolist() for _ in range(count * per_row)
    ]
    rows = list(pack_documents(docs, row_length=length, pad_id=0))
    assert len(rows) == count and all(len(r.seq_lens) == per_row for r in rows)
    return [collate_rows([row]) | {"row_kind": "original", "window": 0} for row in rows]


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _current_bytes(device: str) -> int:
    import psutil
    import torch

    _sync(device)
    if device == "cuda":
        return torch.cuda.memory_allocated()
    return psutil.Process().memory_info().rss


def _peak_bytes(device: str) -> int:
    import torch

    _sync(device)
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class Probe:
    """The batch stream both loops read; stamps the clock (and the memory peak) at each fetch."""

    def __init__(self, batches: list[dict], warmup: int, steps: int, device: str) -> None:
        self.batches, self.warmup, self.steps, self.device = batches, warmup, steps, device
        self.stamps: list[float] = []
        self.peak: int | None = None

    def __call__(self, start: int = 0):
        for index in range(start, len(self.batches)):
            _sync(self.device)
            self.stamps.append(time.perf_counter())
            if index == self.warmup + self.steps:  # the timed steps are done; the last one is not timed
                self.peak = _peak_bytes(self.device)
            yield self.batches[index]

    def step_seconds(self) -> list[float]:
        s = self.stamps
        return [s[k + 1] - s[k] for k in range(self.warmup, self.warmup + self.steps)]


def plain_step(model, device: str):
    """The textbook step, as a function of one batch; returns the loss (no host sync)."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=0.0)
    model.train()

    def step(batch: dict):
        loss = model(input_ids=batch["input_ids"].to(device), labels=batch["labels"].to(device)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.detach()

    return step


def run_plain(model, probe: Probe, device: str) -> float:
    """The plain loop over the probe's batches; returns the first loss."""
    step = plain_step(model, device)
    losses = [step(batch) for batch in probe(0)]
    return float(losses[0])


def run_ours(model, probe: Probe, length: int) -> float:
    """The real training loop, unchanged; returns the first loss."""
    from longctx.rope import apply_rope, from_hf_config
    from longctx.train.attention import segment_attention
    from longctx.train.loop import train_loop
    from longctx.train.run import make_accelerator
    from longctx.train.stages.pretrain import Settings as PretrainStage

    apply_rope(model, from_hf_config(model.config))
    total = len(probe.batches)
    cfg = PretrainStage(
        kind="pretrain",
        name="bench",
        steps=total,
        lr=LR,
        betas=BETAS,
        schedule="constant",
        checkpoint_every=total + 1,  # only the final, untimed step saves
        log_every=total + 1,
        windows=[{"length": length, "share": 1.0, "rope": "original"}],
    )
    with tempfile.TemporaryDirectory() as tmp:
        stage_dir = Path(tmp) / "bench"
        stage_dir.mkdir()  # the runner creates it before the loop runs
        # what train.fit does on SDPA: one causal call per document, no mask tensor
        with segment_attention(model):
            result = train_loop(model, probe, cfg, stage_dir, make_accelerator(), varlen=True)
    return result.losses[0]


class PairedProbe(Probe):
    """Ours' batch stream that also runs the plain step on each batch, off ours' clock.

    At fetch k: stamp (ours' step k-1 is done), run plain step k on its own model, stamp,
    hand batch k to ours. Ours' step k = next fetch's first stamp − this fetch's second one.
    """

    def __init__(self, batches: list[dict], warmup: int, steps: int, device: str, step) -> None:
        super().__init__(batches, warmup, steps, device)
        self.plain_step = step
        self.resumed: list[float] = []
        self.plain: list[float] = []

    def __call__(self, start: int = 0):
        for index in range(start, len(self.batches)):
            _sync(self.device)
            self.stamps.append(time.perf_counter())
            self.plain_step(self.batches[index])
            _sync(self.device)
            self.resumed.append(time.perf_counter())
            self.plain.append(self.resumed[-1] - self.stamps[-1])
            yield self.batches[index]

    def step_seconds(self) -> list[float]:
        return [self.stamps[k + 1] - self.resumed[k] for k in range(self.warmup, self.warmup + self.steps)]

    def plain_seconds(self) -> list[float]:
        return self.plain[self.warmup : self.warmup + self.steps]


def interleaved_times(variant: str, length: int, warmup: int, steps: int, device: str) -> dict:
    """Median seconds per step of ours and plain, their steps alternating in this process."""
    probe = PairedProbe(
        _batches(variant, length, warmup + steps + 1),
        warmup,
        steps,
        device,
        plain_step(_model(device, length), device),
    )
    run_ours(_model(device, length), probe, length)
    ours, plain = probe.step_seconds(), probe.plain_seconds()
    return {"ours": statistics.median(ours), "plain": statistics.median(plain), "raw": [ours, plain]}


def child(loop: str, variant: str, length: int, warmup: int, steps: int, device: str, threads: int) -> dict:
    """Peak memory of one (loop, variant, length) run alone in this fresh process."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    # both loops' imports belong to the baseline, not to the peak
    import accelerate  # noqa: F401

    import longctx.train.loop
    import longctx.train.run  # noqa: F401

    model = _model(device, length)
    probe = Probe(_batches(variant, length, warmup + steps + 1), warmup, steps, device)
    base = _current_bytes(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first_loss = run_ours(model, probe, length) if loop == "ours" else run_plain(model, probe, device)
    return {"peak_mib": max(0, probe.peak - base) / 2**20, "first_loss": first_loss}


def _run_child(loop: str, variant: str, length: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", loop, "--variants", variant, "--lengths", str(length)]
    cmd += ["--warmup", "1", "--steps", "1", "--device", args.device, "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(f"{loop} {variant} {length}: child failed\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="512,1024,2048,4096")
    p.add_argument("--variants", default="single,packed4")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps per run")
    p.add_argument("--repeats", type=int, default=1, help="timing runs per cell; the fastest pair is kept")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads per run (0: torch's default; 1 on a loaded box)",
    )
    p.add_argument("--child", choices=["ours", "plain"], help=argparse.SUPPRESS)
    args = p.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    variants = args.variants.split(",")
    if args.child:
        print(
            json.dumps(
                child(args.child, variants[0], lengths[0], args.warmup, args.steps, args.device, args.threads)
            )
        )
        return
    # Memory runs first, in fresh children, before this process imports torch (see the docstring).
    results: dict = {}
    for variant in variants:
        for n in lengths:
            results[variant, n] = {loop: _run_child(loop, variant, n, args) for loop in ("ours", "plain")}
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    for variant in variants:
        for n in lengths:
            best = None
            for _ in range(args.repeats):
                t = interleaved_times(variant, n, args.warmup, args.steps, args.device)
                print(f"# {variant} {n}: ours, plain s/step {t['raw']}", file=sys.stderr, flush=True)
                best = t if best is None or t["ours"] + t["plain"] < best["ours"] + best["plain"] else best
            for loop in ("ours", "plain"):
                results[variant, n][loop]["step_s"] = best[loop]
    print(
        f"tiny Llama (4 layers, 256 dims, 8 heads, vocab {VOCAB}, sdpa, float32) on {args.device}; "
        f"threads {args.threads or 'default'}; batch 1 row; median of {args.steps} interleaved steps "
        f"after {args.warmup} warm-up, best of {args.repeats}"
    )
    print(
        "| tokens | rows | ours tok/s | plain tok/s | speed ours/plain | ours MiB | plain MiB "
        "| mem ours/plain | ours MiB per 1k tok | plain MiB per 1k tok | first loss match |"
    )
    print("|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for variant in variants:
        previous = None
        for n in lengths:
            o, q = results[variant, n]["ours"], results[variant, n]["plain"]
            slope = {}
            for k, rec in (("ours", o), ("plain", q)):
                if previous is None:
                    slope[k] = "–"
                else:
                    added = rec["peak_mib"] - previous[1][k]["peak_mib"]
                    slope[k] = f"{added / (n - previous[0]) * 1024:.0f}"
            match = "yes" if abs(o["first_loss"] - q["first_loss"]) < 1e-4 else "NO"
            if variant != "single":
                match = "n/a"
            print(
                f"| {n} | {variant} | {n / o['step_s']:.0f} | {n / q['step_s']:.0f} | "
                f"{q['step_s'] / o['step_s']:.2f} | {o['peak_mib']:.0f} | {q['peak_mib']:.0f} | "
                f"{o['peak_mib'] / max(q['peak_mib'], 1e-9):.2f} | {slope['ours']} | {slope['plain']} | {match} |",
                flush=True,
            )
            previous = (n, results[variant, n])


if __name__ == "__main__":
    main()
