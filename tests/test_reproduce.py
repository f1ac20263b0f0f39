"""benchmarks/reproduce.py: the report is built from eval results, with "pending" for what is missing."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _eval_stage(d: Path, runs: list[dict]) -> None:
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"runs": runs}))
    (d / "COMPLETE").write_text("")


def _ppl(values: dict[int, float]) -> dict:
    return {"ppl": {"by_length": {str(k): {"ppl": v} for k, v in values.items()}}}


def _passkey(length: int, pairs: list[tuple[str, str]]) -> dict:
    rows = [{"length": length, "answer": a, "output": o, "score": 100.0 * (a == o)} for a, o in pairs]
    return {"passkey": {"samples": rows}}


def test_digit_accuracy_counts_digits_in_place(repro):
    assert repro.digit_accuracy("66226", "66226") == 100.0
    assert repro.digit_accuracy("66226", "46626") == 60.0  # positions 2, 4 and 5 match
    assert repro.digit_accuracy("66226", "662") == 60.0  # a short output scores its digits only
    assert repro.digit_accuracy("12345", "no digits") == 0.0
    assert repro.digit_accuracy("12345", "key: 123 then 45") == 60.0  # the first run of digits only


def test_report_from_results_with_pending_cells(repro, tmp_path):
    runs = [
        {"name": "none (extrapolation)", "tasks": _ppl({128: 16.0, 1024: 40.0})},
        {"name": "PI", "tasks": _ppl({128: 38.0, 1024: 47.0})},
        {"name": "NTK", "tasks": _ppl({128: 17.0, 1024: 30.0})},
        {"name": "YaRN", "tasks": {**_ppl({128: 20.0, 1024: 28.0}), **_passkey(1024, [("12345", "12000")])}},
        {"name": "LongRoPE (evolution)", "tasks": _ppl({128: 16.0, 1024: 23.0})},
        {"name": "LongRoPE (evolution + n̂)", "tasks": _ppl({128: 16.0, 1024: 24.0})},
        {"name": "DCIS", "tasks": _ppl({128: 16.0, 1024: 22.0})},
    ]
    _eval_stage(tmp_path / "no_finetune" / "eval_ppl", runs)
    text = repro.build_report()
    line = next(x for x in text.splitlines() if x.startswith("| LongRoPE: searched factors"))
    assert "| pending |" in line  # one seed of three: no verdict yet
    assert "| PI | 38.00 ± 0.00 (n=1) |" in text
    for seed, shift in ((1, 0.5), (2, -0.5)):  # the searches move a little with the seed
        moved = [
            {**r, "tasks": {**r["tasks"], **_ppl({128: 16.0, 1024: r["tasks"]["ppl"]["by_length"]["1024"]["ppl"] + shift})}}
            if r["name"].startswith(("LongRoPE", "DCIS")) else r
            for r in runs
        ]  # fmt: skip
        _eval_stage(tmp_path / f"no_finetune_s{seed}" / "eval_ppl", moved)
    # an eval stage without its completion marker is not read (interrupted runs)
    (tmp_path / "mixed_window" / "eval_ppl").mkdir(parents=True)
    (tmp_path / "mixed_window" / "eval_ppl" / "results.json").write_text(
        json.dumps({"runs": [{"name": "mixed-window fine-tune", "tasks": _ppl({128: 1.0})}]})
    )
    text = repro.build_report()
    line = next(x for x in text.splitlines() if x.startswith("| LongRoPE: searched factors"))
    assert "**holds**" in line and "DCIS 22.00 ± 0.50 vs best baseline YaRN 28.00 ± 0.00" in line
    line = next(x for x in text.splitlines() if x.startswith("| LongRoPE: searching n̂"))
    assert "**no difference beyond the seed spread**" in line  # 24 ± 0.5 vs 23 ± 0.5: they touch
    line = next(x for x in text.splitlines() if x.startswith("| DCIS: at the same candidate budget"))
    assert "**no difference beyond the seed spread**" in line
    line = next(x for x in text.splitlines() if x.startswith("| LongRoPE2: mixed-window"))
    assert "| pending |" in line  # the mixed run is incomplete: no verdict from it
    yarn = next(x for x in text.splitlines() if x.startswith("| YaRN |"))
    assert "| 20.00 ± 0.00 | pending | pending | 28.00 ± 0.00 | 0 ± 0 | 40.0 ± 0.0 |" in yarn


def test_finetune_claims_are_judged_over_three_seeds(repro, tmp_path):
    """Each cell is mean ± half-range over the seeds; a claim holds only when the two compared
    ranges are apart in its favour, is "no difference" when they overlap, pending until every
    seed has finished."""
    from benchmarks import repro_finetune as ft

    assert ft.SEEDS == (0, 1, 2)
    short = {"mixed": (50.0, 51.0, 52.0), "long": (52.5, 53.0, 60.0), "readjust": (52.0, 59.0, 61.0)}
    for seed in ft.SEEDS:
        d = ft.run_dir(tmp_path, "mixed", seed)
        _eval_stage(d / "eval_ppl", [
            {"name": "base (original RoPE)", "tasks": _ppl({128: 40.0, 1024: 90.0})},
            {"name": "searched 8×, no fine-tune", "tasks": _ppl({128: 41.0, 1024: 35.0 + seed})},
            {"name": "mixed-window fine-tune", "tasks": _ppl({128: short["mixed"][seed], 1024: 30.0 + seed})},
        ])  # fmt: skip
        if seed < 2:  # the third long-window run has not finished
            _eval_stage(ft.run_dir(tmp_path, "long", seed) / "eval_ppl", [
                {"name": "long-window fine-tune", "tasks": _ppl({128: short["long"][seed], 1024: 38.0})},
                {"name": "long-window fine-tune + readjust", "tasks": _ppl({128: short["readjust"][seed]})},
            ])  # fmt: skip
    lines = repro.build_report().splitlines()
    mixed_row = next(x for x in lines if x.startswith("| mixed-window fine-tune |"))
    assert "| 51.00 ± 1.00 |" in mixed_row and "| 31.00 ± 1.00 |" in mixed_row
    assert "52.75 ± 0.25 (n=2)" in next(x for x in lines if x.startswith("| long-window fine-tune |"))
    claim = next(x for x in lines if x.startswith("| LongRoPE2: mixed-window"))
    assert "| pending |" in claim  # one long-window seed is missing
    _eval_stage(ft.run_dir(tmp_path, "long", 2) / "eval_ppl", [
        {"name": "long-window fine-tune", "tasks": _ppl({128: 60.0, 1024: 38.0})},
        {"name": "long-window fine-tune + readjust", "tasks": _ppl({128: 61.0})},
    ])  # fmt: skip
    lines = repro.build_report().splitlines()
    verdict = {
        key: next(x for x in lines if x.startswith(f"| {text}"))
        for key, text in (
            ("mixed", "LongRoPE2: mixed-window"),
            ("readjust", "LongRoPE: short-context readjustment"),
            ("ft_mixed", "Fine-tuning (mixed windows)"),
            ("ft_long", "Fine-tuning (long windows)"),
        )
    }
    assert "**holds**" in verdict["mixed"]  # 50–52 vs 52.5–60: apart
    assert "no difference beyond the seed spread" in verdict["readjust"]  # 52–61 vs 52.5–60
    assert "**holds**" in verdict["ft_mixed"]  # 30–32 vs 35–37
    assert "**does not hold**" in verdict["ft_long"]  # 38 on every seed vs 35–37
    assert ft.judge((1.0, 0.9, 1.1, 3), (2.0, 1.9, 2.1, 3)) is True
    assert ft.judge((2.0, 1.9, 2.1, 3), (1.0, 0.9, 1.1, 3)) is False
    assert ft.judge((1.0, 0.9, 1.5, 3), (1.2, 1.1, 1.3, 3)) == "spread"
    assert ft.judge((1.0, 0.9, 1.1, 2), (2.0, 1.9, 2.1, 3)) is None


def test_scaled_runs_override_every_target_and_validate(repro):
    from longctx.train.load import load_recipe

    recipe_file = ROOT / "recipes" / "repro" / "no_finetune.yaml"
    committed = load_recipe(recipe_file, check_files=False)
    assert repro.no_finetune_overrides(8) == []
    searches = {s.name for s in committed.stages if s.kind == "search"}
    assert searches == set(repro.NO_FT_TARGETED)  # a new search stage would keep 1024 at 16×
    for scale in (16, 32):
        recipe = load_recipe(recipe_file, repro.no_finetune_overrides(scale), check_files=False)
        n = 128 * scale
        assert recipe.output_dir.endswith(f"no_finetune_{scale}x")
        assert {s.target_length for s in recipe.stages if s.kind == "search"} == {n}
        assert all(s.lengths == [n] for s in recipe.stages if s.kind == "eval")


def test_scaled_table_gives_one_verdict_per_scale(repro, tmp_path):
    _eval_stage(
        tmp_path / "no_finetune" / "eval_ppl",
        [{"name": "YaRN", "tasks": _ppl({1024: 28.0})}, {"name": "DCIS", "tasks": _ppl({1024: 30.0})}],
    )
    _eval_stage(
        tmp_path / "no_finetune_16x" / "eval_ppl",
        [{"name": "YaRN", "tasks": _ppl({2048: 33.0})}, {"name": "DCIS", "tasks": _ppl({2048: 31.5})}],
    )
    lines = repro.build_report().splitlines()
    verdicts = {
        k: next(x for x in lines if x.startswith(f"| LongRoPE: searched factors extend {k}×"))
        for k in (8, 16, 32)
    }
    assert "| pending |" in verdicts[8]  # judged over three seeds; one ran
    assert "DCIS 30.00 ± 0.00 (n=1) vs best baseline YaRN 28.00 ± 0.00 (n=1) at 1024" in verdicts[8]
    assert "**holds**" in verdicts[16] and "31.50 vs best baseline 33.00 at 2048" in verdicts[16]
    assert "| pending |" in verdicts[32]
    row = next(x for x in lines if x.startswith("| DCIS | 30.00 | 31.50 | pending |"))
    assert row.count("pending") == 4  # 32× perplexity and the three retrieval cells


def test_efficiency_claim_bounds_evolution_that_never_reached(repro, tmp_path):
    algos = {
        "evolution": {"evaluations": 400, "evals_to_reach": None, "best_ppl": 37.4},
        "dcis": {"evaluations": 237, "evals_to_reach": 160, "best_ppl": 36.9},
    }
    path = tmp_path / "search_efficiency_16x" / "results.json"
    path.parent.mkdir()
    setup = f"model {repro.ROOT}/outputs/tiny/base/model"
    path.write_text(
        json.dumps({"setup": setup, "scales": {"16": {"target_length": 2048, "algorithms": algos}}})
    )
    lines = repro.build_report().splitlines()
    claim = next(x for x in lines if x.startswith("| DCIS: ≤ 0.5× the evaluations") and "(16×)" in x)
    assert "**holds**" in claim and "160 vs > 400" in claim
    assert "| dcis | 237 | 160 | 36.90 | < 0.400 |" in lines
    assert "| evolution | 400 | not reached in 400 | 37.40 | – |" in lines
    assert any("16×: model outputs/tiny/base/model" in x for x in lines)  # no machine paths


def test_smollm2_32k_overrides_validate_and_the_report_judges_each_claim(repro, tmp_path, monkeypatch):
    from longctx.train.load import load_recipe

    recipe = load_recipe(
        ROOT / "recipes" / "smollm2_135m_32k.yaml", repro.smollm2_32k_overrides(), check_files=False
    )
    assert recipe.output_dir.endswith("repro/smollm2_32k")
    evals = [s for s in recipe.stages if s.kind == "eval"]
    assert {s.name for s in evals} == set(repro.SMOL_EVALS)  # a new eval stage would keep 3 lengths
    assert all(s.lengths == [32768] and s.samples == 1 for s in evals)
    assert next(s for s in evals if s.name == "eval_original").tasks == ["ppl"]
    search = next(s for s in recipe.stages if s.name == "search")
    assert (search.target_length, search.max_evaluations, search.needle_depths) == (32768, 4, [0.5])

    d = tmp_path / "smollm2_32k"
    for stage, name, value, output in (
        ("eval_pi", "PI", 30.0, "00000"),
        ("eval_yarn", "YaRN", 12.0, "12300"),
        ("eval_longrope2", "LongRoPE2 (searched)", 11.0, "12345"),
    ):
        _eval_stage(
            d / stage,
            [{"name": name, "tasks": {**_ppl({32768: value}), **_passkey(32768, [("12345", output)])}}],
        )
    (d / "search").mkdir()
    spec = {"long_factor": [1.0, 2.5, 6.25], "params": {}}
    (d / "search" / "result.json").write_text(
        json.dumps({"score": 3.21, "evaluations": 4, "spec": spec, "wall_seconds": 600})
    )
    (d / "search" / "COMPLETE").write_text("")
    lines = repro.build_32k_report().splitlines()
    claim = next(x for x in lines if x.startswith("| LongRoPE2 on SmolLM2: searched factors beat"))
    assert "**holds**" in claim and "LongRoPE2 11.00, PI 30.00, YaRN 12.00" in claim
    claim = next(x for x in lines if x.startswith("| LongRoPE2 on SmolLM2: needle-driven"))
    assert "**holds**" in claim and "LongRoPE2 100.0 % vs YaRN 60.0 %, PI 0.0 %" in claim
    assert "| pending |" in next(x for x in lines if x.startswith("| DPE on SmolLM2"))  # not run
    assert "| YaRN | 12.00 | 0 | 60.0 |" in lines
    assert "| DPE | pending | pending | pending |" in lines
    assert any(
        "best needle perplexity 3.210 after 4 candidates; rescale factors 1.00–6.25" in x for x in lines
    )
    assert any("search 10.0 min" in x for x in lines)

    # the 32k part writes its own document only: the main one is left as it is
    monkeypatch.setattr(repro, "DOC", tmp_path / "main.md")
    monkeypatch.setattr(repro, "DOC_32K", tmp_path / "32k.md")
    assert repro.main(["--only", "smollm2_32k", "--report-only"]) == 0
    assert (tmp_path / "32k.md").read_text().startswith("# Reproduction at 4×")
    assert not (tmp_path / "main.md").exists()
    # on a machine without any of its outputs the 32k document is kept as it is
    import shutil

    shutil.rmtree(tmp_path / "smollm2_32k")
    (tmp_path / "32k.md").write_text("measured elsewhere\n")
    assert repro.main(["--only", "smollm2_32k", "--report-only"]) == 0
    assert (tmp_path / "32k.md").read_text() == "measured elsewhere\n"


def test_a_partial_rerun_keeps_sections_whose_outputs_are_elsewhere(repro, tmp_path):
    """docs/REPRODUCTION.md rebuilt on a machine that lacks a part's outputs keeps that part's
    section and summary rows from the document as it stood, marked; without the old document
    (the negative control) they turn pending."""
    import shutil

    algos = {
        "evolution": {"evaluations": 400, "evals_to_reach": None, "best_ppl": 37.4},
        "dcis": {"evaluations": 237, "evals_to_reach": 160, "best_ppl": 36.9},
    }
    eff = tmp_path / "search_efficiency_16x"
    eff.mkdir()
    (eff / "results.json").write_text(
        json.dumps({"setup": "model m", "scales": {"16": {"target_length": 2048, "algorithms": algos}}})
    )
    _eval_stage(
        tmp_path / "no_finetune" / "eval_ppl", [{"name": "PI", "tasks": _ppl({128: 38.0, 1024: 47.0})}]
    )
    full = repro.build_report()
    shutil.rmtree(eff)  # section 3's outputs are not on this machine; section 1's are, changed
    (tmp_path / "no_finetune" / "eval_ppl" / "results.json").write_text(
        json.dumps({"runs": [{"name": "PI", "tasks": _ppl({128: 39.0, 1024: 48.0})}]})
    )

    def claim(text: str) -> str:
        return next(x for x in text.splitlines() if x.startswith("| DCIS: ≤ 0.5×") and "(16×)" in x)

    def section(text: str, n: int) -> str:
        return text.split(f"\n## {n}. ", 1)[1].split("\n## ", 1)[0]

    assert "| pending |" in claim(repro.build_report())  # negative control: nothing to keep from
    kept = repro.build_report(full)
    assert claim(kept) == claim(full) and "**holds**" in claim(kept)
    assert "| dcis | 237 | 160 | 36.90 | < 0.400 |" in section(kept, 3)
    assert section(kept, 3).count("*Kept from the previous version") == 1
    assert "outputs/repro/search_efficiency_*" in section(kept, 3)
    assert "| PI | 39.00 ± 0.00 (n=1) |" in section(kept, 1) and "| PI | 38.00 ± 0.00 (n=1) |" in section(
        full, 1
    )
    assert repro.build_report(kept) == kept  # a second partial rerun changes nothing
    repro.main(["--report-only", "--only", "finetune"])  # the CLI: no old document yet, then one
    assert "| pending |" in claim(repro.DOC.read_text())
    repro.DOC.write_text(full)
    repro.main(["--report-only", "--only", "finetune"])
    assert repro.DOC.read_text() == kept


def test_ruler_column_is_the_13_task_average_or_says_how_many_ran(repro):
    def tasks(average_13, ran, missing):
        cell = {"average_13": average_13, "average_ran": 40.0, "ran": ran, "missing": missing}
        return {"ruler": {"average": {"1024": 40.0}, "by_length": {"1024": cell}}}

    full = repro.retrieval(tasks(37.5, [f"t{i}" for i in range(13)], []), 1024)
    assert repro.ruler_cell(full) == "37.5"
    part = repro.retrieval(tasks(None, [f"t{i}" for i in range(11)], ["qa_1", "qa_2"]), 1024)
    assert repro.ruler_cell(part) == "40.0 (11 of 13)" and part["ruler_missing"] == ["qa_1", "qa_2"]
    assert repro.ruler_cell(repro.retrieval({}, 1024)) == "pending"


def test_retrieval_gaps_within_two_samples_get_no_verdict(repro):
    tasks = {**_passkey(1024, [("1", "1")] * 12), "niah": {"samples": [{"length": 1024}] * 12}}
    n = repro.retrieval_samples(tasks, 1024)
    assert n == 24
    assert repro.beats(4.2, 0.0, n) == "noise"  # one sample of 24
    assert repro.beats(8.3, 0.0, n) == "noise" and repro.beats(12.5, 0.0, n) is True  # three samples
    assert repro.beats(0.0, 15.1, n) is False and repro.beats(None, 1.0, n) is None
    assert repro.verdict("noise") == "**no difference beyond 2 samples**"
