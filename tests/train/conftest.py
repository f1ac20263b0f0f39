"""A tiny recipe on a small local corpus: fast enough to run the real CLI in tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data.corpus import load_demo_corpus

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_cli(recipe: Path, *extra: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python train/run.py recipe extra...`` as a user runs it; asserts success unless ``check=False``."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "train" / "run.py"), str(recipe), *extra],
        env=ENV, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """Eight KJV books as local .txt files (long documents; the runner cuts short pieces)."""
    root = tmp_path_factory.mktemp("corpus")
    for i, text in enumerate(load_demo_corpus("kjv")[:8]):
        (root / f"book{i:02d}.txt").write_text(text[:20_000])
    return root


def write_recipe(path: Path, corpus: Path, out: Path, **changes) -> Path:
    recipe = {
        "name": "test",
        "output_dir": str(out),
        "seed": 0,
        "model": {
            "init": {
                "hidden_size": 32,
                "num_layers": 2,
                "num_heads": 2,
                "num_kv_heads": 1,
                "intermediate_size": 64,
                "original_length": 64,
            }
        },
        "tokenizer": {"demo_vocab_size": 512},
        "data": {"sources": [{"kind": "local", "path": str(corpus)}], "cache_dir": str(out.parent / "cache")},
        "stages": [
            {
                "name": "base",
                "kind": "pretrain",
                "steps": 12,
                "micro_batch_size": 2,
                "lr": 1e-2,
                "warmup_steps": 2,
                "checkpoint_every": 4,
                "keep_checkpoints": 2,
                "log_every": 1,
                "windows": [{"length": 64, "share": 1.0, "rope": "original"}],
            },
            {"name": "export", "kind": "export"},
        ],
    }
    recipe.update(changes)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path
