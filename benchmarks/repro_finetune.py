"""The fine-tuning table of docs/REPRODUCTION.md, fairly: three seeds, mean ± spread, held-out text.

    python benchmarks/reproduce.py --only finetune

Design (issue 17 part 4):

- the base is the main job's (``recipes/tiny.yaml``), pretrained on ``kjv_train`` only: the six
  held-out books (``kjv_heldout``) that every perplexity here is measured on were never seen by
  any model;
- both fine-tunes continue on the base's own distribution (same books, same passkey share);
- ``recipes/repro/mixed_window.yaml`` (LongRoPE2: 30 % of tokens in 128-token rows with the
  original RoPE) and ``recipes/repro/long_window.yaml`` (every row 1024 tokens, rescaled) train
  on the same number of tokens (``tests/train/test_recipes.py`` counts them);
- each recipe runs with seeds :data:`SEEDS` (the search, the data order and the fine-tune all
  move with the seed); every cell is mean ± half the range over the seeds, and a claim holds
  only when the two compared ranges do not overlap in its favour (:func:`judge`).
"""

from __future__ import annotations

from pathlib import Path

SEEDS = (0, 1, 2)
RECIPES = {"mixed": "recipes/repro/mixed_window.yaml", "long": "recipes/repro/long_window.yaml"}
LENGTHS = (128, 256, 512, 1024)
ROWS = (
    ("base (original RoPE)", "mixed"),
    ("searched 8×, no fine-tune", "mixed"),
    ("mixed-window fine-tune", "mixed"),
    ("long-window fine-tune", "long"),
    ("long-window fine-tune + readjust", "long"),
)
"""(run name in the recipes' eval stages, the recipe whose output holds it)."""


def run_dir(out: Path, kind: str, seed: int) -> Path:
    return out / f"{kind}_window_s{seed}"


def overrides(kind: str, seed: int) -> list[str]:
    return [f"seed={seed}", f"output_dir=outputs/repro/{kind}_window_s{seed}"]


def run_all(run_recipe) -> None:
    """Every (seed, recipe) through the real runner; finished stages are skipped on a rerun."""
    for seed in SEEDS:
        for kind, recipe in RECIPES.items():
            run_recipe(recipe, *overrides(kind, seed))


def spread(values: list[float | None]) -> tuple[float, float, float, int] | None:
    """(mean, min, max, n) over the seeds that finished; None when none has."""
    got = [v for v in values if v is not None]
    if not got:
        return None
    return sum(got) / len(got), min(got), max(got), len(got)


def fmt_spread(s: tuple[float, float, float, int] | None, digits: int = 2) -> str:
    if s is None:
        return "pending"
    mean, lo, hi, n = s
    return f"{mean:.{digits}f} ± {(hi - lo) / 2:.{digits}f}" + ("" if n == len(SEEDS) else f" (n={n})")


def judge(better, worse, *, lower_is_better: bool = True) -> bool | str | None:
    """A claim "``better`` beats ``worse``" over seeds: True when every seed's value of ``better``
    beats every seed's value of ``worse`` (ranges apart in its favour), False when the ranges are
    apart the other way, "spread" when they overlap (no difference beyond the seed spread), None
    (pending) while a side has fewer than all seeds."""
    if better is None or worse is None or better[3] < len(SEEDS) or worse[3] < len(SEEDS):
        return None
    _, b_lo, b_hi, _ = better
    _, w_lo, w_hi, _ = worse
    if not lower_is_better:
        b_lo, b_hi, w_lo, w_hi = -b_hi, -b_lo, -w_hi, -w_lo
    if b_hi < w_lo:
        return True
    if w_hi < b_lo:
        return False
    return "spread"


