"""Shared test setup: offline hub, deterministic torch, tiny model builders (never from a hub)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def repro(tmp_path, monkeypatch):
    """``benchmarks/reproduce.py`` as a fresh module whose outputs and documents are under
    ``tmp_path`` (no test writes the committed docs/REPRODUCTION*.md)."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("reproduce", root / "benchmarks" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "OUT", tmp_path)
    monkeypatch.setattr(mod, "DOC", tmp_path / "REPRODUCTION.md")
    monkeypatch.setattr(mod, "DOC_32K", tmp_path / "REPRODUCTION_32K.md")
    return mod
