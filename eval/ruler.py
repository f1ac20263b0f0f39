"""RULER's 13 tasks scored the way RULER scores them, with its per-length average and effective length.

RULER (arXiv 2404.06654, NVIDIA/RULER ``scripts/eval/synthetic/constants.py``) scores every
task by string match on the greedy output after ``postprocess_pred``:
- ``string_match_all`` (the 8 NIAH variants, variable tracking, common/frequent words
  extraction): mean over samples of the fraction of reference strings found in the output, × 100;
- ``string_match_part`` (qa_1, qa_2): mean over samples of 1 if any reference is found, × 100.
Matching is case-insensitive substring search. Each sample names its metric in
``sample.meta["metric"]`` ("all" when absent). Per-task generation budgets are RULER's
``tokens_to_generate``.

A length's RULER score is the unweighted mean of its 13 tasks (RULER's "Avg." column). It is
reported only when all 13 ran at that length; otherwise ``average_13`` is None and the result
names the ``missing`` tasks (e.g. qa_1/qa_2 without local QA data) next to the mean over the
tasks that ran — a task is never silently left out of the average. The *effective length* is
RULER's: the longest length whose average is above the threshold (85.6, Llama-2-7B's 4k score);
see :func:`effective_length` for how a dip at a shorter length is treated.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from longctx.data.ruler import (
    QA_TEMPLATE,
    RULER_13,
    RULER_QA,
    canonical_task,
    qa_sample,
    qa_tasks,
    ruler_sample,
)
from longctx.data.samples import SyntheticSample
from longctx.eval.generation import greedy_outputs, mean_by

__all__ = [
    "METRICS",
    "QA_TEMPLATE",
    "RULER_13",
    "RULER_THRESHOLD",
    "effective_length",
    "generation_budget",
    "length_summary",
    "qa_sample",
    "qa_samples",
    "ruler_eval",
    "ruler_samples",
    "score_ruler",
    "string_match_all",
    "string_match_part",
]

TOKENS_TO_GENERATE = {
    "niah": 128,
    "vt": 30,
    "cwe": 120,
    "fwe": 50,
    "qa": 32,
}
"""RULER's per-task ``tokens_to_generate`` (task-name prefix → budget)."""

RULER_THRESHOLD = 85.6
"""RULER's effective-length threshold: Llama-2-7B's 13-task average at 4k (arXiv 2404.06654 §4)."""


def string_match_all(output: str, answers: Sequence[str]) -> float:
    """Fraction (0–1) of ``answers`` found in ``output``, case-insensitive."""
    text = output.lower()
    return sum(a.lower() in text for a in answers) / len(answers)


def string_match_part(output: str, answers: Sequence[str]) -> float:
    """1.0 if any of ``answers`` is found in ``output`` (case-insensitive), else 0.0."""
    text = output.lower()
    return float(any(a.lower() in text for a in answers))


METRICS = {"all": string_match_all, "part": string_match_part}
"""``sample.meta["metric"]`` → per-sample scorer."""


def generation_budget(task: str, cap: int | None = None) -> int:
    """RULER's ``tokens_to_generate`` for ``task`` (by prefix), optionally capped."""
    budget = next((n for prefix, n in TOKENS_TO_GENERATE.items() if task.startswith(prefix)), 64)
    return min(budget, cap) if cap else budget


def _length(key) -> int:
    return int(float(key))  # JSON turns integer keys into strings


def effective_length(average_by_length: Mapping, threshold: float = RULER_THRESHOLD) -> int | None:
    """Longest evaluated length L whose average is above ``threshold`` at L and at every shorter
    evaluated length; None when the shortest one is not (or nothing was evaluated).

    RULER defines the effective length as the longest length above the threshold. Its tables
    only list averages that fall with length, so "longest above" and "longest before the first
    miss" agree there; they differ when a model dips below at one length and recovers at a
    longer one. The first miss is taken as the end here: a context in which a shorter input
    already fails is not one the model uses effectively, and a recovery after a miss is more
    likely sampling noise than skill. A None average (the 13 tasks did not all run) also ends
    it. Keys may be ints or the strings JSON makes of them; "above" is strict (``>``).
    """
    best = None
    for length, average in sorted((_length(k), v) for k, v in average_by_length.items()):
        if average is None or not average > threshold:
            break
        best = length
    return best


def length_summary(per_task: Mapping[str, Mapping], length: int, suite: Sequence[str] = RULER_13) -> dict:
    """At ``length``: the ``suite`` average (None unless every suite task ran), the mean over the
    tasks that ran (suite or not), which ran and which suite tasks are missing."""
    scores = {t: v for t, by_len in per_task.items() for n, v in by_len.items() if _length(n) == length}
    missing = [t for t in suite if t not in scores]
    return {
        "average_13": None if missing else sum(scores[t] for t in suite) / len(suite),
        "average_ran": sum(scores.values()) / len(scores) if scores else None,
        "ran": sorted(scores),
        "missing": missing,
    }


