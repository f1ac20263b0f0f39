"""One report writer: ``results.json`` (atomic), ``report.md`` tables and PNG plots.

Results layout (plain dicts; JSON turns integer keys into strings, so readers here accept both)::

    {"lengths": [...], "runs": [{"name", "model", "spec", "tasks": {task: result}}]}

where ``result`` is what the ``eval.tasks.EVAL_TASKS`` function returned: ``ppl`` →
``{"by_length": {n: {"ppl", ...}}}``; ``passkey`` → ``eval.passkey.score_passkey``; ``niah`` →
``eval.niah.score_niah``; ``ruler`` → ``eval.ruler.score_ruler``; ``short`` →
``eval.short_tasks.short_task_scores``. Plots: perplexity vs length (one line per run), passkey
accuracy by length, RULER average by length, one NIAH heatmap per run.

RULER gets one section per run: its effective length first, then task × length scores with
the 13-task average row ("n/a (missing: …)" where a task did not run, e.g. QA without local
data) and the mean over the tasks that ran. Both are recomputed from the per-task scores
(``eval.ruler.length_summary``), so results written before these fields existed still read.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from longctx.eval.ruler import RULER_13, RULER_THRESHOLD, effective_length, length_summary
from longctx.rope.files import write_text_atomic


def write_json_atomic(data: dict, path: str | os.PathLike) -> Path:
    """Write ``data`` as JSON to a temp file in the same directory, then ``os.replace``."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def safe_name(name: str) -> str:
    """File-name-safe form of a run name (``niah_<name>.png``)."""
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "run"


def _by_num(mapping: dict) -> list[tuple[float, object]]:
    """Items of a ``{length or depth: value}`` dict with numeric keys, sorted."""
    return sorted((float(k), v) for k, v in mapping.items())


def _fmt(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


SERIES = {
    "ppl": ("Perplexity", "by_length", lambda v: v["ppl"], 2),
    "passkey": ("Passkey accuracy (%)", "by_length", lambda v: v, 1),
    "ruler": ("RULER average over the tasks that ran (%)", "average", lambda v: v, 1),
}
"""Per-length tasks: (title, key of the per-length mapping, value of one entry, decimals)."""


def _series(results: dict, task: str) -> dict[str, dict[float, float | None]]:
    """``{run name: {length: value}}`` for the runs that have ``task``."""
    _, key, extract, _ = SERIES[task]
    return {
        run["name"]: {n: extract(v) for n, v in _by_num(run["tasks"][task][key])}
        for run in results["runs"]
        if task in run["tasks"]
    }


def _length_table(title: str, series: dict, digits: int) -> list[str]:
    lengths = sorted({n for s in series.values() for n in s})
    lines = [f"## {title}", "", "| run | " + " | ".join(_num(n) for n in lengths) + " |"]
    lines.append("|---|" + "---:|" * len(lengths))
    for name, s in series.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(s.get(n), digits) for n in lengths) + " |")
    return [*lines, ""]


def _ruler_view(result: dict) -> dict | None:
    """Per-length summaries and effective lengths of a ``score_ruler`` result; None without scores."""
    per_task = result.get("tasks") or {}
    if not per_task:
        return None
    suite = list(result.get("suite") or RULER_13)
    lengths = sorted({int(float(n)) for by_len in per_task.values() for n in by_len})
    by_length = {n: length_summary(per_task, n, suite) for n in lengths}
    threshold = result.get("threshold", RULER_THRESHOLD)
    return {
        "suite": suite,
        "lengths": lengths,
        "by_length": by_length,
        "threshold": threshold,
        "effective_length": effective_length({n: v["average_13"] for n, v in by_length.items()}, threshold),
        "effective_length_ran": effective_length(
            {n: v["average_ran"] for n, v in by_length.items()}, threshold
        ),
        "missing": [t for t in suite if any(t in v["missing"] for v in by_length.values())],
    }


def _ruler_effective(view: dict, *, long: bool = True) -> str:
    """``**Effective length: N**`` (or none / n/a) and, when tasks are missing, which and what the
    tasks that ran give."""
    eff, n_suite = view["effective_length"], len(view["suite"])
    head = _num(eff) if eff is not None else ("n/a" if view["missing"] else "none")
    if not long:
        return head + (f" (missing: {', '.join(view['missing'])})" if view["missing"] else "")
    line = (
        f"**Effective length: {head}** (the longest length whose {n_suite}-task average, and every "
        f"shorter length's, is above {view['threshold']:g})"
    )
    if view["missing"]:
        incomplete = [_num(n) for n, v in view["by_length"].items() if v["missing"]]
        ran = view["effective_length_ran"]
        line += (
            f"; the {n_suite}-task average is incomplete at {', '.join(incomplete)} (missing: "
            f"{', '.join(view['missing'])}); over the tasks that ran: {_num(ran) if ran is not None else 'none'}"
        )
    return line


