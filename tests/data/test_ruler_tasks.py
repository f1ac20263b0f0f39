"""RULER's 13 tasks: each configuration as RULER defines it, exact lengths, aliases, QA formats, seeds."""

from __future__ import annotations

import re

import pytest

from longctx.data.errors import DataError
from longctx.data.ruler import (
    RULER_13,
    RULER_ALIASES,
    RULER_QA,
    RULER_TASKS,
    qa_record,
    qa_tasks,
    ruler_sample,
)
from longctx.data.ruler_niah import NIAH_CONFIGS, RULER_DEPTHS

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
NEEDLE = re.compile(r"One of the special magic (numbers|uuids) for ([\w-]+) is: ([\w-]+)\.")


def squad_records(n: int = 12) -> list[dict]:
    """SQuAD-format records (HF layout: answers as {"text": [...]}) and one unanswerable one."""
    recs = [
        {
            "title": f"Article{i // 3}",
            "context": f"The keeper of gate {i} is called Keeper{i}. The gate stands by the river.",
            "question": f"Who keeps gate {i}?",
            "answers": {"text": [f"Keeper{i}", f"keeper{i} of the gate"], "answer_start": [0, 0]},
        }
        for i in range(n)
    ]
    return [*recs, {"context": "Nothing here.", "question": "Who?", "answers": [], "is_impossible": True}]


def hotpot_records(n: int = 8) -> list[dict]:
    """HotpotQA-format records: original ``[[title, sentences]]`` and HF ``{title, sentences}`` layouts."""
    recs = []
    for i in range(n):
        paragraphs = [[f"Traveller {i}", [f"Traveller {i} left home. ", f"Traveller {i} reached City{i}."]],
                      [f"Road {i}", ["The road was long. ", "It rained."]]]  # fmt: skip
        context = (
            paragraphs
            if i % 2
            else {"title": [t for t, _ in paragraphs], "sentences": [s for _, s in paragraphs]}
        )
        recs.append(
            {"question": f"Which city did traveller {i} reach?", "answer": f"City{i}", "context": context}
        )
    return recs


def _context(tok, s) -> str:
    return tok.decode(s.input_ids[: s.prompt_len], skip_special_tokens=True)


def _sample(task, tok, length, seed):
    records = squad_records() + hotpot_records() if task in RULER_QA else None
    return ruler_sample(task, tok, length, seed, **({"records": records} if records else {}))


@pytest.mark.parametrize("task", RULER_13)
@pytest.mark.parametrize("length", [1024, 3000])
def test_every_task_fits_is_seeded_and_names_its_metric(demo_tokenizer, task, length):
    s = _sample(task, demo_tokenizer, length, seed=5)
    assert s.task == task and s.length == length and s.answers
    exact = task.startswith("niah") or task == "vt"  # cwe/fwe/qa fill at item granularity
    assert len(s.input_ids) == length if exact else len(s.input_ids) <= length
    assert s.meta["metric"] == ("part" if task in RULER_QA else "all")
    assert s == _sample(task, demo_tokenizer, length, seed=5)
    assert s.input_ids != _sample(task, demo_tokenizer, length, seed=6).input_ids
    if task not in RULER_QA:
        answer = demo_tokenizer.decode(s.input_ids[s.prompt_len :])
        assert all(a in answer for a in s.answers)


def test_registry_has_13_tasks_and_two_aliases():
    assert len(RULER_13) == 13 and len(set(RULER_13)) == 13
    assert set(RULER_TASKS) == set(RULER_13) | set(RULER_ALIASES)
    assert RULER_13[:8] == tuple(NIAH_CONFIGS) and RULER_13[8:] == ("vt", "cwe", "fwe", "qa_1", "qa_2")
    for alias, name in RULER_ALIASES.items():
        assert RULER_TASKS[alias] is RULER_TASKS[name]
    assert len(RULER_DEPTHS) == 40 and RULER_DEPTHS[0] == 0.0 and RULER_DEPTHS[-1] == 1.0


def test_aliases_generate_the_ruler_task(demo_tokenizer):
    s = ruler_sample("niah_single", demo_tokenizer, 800, seed=1)
    assert s == ruler_sample("niah_single_1", demo_tokenizer, 800, seed=1) and s.task == "niah_single_1"
    assert ruler_sample("niah_multikey", demo_tokenizer, 800, seed=1).task == "niah_multikey_1"


