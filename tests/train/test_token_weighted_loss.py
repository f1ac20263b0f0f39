"""The step's loss is its mean TOKEN loss: micro-batches with different numbers of label tokens
weigh by their tokens (before: each micro-batch's mean counted once, so one token of a short
or padded row weighed more than one of a long row)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from longctx.rope import apply_rope, from_hf_config
from longctx.train.loop import train_loop
from longctx.train.run import make_accelerator
from longctx.train.stages.pretrain import Settings
from tests.tiny import tiny_config, tiny_model

T = 16


def _row(seed: int, valid: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (1, T), generator=g)
    labels = ids.clone()
    labels[:, valid:] = -100
    doc = torch.zeros(1, T, dtype=torch.long)
    doc[:, valid:] = -1  # padding
    return {"input_ids": ids, "labels": labels, "position_ids": torch.arange(T)[None], "doc_ids": doc,
            "row_kind": "original"}  # fmt: skip


def _stack(rows: list[dict]) -> dict:
    return {k: torch.cat([r[k] for r in rows]) if k != "row_kind" else rows[0][k] for k in rows[0]}


def _model():
    model = tiny_model(tiny_config(attn_implementation="sdpa"), seed=0)
    return apply_rope(model, from_hf_config(model.config))


def _train(model, micro: list[dict], grad_accum: int, tmp_path) -> tuple[float, dict]:
    cfg = Settings(
        kind="pretrain", name="tw", steps=1, grad_accum=grad_accum, micro_batch_size=len(micro) // grad_accum,
        lr=1e-3, schedule="constant", checkpoint_every=100, windows=[{"length": T, "share": 1.0, "rope": "original"}],
    )  # fmt: skip
    stage_dir = tmp_path / f"accum{grad_accum}"
    stage_dir.mkdir()
    batches = [
        _stack(micro[i : i + cfg.micro_batch_size]) for i in range(0, len(micro), cfg.micro_batch_size)
    ]
    result = train_loop(model, lambda start: iter(batches[start:]), cfg, stage_dir, make_accelerator())
    return result.losses[0], {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_step_loss_and_gradient_are_token_weighted(tmp_path):
    rows = [_row(1, T), _row(2, 4)]  # 15 label tokens vs 3
    model = _model()
    with torch.no_grad():
        sums, counts = [], []
        for r in rows:
            logits = model(input_ids=r["input_ids"]).logits[0, :-1]
            target = r["labels"][0, 1:]
            sums.append(F.cross_entropy(logits, target, ignore_index=-100, reduction="sum"))
            counts.append(int((target != -100).sum()))
    token_mean = float(sum(sums) / sum(counts))
    mean_of_means = float(sum(s / c for s, c in zip(sums, counts)) / len(rows))
    assert abs(token_mean - mean_of_means) > 1e-3  # the rows really differ in weight

    accumulated, w_accum = _train(copy.deepcopy(model), rows, grad_accum=2, tmp_path=tmp_path)
    together, w_together = _train(copy.deepcopy(model), rows, grad_accum=1, tmp_path=tmp_path)
    assert abs(accumulated - token_mean) < 1e-5 * token_mean, (accumulated, token_mean, mean_of_means)
    assert abs(together - token_mean) < 1e-5 * token_mean
    # the accumulated step updates the weights as one step over both rows does
    for key in w_together:
        torch.testing.assert_close(w_accum[key], w_together[key], rtol=1e-5, atol=1e-7, msg=key)
