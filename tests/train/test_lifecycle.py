"""Each stage owns its lifecycle: a second training stage resumes exactly (1 and 2 processes),
a checkpoint of another stage is refused, bf16 trains fp32 master weights, a busy output_dir is
refused, too few documents for a search is one line before any model loads, inference stages
load onto the accelerator's device in the compute dtype."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from .conftest import ENV, REPO, kill_when, launch, run_cli, start_cli, write_recipe

BASE = {
    "name": "base", "kind": "pretrain", "steps": 8, "micro_batch_size": 2, "lr": 1e-2, "warmup_steps": 2,
    "checkpoint_every": 4, "keep_checkpoints": 2, "log_every": 1,
    "windows": [{"length": 64, "share": 1.0, "rope": "original"}],
}  # fmt: skip


def _ft(steps: int, lr: float = 1e-2) -> dict:
    return {**BASE, "name": "ft", "kind": "finetune", "steps": steps, "lr": lr}


def _weights(stage_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(stage_dir / "model" / "model.safetensors")


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_sigkill_in_second_training_stage_resumes_to_identical_weights(tmp_path, tiny_corpus):
    """Before: one Accelerator saved every model it ever prepared, so a fresh process restored the
    finished base stage's weights (index 0) into the fine-tune it resumed (off by up to 3e-2)."""
    stages = [BASE, _ft(200)]  # long enough that the kill lands mid-stage on a fast machine too
    full = write_recipe(tmp_path / "full.yaml", tiny_corpus, tmp_path / "full", stages=stages)
    run_cli(full, timeout=400)
    killed = write_recipe(tmp_path / "killed.yaml", tiny_corpus, tmp_path / "killed", stages=stages)
    kill_when(start_cli(killed), tmp_path / "killed" / "ft" / "checkpoints" / "step-*" / "COMPLETE")
    assert not (tmp_path / "killed" / "ft" / "COMPLETE").exists()
    ckpt = sorted((tmp_path / "killed" / "ft" / "checkpoints").glob("step-*/trainer_state.json"))[-1]
    owner = json.loads(ckpt.read_text()).get("stage")
    others = sorted(p.name for p in ckpt.parent.glob("*_1*"))  # a second model / optimizer
    run_cli(killed, timeout=400)
    result = json.loads((tmp_path / "killed" / "ft" / "result.json").read_text())
    assert result["resumed_from_step"] in range(4, 200, 4)
    _assert_same(_weights(tmp_path / "full" / "ft"), _weights(tmp_path / "killed" / "ft"))
    assert owner == "ft", "a checkpoint names its stage"
    assert not others, f"a checkpoint holds its own stage's model and optimizer only, found {others}"


def test_checkpoint_of_another_stage_is_refused_with_one_line(tmp_path, tiny_corpus):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_corpus, out, stages=[BASE, _ft(4)])
    run_cli(recipe, "stages.ft.steps=1")  # anything: we only need base's checkpoints
    shutil.rmtree(out / "ft")
    shutil.copytree(out / "base" / "checkpoints", out / "ft" / "checkpoints")
    proc = run_cli(recipe, "stages.ft.steps=1", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert "holds the state of stage 'base', not 'ft'" in lines[-1] and "Traceback" not in proc.stderr


def test_two_process_resume_of_second_stage_matches_uninterrupted(tmp_path, tiny_corpus):
    """2 gloo processes (DDP): the fine-tune cut after its step-4 checkpoint resumes to the weights
    of the uninterrupted run."""
    stages = [{**BASE, "steps": 4}, _ft(8)]
    recipe = write_recipe(tmp_path / "r.yaml", tiny_corpus, tmp_path / "full", stages=stages)
    launch("cpu_ddp.yaml", recipe, {"ACCELERATE_USE_CPU": "1"})
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "full", cut)
    for name in ("COMPLETE", "result.json", "model", "spec.json", "checkpoints/step-8"):
        path = cut / "ft" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (cut / "export").exists() and shutil.rmtree(cut / "export")
    recipe = write_recipe(tmp_path / "cut.yaml", tiny_corpus, cut, stages=stages)
    launch("cpu_ddp.yaml", recipe, {"ACCELERATE_USE_CPU": "1"})
    assert json.loads((cut / "ft" / "result.json").read_text())["resumed_from_step"] == 4
    _assert_same(_weights(tmp_path / "full" / "ft"), _weights(cut / "ft"))


