"""A tiny recipe on a small local corpus: fast enough to run the real CLI in tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from data.corpus import load_demo_corpus


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
