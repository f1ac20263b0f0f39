"""Declarative reproduction (``benchmarks.repro``): table specs validate against their recipes, the
committed documents are exactly the rendering of specs + results, measurements are read from the
output folders of real recipe runs, and claims get their verdicts from the noise rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.repro import measure as measure_mod
from benchmarks.repro.render import cell_text, document, load_results, recipe_view, render_setup, verdict
from benchmarks.repro.spec import Table, TableError, load_table, load_tables
from benchmarks.reproduce import record, run_table

ROOT = Path(__file__).resolve().parents[1]


def test_every_table_validates_and_its_recipes_and_setup_lines_resolve():
    from longctx.train.load import load_recipe

    tables = load_tables(ROOT)
    assert {t.id for t in tables} >= {
        "no_finetune_8x",
        "finetune",
        "efficiency",
        "smollm2_16k",
        "smollm2_short",
    }
    for t in tables:
        for name, variant in t.variants.items():
            recipe = load_recipe(ROOT / t.recipe_of(name), variant.overrides, check_files=False)
            names = {s.name for s in recipe.stages}
            assert {r.stage for r in t.rows if r.stage} <= names, t.id
            assert {c.stage for c in t.columns if c.stage and c.variant == name} <= names, t.id
        import re

        assert not re.search(r"\{[A-Za-z_][\w.]*\}", render_setup(t.setup, recipe_view(ROOT, t))), t.id


def test_the_committed_documents_are_the_rendering_of_specs_and_results():
    tables = load_tables(ROOT)
    for doc in {t.doc for t in tables}:
        assert (ROOT / "docs" / doc).read_text() == document(ROOT, tables, doc), (
            f"docs/{doc}: run longctx reproduce"
        )


def test_a_bad_spec_is_one_line_naming_file_and_key(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("id: x\norder: 1\ntitle: t\nrecipe: r.yaml\nvariants: {main: {output_dir: o}}\n"
                    "rows: [{label: a, run: a}]\ncolumns: [{header: h, metric: bleu}]\n")  # fmt: skip
    with pytest.raises(TableError, match=rf"^{path}: columns\.0\.metric: Input should be"):
        load_table(path)


def _table(**kw) -> Table:
    spec = {
        "id": "t", "order": 1, "title": "T", "recipe": "recipes/r.yaml", "seeds": [0, 1, 2],
        "variants": {"main": {"output_dir": "outputs/t"}},
        "rows": [{"label": "ours", "run": "ours"}, {"label": "yarn", "run": "yarn"}],
        "columns": [{"header": "ppl 64", "metric": "ppl", "length": 64},
                    {"header": "passkey % @64", "metric": "passkey", "length": 64, "digits": 0}],
        "claims": [{"text": "ours beats yarn", "column": "ppl 64", "better": "lower", "rows": ["ours"],
                    "against": ["yarn"]}],
    }  # fmt: skip
    return Table(**{**spec, **kw})


def _fake_eval(out: Path, ppl: dict[str, float], passkey: dict[str, list[tuple[str, str]]]) -> None:
    stage = out / "eval"
    stage.mkdir(parents=True)
    runs = []
    for name, value in ppl.items():
        samples = [
            {"length": 64, "answer": a, "output": o, "score": 100.0 * (a == o)} for a, o in passkey[name]
        ]
        runs.append({"name": name, "rope": None,
                     "tasks": {"ppl": {"by_length": {"64": {"ppl": value}}}, "passkey": {"samples": samples}}})  # fmt: skip
    (stage / "results.json").write_text(json.dumps({"runs": runs}))
    (stage / "COMPLETE").write_text("ok\n")


def test_cells_are_mean_and_half_range_over_seeds_and_claims_judge_the_ranges(tmp_path):
    table = _table()
    keys = {"ours": [("12345", "12345")] * 2, "yarn": [("12345", "12345"), ("12345", "9")]}
    for seed, (ours, yarn) in enumerate([(10.0, 12.0), (11.0, 12.5), (10.5, 10.8)]):
        _fake_eval(tmp_path / table.output_dir("main", seed), {"ours": ours, "yarn": yarn}, keys)
    results = record(tmp_path, table)
    assert (
        json.loads((tmp_path / "docs" / "results" / "t.json").read_text())["measured"] == results["measured"]
    )
    ppl, passkey = table.columns
    assert cell_text(table, results, "ours", ppl) == "10.50 ± 0.50"
    assert cell_text(table, results, "yarn", passkey) == "50 ± 0"
    assert (
        verdict(table, results, table.claims[0])[0] == "**no difference beyond the seed spread**"
    )  # 11 vs 10.8
    apart = {
        **results,
        "measured": {"main": {s: v for s, v in results["measured"]["main"].items() if s != "1"}},
    }
    assert verdict(table, apart, table.claims[0])[0] == "**holds** (on 2 of 3 seeds)"
    assert cell_text(table, apart, "ours", ppl) == "10.25 ± 0.25 (n=2)"
    worse = table.model_copy(
        update={"claims": [table.claims[0].model_copy(update={"rows": ["yarn"], "against": ["ours"]})]}
    )
    assert verdict(worse, apart, worse.claims[0])[0] == "**does not hold** (on 2 of 3 seeds)"
    noisy = _table(claims=[{"text": "x", "column": "passkey % @64", "better": "higher", "rows": ["ours"],
                            "against": ["yarn"], "noise": "samples", "samples": 2}])  # fmt: skip
    assert (
        verdict(noisy, results, noisy.claims[0])[0] == "**no difference beyond 2 samples**"
    )  # 100 vs 50 on 2


def test_carried_values_render_until_a_run_replaces_them(tmp_path):
    table = _table(seeds=[0])
    key = table.columns[0].key
    path = tmp_path / "docs" / "results" / "t.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"carried": {"ours": {key: {"mean": 9.0, "half_range": 0.5, "n": 1}}},
                                "sources": ["carried: test"]}))  # fmt: skip
    assert cell_text(table, load_results(tmp_path, table), "ours", table.columns[0]) == "9.00 ± 0.50"
    assert cell_text(table, load_results(tmp_path, table), "yarn", table.columns[0]) == "pending"
    _fake_eval(tmp_path / "outputs/t", {"ours": 7.0, "yarn": 8.0}, {"ours": [], "yarn": []})
    results = record(tmp_path, table)
    assert cell_text(table, results, "ours", table.columns[0]) == "7.00 ± 0.00"
    assert results["sources"] == ["carried: test"]


def test_efficiency_rows_read_search_logs_against_the_best_of_the_table(tmp_path):
    table = _table(seeds=[0], cell="value", rows=[{"label": "evo", "stage": "evo"}, {"label": "dcis", "stage": "dcis"}],
                   columns=[{"header": "n", "metric": "evaluations", "digits": 0},
                            {"header": "to best", "metric": "evals_to_best", "digits": 0},
                            {"header": "ratio", "metric": "evals_to_best", "relative_to": "evo", "digits": 3}],
                   claims=[])  # fmt: skip
    for stage, scores in (("evo", [20.0, 15.0, 10.05, 10.0]), ("dcis", [12.0, 10.02])):
        log = tmp_path / "outputs/t" / stage / "search" / "evaluations.jsonl"
        log.parent.mkdir(parents=True)
        log.write_text("".join(json.dumps({"eval": i + 1, "score": s}) + "\n" for i, s in enumerate(scores)))
        (log.parent.parent / "COMPLETE").write_text("ok\n")
    results = record(tmp_path, table)
    _, to_best, ratio = table.columns
    assert [cell_text(table, results, r, to_best) for r in ("evo", "dcis")] == ["3", "2"]
    assert cell_text(table, results, "dcis", ratio) == "0.667"
    (tmp_path / "outputs/t/dcis/search/evaluations.jsonl").write_text(
        json.dumps({"eval": 1, "score": 30.0}) + "\n"
    )
    results = record(tmp_path, table)
    assert cell_text(table, results, "dcis", to_best) == "not reached in 1"


def test_a_table_runs_its_recipe_through_longctx_run(tmp_path, tiny_corpus):
    """The whole path: the spec's recipe run by ``longctx run`` in the checkout, its eval read back."""
    from tests.train.conftest import write_recipe

    (tmp_path / "recipes").mkdir()
    recipe = write_recipe(tmp_path / "recipes" / "r.yaml", tiny_corpus, tmp_path / "unused")
    import yaml

    data = yaml.safe_load(recipe.read_text())
    data["stages"] = [data["stages"][0], {"name": "eval", "kind": "eval", "tasks": ["ppl"], "lengths": [64],
                                          "ppl_data": str(tiny_corpus), "ppl_docs": 1,
                                          "runs": [{"name": "ours", "rope": "original"}]}]  # fmt: skip
    recipe.write_text(yaml.safe_dump(data))
    table = _table(seeds=[0], columns=[{"header": "ppl 64", "metric": "ppl", "length": 64}], claims=[],
                   rows=[{"label": "ours", "run": "ours"}])  # fmt: skip
    run_table(tmp_path, table)
    results = load_results(tmp_path, table)
    value = results["measured"]["main"]["0"]["ours"][table.columns[0].key]
    truth = json.loads((tmp_path / "outputs/t/eval/results.json").read_text())["runs"][0]["tasks"]["ppl"]
    assert value == truth["by_length"]["64"]["ppl"] and value > 1


def test_digit_accuracy_counts_digits_in_place():
    assert measure_mod.digit_accuracy("12345", "The key is 12395.") == 80.0
    assert measure_mod.digit_accuracy("12345", "none") == 0.0
