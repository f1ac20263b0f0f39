"""RULER's 13 tasks end to end: generator → scorer pairs, 13-task averages, "not run" QA, effective length, report."""

from __future__ import annotations

import json

import pytest

from longctx.data.ruler import RULER_13, RULER_QA, RULER_TASKS, ruler_sample
from longctx.eval import ruler as eval_ruler
from longctx.eval.report import markdown_report, write_report
from longctx.eval.ruler import RULER_THRESHOLD, effective_length, ruler_samples, score_ruler
from longctx.eval.tasks import EvalSettings, run_ruler
from tests.eval.conftest import make_sample

LENGTHS = [2500, 4000]
"""Characters = tokens with the char tokenizer; fwe needs ~2.5k to rank its top words."""


def squad(n: int = 6) -> list[dict]:
    return [
        {"title": f"A{i // 2}", "context": f"Gate {i} is kept by Keeper{i}.", "question": f"Who keeps gate {i}?",
         "answers": [f"Keeper{i}", f"the keeper {i}"]}
        for i in range(n)
    ]  # fmt: skip


def hotpot(n: int = 6) -> list[dict]:
    return [
        {"question": f"Where did traveller {i} go?", "answer": f"City{i}",
         "context": [[f"Traveller {i}", [f"Traveller {i} went to City{i}."]], [f"Rain {i}", ["It rained."]]]}
        for i in range(n)
    ]  # fmt: skip


def _sample(task, tok, length, seed=0):
    kw = {"records": squad() + hotpot()} if task in RULER_QA else {}
    return ruler_sample(task, tok, length, seed, **kw)


def _score(sample, output) -> float:
    return score_ruler([sample], [output])["tasks"][sample.task][sample.length]


@pytest.mark.parametrize("task", RULER_13)
@pytest.mark.parametrize("length", LENGTHS)
def test_generator_and_scorer_pair(tokenizer, task, length):
    """The sample's own answers score 100, a wrong output 0, a partial one as RULER's metric says."""
    s = _sample(task, tokenizer, length)
    answers = list(s.answers)
    assert s.meta["metric"] == ("part" if task in RULER_QA else "all")  # string_match_part only for QA
    assert _score(s, "Answer: " + ", ".join(answers) + ".") == 100.0
    assert _score(s, " ".join(answers).upper()) == 100.0  # case-insensitive, as RULER
    assert _score(s, "I do not know.") == 0.0
    if task in RULER_QA:  # string_match_part: any one reference is enough
        assert _score(s, f"It is {answers[-1]}") == 100.0
    elif len(answers) > 1:  # string_match_all: the fraction of references found
        half = len(answers) // 2
        assert _score(s, " ".join(answers[:half])) == pytest.approx(100.0 * half / len(answers))
    else:
        near = answers[0][:-1] + ("0" if answers[0][-1] != "0" else "1")  # one character off
        assert _score(s, near) == 0.0


def _hand_sample(tok, task, length, answer="42"):
    return make_sample(
        tok, "q", answer, task=task, length=length, metric="part" if task in RULER_QA else "all"
    )


def test_13_task_average_and_effective_length(tokenizer):
    samples, outputs = [], []
    wrong = {1000: set(), 2000: {"cwe"}, 4000: {"cwe", "fwe", "vt", "qa_1"}, 8000: set()}
    for length, misses in wrong.items():
        for task in RULER_13:
            samples.append(_hand_sample(tokenizer, task, length))
            outputs.append("no" if task in misses else "42")
    res = score_ruler(samples, outputs)
    assert res["suite"] == list(RULER_13) and res["threshold"] == RULER_THRESHOLD
    assert res["by_length"][2000] == {
        "average_13": pytest.approx(1200 / 13),
        "average_ran": pytest.approx(1200 / 13),
        "ran": sorted(RULER_13),
        "missing": [],
    }
    assert res["by_length"][4000]["average_13"] == pytest.approx(900 / 13)  # 69.2: below 85.6
    assert res["average"] == {n: v["average_13"] for n, v in res["by_length"].items()}
    assert res["effective_length"] == 2000  # 8000 is above again, but 4000 already failed
    assert res["effective_length_ran"] == 2000


def test_effective_length_on_hand_made_averages():
    assert effective_length({4096: 95.0, 8192: 90.1, 16384: 85.6, 32768: 70.0}) == 8192  # 85.6 is not above
    assert effective_length({"4096": 99.0, "8192": 98.0, "16384": 97.0}) == 16384  # JSON keys
    assert effective_length({16384: 90.0, 4096: 92.0, 8192: 80.0}) == 4096  # sorted by length first
    assert effective_length({4096: 80.0, 8192: 95.0}) is None  # fails at the shortest length
    assert effective_length({4096: 90.0, 8192: None, 16384: 90.0}) == 4096  # an incomplete length ends it
    assert effective_length({}) is None
    assert effective_length({4096: 60.0, 8192: 55.0}, threshold=50.0) == 8192


