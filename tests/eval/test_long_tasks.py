"""lm-eval long-context tasks on an in-memory model with a RoPE spec installed, offline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from longctx.eval.long_tasks import LongTaskError, _length_metadata, long_task_scores
from longctx.rope import RopeSpec, apply_rope
from longctx.rope.install import installed_rotaries
from tests.tiny import tiny_config, tiny_model

pytest.importorskip("lm_eval")

FIXTURES = Path(__file__).parent / "fixtures"
TASK = FIXTURES / "long_passkey.yaml"
NAME = "longctx_long_passkey"
L, L_EXT, HEAD_DIM = 64, 512, 16  # tiny llama: hidden 64, 4 heads


def _model(spec: bool):
    model = tiny_model(tiny_config("llama", vocab_size=128, max_position_embeddings=L), seed=3)
    if spec:
        long_factor = tuple(1.0 + 1.5 * i for i in range(HEAD_DIM // 2))
        apply_rope(model, RopeSpec("longrope", 10000.0, HEAD_DIM, L, L_EXT, long_factor=long_factor))
    return model


def _manual_perplexity(model, tok, docs) -> float:
    """lm-eval's ``perplexity``: exp(-mean over documents of Σ log p(answer | context)), full context."""
    lls = []
    for doc in docs:
        ctx = tok.encode(doc["context"], add_special_tokens=False)
        cont = tok.encode(doc["answer"], add_special_tokens=False)
        with torch.inference_mode():
            logp = model(torch.tensor([ctx + cont])).logits[0, :-1].log_softmax(-1)  # [seq-1, vocab]
        lls.append(sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
    return math.exp(-sum(lls) / len(lls))


def test_local_long_task_runs_past_l_on_the_installed_spec(tokenizer):
    docs = [json.loads(line) for line in (FIXTURES / "long_passkey.jsonl").read_text().splitlines()]
    long_docs = [d for d in docs if d["length"] == 256]
    assert len(tokenizer.encode(long_docs[0]["context"] + long_docs[0]["answer"])) == 256 > L
    model = _model(spec=True)
    seen = []
    rotary = installed_rotaries(model)[0]
    assert rotary.spec.long_factor is not None
    rotary.register_forward_hook(
        lambda _m, args, kwargs, _out: seen.append(int(kwargs.get("position_ids", args[-1]).max()) + 1),
        with_kwargs=True,
    )

    res = long_task_scores(model, tokenizer, [str(TASK)], lengths=[128, 256, 512])

    assert res["lengths"] == [128, 256, 512]
    scores, inputs = res["scores"][NAME], res["inputs"][NAME]
    assert set(scores[256]) == {"acc", "perplexity"}
    # the window is the length, not the config's L = 64: the whole 256-token document went in
    assert inputs[256] == {"window": 256, "max_input_tokens": 255, "samples": 2}
    assert inputs[128]["max_input_tokens"] == 127 and inputs[128]["samples"] == 2
    assert scores[512] is None and inputs[512]["samples"] == 0  # no document of that length
    assert max(seen) == 255  # the installed rotary saw positions past L: its long factors were used
    assert scores[256]["perplexity"] == pytest.approx(
        _manual_perplexity(model, tokenizer, long_docs), rel=1e-4
    )

    plain = long_task_scores(_model(spec=False), tokenizer, [str(TASK)], lengths=[256])
    assert plain["scores"][NAME][256]["perplexity"] != pytest.approx(scores[256]["perplexity"], rel=1e-3)


def test_registered_task_without_offline_data_is_one_clear_line(tokenizer, tmp_path, monkeypatch):
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    model = _model(spec=True)

    with pytest.raises(LongTaskError) as err:
        long_task_scores(model, tokenizer, ["babilong_qa1"], lengths=[1024], limit=1)
    msg = str(err.value)
    assert "\n" not in msg and "'babilong_qa1' at length 1024" in msg
    assert (
        "RMT-team/babilong-1k-samples" in msg and "not available offline" in msg and "local task YAML" in msg
    )

    with pytest.raises(
        LongTaskError, match=r"'ruler_qa_squad' \(in 'ruler'\): downloads .* cannot run offline"
    ):
        long_task_scores(model, tokenizer, ["ruler"], lengths=[4096])
    with pytest.raises(LongTaskError, match="'no_such_long_task': not a registered lm-eval task"):
        long_task_scores(model, tokenizer, ["no_such_long_task"], lengths=[4096])


def test_length_metadata_per_suite():
    ruler = [("niah_single_1", {"custom_dataset": "f"}, Path("tasks/ruler/niah_single_1.yaml"))]
    babilong = [("babilong_qa1", {"custom_dataset": "f"}, Path("tasks/babilong/babilong_qa1.yaml"))]
    assert _length_metadata("niah_single_1", ruler, 4096) == {"max_seq_lengths": [4096]}
    assert _length_metadata("babilong_qa1", babilong, 4096) == {"max_seq_lengths": "4k"}
    with pytest.raises(LongTaskError, match="not a multiple of 1024"):
        _length_metadata("babilong_qa1", babilong, 1000)
    with pytest.raises(LongTaskError, match="mixes BABILong"):
        _length_metadata("mix", ruler + babilong, 4096)
