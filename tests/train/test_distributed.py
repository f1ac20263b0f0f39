"""2 gloo processes under DDP, DeepSpeed ZeRO-2 and ZeRO-3 give the loss curve and the weights
of 1 process with the same global batches; ZeRO-3 resumes from its sharded checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import write_recipe

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
LAUNCH = {
    # DDP on CPU needs ACCELERATE_USE_CPU=1; DeepSpeed must NOT have it (it would drop DeepSpeed)
    "ddp": ("cpu_ddp.yaml", {"ACCELERATE_USE_CPU": "1"}),
    "zero2": ("deepspeed_zero2.yaml", {}),
    "zero3": ("deepspeed_zero3.yaml", {}),
}


def _stages(accum: int) -> list[dict]:
    return [
        {
            "name": "base", "kind": "pretrain", "steps": 6, "micro_batch_size": 2, "grad_accum": accum,
            "lr": 1e-2, "checkpoint_every": 3, "keep_checkpoints": 2, "log_every": 1,
            "windows": [{"length": 64, "share": 1.0, "rope": "original"}],
        }
    ]  # fmt: skip


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "base" / "metrics.jsonl").read_text().splitlines()]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "base" / "model" / "model.safetensors")


def _launch(kind: str, recipe: Path) -> subprocess.CompletedProcess:
    config, extra = LAUNCH[kind]
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "accelerate_configs" / config),
        "--num_processes", "2", "--mixed_precision", "no", str(REPO / "train" / "run.py"), str(recipe),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env={**ENV, **extra}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, tiny_corpus) -> Path:
    root = tmp_path_factory.mktemp("one")
    recipe = write_recipe(root / "one.yaml", tiny_corpus, root / "out", stages=_stages(2))
    cmd = [sys.executable, str(REPO / "train" / "run.py"), str(recipe)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "out"


@pytest.mark.parametrize("kind", list(LAUNCH))
def test_two_processes_match_one_process(kind, single_process, tmp_path, tiny_corpus):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_corpus, tmp_path / "out", stages=_stages(1))
    proc = _launch(kind, recipe)
    if kind != "ddp":
        ckpt = tmp_path / "out" / "base" / "checkpoints" / "step-6"
        assert (ckpt / "pytorch_model").is_dir(), "a DeepSpeed engine checkpoint, i.e. DeepSpeed really ran"
    assert _losses(tmp_path / "out") == pytest.approx(_losses(single_process), rel=1e-5, abs=1e-6)
    ours, ref = _weights(tmp_path / "out"), _weights(single_process)
    for key, value in ref.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=1e-5, msg=key)
    tokens = json.loads((tmp_path / "out" / "base" / "metrics.jsonl").read_text().splitlines()[0])["tokens"]
    assert tokens == 2 * 2 * 64, f"each rank trained on its own micro-batch ({proc.args[-1]})"


def test_zero3_resumes_from_its_sharded_checkpoint(single_process, tmp_path, tiny_corpus):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_corpus, tmp_path / "out", stages=_stages(1))
    _launch("zero3", recipe)
    stage = tmp_path / "out" / "base"
    for name in ("COMPLETE", "result.json"):
        (stage / name).unlink()
    shutil.rmtree(stage / "checkpoints" / "step-6")
    shutil.rmtree(stage / "model")
    _launch("zero3", recipe)
    assert json.loads((stage / "result.json").read_text())["resumed_from_step"] == 3
    ours, ref = _weights(tmp_path / "out"), _weights(single_process)
    for key, value in ref.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=1e-5, msg=key)
