"""The one measurement cache behind the eval driver: a rerun into the same folder re-measures
nothing; another spec, other weights or other settings are other measurements."""

from __future__ import annotations

import copy

import torch

from longctx.data.tokenizer import train_demo_tokenizer
from longctx.eval import driver
from longctx.eval.driver import Run, evaluate
from longctx.eval.settings import EvalSettings
from longctx.rope import RopeSpec
from tests.tiny import tiny_config, tiny_model

L = 64


def _spec(factor: float) -> RopeSpec:
    return RopeSpec("longrope", 10_000.0, 16, L, 4 * L, long_factor=[factor] * 8, short_factor=[1.0] * 8)


def test_a_rerun_measures_nothing_and_a_change_measures_again(tmp_path, monkeypatch):
    calls = []

    def counting(model, tokenizer, settings):
        calls.append(1)
        return {"by_length": {n: {"ppl": float(len(calls))} for n in settings.lengths}}

    monkeypatch.setitem(driver.EVAL_TASKS, "ppl", counting)
    tok = train_demo_tokenizer(tmp_path / "tok", 300)
    model = tiny_model(tiny_config("llama", max_position_embeddings=L))
    settings = EvalSettings(lengths=[L, 2 * L], progress=False)

    def runs(m, factors=(2.0, 4.0)):
        return [Run(f"x{f}", "m", lambda m=m: m, lambda _, f=f: _spec(f)) for f in factors]

    first = evaluate(runs(model), tok, ["ppl"], settings, tmp_path / "out", log=lambda _: None)
    assert len(calls) == 2
    again = evaluate(runs(model), tok, ["ppl"], settings, tmp_path / "out", log=lambda _: None)
    assert len(calls) == 2 and again["runs"][1]["tasks"] == first["runs"][1]["tasks"]
    evaluate(runs(model, (2.0, 8.0)), tok, ["ppl"], settings, tmp_path / "out", log=lambda _: None)
    assert len(calls) == 3  # one new spec
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        tuned.lm_head.weight.mul_(1.01)
    evaluate(runs(tuned), tok, ["ppl"], settings, tmp_path / "out", log=lambda _: None)
    assert len(calls) == 5  # other weights
    evaluate(runs(model), tok, ["ppl"], EvalSettings(lengths=[L], progress=False), tmp_path / "out",
             log=lambda _: None)  # fmt: skip
    # other settings: a new measurement, but one for both specs: at L they compute the same rotary
    # (the short set, factors 1, the same attention factor), so the second is the first's
    assert len(calls) == 6


def test_preflight_and_the_ppl_task_tokenise_the_documents_once(tmp_path, monkeypatch):
    from longctx.eval import tasks

    tok = train_demo_tokenizer(tmp_path / "tok", 300)
    seen = []
    real = tasks.read_documents
    monkeypatch.setattr(tasks, "read_documents", lambda source: seen.append(source) or real(source))
    first = tasks.ppl_documents(tok, "kjv_heldout")
    assert tasks.ppl_documents(tok, "kjv_heldout") is first and seen == ["kjv_heldout"]
