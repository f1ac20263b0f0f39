"""readjust's objective: perplexity plus retrieval at L, each relative to the starting spec (so
the start scores 1 + 1), retrieval from needles in real documents or, where a needle does not fit
the length, passkey prompts; weight 0 leaves the plain perplexity scorer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from longctx.data.corpus import load_demo_corpus
from longctx.data.tokenizer import train_demo_tokenizer
from longctx.eval.perplexity import truncated_rows
from longctx.eval.scorer import build_scorer
from longctx.rope import RopeSpec, apply_rope
from longctx.train.stages import readjust
from tests.tiny import tiny_config, tiny_model

L = 256


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_demo_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=512)


def _ctx(tokenizer):
    docs = [tokenizer.encode(t[:4000], add_special_tokens=False) for t in load_demo_corpus("kjv")[:3]]
    return SimpleNamespace(
        tokenizer=lambda: tokenizer,
        search_documents=lambda: docs,
        recipe=SimpleNamespace(seed=0),
        log=lambda m: None,
    )


def test_objective_adds_retrieval_relative_to_the_start(tokenizer, monkeypatch):
    ctx = _ctx(tokenizer)
    docs = ctx.search_documents()
    # the model retrieves at L as the search starts (stubbed: a random tiny model retrieves nothing)
    monkeypatch.setattr(readjust, "_start_retrieves", lambda *a: {"accuracy": 75.0, "retrieves": True})
    stage = readjust.Settings(kind="readjust", name="r", target_length=L, num_samples=3)
    assert stage.retrieval_weight == 1.0 and stage.attention == "balanced"  # the defaults
    samples = readjust._retrieval_samples(stage, ctx)
    assert len(samples) == 3 and {s.task for s in samples} == {"needle_ppl"}
    # a length a needle does not fit (it needs ~200 tokens here): passkey prompts instead
    short = readjust._retrieval_samples(stage.model_copy(update={"target_length": 160}), ctx)
    assert {s.task for s in short} == {"passkey"} and all(len(s.input_ids) == 160 for s in short)
    model = tiny_model(tiny_config("llama", max_position_embeddings=L, vocab_size=len(tokenizer)))
    start = RopeSpec("longrope", 10_000.0, 16, L, 8 * L, long_factor=tuple(1.0 + i for i in range(8)))
    apply_rope(model, start)
    rows = truncated_rows(docs, L, bos_id=tokenizer.bos_token_id, max_docs=3)
    ppl = build_scorer(model, rows, "ppl", factor_set="short")
    combined, record = readjust._objective(stage, ctx, model, start, ppl)
    assert combined([start]) == pytest.approx([2.0])  # 1 + 1: each term relative to the start
    damaged = start.replace(attention_factor=1.6, short_factor=(4.0,) * 8)
    terms = record["objective_terms"]
    needle = build_scorer(model, readjust._retrieval_samples(stage, ctx), "needle_ppl", factor_set="short")
    want = ppl([damaged])[0] / terms["ppl_start"] + needle([damaged])[0] / terms["needle_ppl_start"]
    assert combined([damaged])[0] == pytest.approx(want) and want != pytest.approx(2.0)
    off = readjust.Settings(kind="readjust", name="r", target_length=L, num_samples=3, retrieval_weight=0)
    assert readjust._objective(off, ctx, model, start, ppl) == (ppl, {})


def test_retrieval_term_only_where_the_start_retrieves_at_L(tokenizer, monkeypatch):
    """The gate measures passkey accuracy at L with the starting spec installed: a model that
    retrieves nothing (a random tiny model) gets the plain perplexity objective; one that
    retrieves some keys gets the retrieval term."""
    import longctx.eval.passkey as passkey

    ctx = _ctx(tokenizer)
    stage = readjust.Settings(kind="readjust", name="r", target_length=L, num_samples=2)
    model = tiny_model(tiny_config("llama", max_position_embeddings=L, vocab_size=len(tokenizer)))
    start = RopeSpec("longrope", 10_000.0, 16, L, 8 * L, long_factor=tuple(1.0 + i for i in range(8)))
    apply_rope(model, start)
    ppl = build_scorer(
        model,
        truncated_rows(ctx.search_documents(), L, bos_id=tokenizer.bos_token_id, max_docs=2),
        "ppl",
        factor_set="short",
    )
    scorer, record = readjust._objective(stage, ctx, model, start, ppl)
    gate = record["retrieval_gate"]
    assert (
        scorer is ppl
        and gate["accuracy"] == 0.0
        and not gate["retrieves"]
        and "objective_terms" not in record
    )
    seen = []

    def half_right(model_, tok, samples, **kw):
        seen.extend(s.length for s in samples)
        return {"accuracy": 50.0}

    monkeypatch.setattr(passkey, "passkey_eval", half_right)
    scorer, record = readjust._objective(stage, ctx, model, start, ppl)
    assert seen == [L, L] and record["retrieval_gate"]["retrieves"] and "objective_terms" in record
    assert scorer([start]) == pytest.approx([2.0])
