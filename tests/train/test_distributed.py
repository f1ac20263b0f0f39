"""2-process gloo DDP gives the loss curve of 1 process with the same global batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import write_recipe

REPO = Path(__file__).resolve().parents[2]


def _metrics(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "base" / "metrics.jsonl").read_text().splitlines()]


def test_ddp_two_processes_matches_one_process_with_accumulation(tmp_path, tiny_corpus):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    stages = lambda accum: [  # noqa: E731
        {
            "name": "base", "kind": "pretrain", "steps": 6, "micro_batch_size": 2, "grad_accum": accum,
            "lr": 1e-2, "checkpoint_every": 6, "log_every": 1,
            "windows": [{"length": 64, "share": 1.0, "rope": "original"}],
        }
    ]  # fmt: skip
    one = write_recipe(tmp_path / "one.yaml", tiny_corpus, tmp_path / "one", stages=stages(2))
    two = write_recipe(tmp_path / "two.yaml", tiny_corpus, tmp_path / "two", stages=stages(1))
    run = [sys.executable, str(REPO / "train" / "run.py")]
    proc = subprocess.run([*run, str(one)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "accelerate_configs" / "cpu_ddp.yaml"),
    ]
    proc = subprocess.run(
        [*launch, str(REPO / "train" / "run.py"), str(two)],
        env={**env, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _metrics(tmp_path / "two") == pytest.approx(_metrics(tmp_path / "one"), rel=1e-4, abs=1e-5)
    tokens = [
        json.loads(line)["tokens"]
        for line in (tmp_path / "two" / "base" / "metrics.jsonl").read_text().splitlines()
    ]
    assert tokens[0] == 2 * 2 * 64, "each rank trained on its own micro-batch"