def collect(out: Path, load_runs, ppl, retrieval) -> dict[str, dict[str, tuple | None]]:
    """run name → measure → spread over the seeds (ppl@each length, passkey / NIAH / RULER @1024)."""
    cells: dict[str, dict[str, list]] = {name: {} for name, _ in ROWS}
    for seed in SEEDS:
        for name, kind in ROWS:
            d = run_dir(out, kind, seed)
            runs = load_runs(d / "eval_ppl", d / "eval_needles")
            tasks = runs.get(name, {})
            for n in LENGTHS:
                cells[name].setdefault(f"ppl{n}", []).append(ppl(tasks, n) if tasks else None)
            r = retrieval(tasks, 1024) if tasks else {}
            for key in ("passkey", "niah", "ruler"):
                cells[name].setdefault(key, []).append(r.get(key))
    return {name: {k: spread(v) for k, v in measures.items()} for name, measures in cells.items()}


def section(out: Path, load_runs, ppl, retrieval, table) -> tuple[list[str], list[tuple]]:
    """Markdown lines of the fine-tuning section and its claims (text, True / False / "spread" /
    None, evidence)."""
    cells = collect(out, load_runs, ppl, retrieval)
    body = [
        "## 2. Mixed-window vs long-window fine-tuning, and short-context readjustment",
        "",
        f"Seeds {', '.join(map(str, SEEDS))}; every cell is mean ± half the range over the seeds. The base is "
        "the main job's (`recipes/tiny.yaml`), pretrained on the 54 `kjv_train` books with half its rows "
        "synthetic passkey documents; both fine-tunes continue on exactly that distribution. Perplexity "
        "is measured on the six `kjv_heldout` books (Matthew–Romans), which no model was trained on and "
        "no search scored (searches score the `kjv_validation` books). Same DCIS search (8×) per seed in "
        "both recipes. Mixed (LongRoPE2): 600 steps, "
        "30 % of the tokens in 128-token rows with the original RoPE, the rest in 1024-token rows with "
        "the searched factors; long: 194 steps of 1024-token rows only — the same ~396k tokens. Both "
        "micro-batch 2, lr 5e-4 (20 warm-up steps, cosine). Readjust (LongRoPE §3.3): evolution over "
        "`short_factor` at 128 on the long-window model.",
        "",
        "    python benchmarks/reproduce.py --only finetune   # recipes/repro/{mixed,long}_window.yaml × seeds",
        "",
    ]
    header = ["model"] + [f"ppl {n}" for n in LENGTHS] + ["passkey % @1024", "NIAH % @1024", "RULER @1024"]
    rows = [
        [name]
        + [fmt_spread(cells[name][f"ppl{n}"]) for n in LENGTHS]
        + [fmt_spread(cells[name][k], 0) for k in ("passkey", "niah", "ruler")]
        for name, _ in ROWS
    ]
    body += [*table(header, rows), ""]
    c = {name: cells[name] for name, _ in ROWS}
    base, noft = c["base (original RoPE)"], c["searched 8×, no fine-tune"]
    mixed, long, readj = (
        c["mixed-window fine-tune"],
        c["long-window fine-tune"],
        c["long-window fine-tune + readjust"],
    )
    claims = [
        (
            "LongRoPE2: mixed-window fine-tuning keeps short-context perplexity better than long-window "
            "(same tokens)",
            judge(mixed["ppl128"], long["ppl128"]),
            f"ppl@128: base {fmt_spread(base['ppl128'])}, mixed {fmt_spread(mixed['ppl128'])}, "
            f"long {fmt_spread(long['ppl128'])}",
        ),
        (
            "LongRoPE: short-context readjustment lowers short perplexity after long-window fine-tuning",
            judge(readj["ppl128"], long["ppl128"]),
            f"ppl@128: {fmt_spread(readj['ppl128'])} readjusted vs {fmt_spread(long['ppl128'])} not",
        ),
    ]
    for kind, tuned in (("mixed", mixed), ("long", long)):
        claims.append(
            (
                f"Fine-tuning ({kind} windows) on the searched factors improves 8× perplexity over the "
                "searched model alone",
                judge(tuned["ppl1024"], noft["ppl1024"]),
                f"ppl@1024: {fmt_spread(tuned['ppl1024'])} fine-tuned vs {fmt_spread(noft['ppl1024'])} not",
            )
        )
    return body, claims
