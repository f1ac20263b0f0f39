"""A search stage's ``attention_factor``: candidates are scored under it and the exported spec keeps
it, so a training-free export with factor 1.0 answers short inputs exactly as the base model
does under stock transformers, where the default factor (the negative control) changes them."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM

from longctx.rope import RopeSpec
from longctx.train.load import load_recipe

from .conftest import run_cli, write_recipe


def test_search_attention_factor_reaches_the_stock_hf_export(tmp_path, tiny_corpus):
    out = tmp_path / "out"
    search = {"kind": "search", "algorithm": "dcis", "target_length": 256, "num_samples": 1,
              "objective": "ppl", "max_evaluations": 4, "spec_from": "recipe"}  # fmt: skip
    stages = [
        {"name": "base", "kind": "pretrain", "steps": 4, "micro_batch_size": 2, "lr": 1e-2,
         "windows": [{"length": 64, "share": 1.0, "rope": "original"}]},
        {**search, "name": "at_one", "attention_factor": 1.0},
        {**search, "name": "default"},
        {"name": "export_one", "kind": "export", "spec_from": "at_one"},
        {"name": "export_default", "kind": "export", "spec_from": "default"},
    ]  # fmt: skip
    recipe = write_recipe(tmp_path / "r.yaml", tiny_corpus, out, stages=stages)
    run_cli(recipe)

    one, default = (RopeSpec.from_json(out / s / "spec.json") for s in ("at_one", "default"))
    assert one.attention_factor == 1.0 and default.attention_factor is None
    assert json.loads((out / "at_one" / "result.json").read_text())["attention_factor"] == 1.0
    # the search scored its whole budget (the log records factors, not the attention factor:
    # that candidates carry it is checked by tests/test_smollm2_short.py through the scored specs)
    scored = [
        json.loads(x) for x in (out / "at_one" / "search" / "evaluations.jsonl").read_text().splitlines()
    ]
    assert len(scored) == 4
    hf = json.loads((out / "export_one" / "model" / "config.json").read_text())["rope_parameters"]
    assert hf["rope_type"] == "longrope" and hf["attention_factor"] == 1.0

    def logits(path, ids):
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
        with torch.no_grad():
            return model(ids).logits

    ids = torch.randint(3, 512, (1, 60))  # shorter than L = 64: the short factor set
    base = logits(out / "base" / "model", ids)
    same = (logits(out / "export_one" / "model", ids) - base).abs().max().item()
    moved = (logits(out / "export_default" / "model", ids) - base).abs().max().item()  # the HF factor
    assert same <= 1e-6 and moved > 100 * max(same, 1e-6)

    # DPE has no factor sets: the key is refused with the stage's path
    bad = write_recipe(
        tmp_path / "bad.yaml", tiny_corpus, tmp_path / "bad",
        stages=[{**search, "name": "d", "algorithm": "dpe", "attention_factor": 1.0}],
    )  # fmt: skip
    proc = run_cli(bad, check=False)
    assert proc.returncode == 2 and "stages[0].attention_factor: dpe changes positions" in proc.stderr
    assert load_recipe(recipe).stages[1].attention_factor == 1.0