def score_ruler(
    samples: Sequence[SyntheticSample], outputs: Sequence[str], *, threshold: float = RULER_THRESHOLD
) -> dict:
    """Scores (0–100) per task and length, the per-length averages and the effective length.

    Returns ``{"tasks": {task: {length: score}}, "average": {length: mean over the tasks that
    ran}, "by_length": {length: {"average_13", "average_ran", "ran", "missing"}}, "suite": the 13
    names, "threshold", "effective_length" (on the 13-task averages: None while any length
    misses a task), "effective_length_ran" (on the means over the tasks that ran — not RULER's
    number when tasks are missing), "samples": one row per sample}``.
    """
    if len(samples) != len(outputs):
        raise ValueError(f"score_ruler: {len(outputs)} outputs for {len(samples)} samples")
    rows = []
    for s, out in zip(samples, outputs):
        metric = s.meta.get("metric", "all")
        if metric not in METRICS:
            raise ValueError(f"sample {s.task}: meta['metric']={metric!r}; expected one of {sorted(METRICS)}")
        score = 100.0 * METRICS[metric](out, s.answers)
        rows.append(
            {"task": s.task, "length": s.length, "answers": list(s.answers), "output": out, "score": score}
        )
    per_task = mean_by(rows, ["task", "length"])
    by_length = {n: length_summary(per_task, n) for n in sorted({r["length"] for r in rows})}
    average_13 = {n: v["average_13"] for n, v in by_length.items()}
    average = {n: v["average_ran"] for n, v in by_length.items()}
    return {
        "tasks": per_task,
        "average": average,
        "by_length": by_length,
        "suite": list(RULER_13),
        "threshold": threshold,
        "effective_length": effective_length(average_13, threshold),
        "effective_length_ran": effective_length(average, threshold),
        "samples": rows,
    }


def ruler_eval(
    model, tokenizer, samples: Sequence[SyntheticSample], *, max_new_tokens: int | None = None, progress=True
) -> dict:
    """Greedy-decode every sample with its task's budget (capped by ``max_new_tokens``) and score."""
    budgets = [generation_budget(s.task, max_new_tokens) for s in samples]
    outputs = greedy_outputs(
        model, tokenizer, samples, max_new_tokens=budgets, progress=progress, desc="ruler"
    )
    return score_ruler(samples, outputs)


def ruler_samples(
    tokenizer,
    tasks: Sequence[str],
    lengths: Sequence[int],
    *,
    per_cell: int = 1,
    seed: int = 0,
    qa_records: Sequence[dict] | None = None,
) -> list[SyntheticSample]:
    """Samples from ``data.ruler.ruler_sample`` for every (task, length, repeat).

    Aliases are resolved and each task is generated once (``list(RULER_TASKS)`` holds two
    aliases). qa_1/qa_2 come from ``qa_records`` (SQuAD- / HotpotQA-format dicts, see
    :func:`qa_samples`); without records of its format a QA task is skipped here and
    :func:`score_ruler` reports it as missing.
    """
    out: list[SyntheticSample] = []
    for task in dict.fromkeys(canonical_task(t) for t in tasks):
        if task in RULER_QA:
            if qa_records:
                out += qa_samples(tokenizer, qa_records, lengths, n=per_cell, seed=seed, only=task)
            continue
        out += [
            ruler_sample(task, tokenizer, length, seed + k) for length in lengths for k in range(per_cell)
        ]
    return out


def qa_samples(
    tokenizer,
    records: Sequence[dict],
    lengths: Sequence[int],
    *,
    n: int = 4,
    seed: int = 0,
    task: str | None = None,
    only: str | None = None,
) -> list[SyntheticSample]:
    """``n`` QA samples per length for each QA task the records hold (records taken in a seeded order).

    Records may mix formats: SQuAD-style ones (``context`` a string) make qa_1 samples,
    HotpotQA-style ones (``context`` a list of [title, sentences]) qa_2 samples, each with
    distractors of its own format (``data.ruler.qa_sample``); ``task`` names one task for all
    records, ``only`` keeps one task.
    """
    out: list[SyntheticSample] = []
    for name, indices in qa_tasks(records, task).items():
        if only is not None and name != only:
            continue
        order = random.Random(seed).sample(indices, min(n, len(indices)))
        out += [
            qa_sample(tokenizer, records, i, length, seed + k, task=task)
            for length in lengths
            for k, i in enumerate(order)
        ]
    return out
