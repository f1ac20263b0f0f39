"""``pytest -m rehearsal``: every shipped recipe, shrunk by ``train.rehearse.shrink`` (no
per-recipe code), runs its whole chain under the launch config its header names, and every
training stage's weights — and every search's factors before them — equal one process's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from longctx.data.corpus import load_demo_corpus
from longctx.train.rehearse import LOGITS_PER_SHARD, LR, TRAINING, VOCAB, build_model, reference, shrink

from .conftest import REPO, launch, run_cli

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
pytestmark = pytest.mark.rehearsal
ENV = {"LONGCTX_LOGITS_PER_SHARD": str(LOGITS_PER_SHARD)}


@pytest.fixture(scope="session")
def rehearsal_docs(tmp_path_factory) -> Path:
    """Long documents (rescaled rows, searches, ppl at 1024) and short ones (packed rows ≤ L)."""
    root = tmp_path_factory.mktemp("rehearsal_docs")
    books = load_demo_corpus("kjv")
    for i, text in enumerate(books[:6]):
        (root / f"book{i}.txt").write_text(text[:30_000])
    text, at = " ".join(books[6:12]), 0
    for i in range(120):
        size = 150 + 10 * (i % 7)
        (root / f"short{i:03d}.txt").write_text(text[at : at + size])
        at += size
    return root


@pytest.fixture(scope="session")
def rehearsal_tokenizer(tmp_path_factory):
    from longctx.data.tokenizer import train_demo_tokenizer

    return train_demo_tokenizer(tmp_path_factory.mktemp("rehearsal_tok"), vocab_size=VOCAB)


def _metrics(out: Path, stage: str) -> list[dict]:
    return [json.loads(x) for x in (out / stage / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_rehearses_under_its_launch_config(path, tmp_path, rehearsal_docs, rehearsal_tokenizer):
    reh = shrink(path, tmp_path)
    (tmp_path / "docs").symlink_to(rehearsal_docs)
    if reh.recipe["model"].get("path"):
        build_model(reh, Path(reh.recipe["model"]["path"]), rehearsal_tokenizer)
    recipe = tmp_path / "rehearsal.yaml"
    recipe.write_text(yaml.safe_dump(reh.recipe, sort_keys=False))
    if reh.processes > 1:
        proc = launch(reh.launch, recipe, ENV, processes=reh.processes)
    else:
        proc = run_cli(recipe, env=ENV)
    out = Path(reh.recipe["output_dir"])
    for stage in reh.recipe["stages"]:
        assert (out / stage["name"] / "COMPLETE").is_file(), (
            f"{path.name}: stage {stage['name']} did not complete"
        )
    if reh.family.get("window"):
        assert f"sliding_window {reh.family['window']} lifted" in proc.stderr, (
            "the window bounds every 128k row"
        )
        exported = json.loads((out / "export" / "model" / "config.json").read_text())
        assert exported.get("sliding_window") is None or exported["sliding_window"] >= 1024
    training = [s["name"] for s in reh.recipe["stages"] if s["kind"] in TRAINING]
    if reh.processes == 1 or not training:
        return  # one process is its own reference
    if any(s.get("micro_batch_size", 1) * s.get("grad_accum", 1) > 1 for s in reh.recipe["stages"]):
        assert "loss: tiled over lm_head" in proc.stderr or reh.launch != "deepspeed_zero3_ulysses.yaml"
    ref = reference(reh, tmp_path)
    ref_file = tmp_path / "reference.yaml"
    ref_file.write_text(yaml.safe_dump(ref, sort_keys=False))
    run_cli(ref_file, env=ENV)
    ref_out = Path(ref["output_dir"])
    for stage in ref["stages"]:
        name = stage["name"]
        if stage["kind"] == "search":
            ours = json.loads((out / name / "spec.json").read_text())
            assert ours == json.loads((ref_out / name / "spec.json").read_text()), f"{name}: searched factors"
        if stage["kind"] not in TRAINING:
            continue
        losses = [m["loss"] for m in _metrics(out, name)]
        assert losses == pytest.approx([m["loss"] for m in _metrics(ref_out, name)], rel=1e-5, abs=1e-6), name
        mine = load_file(out / name / "model" / "model.safetensors")
        for key, value in load_file(ref_out / name / "model" / "model.safetensors").items():
            _assert_same_weights(
                mine[key], value, first=name == training[0], msg=f"{path.name} {name}: {key}"
            )


def _assert_same_weights(ours: torch.Tensor, ref: torch.Tensor, first: bool, msg: str) -> None:
    """fp32 weights equal to 1e-5. In a stage after another, the starting weights already differ
    by float order (~6e-6) and Adam's g/√v turns the sign of a near-zero gradient into ±lr, so a
    few isolated entries may move by up to 2·lr (seen: 2 of 262,144, 3.4e-5, on the 2048k
    recipe's second fine-tune); a dropped or overwritten micro-batch moves most entries."""
    diff = (ours - ref).abs()
    if first:
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5, msg=msg)
        return
    far = int((diff > 1e-5).sum())
    assert far <= max(2, ref.numel() // 10_000) and float(diff.max()) <= 2 * LR, (
        f"{msg}: {far} entries > 1e-5"
    )


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_a_rehearsal_keeps_what_decides_training(path, tmp_path):
    """Same stages, kinds, accumulation, rows, window shares and RoPE kinds as the recipe; every
    length ≤ 1024; multi-GPU launch configs run on 2 processes (Ulysses with 2 shards)."""
    original = yaml.safe_load(path.read_text())
    reh = shrink(path, tmp_path)
    assert [(s["name"], s["kind"]) for s in reh.recipe["stages"]] == [
        (s["name"], s["kind"]) for s in original["stages"]
    ]
    for ours, theirs in zip(reh.recipe["stages"], original["stages"]):
        for key in ("grad_accum", "micro_batch_size", "lora", "algorithm", "objective", "runs", "tasks"):
            assert ours.get(key) == theirs.get(key), (ours["name"], key)
        if "windows" in theirs:
            assert [(w["share"], w["rope"]) for w in ours["windows"]] == [
                (w["share"], w["rope"]) for w in theirs["windows"]
            ]
            assert all(w["length"] <= 1024 for w in ours["windows"])
    if original.get("sequence_parallel", 1) > 1:
        assert reh.recipe["sequence_parallel"] == 2 and reh.processes == 2
    assert reh.processes == (1 if reh.launch in (None, "cpu.yaml", "single_gpu.yaml") else 2)
    if "mistral" in path.stem or "phi3" in path.stem:  # the family's window, shrunk with the lengths
        assert reh.family["window"] == round(
            {"mistral": 4096, "phi3": 2047}[path.stem.split("_")[0]] * reh.scale
        )
