"""Broken recipes exit non-zero with one line naming the file and key path; dry-run and overrides."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from longctx.train.load import RecipeError, load_recipe
from longctx.train.run import main

from .conftest import write_recipe


@pytest.fixture
def good(tmp_path, tiny_corpus):
    return write_recipe(tmp_path / "r.yaml", tiny_corpus, tmp_path / "out")


def _broken(good, edit) -> str:
    raw = yaml.safe_load(good.read_text())
    raw = copy.deepcopy(raw)
    edit(raw)
    good.write_text(yaml.safe_dump(raw))
    return str(good)


def _stage(i, key, value):
    def edit(raw):
        raw["stages"][i][key] = value

    return edit


def _set(path, value):
    def edit(raw):
        node = raw
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value

    return edit


BROKEN = [
    (_stage(0, "learning_rate", 1e-3), r"stages\[0\]\.learning_rate: unknown key; did you mean 'lr'\?"),
    (_stage(0, "steps", "many"), r"stages\[0\]\.steps: Input should be a valid integer"),
    (
        _set(["model", "init", "hidden_sise"], 64),
        r"model\.init\.hidden_sise: unknown key; did you mean 'hidden_size'\?",
    ),
    (_stage(1, "model_from", "later"), r"stages\[1\]\.model_from: no earlier stage named 'later'"),
    (
        _stage(0, "model_from", "export"),
        r"stages\[0\]\.model_from: stage 'export' comes later \(stages\[1\]\)",
    ),
    (_stage(1, "kind", "exprt"), r"stages\[1\]: kind: unknown stage kind 'exprt'; did you mean 'export'\?"),
    (_set(["model"], {"path": "/nonexistent/model"}), r"model\.path: '/nonexistent/model' does not exist"),
    (
        _stage(0, "windows", [{"length": 128, "share": 1.0, "rope": "rescaled"}]),
        r"stages\[0\]\.windows\[0\]\.rope: pretrain trains the original RoPE only",
    ),
    (
        _stage(0, "windows", [{"length": 0, "share": 1.0, "rope": "original"}]),
        r"stages\[0\]\.windows\[0\]\.length: Input should be greater than 0",
    ),
    (
        _stage(0, "windows", [{"length": 64, "share": 0.5, "rope": "original"}]),
        r"stages\[0\]\.windows: shares must sum to 1, got 0.5",
    ),
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_what_this_machine_cannot_run_is_refused_when_running_not_when_planning(good, capsys):
    """A GPU recipe is planned anywhere (a laptop plans the cluster run); running it here is one line."""
    path = _broken(good, _set(["model", "attention"], "flash"))
    assert main([path, "--dry-run"]) == 0
    capsys.readouterr()
    assert main([path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{path}: ")
    assert "model.attention: 'flash' needs a CUDA GPU and none is visible" in err[0]


@pytest.mark.parametrize("edit,message", BROKEN)
def test_broken_recipe_exits_with_one_line(good, edit, message, capsys):
    path = _broken(good, edit)
    assert main([path, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"{path}: ")
    assert __import__("re").search(message, err[0]), err[0]


def test_all_errors_are_reported_at_once(good):
    def edit(raw):
        raw["stages"][0]["lrr"] = 1
        raw["stages"][0]["steps"] = -1
        raw["seed"] = "x"

    with pytest.raises(RecipeError) as info:
        load_recipe(_broken(good, edit))
    assert len(info.value.lines) == 3


def test_dry_run_prints_resolved_recipe_and_plan(good, capsys):
    assert main([str(good), "--dry-run", "stages.base.lr=1e-4", "seed=7"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.0001" in out and "seed: 7" in out
    assert "[0] base: pretrain 12 steps" in out and "[1] export: export" in out
    assert "spec←base RoPE" in out


def test_override_of_unknown_stage_is_an_error(good, capsys):
    assert main([str(good), "--dry-run", "stages.finetune.lr=1e-5"]) == 2
    assert "no stage named 'finetune' (stages: base, export)" in capsys.readouterr().err


def test_checks_that_need_L_read_it_from_the_checkpoint_config_before_any_stage(tmp_path, tiny_corpus):
    """L = 8192 is in the checkpoint's config.json: a rescaled window of 4096 is refused at
    validation, not after the search stage before it has run (before: only when its stage began)."""
    from transformers import LlamaConfig

    model = tmp_path / "model"
    LlamaConfig(hidden_size=64, num_attention_heads=2, max_position_embeddings=8192).save_pretrained(model)
    stages = [
        {"name": "s", "kind": "search", "algorithm": "dcis", "target_length": 16384, "objective": "ppl"},
        {"name": "ft", "kind": "finetune", "steps": 2, "lr": 1e-4,
         "windows": [{"length": 4096, "share": 1.0, "rope": "rescaled"}]},
        {"name": "r", "kind": "readjust", "target_length": 16384},
    ]  # fmt: skip
    path = write_recipe(tmp_path / "r.yaml", tiny_corpus, tmp_path / "out", stages=stages)
    raw = yaml.safe_load(path.read_text())
    raw["model"], raw["tokenizer"] = {"path": str(model)}, {"path": str(model)}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(RecipeError) as err:
        load_recipe(path, check_files=False)
    assert err.value.lines == [
        f"{path}: stages[1].windows[0].length: a rescaled window must be longer than L=8192",
        f"{path}: stages[2].target_length: readjustment targets a short length <= L=8192; got 16384",
    ]
