"""data.validation: the documents factor searches and the readjustment score, apart from training."""

from __future__ import annotations

from longctx.data.corpus import load_demo_corpus
from longctx.train.context import RunContext
from longctx.train.load import load_recipe
from longctx.train.run import make_accelerator
from longctx.train.stages import readjust, search

from .conftest import write_recipe


def test_searches_score_validation_documents_not_training_ones(tmp_path, tiny_corpus):
    held = tmp_path / "validation"
    held.mkdir()
    for i, text in enumerate(load_demo_corpus("kjv")[40:43]):  # books not in tiny_corpus
        (held / f"v{i}.txt").write_text(text[:20_000])
    data = {"sources": [{"kind": "local", "path": str(tiny_corpus)}], "cache_dir": str(tmp_path / "cache")}
    stage = {"name": "s", "kind": "search", "algorithm": "dcis", "target_length": 256, "num_samples": 2,
             "objective": "ppl"}  # fmt: skip
    plain = write_recipe(tmp_path / "a.yaml", tiny_corpus, tmp_path / "a", data=data)
    split = write_recipe(
        tmp_path / "b.yaml", tiny_corpus, tmp_path / "b",
        data={**data, "validation": [{"kind": "local", "path": str(held)}]},
    )  # fmt: skip
    ctx_plain = RunContext(load_recipe(plain), plain, make_accelerator())
    ctx = RunContext(load_recipe(split), split, make_accelerator())
    assert ctx_plain.search_documents() == ctx_plain.documents()  # no validation: the training data
    train, val = ctx.documents(), ctx.search_documents()
    assert len(val) == 3 and not {tuple(d) for d in val} & {tuple(d) for d in train}
    settings = search.Settings(**stage)
    rows = search.search_samples(settings, ctx)
    starts = {tuple(d[:50]) for d in val}
    assert len(rows) == 2 and all(tuple(list(r)[-256:][:50]) in starts for r in rows), "not validation text"
    # readjust's needles are planted in validation documents too (the tokens around the needle)
    r = readjust.Settings(kind="readjust", name="r", target_length=256, num_samples=2)

    def shared(ids, docs):  # 8-token windows of ``ids`` found verbatim in ``docs``
        grams = {tuple(d[i : i + 8]) for d in docs for i in range(len(d) - 8)}
        return sum(tuple(ids[i : i + 8]) in grams for i in range(len(ids) - 8))

    for sample in readjust._retrieval_samples(r, ctx):
        ids = list(sample.input_ids)
        assert shared(ids, val) > 4 * max(1, shared(ids, train))
    # too few long validation documents: the preflight line names data.validation
    line = search.preflight(settings.model_copy(update={"num_samples": 9}), ctx)[0]
    assert "data.validation has 3" in line


def test_an_eval_length_no_document_reaches_is_refused_before_any_stage(tmp_path, tiny_corpus, capsys):
    """Before: ``ppl`` at a length longer than every ``ppl_data`` document came out ``None``
    (``docs: 0``) after the whole run; now one line names the stage, the length and the longest
    document, before the pretrain stage starts."""
    from longctx.train.run import main

    short = tmp_path / "short"
    short.mkdir()
    for i in range(3):
        (short / f"d{i}.txt").write_text(load_demo_corpus("kjv")[50 + i][:2000])
    import yaml

    base = yaml.safe_load(write_recipe(tmp_path / "r.yaml", tiny_corpus, tmp_path / "out").read_text())[
        "stages"
    ]

    def recipe(ppl_data, lengths):
        ev = {"name": "ev", "kind": "eval", "tasks": ["ppl"], "lengths": lengths, "ppl_data": str(ppl_data)}
        return write_recipe(tmp_path / "r.yaml", tiny_corpus, tmp_path / "out", stages=[base[0], ev])

    path = recipe(short, [64, 100_000])
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"{path}: stages.ev.lengths: ppl at 100,000 tokens needs a document")
    assert "the longest" in err[0] and str(short) in err[0]
    assert not (tmp_path / "out" / "base").exists(), "refused before the first stage ran"
    # a missing ppl_data path is one line too, not a FileNotFoundError after the training stages
    assert main([str(recipe(tmp_path / "no", [64]))]) == 2
    assert "stages.ev.ppl_data: ppl_data" in capsys.readouterr().err
