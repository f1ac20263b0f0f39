"""One renderer: every table spec and its committed results → docs/REPRODUCTION*.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks.repro.spec import Claim, Column, Table

NOISE_SAMPLES = 2
"""A retrieval gap worth at most this many of the compared samples is no verdict."""


def results_path(root: Path, table: Table) -> Path:
    return root / "docs" / "results" / f"{table.id}.json"


def load_results(root: Path, table: Table) -> dict:
    path = results_path(root, table)
    return json.loads(path.read_text()) if path.exists() else {"measured": {}, "carried": {}, "sources": []}


# ----- cells -----------------------------------------------------------------------------------
def _number(value):
    if isinstance(value, dict):
        return value.get("value")
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def seed_values(table: Table, results: dict, row: str, col: Column) -> list:
    """The cell's value for every seed measured (a relative column divided per seed)."""
    variant = next((r.variant for r in table.rows if r.label == row and r.variant), col.variant)
    by_seed = results.get("measured", {}).get(variant, {})
    out = []
    for seed in table.seeds:
        values = by_seed.get(str(seed), {})
        value = values.get(row, {}).get(col.key)
        if value is not None and col.relative_to is not None:
            ref = _number(values.get(col.relative_to, {}).get(col.key))
            value = {"text": "–"} if not ref or _number(value) is None else _number(value) / ref
        if value is not None:
            out.append(value)
    return out


def cell_range(table: Table, results: dict, row: str, col: Column) -> tuple[float, float, float, int] | None:
    """(mean, low, high, seeds) of a numeric cell; from carried values when no seed was measured."""
    numbers = [n for n in map(_number, seed_values(table, results, row, col)) if n is not None]
    if numbers:
        mean = sum(numbers) / len(numbers)
        return mean, min(numbers), max(numbers), len(numbers)
    carried = _carried(results, row, col)
    if isinstance(carried, dict) and "mean" in carried:
        h = carried.get("half_range", 0.0)
        return carried["mean"], carried["mean"] - h, carried["mean"] + h, carried.get("n", 1)
    return None


def _carried(results: dict, row: str, col: Column):
    """A carried value (a relative column: the row's mean over the reference row's)."""
    carried = results.get("carried", {})
    value = carried.get(row, {}).get(col.key)
    if col.relative_to is None or value is None:
        return value
    if not isinstance(value, dict) or "mean" not in value:
        return {"text": "–"}  # a ratio of a non-number (e.g. "not reached")
    ref = carried.get(col.relative_to, {}).get(col.key)
    if not isinstance(ref, dict) or not ref.get("mean"):
        return None
    return {"mean": value["mean"] / ref["mean"], "half_range": 0.0, "n": value.get("n", 1)}


def cell_text(table: Table, results: dict, row: str, col: Column) -> str:
    values = seed_values(table, results, row, col)
    sample = values[0] if values else _carried(results, row, col)
    if sample is None:
        return "pending"
    if isinstance(sample, bool):
        return "yes" if sample else "no"
    if isinstance(sample, str):
        return sample
    if isinstance(sample, dict) and "text" in sample:
        return sample["text"]
    mean, low, high, n = cell_range(table, results, row, col)
    text = f"{mean:.{col.digits}f}"
    if table.cell == "spread":
        text += f" ± {(high - low) / 2:.{col.digits}f}" + (f" (n={n})" if n < len(table.seeds) else "")
    ran = sample.get("ran") if isinstance(sample, dict) else None
    return text + (f" ({ran} of 13)" if ran and ran < 13 else "")


# ----- claims ----------------------------------------------------------------------------------
def _side(table, results, col, labels, better):
    """(label, mean, low, high, seeds) of the best of ``labels`` (by mean)."""
    found = [(label, cell_range(table, results, label, col)) for label in labels]
    found = [(label, *r) for label, r in found if r is not None]
    if not found:
        return None
    return (min if better == "lower" else max)(found, key=lambda x: x[1])


