"""A table's measurements, read from the output folders of its recipe runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks.repro.spec import Column, Table

WITHIN = 0.01
"""``evals_to_best``: candidates scored until one is within this fraction of the best."""


def eval_runs(out: Path, stage: str | None) -> dict[str, dict]:
    """run name → {eval stage → (tasks, rope)} over the completed eval stages of ``out``."""
    found: dict[str, dict] = {}
    for path in sorted(out.glob("*/results.json")):
        if (stage is not None and path.parent.name != stage) or not (path.parent / "COMPLETE").exists():
            continue
        for run in json.loads(path.read_text())["runs"]:
            found.setdefault(run["name"], {})[path.parent.name] = (run["tasks"], run.get("rope"))
    return found


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def digit_accuracy(answer: str, output: str) -> float:
    """Share (0–100) of the answer's digits at their place in the output's first digit run."""
    m = re.search(r"\d+", output)
    got = m.group(0) if m else ""
    return 100.0 * sum(a == b for a, b in zip(answer, got)) / len(answer)


def _retrieval(tasks: dict, task: str, length: int, digits: bool) -> float | None:
    if task not in tasks:
        return None
    rows = [r for r in tasks[task]["samples"] if r["length"] == length]
    if not digits:
        return _mean([r["score"] for r in rows])
    answers = (lambda r: [r["answer"]]) if task == "passkey" else (lambda r: r["answers"])
    return _mean([_mean([digit_accuracy(a, r["output"]) for a in answers(r)]) for r in rows])


def _by_length(mapping: dict, length: int):
    return mapping.get(str(length), mapping.get(length))


def run_metric(tasks: dict, rope: dict | None, metric: str, length: int | None):
    """One eval-run measurement (None when the run did not measure it)."""
    if metric == "ppl":
        cell = _by_length(tasks.get("ppl", {}).get("by_length", {}), length)
        return cell["ppl"] if cell else None
    if metric in ("passkey", "niah", "passkey_digits", "niah_digits"):
        return _retrieval(tasks, metric.split("_")[0], length, metric.endswith("digits"))
    if metric in ("digits", "exact"):
        d = metric == "digits"
        return _mean([_retrieval(tasks, t, length, d) for t in ("passkey", "niah")])
    if metric == "ruler":
        if "ruler" not in tasks:
            return None
        cell = _by_length(tasks["ruler"].get("by_length", {}), length) or {}
        avg = _by_length(tasks["ruler"]["average"], length)
        return None if avg is None else {"value": avg, "ran": len(cell.get("ran", [])) or None}
    if rope is None:
        return None
    from longctx.rope import RopeSpec
    from longctx.rope.attention_policy import attention_policy

    spec = RopeSpec.from_dict(rope)
    if metric == "stock_hf":
        return spec.method not in ("longrope", "longrope2") or attention_policy(spec) != "short_original"
    if spec.method not in ("longrope", "longrope2"):
        return "1.000 / 1.000" if spec.method != "yarn" else None
    from longctx.rope.longrope import attention_factors

    short, long = attention_factors(spec)
    return f"{short:.3f} / {long:.3f}"


def search_scores(stage_dir: Path) -> list[float] | None:
    """The scores of a completed search stage, in the order they were evaluated."""
    log = stage_dir / "search" / "evaluations.jsonl"
    if not (stage_dir / "COMPLETE").exists() or not log.exists():
        return None
    scores = [json.loads(line)["score"] for line in log.read_text().splitlines() if line.strip()]
    return [s for s in scores if s is not None and s != float("inf")] or None


def search_metric(scores: list[float], metric: str, best: float):
    """Efficiency measurements of one search: candidates scored, its best score, and candidates
    until one is within :data:`WITHIN` of ``best`` (the best of the table's searches)."""
    if metric == "evaluations":
        return len(scores)
    if metric == "best_score":
        return min(scores)
    reached = next((i + 1 for i, s in enumerate(scores) if s <= best * (1 + WITHIN)), None)
    return reached if reached is not None else {"text": f"not reached in {len(scores)}"}


def measure(table: Table, root: Path, variant: str, seed: int) -> dict[str, dict]:
    """{row label: {column key: value}} of one (variant, seed) run of ``table``: the rows read
    from it (a row's own variant, else each column's), the cells it measured."""
    out = root / table.output_dir(variant, seed)
    searches = {r.stage: search_scores(out / r.stage) for r in table.rows if r.stage}
    best = min((min(s) for s in searches.values() if s), default=None)
    runs = {stage: eval_runs(out, stage) for stage in {c.stage for c in table.columns}}  # read once
    values: dict[str, dict] = {}
    for row in table.rows:
        cols = [c for c in table.columns if (row.variant or c.variant) == variant]
        if row.stage is not None:
            scores = searches[row.stage]
            cells = {c.key: scores and search_metric(scores, c.metric, best) for c in cols}
        else:
            cells = {c.key: _cell(runs[c.stage].get(row.run, {}), c) for c in cols}
        if any(v is not None for v in cells.values()):
            values[row.label] = {k: v for k, v in cells.items() if v is not None}
    return values


def _cell(stages: dict, col: Column):
    """The column's value from the first eval stage of the run that measured it."""
    for tasks, rope in stages.values():
        value = run_metric(tasks, rope, col.metric, col.length)
        if value is not None:
            return value
    return None