@pytest.mark.parametrize("task", list(NIAH_CONFIGS))
def test_niah_variants_as_ruler_configures_them(demo_tokenizer, task):
    cfg = NIAH_CONFIGS[task]
    s = ruler_sample(task, demo_tokenizer, 2000, seed=3)
    context = _context(demo_tokenizer, s)
    needles = NEEDLE.findall(context)
    kind = cfg["value"]
    assert {k for k, _, _ in needles} == {kind}
    value = UUID if kind == "uuids" else r"\d{7}"
    assert all(re.fullmatch(value, a) for a in s.answers)
    key = UUID if cfg["key"] == "uuids" else r"[a-z]+"
    assert all(re.fullmatch(key, q) for q in s.meta["query"])
    assert len(s.answers) == cfg["v"] * cfg["q"] and len(s.meta["keys"]) == cfg["k"]
    for _, k, v in needles:  # a needle answers iff its key is asked
        assert (v in s.answers) == (k in s.meta["query"])
    singular = len(s.answers) == 1
    intro = ("A special magic " + kind[:-1] + " is hidden") if singular else f"Some special magic {kind} are"
    assert context.startswith(intro)
    assert context.endswith(f"mentioned in the provided text {'is' if singular else 'are'}")
    assert s.meta["haystack"] == cfg["haystack"]
    if cfg["haystack"] == "noise":
        assert "The grass is green. The sky is blue." in context
    elif cfg["haystack"] == "essay":  # the KJV from its start stands in for RULER's essays
        assert "In the beginning God created the heaven" in context and len(needles) == cfg["k"] * cfg["v"]
    else:  # a haystack made entirely of needles: every full line of the context is one
        lines = context.split("\n")[1:-2]  # after the intro; the last haystack line is cut
        assert len(lines) > 10 and all(NEEDLE.fullmatch(line) for line in lines)
        assert len(needles) >= len(lines)


def test_niah_depth_and_document_haystack(demo_tokenizer, kjv_lists):
    depths = {ruler_sample("niah_single_2", demo_tokenizer, 1500, seed=k).depth for k in range(8)}
    assert len(depths) > 1 and depths <= set(RULER_DEPTHS)  # RULER's 40 depths, drawn per sample
    s = ruler_sample("niah_single_2", demo_tokenizer, 1500, seed=0, depth=0.25)
    assert s.depth == 0.25 and s.meta["depths"][0] == 0.25
    doc = ruler_sample("niah_multivalue", demo_tokenizer, 1500, seed=0, haystack_ids=kjv_lists[1])
    assert doc.meta["haystack"] == "document" and "Exodus" in _context(demo_tokenizer, doc)


def test_vt_chain_depths_are_random_and_sorted(demo_tokenizer):
    s = ruler_sample("vt", demo_tokenizer, 1500, seed=2)
    assert s.meta["depths"] == sorted(s.meta["depths"]) and s.depth == s.meta["depths"][0]
    assert ruler_sample("vt", demo_tokenizer, 1500, seed=2, depth=0.5).meta["depths"][0] == 0.5


def test_qa_formats_are_read_and_grouped():
    squad, hotpot = squad_records(), hotpot_records()
    r = qa_record(squad[0])
    assert r["task"] == "qa_1" and r["answers"] == ["Keeper0", "keeper0 of the gate"]
    assert r["documents"] == [squad[0]["context"]] and r["title"] == "Article0"
    plain = {"question": "q", "answers": [{"text": "a", "answer_start": 0}], "context": "a"}  # SQuAD json
    assert qa_record(plain)["answers"] == ["a"]
    assert qa_record(squad[-1]) is None  # unanswerable: skipped as RULER does
    for i, rec in enumerate(hotpot[:2]):  # both layouts: "{title}\n{sentences joined}" per paragraph
        h = qa_record(rec)
        assert h["task"] == "qa_2" and h["answers"] == [f"City{i}"]
        assert h["documents"] == [
            f"Traveller {i}\nTraveller {i} left home. Traveller {i} reached City{i}.",
            f"Road {i}\nThe road was long. It rained.",
        ]
    groups = qa_tasks(squad + hotpot)
    assert groups == {"qa_1": list(range(12)), "qa_2": list(range(13, 21))}
    assert qa_tasks(squad, task="qa_2") == {"qa_2": list(range(12))}
    with pytest.raises(DataError, match="no 'question' field"):
        qa_record({"context": "x"})
    with pytest.raises(DataError, match="expected a string"):
        qa_record({"question": "q", "answer": "a", "context": 3})


@pytest.mark.parametrize("task", list(RULER_QA))
def test_qa_sample_holds_gold_among_distractors(demo_tokenizer, task):
    records = squad_records() + hotpot_records()
    short, long = (ruler_sample(task, demo_tokenizer, n, seed=4, records=records) for n in (400, 1500))
    for s in (short, long):
        text = demo_tokenizer.decode(s.input_ids, skip_special_tokens=True)
        assert text.endswith("Answer:") and s.prompt_len == len(s.input_ids)
        assert s.meta["gold"] and s.meta["documents"] >= len(s.meta["gold"])
        assert all(f"Document {i + 1}:" in text for i in range(s.meta["documents"]))
        assert ("Traveller" in text) == (task == "qa_2") and ("keeper of gate" in text) == (task == "qa_1")
    assert long.meta["documents"] > short.meta["documents"]


def test_qa_without_records_is_an_error_not_a_silent_sample(demo_tokenizer):
    with pytest.raises(DataError, match="qa_1: no records; expected local SQuAD-format"):
        ruler_sample("qa_1", demo_tokenizer, 1000, seed=0)
    with pytest.raises(DataError, match="qa_2: none of the 13 records is HotpotQA-format"):
        ruler_sample("qa_2", demo_tokenizer, 1000, seed=0, records=squad_records())
    with pytest.raises(DataError, match="its own document"):
        ruler_sample("qa_2", demo_tokenizer, 30, seed=0, records=hotpot_records())
