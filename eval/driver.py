"""The one evaluation driver: runs × tasks → ``results.json`` (atomic, after every task, so a long
run keeps what it has), ``report.md`` and plots. ``python -m longctx.eval`` / ``longctx eval``
and a recipe's ``eval`` stage both call :func:`evaluate`, so they write one schema:

    {"lengths": [...], "tasks": [...], "runs": [
        {"name", "model", "spec" (label), "rope" (RopeSpec dict or null), "tasks": {task: {...}},
         "seconds": {task: s}}, ...]}

A run is a model (loaded once for consecutive runs of the same model: one model in memory at a
time) with a RoPE spec installed (or the checkpoint's own RoPE).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from longctx.eval.report import write_json_atomic, write_report
from longctx.eval.tasks import EVAL_TASKS, EvalSettings


@dataclass(frozen=True)
class Run:
    """One line of the comparison."""

    name: str
    model: str
    """The model's key: runs with the same key share one loaded model."""
    load: Callable[[], object]
    """Loads the model (on its device, in eval mode)."""
    spec: Callable[[object], object] | None = None
    """``spec(model) -> RopeSpec`` to install before the tasks; None keeps the model's own RoPE."""


def spec_label(spec) -> str:
    if spec is None:
        return "as saved"
    return f"{spec.method} L={spec.original_length}→{spec.target_length}" + (
        f", n̂={spec.n_hat}" if spec.n_hat else ""
    )


def evaluate(
    runs: list[Run],
    tokenizer,
    tasks: list[str],
    settings: EvalSettings,
    out_dir: str | Path,
    *,
    release: Callable[[object], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Every task on every run, in order; returns the results (also written to ``out_dir``)."""
    from longctx.eval.measure import MeasurementCache, digest, model_fingerprint
    from longctx.rope import apply_rope

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    out = Path(out_dir)
    results = {"lengths": list(settings.lengths), "tasks": list(tasks), "runs": []}
    cache = MeasurementCache(out / "measurements.jsonl")
    identity = {
        "tokenizer": digest(sorted(tokenizer.get_vocab().items())),
        "settings": _settings_key(settings),
    }
    key, model = None, None
    for run in runs:
        if model is None or run.model != key:
            if model is not None and release is not None:
                release(model)
            key, model = run.model, None
            model = run.load()
            identity["model"] = model_fingerprint(model)
        spec = run.spec(model) if run.spec is not None else None
        if spec is not None:
            apply_rope(model, spec)
        entry = {
            "name": run.name,
            "model": run.model,
            "spec": spec_label(spec),
            "rope": spec.to_dict() if spec is not None else None,
            "tasks": {},
            "seconds": {},
        }
        results["runs"].append(entry)
        rope = _rope_key(model, spec, settings.lengths)
        for task in tasks:
            measured = MeasurementCache.key(measure=f"eval:{task}", rope=rope, **identity)
            found = cache.get(measured)
            if found is None:
                log(f"[eval] {run.name}: {task}")
                start = time.perf_counter()
                value = json.loads(json.dumps(EVAL_TASKS[task](model, tokenizer, settings), default=str))
                found = cache.put(
                    measured, {"value": value, "seconds": round(time.perf_counter() - start, 3)}
                )
            else:
                log(f"[eval] {run.name}: {task} (measured before: {out / 'measurements.jsonl'})")
            entry["tasks"][task], entry["seconds"][task] = found["value"], found["seconds"]
            write_json_atomic(results, out / "results.json")
    if model is not None and release is not None:
        release(model)
    files = write_report(results, out)
    log(f"[eval] report: {out / 'report.md'} (+ {len(files) - 1} files)")
    return results


def _settings_key(settings: EvalSettings) -> dict:
    """The settings that decide a task's result (not how it reports progress)."""
    values = dataclasses.asdict(settings)
    values.pop("progress", None)
    return values


def _rope_key(model, spec, lengths) -> list:
    """The rotary each evaluated length runs under (``eval.measure.rope_fingerprint``), or the
    checkpoint's own RoPE config when no spec is installed."""
    from longctx.eval.measure import rope_fingerprint

    if spec is None:
        return [
            getattr(model.config, "rope_parameters", None),
            getattr(model.config, "max_position_embeddings", None),
        ]
    return [rope_fingerprint(spec, n) for n in lengths]