def _ruler_tables(results: dict) -> list[str]:
    lines = []
    for run in results["runs"]:
        view = _ruler_view(run["tasks"].get("ruler") or {})
        if view is None:
            continue
        per_task = run["tasks"]["ruler"]["tasks"]
        lengths, by_length = view["lengths"], view["by_length"]
        extra = sorted(t for t in per_task if t not in view["suite"])
        lines += [f"## RULER — {run['name']}", "", _ruler_effective(view), ""]
        lines.append("| task | " + " | ".join(_num(n) for n in lengths) + " |")
        lines.append("|---|" + "---:|" * len(lengths))
        for task in view["suite"] + extra:
            scores = {int(float(n)): v for n, v in per_task.get(task, {}).items()}
            cells = [_fmt(scores[n], 1) if n in scores else "not run" for n in lengths]
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
        avg = [
            _fmt(v["average_13"], 1) if not v["missing"] else f"n/a (missing: {', '.join(v['missing'])})"
            for v in by_length.values()
        ]
        lines.append(f"| **average ({len(view['suite'])} tasks)** | " + " | ".join(avg) + " |")
        ran = [f"{_fmt(v['average_ran'], 1)} ({len(v['ran'])})" for v in by_length.values()]
        lines += ["| average (tasks that ran) | " + " | ".join(ran) + " |", ""]
    return lines


def _niah_tables(results: dict) -> list[str]:
    lines = []
    for run in results["runs"]:
        grid = run["tasks"].get("niah")
        if not grid:
            continue
        lines += [f"## NIAH — {run['name']} (average {_fmt(grid['average'], 1)}%)", ""]
        lines.append("| depth \\ length | " + " | ".join(_num(n) for n in grid["lengths"]) + " |")
        lines.append("|---|" + "---:|" * len(grid["lengths"]))
        for depth, row in zip(grid["depths"], grid["scores"]):
            lines.append(f"| {_num(float(depth))} | " + " | ".join(_fmt(v, 0) for v in row) + " |")
        lines.append("")
    return lines


def _short_table(results: dict) -> list[str]:
    rows = [(r["name"], r["tasks"]["short"]) for r in results["runs"] if "short" in r["tasks"]]
    if not rows:
        return []
    metrics = sorted({(t, m) for _, res in rows for t, ms in res["scores"].items() for m in ms})
    lines = ["## Short tasks (lm-evaluation-harness)", ""]
    lines.append("| run | " + " | ".join(f"{t} {m}" for t, m in metrics) + " |")
    lines.append("|---|" + "---:|" * len(metrics))
    for name, res in rows:
        lines.append(f"| {name} | " + " | ".join(_fmt(res["scores"][t].get(m), 4) for t, m in metrics) + " |")
    return [*lines, ""]


