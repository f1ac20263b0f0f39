"""Needle-in-a-haystack grid over context length × needle depth.

Protocol (gkamradt's NIAH, as formalised by RULER arXiv 2404.06654 §3.1 ``niah_single``): a
needle sentence ("One of the special magic numbers for X is: N.") sits at a relative depth
of a long haystack; the model greedily answers the question at the end and the sample
scores RULER's ``string_match_all`` (percentage of the needle's values found in the output).
The grid is scored per (depth, length) cell and drawn as a heatmap by ``eval.report``.
"""

from __future__ import annotations

from collections.abc import Sequence

from longctx.data.samples import SyntheticSample
from longctx.eval.generation import greedy_outputs, mean_by
from longctx.eval.ruler import METRICS, generation_budget


def score_niah(samples: Sequence[SyntheticSample], outputs: Sequence[str]) -> dict:
    """Grid of scores (0–100): ``scores[i][j]`` is depth ``depths[i]`` at length ``lengths[j]``.

    Cells with no sample are ``None``; ``average`` is the mean over the samples.
    """
    if len(samples) != len(outputs):
        raise ValueError(f"score_niah: {len(outputs)} outputs for {len(samples)} samples")
    rows = [
        {
            "length": s.length,
            "depth": round(float(s.depth), 4),
            "answers": list(s.answers),
            "output": out,
            "score": 100.0 * METRICS[s.meta.get("metric", "all")](out, s.answers),
        }
        for s, out in zip(samples, outputs)
    ]
    cells = mean_by(rows, ["depth", "length"])
    lengths = sorted({r["length"] for r in rows})
    depths = sorted(cells)
    return {
        "lengths": lengths,
        "depths": depths,
        "scores": [[cells[d].get(n) for n in lengths] for d in depths],
        "average": sum(r["score"] for r in rows) / len(rows) if rows else None,
        "samples": rows,
    }


def niah_eval(
    model, tokenizer, samples: Sequence[SyntheticSample], *, max_new_tokens: int | None = 32, progress=True
) -> dict:
    """Greedy-decode every needle prompt and score the grid (see :func:`score_niah`)."""
    budgets = [generation_budget(s.task, max_new_tokens) for s in samples]
    outputs = greedy_outputs(
        model, tokenizer, samples, max_new_tokens=budgets, progress=progress, desc="niah"
    )
    return score_niah(samples, outputs)


def niah_samples(
    tokenizer,
    lengths: Sequence[int],
    depths: Sequence[float],
    *,
    task: str = "niah_single",
    per_cell: int = 1,
    seed: int = 0,
) -> list[SyntheticSample]:
    """Samples from ``data.synthetic.RULER_TASKS[task]`` at every (length, depth, repeat)."""
    from longctx.data.synthetic import RULER_TASKS

    if task not in RULER_TASKS:
        raise ValueError(f"niah task {task!r}: expected one of {sorted(RULER_TASKS)}")
    make = RULER_TASKS[task]
    return [
        make(tokenizer, length, seed + 1000 * i + k, depth=depth)
        for length in lengths
        for i, depth in enumerate(depths)
        for k in range(per_cell)
    ]
