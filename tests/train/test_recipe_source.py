"""``model_from: recipe`` / ``spec_from: recipe``: independent branches from the recipe's own model."""

from __future__ import annotations

import pytest
import yaml

from longctx.train.load import RecipeError, load_recipe
from longctx.train.recipe import RECIPE_SOURCE, source_stage

from .conftest import write_recipe

SEARCH = {"kind": "search", "algorithm": "dcis", "target_length": 256, "objective": "ppl", "num_samples": 1}


def _recipe(tmp_path, corpus, stages):
    path = write_recipe(tmp_path / "r.yaml", corpus, tmp_path / "out")
    raw = yaml.safe_load(path.read_text())
    raw["stages"] = raw["stages"][:1] + stages
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_recipe_source_reads_the_recipe_model_and_base_rope(tmp_path, tiny_corpus):
    stages = [
        {"name": "a", **SEARCH},
        {"name": "b", **SEARCH, "spec_from": RECIPE_SOURCE, "model_from": RECIPE_SOURCE},
        {"name": "c", **SEARCH},
        {
            "name": "eval",
            "kind": "eval",
            "lengths": [64],
            "runs": [
                {"name": "raw", "model_from": RECIPE_SOURCE, "spec_from": RECIPE_SOURCE},
                {"name": "dflt"},
            ],
        },
    ]
    recipe = load_recipe(_recipe(tmp_path, tiny_corpus, stages), check_files=False)
    by_name = {s.name: s for s in recipe.stages}
    # without a name a stage reads the latest earlier producer; "recipe" skips them all
    assert source_stage(recipe, by_name["a"], "spec_from") is None
    assert source_stage(recipe, by_name["b"], "spec_from") is None
    assert source_stage(recipe, by_name["b"], "model_from") is None
    assert source_stage(recipe, by_name["c"], "spec_from") == "b"
    assert source_stage(recipe, by_name["c"], "model_from") == "base"
    raw_run, default_run = by_name["eval"].runs
    assert source_stage(recipe, raw_run, "model_from") is None
    assert source_stage(recipe, raw_run, "spec_from") is None
    assert source_stage(recipe, by_name["eval"], "spec_from") == "c"
    assert default_run.model_from is None


def test_a_stage_named_recipe_is_refused(tmp_path, tiny_corpus):
    path = _recipe(tmp_path, tiny_corpus, [{"name": RECIPE_SOURCE, **SEARCH}])
    with pytest.raises(RecipeError, match=r"stages\[1\]\.name: 'recipe' is reserved"):
        load_recipe(path, check_files=False)
