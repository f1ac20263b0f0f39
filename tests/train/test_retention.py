"""finetune ``retention``: KL(frozen starting model ‖ trained model) on short rows, through the
tiled loss (teacher logits a slice at a time), equal to the dense math on transformers' logits."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from longctx.data.packing import attention_mask_4d
from longctx.rope import apply_rope, from_hf_config, set_factor_set
from longctx.train.loop import Retention, train_loop
from longctx.train.run import make_accelerator
from longctx.train.stages.finetune import Settings
from longctx.train.tiled_loss import Teacher, tiled_loss_sum
from tests.tiny import tiny_config, tiny_model

T = 16


def _model(seed: int = 0):
    model = tiny_model(tiny_config(attn_implementation="sdpa"), seed=seed)
    return apply_rope(model, from_hf_config(model.config))


def _batch(kind: str = "original", rows: int = 2) -> dict:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 128, (rows, T), generator=g)
    labels = ids.clone()
    labels[0, :5] = -100
    doc = torch.zeros(rows, T, dtype=torch.long)
    doc[:, T // 2 :] = 1  # two packed documents per row
    pos = torch.cat([torch.arange(T // 2), torch.arange(T // 2)])[None].repeat(rows, 1)
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "doc_ids": doc, "row_kind": kind}


def _dense(student, teacher, batch, weight):
    """CE + weight · KL from full logits of both models (transformers' forward)."""
    mask = attention_mask_4d(batch["doc_ids"])
    kw = {"position_ids": batch["position_ids"], "attention_mask": mask}
    s = student(batch["input_ids"], **kw).logits[:, :-1].float()
    with torch.no_grad():
        t = teacher(batch["input_ids"], **kw).logits[:, :-1].float()
    y = batch["labels"][:, 1:]
    counted = y != -100
    ce = F.cross_entropy(s.reshape(-1, s.shape[-1]), y.reshape(-1), ignore_index=-100, reduction="sum")
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
    return ce + weight * kl[counted].sum()


@pytest.mark.parametrize("shards", [1, 3])
def test_tiled_retention_equals_dense_kl_and_its_gradient(shards):
    student, teacher = _model(0), _model(1)  # different weights: a non-zero KL
    batch, w = _batch(), 0.7
    dense = _dense(student, teacher, batch, w)
    (g_dense,) = torch.autograd.grad(dense, student.lm_head.weight)
    mask = attention_mask_4d(batch["doc_ids"])
    kw = {"position_ids": batch["position_ids"], "attention_mask": mask}
    hidden = student.model(batch["input_ids"], **kw).last_hidden_state
    with torch.no_grad():
        t_hidden = teacher.model(batch["input_ids"], **kw).last_hidden_state
    shifted = torch.cat([batch["labels"][:, 1:], torch.full((2, 1), -100)], dim=1)
    tiled = tiled_loss_sum(student.lm_head, hidden, shifted, shards, Teacher(teacher.lm_head, t_hidden, w))
    (g_tiled,) = torch.autograd.grad(tiled, student.lm_head.weight)
    assert torch.allclose(tiled, dense, rtol=1e-5), (tiled.item(), dense.item())
    assert torch.allclose(g_tiled, g_dense, rtol=1e-4, atol=1e-7)
    assert teacher.lm_head.weight.grad is None


def _step(model, batches, tmp_path, name, retention=None):
    cfg = Settings(
        kind="finetune", name=name, steps=len(batches), micro_batch_size=2, lr=1e-2, schedule="constant",
        checkpoint_every=100, windows=[{"length": T, "share": 1.0, "rope": "original"}],
    )  # fmt: skip
    (tmp_path / name).mkdir()
    return train_loop(
        model,
        lambda start: iter(batches[start:]),
        cfg,
        tmp_path / name,
        make_accelerator(),
        retention=retention,
    )


def test_retention_in_the_loop_starts_at_zero_kl_and_keeps_short_rows_closer(tmp_path):
    """The teacher is the starting model on the same rows and RoPE: the first step's loss equals
    plain training's (KL 0 — a teacher fed another layout or RoPE would not be), and after a few
    steps at a high lr the retained model's logits on the short rows are closer to the start."""
    start = _model(0)
    batches = [_batch() for _ in range(6)]
    plain = _step(copy.deepcopy(start), batches, tmp_path, "plain")
    teacher = copy.deepcopy(start).eval().requires_grad_(False)
    set_factor_set(teacher, "original")
    kept = _step(copy.deepcopy(start), batches, tmp_path, "kept", Retention(teacher, 5.0))
    assert kept.losses[0] == pytest.approx(plain.losses[0], rel=1e-6)
    assert kept.losses[1] != pytest.approx(plain.losses[1], rel=1e-6)  # the term acts from step 2
    probe = _batch(rows=1)
    kw = {"position_ids": probe["position_ids"], "attention_mask": attention_mask_4d(probe["doc_ids"])}

    def drift(model) -> float:
        with torch.no_grad():
            a = F.log_softmax(model.model and model(probe["input_ids"], **kw).logits, -1)
            b = F.log_softmax(start(probe["input_ids"], **kw).logits, -1)
        return float(F.kl_div(a, b, log_target=True, reduction="batchmean"))

    assert drift(kept.model) < 0.7 * drift(plain.model), (drift(kept.model), drift(plain.model))


def test_long_rows_get_no_teacher(tmp_path):
    start = _model(0)
    batches = [_batch(kind="rescaled")]
    teacher = copy.deepcopy(start).eval().requires_grad_(False)
    plain = _step(copy.deepcopy(start), batches, tmp_path, "p")
    kept = _step(copy.deepcopy(start), batches, tmp_path, "k", Retention(teacher, 5.0))
    assert kept.losses == pytest.approx(plain.losses, rel=1e-6)


def _ft(retention: dict | None, windows: list[dict], **extra) -> dict:
    stage = {"name": "ft", "kind": "finetune", "steps": 4, "micro_batch_size": 2, "lr": 1e-2,
             "checkpoint_every": 2, "log_every": 1, "windows": windows, **extra}  # fmt: skip
    return {**stage, "retention": retention} if retention else stage


MIXED = [{"length": 64, "share": 0.5, "rope": "original"}, {"length": 128, "share": 0.5, "rope": "rescaled"}]


def test_retention_without_a_short_window_is_refused(tmp_path, tiny_corpus, longrope_model):
    from longctx.train.load import RecipeError, load_recipe
    from tests.train.conftest import model_recipe

    only_long = [{"length": 128, "share": 1.0, "rope": "rescaled"}]
    path = model_recipe(tmp_path / "r.yaml", longrope_model, tiny_corpus, tmp_path / "out",
                        [_ft({"kl_weight": 0.5}, only_long)])  # fmt: skip
    with pytest.raises(RecipeError, match=r"stages\[0\]\.retention: needs a window with rope: original"):
        load_recipe(path)


def test_retention_with_lora_runs_the_real_stage(tmp_path, tiny_corpus, longrope_model):
    """The CLI path: teacher loaded from the stage's source under its saved spec, LoRA on top."""
    import json

    from tests.train.conftest import model_recipe, run_cli

    lora = {"r": 4, "alpha": 8}
    runs = {}
    for name, retention in (("plain", None), ("kept", {"kl_weight": 1.0})):
        path = model_recipe(tmp_path / f"{name}.yaml", longrope_model, tiny_corpus, tmp_path / name,
                            [_ft(retention, MIXED, lora=lora)])  # fmt: skip
        proc = run_cli(path)
        assert ("retention: KL to the frozen starting model" in proc.stderr + proc.stdout) == (
            retention is not None
        )
        lines = (tmp_path / name / "ft" / "metrics.jsonl").read_text().splitlines()
        runs[name] = [json.loads(line)["loss"] for line in lines]
    # the first step starts at KL 0: same loss as without the term (LoRA's B = 0 at init); later
    # steps differ (the KL term's gradient reached the adapters)
    assert runs["kept"][0] == pytest.approx(runs["plain"][0], rel=1e-5)
    assert max(abs(a / b - 1) for a, b in zip(runs["kept"], runs["plain"])) > 2e-5, runs
