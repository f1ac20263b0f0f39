"""The memory planner against measured peaks: real micro-steps of small Llama models on CPU.

Each row builds a small model (vocab 32k, h 256–1024, 2–4 layers), runs one training micro-step
(forward + backward under gradient checkpointing, the loss the loop uses) or one no-grad forward
(what search and eval run), and prints the measured peak beside ``longctx.train.planner``'s
estimate for the same geometry, precision and loss:

    python benchmarks/planner_memory.py            # every row (~10 min on 2 busy cores)
    python benchmarks/planner_memory.py --rows 0 3 # some of them

How it measures: ``torch.profiler`` with ``profile_memory=True`` records every allocation and
free of c10's CPU allocator — inside kernels and the autograd engine too — with its size; their
running sum over the step, plus the tensors alive before it (weights, grads, AdamW states: a
short warm-up step allocates them, and grads stay allocated as under gradient accumulation),
is the live-tensor peak, what ``torch.cuda.max_memory_allocated`` reports on a GPU and what the
plan estimates. Not process RSS: glibc keeps freed small blocks, RSS counts the interpreter and
libraries, and a sampling thread misses a transient that lives for one kernel.

Precisions: ``fp32`` (``planner.FP32``), ``autocast`` (fp32 weights, bf16 autocast: DDP's,
``planner.AUTOCAST``) and ``bf16`` (the module in bf16: DeepSpeed's engine, ``planner.HALF``;
AdamW then keeps bf16 states). Losses: ``plain`` (transformers' loss, full logits) and
``tiled`` (``train.tiled_loss`` with a 2^22-logit slice budget so a 32k vocabulary takes several
slices, as a 128k row does with 2^28 on a GPU). Attention is SDPA (CPU flash kernel).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import torch

from longctx.train import planner

VOCAB = 32_000
SLICE = 1 << 22
"""The tiled loss's slice budget here (``LONGCTX_LOGITS_PER_SHARD``'s role)."""
PRECISIONS = {"fp32": planner.FP32, "autocast": planner.AUTOCAST, "bf16": planner.HALF}


@dataclass(frozen=True)
class Row:
    hidden: int
    layers: int
    tokens: int
    precision: str = "fp32"
    loss: str = "tiled"
    """plain / tiled (training), ppl / generate (inference: no grad)."""
    kv_heads: int | None = None
    arch: str = "llama"
    checkpointing: bool = True
    vocab: int = VOCAB

    @property
    def label(self) -> str:
        kv = f" kv{self.kv_heads}" if self.kv_heads else ""
        ckpt = "" if self.checkpointing or self.loss in ("ppl", "generate") else " no-ckpt"
        vocab = "" if self.vocab == VOCAB else f" V{self.vocab}"
        return f"{self.arch} h{self.hidden} L{self.layers}{kv}{vocab} t{self.tokens} {self.precision} {self.loss}{ckpt}"


ROWS = (
    Row(256, 2, 1024, loss="plain"),
    Row(512, 2, 2048, loss="plain"),
    Row(512, 4, 4096),
    Row(1024, 2, 4096),
    Row(1024, 4, 8192),
    Row(512, 2, 8192, kv_heads=2),
    Row(512, 2, 8192, arch="phi3"),
    Row(512, 2, 2048, checkpointing=False),
    Row(512, 2, 4096, precision="autocast", loss="plain"),
    Row(1024, 2, 4096, precision="autocast"),
    Row(1024, 2, 4096, precision="bf16"),
    Row(1024, 2, 8192, precision="bf16", kv_heads=4),
    Row(1024, 2, 8192, loss="ppl"),
    Row(1024, 2, 8192, precision="bf16", loss="ppl"),
    Row(1024, 2, 4096, precision="bf16", loss="generate"),
)


def config_for(row: Row):
    from transformers import AutoConfig

    heads = row.hidden // 64
    return AutoConfig.for_model(
        row.arch, hidden_size=row.hidden, intermediate_size=int(row.hidden * 2.6875) // 64 * 64,
        num_hidden_layers=row.layers, num_attention_heads=heads, num_key_value_heads=row.kv_heads or heads,
        vocab_size=row.vocab, tie_word_embeddings=False, max_position_embeddings=max(row.tokens, 4096),
        attn_implementation="sdpa", pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )  # fmt: skip


def model_for(row: Row) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_for(row))
    if row.precision == "bf16":
        model = model.to(torch.bfloat16)
    return model


def _live_bytes(*groups) -> int:
    seen, total = set(), 0
    for group in groups:
        for t in group:
            if torch.is_tensor(t) and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()
    return total


def profiled_peak(fn) -> int:
    """The largest running sum of allocations minus frees while ``fn()`` runs (bytes)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    current = peak = 0
    for _, n in events:
        current += n
        peak = max(peak, current)
    return peak


