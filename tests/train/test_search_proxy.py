"""A search stage's ``score_length`` (candidates scored on shorter samples under the long set while
the factors are searched for the target) and an eval run's ``attention`` policy: the two recipe
settings that make the SmolLM2 short-context table a recipe run."""

from __future__ import annotations

import json

import pytest

from longctx.train.load import RecipeError, load_recipe

from .conftest import model_recipe, run_cli

SEARCH = {"name": "search", "kind": "search", "algorithm": "dcis", "target_length": 256, "score_length": 128,
          "objective": "ppl", "num_samples": 1, "max_evaluations": 4}  # fmt: skip


def test_score_length_must_lie_between_L_and_the_target(tmp_path, tiny_corpus, longrope_model):
    for bad in (64, 512):
        path = model_recipe(tmp_path / f"r{bad}.yaml", longrope_model, tiny_corpus, tmp_path / "out",
                            [{**SEARCH, "score_length": bad}])  # fmt: skip
        with pytest.raises(
            RecipeError, match=rf"score_length: expected L=64 < score_length <= target_length=256; got {bad}"
        ):
            load_recipe(path)


def test_a_proxy_search_scores_short_samples_and_eval_runs_choose_the_policy(
    tmp_path, tiny_corpus, longrope_model
):
    ev = {"name": "eval", "kind": "eval", "tasks": ["ppl"], "lengths": [64, 256], "ppl_data": str(tiny_corpus),
          "ppl_docs": 1, "runs": [
              {"name": "hf", "spec_from": "search", "attention": "hf"},
              {"name": "short_original", "spec_from": "search", "attention": "short_original"},
              {"name": "one", "spec_from": "search", "attention": 1.0},
              {"name": "original", "rope": "original"}]}  # fmt: skip
    path = model_recipe(tmp_path / "r.yaml", longrope_model, tiny_corpus, tmp_path / "out", [SEARCH, ev])
    proc = run_cli(path, "--dry-run")
    assert "search dcis → L'=256 (ppl, scored at 128)" in proc.stdout
    run_cli(path)
    spec = json.loads((tmp_path / "out" / "search" / "spec.json").read_text())
    assert spec["target_length"] == 256
    rows = [
        json.loads(line)
        for line in (tmp_path / "out" / "search" / "measurements.jsonl").read_text().splitlines()
    ]
    assert rows and all(r["factor_set"] == "long" for r in rows)
    results = json.loads((tmp_path / "out" / "eval" / "results.json").read_text())
    from longctx.rope import RopeSpec
    from longctx.rope.longrope import attention_factors

    factors = {r["name"]: attention_factors(RopeSpec.from_dict(r["rope"])) for r in results["runs"][:3]}
    hf_short, hf_long = factors["hf"]
    assert hf_short == hf_long > 1.0  # transformers' one default factor on both sets
    assert factors["short_original"] == (1.0, hf_long)  # short inputs exactly the pretrained RoPE
    assert factors["one"] == (1.0, 1.0)
    ppl = {
        r["name"]: {n: v["ppl"] for n, v in r["tasks"]["ppl"]["by_length"].items()} for r in results["runs"]
    }
    assert ppl["short_original"]["64"] == pytest.approx(ppl["original"]["64"], rel=2e-5)
    assert ppl["short_original"]["256"] == pytest.approx(ppl["hf"]["256"], rel=1e-6)


def test_finetune_with_a_baseline_rope_trains_and_saves_it(tmp_path, tiny_corpus, longrope_model):
    """``rope: yarn`` — the fine-tuned YaRN that LongRoPE2 compares against — with no search stage."""
    ft = {"name": "ft", "kind": "finetune", "rope": "yarn", "steps": 2, "micro_batch_size": 2, "lr": 1e-3,
          "checkpoint_every": 2, "windows": [{"length": 64, "share": 0.5, "rope": "original"},
                                             {"length": 256, "share": 0.5, "rope": "rescaled"}]}  # fmt: skip
    path = model_recipe(tmp_path / "r.yaml", longrope_model, tiny_corpus, tmp_path / "out", [ft])
    run_cli(path)
    spec = json.loads((tmp_path / "out" / "ft" / "spec.json").read_text())
    assert spec["method"] == "yarn" and spec["target_length"] == 256 and spec["original_length"] == 64
    bad = model_recipe(tmp_path / "b.yaml", longrope_model, tiny_corpus, tmp_path / "out2",
                       [{**ft, "spec_from": "recipe"}])  # fmt: skip
    with pytest.raises(RecipeError, match=r"spec_from: rope: yarn builds its own RoPE; remove spec_from"):
        load_recipe(bad)