def test_bf16_trains_fp32_master_weights_and_tracks_fp32(tmp_path, tiny_corpus):
    """A 10-step fine-tune at lr 2e-5 under model.dtype bfloat16 moves >= 99 % of the trained
    weights (in-place bf16 AdamW moved ~22 %) and its losses track the fp32 run."""
    stages = [BASE, {**_ft(10, lr=2e-5), "warmup_steps": 0, "schedule": "constant"}]
    runs = {}
    for dtype in ("bfloat16", "float32"):
        out = tmp_path / dtype
        recipe = write_recipe(tmp_path / f"{dtype}.yaml", tiny_corpus, out, stages=stages)
        run_cli(recipe, f"model.dtype={dtype}", timeout=400)
        runs[dtype] = out
    out = runs["bfloat16"]
    before, after = _weights(out / "base"), _weights(out / "ft")
    moved = sum(int((after[k].float() != before[k].float()).sum()) for k in after)
    total = sum(t.numel() for t in after.values())
    assert moved / total >= 0.99, f"only {moved / total:.1%} of the weights moved"
    assert all(t.dtype == torch.float32 for t in after.values()), "master weights are saved in fp32"
    result = json.loads((out / "ft" / "result.json").read_text())
    assert result["precision"].startswith("bfloat16 compute, float32 master")

    def losses(o):
        return [json.loads(x)["loss"] for x in (o / "ft" / "metrics.jsonl").read_text().splitlines()]

    bf16, fp32 = losses(out), losses(runs["float32"])
    assert len(bf16) == len(fp32) == 10
    for a, b in zip(bf16, fp32):
        assert abs(a - b) <= 0.02 * b, (bf16, fp32)  # bf16 has 8 mantissa bits: ~0.4 % per op


def test_busy_output_dir_is_refused_with_the_holder(tmp_path, tiny_corpus):
    # long enough to still hold the lock while a second interpreter starts (it is killed below)
    recipe = write_recipe(
        tmp_path / "r.yaml", tiny_corpus, tmp_path / "out", stages=[{**BASE, "steps": 100_000}]
    )
    first = start_cli(recipe)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "out" / ".lock").exists() and time.time() < deadline:
            time.sleep(0.05)
        second = run_cli(recipe, check=False)
        assert second.returncode == 2
        line = second.stderr.strip().splitlines()[-1]
        assert f"pid {first.pid}" in line and "output_dir" in line, second.stderr[-1000:]
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # the killed run's lock is taken over: the same command runs (and resumes) now
    run_cli(recipe, "stages.base.steps=4")


def test_too_few_documents_for_a_search_is_one_line_before_any_model_loads(tmp_path, tiny_corpus):
    search = {"name": "s", "kind": "search", "algorithm": "dcis", "target_length": 512, "num_samples": 99,
              "objective": "ppl"}  # fmt: skip
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_corpus, out, stages=[BASE, search])
    proc = run_cli(recipe, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert "stages.s.num_samples" in line and "needs 99 documents" in line
    assert not (out / "base" / "checkpoints").exists(), "the base stage trained before the error"


def test_inference_stages_load_on_the_accelerator_device_in_compute_dtype(tmp_path, tiny_corpus):
    """RunContext.load_model: inference → the accelerator's device, compute dtype; training → fp32."""
    from types import SimpleNamespace

    from longctx.train.context import RunContext
    from longctx.train.load import load_recipe

    recipe_file = write_recipe(tmp_path / "r.yaml", tiny_corpus, tmp_path / "out", stages=[BASE])
    recipe = load_recipe(recipe_file, ["model.dtype=bfloat16"])
    accelerator = SimpleNamespace(
        device=torch.device("meta"), is_main_process=True, main_process_first=_nullcm, state=SimpleNamespace()
    )
    ctx = RunContext(recipe, recipe_file, accelerator)
    model = ctx.load_model(recipe.stages[0])
    param = next(model.parameters())
    assert param.device.type == "meta" and param.dtype == torch.bfloat16 and not model.training
    trained = ctx.load_model(recipe.stages[0], training=True)
    param = next(trained.parameters())
    assert param.device.type == "cpu" and param.dtype == torch.float32


def _nullcm():
    from contextlib import nullcontext

    return nullcontext()


def test_validation_imports_no_execution_code():
    code = (
        "import sys, glob\n"
        "from longctx.train.load import load_recipe\n"
        "for f in sorted(glob.glob('recipes/**/*.yaml', recursive=True)):\n"
        "    load_recipe(f, check_files=False)\n"
        "bad = [m for m in ('accelerate', 'deepspeed', 'peft') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