def test_ruler_samples_resolve_aliases_and_skip_qa_without_records(tokenizer):
    tasks = ["niah_single", "niah_single_1", "vt", "qa_1", "qa_2"]
    samples = ruler_samples(tokenizer, tasks, [2500], per_cell=2)
    assert [s.task for s in samples] == ["niah_single_1"] * 2 + ["vt"] * 2
    with_qa = ruler_samples(tokenizer, tasks, [2500], per_cell=2, qa_records=squad() + hotpot())
    assert [s.task for s in with_qa[4:]] == ["qa_1"] * 2 + ["qa_2"] * 2
    default = ruler_samples(tokenizer, list(RULER_TASKS), [2500])  # the eval task's default list
    assert [s.task for s in default] == [t for t in RULER_13 if t not in RULER_QA]  # 11, no alias twice


def _oracle(model, tokenizer, samples, **kwargs):
    return [" ".join(s.answers) for s in samples]


def _run(tmp_path, monkeypatch, tokenizer, records=None) -> dict:
    monkeypatch.setattr(eval_ruler, "greedy_outputs", _oracle)
    qa_data = None
    if records is not None:
        qa_data = tmp_path / "qa.jsonl"
        qa_data.write_text("".join(json.dumps(r) + "\n" for r in records))
    settings = EvalSettings(lengths=[2500], qa_data=qa_data and str(qa_data), progress=False)
    return run_ruler(None, tokenizer, settings)


def test_qa_not_run_is_reported_not_averaged_away(tokenizer, tmp_path, monkeypatch):
    res = _run(tmp_path, monkeypatch, tokenizer)
    assert sorted(res["tasks"]) == sorted(t for t in RULER_13 if t not in RULER_QA)
    assert res["by_length"][2500]["missing"] == ["qa_1", "qa_2"]
    assert res["by_length"][2500]["average_13"] is None and res["average"] == {2500: 100.0}
    assert res["effective_length"] is None and res["effective_length_ran"] == 2500
    squad_only = _run(tmp_path, monkeypatch, tokenizer, squad())  # one local file: qa_1 runs, qa_2 does not
    assert squad_only["by_length"][2500]["missing"] == ["qa_2"] and "qa_1" in squad_only["tasks"]
    both = _run(tmp_path, monkeypatch, tokenizer, squad() + hotpot())  # one file may hold both formats
    assert both["by_length"][2500] == {"average_13": 100.0, "average_ran": 100.0, "ran": sorted(RULER_13),
                                       "missing": []}  # fmt: skip
    assert both["effective_length"] == 2500


def _ruler_result(tok, missing=(), wrong=()):
    samples = [_hand_sample(tok, t, n) for n in (1000, 2000) for t in RULER_13 if t not in missing]
    return score_ruler(samples, ["no" if (s.task, s.length) in wrong else "42" for s in samples])


def test_report_shows_effective_length_tasks_and_13_task_average(tokenizer, tmp_path):
    full = _ruler_result(tokenizer, wrong={("cwe", 2000), ("fwe", 2000), ("vt", 2000)})
    partial = _ruler_result(tokenizer, missing=("qa_1", "qa_2"))
    results = {
        "lengths": [1000, 2000],
        "runs": [
            {"name": "full", "model": "m", "spec": None, "tasks": {"ruler": full}},
            {"name": "noqa", "model": "m", "spec": None, "tasks": {"ruler": partial}},
        ],
    }
    write_report(results, tmp_path)  # through JSON: string keys
    for md in (markdown_report(results), (tmp_path / "report.md").read_text()):
        assert "- **full**: model `m`; RULER effective length 1000" in md
        assert "- **noqa**: model `m`; RULER effective length n/a (missing: qa_1, qa_2)" in md
        head, rest = md.split("## RULER — full")[1].split("## RULER — noqa")
        assert head.lstrip().startswith("**Effective length: 1000** (the longest length whose 13-task")
        assert "| task | 1000 | 2000 |" in head and "| cwe | 100.0 | 0.0 |" in head
        assert "| **average (13 tasks)** | 100.0 | 76.9 |" in head
        assert "| average (tasks that ran) | 100.0 (13) | 76.9 (13) |" in head
        assert rest.lstrip().startswith("**Effective length: n/a**")
        assert "over the tasks that ran: 2000" in rest and "| qa_2 | not run | not run |" in rest
        assert "| **average (13 tasks)** | n/a (missing: qa_1, qa_2) | n/a (missing: qa_1, qa_2) |" in rest
        assert "| average (tasks that ran) | 100.0 (11) | 100.0 (11) |" in rest
