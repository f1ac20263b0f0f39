"""RULER-style synthetic tasks scored the way RULER scores them.

RULER (arXiv 2404.06654, NVIDIA/RULER ``scripts/eval/synthetic/constants.py``) scores every
task by string match on the greedy output after ``postprocess_pred``:
- ``string_match_all`` (NIAH variants, variable tracking, common/frequent words extraction):
  mean over samples of the fraction of reference strings found in the output, × 100;
- ``string_match_part`` (QA): mean over samples of 1 if any reference is found, × 100.
Matching is case-insensitive substring search. A length's score is the unweighted mean of
its tasks' scores (RULER's "average" column). Each sample names its metric in
``sample.meta["metric"]`` ("all" when absent). Per-task generation budgets are RULER's
``tokens_to_generate``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from longctx.data.samples import IGNORE_INDEX, SyntheticSample
from longctx.eval.generation import greedy_outputs, mean_by

TOKENS_TO_GENERATE = {
    "niah": 128,
    "vt": 30,
    "cwe": 120,
    "fwe": 50,
    "qa": 32,
}
"""RULER's per-task ``tokens_to_generate`` (task-name prefix → budget)."""

QA_TEMPLATE = (
    "Answer the question based on the given documents. Only give me the answer and do not output "
    "any other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based "
    "on the given documents. Only give me the answer and do not output any other words.\n\n"
    "Question: {query} Answer:"
)
"""RULER's ``qa`` template (``scripts/data/synthetic/constants.py``)."""


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


def score_ruler(samples: Sequence[SyntheticSample], outputs: Sequence[str]) -> dict:
    """Scores (0–100) per task and length, the per-length average over tasks, and rows."""
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
    lengths = sorted({r["length"] for r in rows})
    average = {
        n: sum(by_len[n] for by_len in per_task.values() if n in by_len)
        / sum(n in by_len for by_len in per_task.values())
        for n in lengths
    }
    return {"tasks": per_task, "average": average, "samples": rows}


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
    tokenizer, tasks: Sequence[str], lengths: Sequence[int], *, per_cell: int = 1, seed: int = 0
) -> list[SyntheticSample]:
    """Samples from ``data.synthetic.ruler_sample`` for every (task, length, repeat)."""
    from longctx.data.synthetic import ruler_sample

    return [
        ruler_sample(task, tokenizer, length, seed + k)
        for task in tasks
        for length in lengths
        for k in range(per_cell)
    ]


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def qa_sample(
    tokenizer, records: Sequence[dict], index: int, length: int, seed: int, *, task="qa"
) -> SyntheticSample:
    """RULER ``qa`` sample: record ``index``'s gold document among distractors up to ``length``.

    ``records``: dicts with ``question``, ``answers`` (list of strings) and ``context`` (the gold
    document); the other records' contexts are the distractors, added in a seeded order while
    the prompt fits; the gold document sits at a seeded position among them.
    """
    rec, rng = records[index], random.Random(seed)
    others = [r["context"] for i, r in enumerate(records) if i != index]
    rng.shuffle(others)
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []
    docs = [rec["context"]]
    for extra in others:
        trial = docs[:]
        trial.insert(rng.randint(0, len(trial)), extra)
        context = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(trial))
        if (
            len(bos) + len(_encode(tokenizer, QA_TEMPLATE.format(context=context, query=rec["question"])))
            > length
        ):
            break
        docs = trial
    context = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(docs))
    ids = bos + _encode(tokenizer, QA_TEMPLATE.format(context=context, query=rec["question"]))
    if len(ids) > length:
        raise ValueError(
            f"qa data record {index}: its own document needs {len(ids)} tokens > length {length}"
        )
    gold = docs.index(rec["context"]) / max(1, len(docs) - 1)
    meta = {"metric": "part", "seed": seed, "documents": len(docs)}
    return SyntheticSample(
        ids, [IGNORE_INDEX] * len(ids), len(ids), tuple(rec["answers"]), task, length, gold, meta
    )


def qa_samples(tokenizer, records: Sequence[dict], lengths: Sequence[int], *, n: int = 4, seed: int = 0):
    """``n`` QA samples per length (records taken in a seeded order)."""
    order = random.Random(seed).sample(range(len(records)), min(n, len(records)))
    return [
        qa_sample(tokenizer, records, i, length, seed + k) for length in lengths for k, i in enumerate(order)
    ]
