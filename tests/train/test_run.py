"""The real CLI on CPU: a tiny chain runs, losses go down, a SIGKILLed run resumes to the same
weights, a corrupt last checkpoint is skipped, completed stages are not rerun."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from .conftest import kill_when, model_recipe, run_cli, start_cli, write_recipe


def _run(recipe: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_cli(recipe, *extra, check=check, timeout=300)


def _weights(stage_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(stage_dir / "model" / "model.safetensors")


def test_chain_runs_losses_fall_and_export_loads_stock(tmp_path, tiny_corpus):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_corpus, out)
    _run(recipe)
    result = json.loads((out / "base" / "result.json").read_text())
    metrics = [json.loads(line) for line in (out / "base" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 13))
    first, last = sum(m["loss"] for m in metrics[:3]) / 3, sum(m["loss"] for m in metrics[-3:]) / 3
    assert last < first - 0.3, (first, last)
    assert result["final_loss"] == metrics[-1]["loss"]
    assert (out / "base" / "COMPLETE").exists() and (out / "export" / "COMPLETE").exists()
    assert [p.name for p in (out / "base" / "checkpoints").iterdir()] == ["step-12", "step-8"] or sorted(
        p.name for p in (out / "base" / "checkpoints").iterdir()
    ) == ["step-12", "step-8"]
    model = AutoModelForCausalLM.from_pretrained(out / "export" / "model", local_files_only=True)
    assert model.config.rope_parameters["rope_type"] == "default"
    # rerun: every stage is complete and skipped
    again = _run(recipe)
    assert "[base] complete, skipped" in again.stderr + again.stdout
    # a completed stage is not silently reused with other settings
    changed = _run(recipe, "stages.base.lr=0.5", check=False)
    assert changed.returncode == 2
    assert "stages.base: completed in" in changed.stderr and "(lr differ)" in changed.stderr


def test_sigkill_during_training_resumes_to_identical_weights(tmp_path, tiny_corpus):
    # 40 steps, killed once step 4 is checkpointed: a loaded machine can run a few more steps
    # before the kill lands, never 36 (with 12 steps the run once finished before it)
    steps = "stages.base.steps=40"
    full = write_recipe(tmp_path / "full.yaml", tiny_corpus, tmp_path / "full")
    _run(full, steps)
    killed = write_recipe(tmp_path / "killed.yaml", tiny_corpus, tmp_path / "killed")
    marker = tmp_path / "killed" / "base" / "checkpoints" / "step-4" / "COMPLETE"
    kill_when(start_cli(killed, steps), marker.parent.parent / "step-*" / "COMPLETE", timeout=240)
    # killed mid-run: a checkpoint (step 4, or a later one that pruned it) and no completion marker
    assert any(marker.parent.parent.glob("step-*/COMPLETE"))
    assert not (tmp_path / "killed" / "base" / "COMPLETE").exists()
    resumed = _run(killed, steps)
    result = json.loads((tmp_path / "killed" / "base" / "result.json").read_text())
    assert result["resumed_from_step"] in range(4, 40, 4), resumed.stderr[-2000:]
    a, b = _weights(tmp_path / "full" / "base"), _weights(tmp_path / "killed" / "base")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    full_losses = json.loads((tmp_path / "full" / "base" / "result.json").read_text())["final_loss"]
    assert result["final_loss"] == full_losses


def test_corrupt_last_checkpoint_falls_back_to_previous(tmp_path, tiny_corpus):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_corpus, out)
    _run(recipe, "stages.base.steps=8")
    stage = out / "base"
    for name in ("COMPLETE", "result.json"):
        (stage / name).unlink()
    for path in (stage / "checkpoints" / "step-8").glob("*.safetensors"):
        path.write_bytes(b"garbage")
    proc = _run(recipe, "stages.base.steps=10")
    assert "step-8 is unusable" in proc.stderr
    result = json.loads((stage / "result.json").read_text())
    assert result["resumed_from_step"] == 4 and result["steps"] == 10


def test_stage_failing_on_its_input_stops_with_one_line(tmp_path, tiny_corpus, longrope_model):
    """An error our layers raise mid-run (here: a needle sample cannot fit the readjust length)
    is one line naming the recipe file and the stage, exit status 2, no traceback."""
    stage = {"name": "readjust", "kind": "readjust", "target_length": 64, "objective": "needle_ppl",
             "num_samples": 1, "max_evaluations": 2}  # fmt: skip
    recipe = model_recipe(tmp_path / "r.yaml", longrope_model, tiny_corpus, tmp_path / "out", [stage])
    proc = _run(recipe, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{recipe}: stages.readjust (readjust): needle_ppl: length=64 is too short"), last
    assert not (tmp_path / "out" / "readjust" / "COMPLETE").exists()


def test_a_setting_added_later_keeps_stages_completed_before_it(tmp_path):
    """config.json of a stage completed before a schema key existed lacks that key: unset (None)
    now, it is the same stage; set, it is not."""
    import pytest

    from longctx.train.load import RecipeError
    from longctx.train.run import _check_same_config
    from longctx.train.stages.search import Settings

    stage = Settings(kind="search", name="s", target_length=512)
    saved = stage.model_dump(mode="json")
    del saved["attention_factor"]  # written by a version without the key
    (tmp_path / "config.json").write_text(json.dumps(saved))
    _check_same_config(stage, tmp_path, tmp_path / "r.yaml")
    changed = stage.model_copy(update={"attention_factor": 1.0})
    with pytest.raises(RecipeError, match=r"\(attention_factor differ\)"):
        _check_same_config(changed, tmp_path, tmp_path / "r.yaml")


def test_a_setting_added_later_with_a_non_none_default_keeps_completed_stages(tmp_path):
    """Before: a missing key counted as None, so a later setting whose default is not None (a
    readjust's ``balance_points: 9``) made every earlier completed stage "differ"."""
    import pytest

    from longctx.train.load import RecipeError
    from longctx.train.run import _check_same_config
    from longctx.train.stages.readjust import Settings

    stage = Settings(kind="readjust", name="r", target_length=64)
    saved = stage.model_dump(mode="json")
    del saved["balance_points"], saved["retrieval_weight"]  # defaults 9 and 1.0
    (tmp_path / "config.json").write_text(json.dumps(saved))
    _check_same_config(stage, tmp_path, tmp_path / "r.yaml")
    with pytest.raises(RecipeError, match=r"\(balance_points differ\)"):
        _check_same_config(stage.model_copy(update={"balance_points": 5}), tmp_path, tmp_path / "r.yaml")
