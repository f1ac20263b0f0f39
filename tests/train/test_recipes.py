"""Every recipe in recipes/ validates (schema, references, algorithms); tiny.yaml also its files."""

from __future__ import annotations

from pathlib import Path

import pytest

from longctx.train.load import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").rglob("*.yaml"))


def test_the_expected_recipes_exist():
    names = {p.stem for p in RECIPES}
    assert {
        "tiny",
        "llama3_128k",
        "llama2_2048k",
        "mistral_128k",
        "phi3_mini_128k",
        "dcis_llama2_64k",
        "dpe_llama3_128k",
        "smollm2_135m_32k",
        "no_finetune",
        "mixed_window",
        "long_window",
    } <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates(path):
    recipe = load_recipe(path, check_files=path.stem == "tiny")
    assert recipe.stages
    if path.stem != "tiny":
        assert recipe.model.path, "real recipes name the local checkpoint they expect"
