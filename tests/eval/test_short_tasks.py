"""Short-task retention through lm-evaluation-harness on an in-memory model, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from longctx.eval.short_tasks import local_task_config, short_task_scores
from tests.tiny import tiny_config, tiny_model

FIXTURES = Path(__file__).parent / "fixtures"
TASK = FIXTURES / "tiny_mc.yaml"


def test_local_task_config_resolves_data_files():
    cfg = local_task_config(TASK)
    assert cfg["task"] == "longctx_tiny_mc"
    assert Path(cfg["dataset_kwargs"]["data_files"]["test"]) == (FIXTURES / "tiny_mc.jsonl").resolve()
    with pytest.raises(FileNotFoundError, match="no such task YAML"):
        local_task_config(FIXTURES / "missing.yaml")


def _manual_accuracy(model, tok, docs) -> float:
    """argmax over choices of Σ log p(" choice" | question), as lm-eval's ``acc``."""
    right = 0
    for doc in docs:
        ctx = tok.encode(doc["question"], add_special_tokens=False)
        lls = []
        for choice in doc["choices"]:
            cont = tok.encode(" " + choice, add_special_tokens=False)
            ids = torch.tensor([ctx + cont])
            with torch.inference_mode():
                logp = model(ids).logits[0, :-1].log_softmax(-1)  # [seq-1, vocab]
            lls.append(sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
        right += int(max(range(len(lls)), key=lls.__getitem__) == doc["label"])
    return right / len(docs)


def test_short_task_scores_in_memory_model(tokenizer):
    pytest.importorskip("lm_eval")
    model = tiny_model(tiny_config("llama", vocab_size=128, max_position_embeddings=128), seed=3)
    res = short_task_scores(model, tokenizer, [{"task": str(TASK), "num_fewshot": 0}], limit=4)
    assert res["num_fewshot"] == {"longctx_tiny_mc": 0}
    docs = [json.loads(line) for line in (FIXTURES / "tiny_mc.jsonl").read_text().splitlines()][:4]
    assert res["scores"]["longctx_tiny_mc"]["acc"] == pytest.approx(_manual_accuracy(model, tokenizer, docs))
