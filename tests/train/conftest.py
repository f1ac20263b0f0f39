"""A tiny recipe on a small local corpus: fast enough to run the real CLI in tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from longctx.data.corpus import load_demo_corpus

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_cli(
    recipe: Path, *extra: str, check: bool = True, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``python train/run.py recipe extra...`` as a user runs it; asserts success unless ``check=False``."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "train" / "run.py"), str(recipe), *extra],
        env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def start_cli(recipe: Path, *extra: str) -> subprocess.Popen:
    """The CLI in its own process group (so a kill takes its children too), output discarded."""
    return subprocess.Popen(
        [sys.executable, str(REPO / "train" / "run.py"), str(recipe), *extra],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def kill_when(proc: subprocess.Popen, marker: Path | str, timeout: float = 300) -> None:
    """SIGKILL ``proc``'s group as soon as ``marker`` exists (a path, or a glob pattern such as
    ``.../checkpoints/step-*/COMPLETE``: a checkpoint may be pruned before a poll sees it), or when
    ``timeout`` passes. Fails the test if the run ended on its own first: nothing was interrupted."""
    import contextlib
    import glob
    import signal
    import time

    deadline = time.time() + timeout
    while not glob.glob(str(marker)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):  # it may have ended on its own
        os.killpg(proc.pid, signal.SIGKILL)
    code = proc.wait()
    assert code != 0, f"the run finished (exit {code}) before {marker} was seen: nothing was interrupted"


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


@pytest.fixture(scope="session")
def longrope_model(tmp_path_factory) -> Path:
    """A tiny Llama (L = 64) saved with a stock ``longrope`` config whose long factors differ from
    the short ones, plus the demo tokenizer: a recipe's ``model.path`` for rescaled-row training."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from longctx.data.tokenizer import train_demo_tokenizer
    from longctx.rope import RopeSpec, apply_rope, save_extended

    root = tmp_path_factory.mktemp("longrope")
    tok = train_demo_tokenizer(root / "tokenizer", vocab_size=512)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
        num_hidden_layers=2, head_dim=16, max_position_embeddings=64, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    spec = RopeSpec("longrope", 10_000.0, 16, 64, 128, long_factor=tuple(1.0 + 2.0 * i for i in range(8)))
    return save_extended(apply_rope(model, spec), spec, root / "model", tokenizer=tok)


def model_recipe(path: Path, model_dir: Path, corpus: Path, out: Path, stages: list[dict], **top) -> Path:
    """A recipe that fine-tunes the saved ``model_dir`` (its own tokenizer) on ``corpus``."""
    recipe = {
        "name": "test", "output_dir": str(out), "seed": 0,
        "model": {"path": str(model_dir), "attention": "sdpa"}, "tokenizer": {"path": str(model_dir)},
        "data": {"sources": [{"kind": "local", "path": str(corpus)}], "cache_dir": str(out.parent / "cache")},
        **top, "stages": stages,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def free_port() -> int:
    """A TCP port nobody listens on (launches of concurrent test runs must not collide on 29500)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    config: str, recipe: Path, env: dict | None = None, processes: int = 2
) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file accelerate_configs/<config> --num_processes N train/run.py recipe``."""
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "accelerate_configs" / config),
        "--num_processes", str(processes), "--mixed_precision", "no", "--main_process_port", str(free_port()),
        str(REPO / "train" / "run.py"), str(recipe),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
