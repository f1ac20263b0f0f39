"""recipes/tiny.yaml, shrunk by command-line overrides, runs every stage end to end."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM

from longctx.rope import SPEC_FILE, RopeSpec, apply_rope

from .conftest import REPO, run_cli, write_recipe

SEARCH = "{population: 4, generations: 1, parents: 2, mutants: 1, crossovers: 1}"


def test_tiny_recipe_chain_end_to_end(tmp_path, tiny_corpus):
    out = tmp_path / "out"
    overrides = [
        f"output_dir={out}",
        f"data.sources=[{{kind: local, path: {tiny_corpus}}}]",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.passkey_share=0.1",
        "model.init={hidden_size: 32, num_layers: 2, num_heads: 2, num_kv_heads: 1, intermediate_size: 64, original_length: 128}",
        "tokenizer.demo_vocab_size=2048",  # the recipe's own: passkey prompts fit in L=128
        "stages.base.steps=3",
        "stages.base.micro_batch_size=2",
        "stages.search_8x.max_evaluations=4",
        "stages.search_8x.num_samples=1",
        "stages.search_8x.settings={rounds: 1, increments: 2}",
        "stages.ft_8x.steps=2",
        "stages.search_16x.max_evaluations=3",
        "stages.search_16x.num_samples=1",
        "stages.search_16x.settings={rounds: 1, increments: 2}",
        "stages.readjust.max_evaluations=3",
        "stages.readjust.num_samples=1",
        f"stages.readjust.settings={SEARCH}",
        "stages.eval.lengths=[128,2048]",
        "stages.eval.samples=1",
        "stages.eval.ppl_docs=1",
        "stages.eval.depths=[0.5]",
    ]
    run_cli(REPO / "recipes" / "tiny.yaml", *overrides)
    names = ["base", "search_8x", "ft_8x", "search_16x", "readjust", "eval", "export"]
    assert all((out / n / "COMPLETE").exists() for n in names)
    # progressive extension: 16x factors stay relative to the original base; short factors found
    spec16 = RopeSpec.from_json(out / "search_16x" / "spec.json")
    final = RopeSpec.from_json(out / "readjust" / "spec.json")
    assert (spec16.original_length, spec16.target_length) == (128, 2048)
    assert final.long_factor == spec16.long_factor and final.short_factor is not None
    # the eval report has every run at every length
    results = json.loads((out / "eval" / "results.json").read_text())
    assert [r["name"] for r in results["runs"]][:3] == ["base", "pi", "yarn"]
    for run in results["runs"]:
        assert set(run["tasks"]["ppl"]["by_length"]) == {"128", "2048"}
    assert (out / "eval" / "report.md").read_text().startswith("#")
    # the export loads in stock transformers and computes the final spec exactly
    exported = AutoModelForCausalLM.from_pretrained(out / "export" / "model", local_files_only=True).eval()
    assert RopeSpec.from_json(out / "export" / "model" / SPEC_FILE) == final
    ours = apply_rope(
        AutoModelForCausalLM.from_pretrained(out / "ft_8x" / "model", local_files_only=True), final
    )
    ids = torch.randint(3, 2048, (1, 300))
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, ours.eval()(ids).logits, rtol=0, atol=1e-5)


def test_dpe_stage_detects_group_scales_and_evaluates(tmp_path, tiny_corpus):
    out = tmp_path / "out"
    stages = [
        {"name": "base", "kind": "pretrain", "steps": 2, "micro_batch_size": 2, "lr": 1e-2,
         "windows": [{"length": 64, "share": 1.0, "rope": "original"}]},
        {"name": "dpe", "kind": "search", "algorithm": "dpe", "target_length": 512, "num_samples": 1,
         "needle_depths": [0.25, 0.5, 0.75], "settings": {"groups": 2, "local_window": 32, "key_fraction": 0.5}},
        {"name": "eval", "kind": "eval", "tasks": ["ppl"], "lengths": [64, 512], "ppl_docs": 1,
         "runs": [{"name": "yarn", "rope": "yarn"}, {"name": "dpe", "spec_from": "dpe"}]},
    ]  # fmt: skip
    recipe = write_recipe(tmp_path / "r.yaml", tiny_corpus, out, stages=stages)
    run_cli(recipe)
    spec = RopeSpec.from_json(out / "dpe" / "spec.json")
    params = spec.method_params
    assert spec.method == "dpe" and len(params.group_scales) == 2 and len(params.key_dims) == 4
    result = json.loads((out / "dpe" / "result.json").read_text())
    assert [sorted(map(float, s)) for s in result["sweeps"]] == [[1.0, 2.0, 4.0, 8.0, 16.0]] * 2
    for group, scale in enumerate(params.group_scales):  # the chosen scale is the sweep's best
        sweep = {float(k): v for k, v in result["sweeps"][group].items()}
        assert sweep[scale] == min(sweep.values())
    # every scored setting is logged for a resume; 2 × 5 less the one both groups share (all 16)
    log = out / "dpe" / "sweeps.jsonl"
    assert len(log.read_text().splitlines()) == 9
    # interrupted after its sweep: other scoring settings are refused, the same ones resume
    (out / "dpe" / "COMPLETE").unlink()
    changed = run_cli(recipe, "stages.dpe.num_samples=2", check=False)
    assert changed.returncode == 2, changed.stderr[-2000:]
    assert "stages.dpe: started (its scores would be reused)" in changed.stderr
    assert "(num_samples differ)" in changed.stderr
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:4]))  # 5 settings left to score
    run_cli(recipe)
    again = json.loads((out / "dpe" / "result.json").read_text())
    assert again["sweeps"] == result["sweeps"] and again["spec"] == result["spec"]
    assert len(log.read_text().splitlines()) == 9
    runs = json.loads((out / "eval" / "results.json").read_text())["runs"]
    ppl = {r["name"]: r["tasks"]["ppl"]["by_length"]["512"]["ppl"] for r in runs}
    assert ppl["dpe"] != ppl["yarn"]