def _train_step(model, ids: torch.Tensor, row: Row) -> None:
    from longctx.train.tiled_loss import causal_lm_loss_sum

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=row.precision == "autocast"):
        if row.loss == "tiled":
            shards = max(1, -(-ids.numel() * row.vocab // SLICE))  # ceil: slices of <= SLICE logits
            total, n = causal_lm_loss_sum(
                model, {"input_ids": ids, "labels": ids, "use_cache": False}, shards
            )
            loss = total / n
        else:
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()


def measure(row: Row) -> dict:
    """Measured and planned peak (bytes) of one row; see the module docstring."""
    shape = planner.ModelShape.from_config(config_for(row))
    d = PRECISIONS[row.precision]
    model = model_for(row)
    ids = torch.randint(2, row.vocab, (1, row.tokens), generator=torch.Generator().manual_seed(row.tokens))
    start = time.perf_counter()
    if row.loss in ("ppl", "generate"):
        from longctx.eval.generation import greedy_generate
        from longctx.eval.perplexity import nll_per_sample

        model.eval()
        before = _live_bytes(model.parameters(), model.buffers())
        if row.loss == "ppl":
            peak = profiled_peak(lambda: nll_per_sample(model, [ids[0]]))
        else:
            peak = profiled_peak(
                lambda: greedy_generate(model, ids[0].tolist(), max_new_tokens=2, pad_token_id=0)
            )
        plan = planner.inference_memory(shape, row.tokens, d.compute, generate=row.loss == "generate")
        planned_states, planned = plan["weights"], plan["total"]
        phase = "cache" if plan["cache"] else "forward"
    else:
        if row.checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        _train_step(model, ids[:, :64], row)  # warm-up: grads and AdamW states exist from here
        opt.step()
        opt.zero_grad(set_to_none=False)
        state = [s for st in opt.state.values() for s in st.values() if torch.is_tensor(s) and s.dim()]
        grads = [p.grad for p in model.parameters()]
        before = _live_bytes(model.parameters(), model.buffers(), grads, state)
        peak = profiled_peak(lambda: _train_step(model, ids, row))
        per_param = {"fp32": 16, "autocast": 16, "bf16": 8}[row.precision]  # torch AdamW, one process
        planned_states = per_param * shape.params
        plan = planner.training_memory(
            shape, row.tokens, d, checkpointing=row.checkpointing, loss=row.loss, states=planned_states,
            weights_cache=2 * shape.params if d.autocast else 0, logits_per_shard=SLICE,
        )  # fmt: skip
        planned = plan["total"]
        phase = "layer" if plan["layer"] >= plan["loss"] else "loss"
    seconds = time.perf_counter() - start
    return {"row": row.label, "states": before, "peak": before + peak, "dynamic": peak,
            "planned": planned, "planned_dynamic": planned - planned_states, "phase": phase, "seconds": seconds}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="*", help="row indices (default: all)")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = [ROWS[i] for i in args.rows] if args.rows else list(ROWS)
    mib = 2**20
    print(f"{'#':>2} {'row':<40} {'states':>8} {'measured':>9} {'planned':>9} {'ratio':>6} "
          f"{'step meas.':>10} {'step plan':>9} {'ratio':>6} {'peak at':>8} {'s':>5}")  # fmt: skip
    worst = 0.0
    for row in rows:
        r = measure(row)
        ratio, dyn = r["planned"] / r["peak"], r["planned_dynamic"] / r["dynamic"]
        worst = max(worst, abs(ratio - 1))
        print(
            f"{ROWS.index(row):>2} {r['row']:<40} {r['states'] / mib:>7.0f}M {r['peak'] / mib:>8.0f}M "
            f"{r['planned'] / mib:>8.0f}M {ratio:>6.2f} {r['dynamic'] / mib:>9.0f}M {r['planned_dynamic'] / mib:>8.0f}M "
            f"{dyn:>6.2f} {r['phase']:>8} {r['seconds']:>5.0f}",
            flush=True,
        )
    print(f"largest |planned / measured − 1| of the totals: {worst:.1%} (target ≤ 25 %)")
    return 0 if worst <= 0.25 else 1


if __name__ == "__main__":
    sys.exit(main())