def _summary(results: dict) -> list[str]:
    """The last run (a chain's final model) against every other run, at the shortest length (L in
    a recipe's eval) and its 8× and 16×: perplexity and passkey, then the ppl ratio to the first
    run (the base) at L. Empty with fewer than two runs or neither task."""
    ppl, passkey = _series(results, "ppl"), _series(results, "passkey")
    runs = [run["name"] for run in results["runs"]]
    lengths = sorted({n for s in (*ppl.values(), *passkey.values()) for n in s})
    if len(runs) < 2 or not lengths:
        return []
    L = lengths[0]
    shown = [n for n in (L, 8 * L, 16 * L) if n in lengths] or lengths[:1]
    cols = [(name, task, n) for n in shown for name, task in (("ppl", ppl), ("passkey %", passkey)) if task]
    head = runs[-1]
    lines = [
        "## Summary",
        "",
        f"**{head}** (the last run) against the others at L = {_num(L)}"
        + "".join(f", {_num(n)} ({_num(n / L)}×)" for n in shown[1:])
        + ":",
        "",
        "| run | " + " | ".join(f"{c} @ {_num(n)}" for c, _, n in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for run in [head, *runs[:-1]]:
        cells = [_fmt(task.get(run, {}).get(n), 2 if c == "ppl" else 0) for c, task, n in cols]
        lines.append(f"| {'**' + run + '**' if run == head else run} | " + " | ".join(cells) + " |")
    first = ppl.get(runs[0], {}).get(L)
    if first and ppl.get(head, {}).get(L):
        lines += ["", f"ppl at L: {ppl[head][L] / first:.3f}× the {runs[0]} run's."]
    return [*lines, ""]


def markdown_report(results: dict) -> str:
    """The markdown tables of every task present in ``results``, a summary first."""
    lines = ["# Evaluation report", "", *_summary(results)]
    for run in results["runs"]:
        view = _ruler_view(run["tasks"].get("ruler") or {})
        lines.append(
            f"- **{run['name']}**: model `{run['model']}`"
            + (f", spec `{run['spec']}`" if run.get("spec") else "")
            + (f"; RULER effective length {_ruler_effective(view, long=False)}" if view else "")
        )
    lines.append("")
    for task, (title, _, _, digits) in SERIES.items():
        series = _series(results, task)
        if series:
            lines += _length_table(title, series, digits)
    lines += _ruler_tables(results) + _niah_tables(results) + _short_table(results) + _serving_table(results)
    return "\n".join(lines)


SERVING_CHOICES = {
    "switching": "per forward: max position + 1 > L",
    "forced_long": "long for every input",
    "reprefill": "re-prefill once at L + 1",
    "long_neighbour": "per batch step, a long request beside it",
    "stitched": "per token position (< L short)",
}
"""Labels of the choices ``eval.serving`` measures; each engine row names the one it follows
(``eval.serving.ENGINE_RULES``)."""


def _serving_table(results: dict) -> list[str]:
    """Serving parity (``eval.serving``): per run and ENGINE (each by the factor-set rule it
    follows), the largest logit gap of its cached decoding vs the reference forward at and past L,
    whether its cache is self-consistent, greedy agreement, and the short-context cost."""
    rows = []
    for run in results["runs"]:
        sp = run["tasks"].get("serving")
        if not sp:
            continue
        engines = sp.get("engines") or {label: key for key, label in SERVING_CHOICES.items()}
        for engine, key in engines.items():
            label = SERVING_CHOICES.get(key, key)
            c = sp["choices"].get(key) or {}
            if not c.get("available", True):
                rows.append(
                    f"| {run['name']} | {engine} | {label} | n/a | n/a | n/a | n/a | {c.get('note', '')} |"
                )
                continue
            cost = ""
            if key == "forced_long" and c.get("short_ppl"):
                cost = ", ".join(
                    f"{_num(float(n))}: {v['increase_pct']:+.2f} %" for n, v in c["short_ppl"].items()
                )
            rows.append(
                f"| {run['name']} | {engine} | {label} | {_fmt(c.get('gap_at_or_below_L'), 4)} "
                f"| {_fmt(c.get('gap_above_L'), 4)} | {_fmt(c.get('self_gap'), 4)} "
                f"| {_fmt(c.get('token_agreement_pct'), 1)} | {cost} |"
            )
    if not rows:
        return []
    return [
        "## Serving parity across L, per engine",
        "",
        "Each engine's rule for choosing a `longrope` factor set, emulated: its cached decoding vs the "
        "reference (the whole prefix re-forwarded each step under transformers' length rule; largest "
        "|Δlogit| at or below L and past L), vs a full forward under its own rule (self gap: is its "
        "cache consistent?), greedy tokens agreeing with the reference, and the short-context ppl cost "
        "of serving every length with the long factors.",
        "",
        "| run | engine | rule | gap ≤ L | gap > L | self gap | token agreement % | short ppl cost |",
        "|---|---|---|---:|---:|---:|---:|---|",
        *rows,
        "",
    ]


def _line_plot(series: dict, title: str, path: Path, *, log_y: bool = False) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, s in series.items():
        points = [(n, v) for n, v in sorted(s.items()) if v is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=name)
    lengths = sorted({n for s in series.values() for n in s})
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [_num(n) for n in lengths])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    if log_y:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def niah_heatmap(grid: dict, title: str, path: str | os.PathLike) -> Path:
    """Heatmap of a ``score_niah`` grid: depth (rows) × length (columns), 0–100 %."""
    scores = [[float("nan") if v is None else v for v in row] for row in grid["scores"]]
    width, height = max(4.0, 1.6 + 0.8 * len(grid["lengths"])), max(3.0, 1.4 + 0.45 * len(grid["depths"]))
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(scores, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for i, row in enumerate(grid["scores"]):
        for j, value in enumerate(row):
            if value is not None:
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(grid["lengths"])), [_num(float(n)) for n in grid["lengths"]])
    ax.set_yticks(range(len(grid["depths"])), [f"{float(d):.0%}" for d in grid["depths"]])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="score (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_report(results: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``results.json``, ``report.md`` and the PNGs for the tasks present; return paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads(json.dumps(results, default=str))  # one key form (str) everywhere
    written = [write_json_atomic(results, out / "results.json")]
    md = out / "report.md"
    md.write_text(markdown_report(results) + "\n")
    written.append(md)
    for task, (title, *_) in SERIES.items():
        series = _series(results, task)
        if series:
            written.append(_line_plot(series, title, out / f"{task}.png", log_y=task == "ppl"))
    for run in results["runs"]:
        if run["tasks"].get("niah"):
            written.append(
                niah_heatmap(
                    run["tasks"]["niah"], f"NIAH — {run['name']}", out / f"niah_{safe_name(run['name'])}.png"
                )
            )
    return written