def verdict(table: Table, results: dict, claim: Claim) -> tuple[str, str]:
    """(verdict, numbers) of one claim: ranges over the seeds apart, or a samples noise rule."""
    col = next(c for c in table.columns if c.header == claim.column)
    a = _side(table, results, col, claim.rows, claim.better)
    b = _side(table, results, col, claim.against, claim.better)
    if a is None or b is None:
        return "pending", "not measured yet"
    numbers = f"{a[0]} {a[1]:.{col.digits}f} vs {b[0]} {b[1]:.{col.digits}f} ({claim.column})"
    seeds = min(a[4], b[4])
    partial = (
        f" (on {seeds} of {len(table.seeds)} seeds)"
        if table.cell == "spread" and seeds < len(table.seeds)
        else ""
    )
    if claim.noise == "samples" and abs(a[1] - b[1]) <= NOISE_SAMPLES * 100.0 / (claim.samples or 1):
        return f"**no difference beyond {NOISE_SAMPLES} samples**{partial}", numbers

    def apart(x, y) -> bool:  # x better than y beyond both ranges
        return x[3] < y[2] if claim.better == "lower" else x[2] > y[3]

    if apart(a, b):
        return f"**holds**{partial}", numbers
    if apart(b, a):
        return f"**does not hold**{partial}", numbers
    return f"**no difference beyond the seed spread**{partial}", numbers


# ----- the document ----------------------------------------------------------------------------
def recipe_view(root: Path, table: Table) -> dict:
    """The table's recipe, validated with its main variant's overrides, stages keyed by name."""
    from longctx.train.load import load_recipe

    variant = table.variants.get("main") or next(iter(table.variants.values()))
    name = "main" if "main" in table.variants else next(iter(table.variants))
    path = root / table.recipe_of(name)
    recipe = load_recipe(path, variant.overrides, check_files=False).model_dump(mode="json")
    recipe["stages"] = {s["name"]: s for s in recipe["stages"]}
    return recipe


def render_setup(text: str, recipe: dict) -> str:
    """``{a.b.c}`` fields of ``text`` read from ``recipe`` (a missing key is an error, not blank)."""

    def field(m: re.Match) -> str:
        value = recipe
        for part in m.group(1).split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]
        return str(value)

    return re.sub(r"\{([A-Za-z_][\w.]*)\}", field, text)


def commands(table: Table) -> list[str]:
    lines = [f"    longctx reproduce --only {table.id}"]
    for name, variant in table.variants.items():
        for seed in table.seeds:
            extra = [*variant.overrides, f"output_dir={table.output_dir(name, seed)}"]
            extra += [f"seed={seed}"] if seed else []
            lines.append(f"    longctx run {table.recipe_of(name)} " + " ".join(extra))
    return lines


def section(root: Path, table: Table, results: dict) -> list[str]:
    lines = [f"## {table.title}", ""]
    if table.setup:
        lines += [render_setup(table.setup.strip(), recipe_view(root, table)), ""]
    lines += [*commands(table), ""]
    header = ["row", *[c.header for c in table.columns]]
    lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(table.columns)]
    carried = False
    for row in table.rows:
        cells = [cell_text(table, results, row.label, c) for c in table.columns]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
        carried |= any(
            not seed_values(table, results, row.label, c) and _carried(results, row.label, c) is not None
            for c in table.columns
        )
    if results.get("measured"):
        lines += [
            "",
            f"Measured by `longctx reproduce --only {table.id}` ({results.get('updated', 'date not recorded')}).",
        ]
    if carried:
        lines += [
            f"{'' if results.get('measured') else chr(10)}Cells not measured that way: {source}"
            for source in results.get("sources", [])
        ]
    if table.notes:
        lines += ["", table.notes.strip()]
    return [*lines, ""]


def document(root: Path, tables: list[Table], doc: str) -> str:
    mine = [t for t in tables if t.doc == doc]
    intro = root / "benchmarks" / "tables" / f"{Path(doc).stem}.intro.md"
    lines = [intro.read_text().strip(), ""] if intro.exists() else [f"# {Path(doc).stem}", ""]
    results = {t.id: load_results(root, t) for t in mine}
    claims = [(t, c) for t in mine for c in t.claims]
    if claims:
        lines += ["## Summary: which claims hold at this scale", "", "| claim | table | at this scale | numbers |",
                  "|---|---|---|---|"]  # fmt: skip
        for t, c in claims:
            v, numbers = verdict(t, results[t.id], c)
            lines.append(f"| {c.text} | {t.id} | {v} | {numbers} |")
        lines.append("")
    for t in mine:
        lines += section(root, t, results[t.id])
    return "\n".join(lines).rstrip() + "\n"
