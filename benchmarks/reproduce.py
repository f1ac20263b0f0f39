"""``longctx reproduce``: the published tables, run through the product and rendered from results.

    longctx reproduce --list                      # the tables, their recipes and what is measured
    longctx reproduce --only no_finetune_8x       # run its recipe(s) through `longctx run`, record, render
    longctx reproduce                             # render docs/REPRODUCTION*.md from docs/results/

Each table is a spec in ``benchmarks/tables/`` (``benchmarks.repro.spec``). ``--only T`` runs
each of its variants × seeds with ``longctx run RECIPE OVERRIDES output_dir=… seed=…`` (a rerun
skips finished stages, resumes an interrupted one), reads the measurements from the output
folders (``benchmarks.repro.measure``) into ``docs/results/T.json`` and re-renders every
document (``benchmarks.repro.render``). Values measured before this path existed are kept in
each results file under ``carried`` with their source; a fresh measurement of a cell replaces
its carried value.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.repro.measure import measure
from benchmarks.repro.render import document, load_results, results_path
from benchmarks.repro.spec import Table, load_tables
from longctx.checkout import checkout_root
from longctx.rope.files import write_text_atomic


def run_table(root: Path, table: Table, seeds: list[int] | None = None) -> None:
    """Every variant × seed of ``table`` through ``longctx run``, then its results recorded."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for name, variant in table.variants.items():
        for seed in seeds or table.seeds:
            cmd = [sys.executable, "-m", "longctx.cli", "run", table.recipe_of(name), *variant.overrides,
                   f"output_dir={table.output_dir(name, seed)}", f"seed={seed}"]  # fmt: skip
            print("+", " ".join(cmd[2:]), flush=True)
            subprocess.run(cmd, cwd=root, env=env, check=True)
    record(root, table, seeds)


def record(root: Path, table: Table, seeds: list[int] | None = None) -> dict:
    """The measurements of ``table``'s output folders on this machine, merged into its results
    file (seeds not rerun keep their values)."""
    results = load_results(root, table)
    measured = results.setdefault("measured", {})
    for name in table.variants:
        for seed in seeds or table.seeds:
            values = measure(table, root, name, seed)
            if values:
                measured.setdefault(name, {})[str(seed)] = values
    import torch

    stamp = f"{datetime.date.today()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    results["updated"] = stamp
    write_text_atomic(results_path(root, table), json.dumps(results, indent=1, sort_keys=True) + "\n")
    return results


def render_all(root: Path, tables: list[Table]) -> list[Path]:
    written = []
    for doc in sorted({t.doc for t in tables}):
        path = root / "docs" / doc
        write_text_atomic(path, document(root, tables, doc))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="longctx reproduce", description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma list of table ids to run (default: render only)")
    p.add_argument("--seeds", default="", help="comma list of seeds to run (default: the table's)")
    p.add_argument("--record-only", action="store_true", help="read the outputs already here; run nothing")
    p.add_argument("--list", action="store_true", help="list the tables")
    args = p.parse_args(argv)
    root = checkout_root(purpose="longctx reproduce")
    tables = load_tables(root)
    if args.list:
        for t in tables:
            n = sum(len(r) for r in load_results(root, t).get("measured", {}).values())
            print(
                f"{t.id:28s} {t.doc:22s} {t.recipe}  ({len(t.variants)} variant(s) × seeds {t.seeds}; {n} measured)"
            )
        return 0
    by_id = {t.id: t for t in tables}
    wanted = [x for x in args.only.split(",") if x]
    unknown = [x for x in wanted if x not in by_id]
    if unknown:
        print(
            f"longctx reproduce: --only {','.join(unknown)}: unknown; expected some of {sorted(by_id)}",
            file=sys.stderr,
        )
        return 2
    seeds = [int(s) for s in args.seeds.split(",") if s] or None
    for t in wanted:
        record(root, by_id[t], seeds) if args.record_only else run_table(root, by_id[t], seeds)
    for path in render_all(root, tables):
        print(f"wrote {path.relative_to(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
