"""2 gloo processes under DDP, DeepSpeed ZeRO-2 and ZeRO-3 give the loss curve and the weights
of 1 process with the same global batches; ZeRO-3 resumes from its sharded checkpoint; LoRA
under ZeRO-3 trains only the adapters (+ LongLoRA's embed/norm) and merges them correctly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import launch, model_recipe, run_cli, write_recipe

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
LAUNCH = {
    # DDP on CPU needs ACCELERATE_USE_CPU=1; DeepSpeed must NOT have it (it would drop DeepSpeed)
    "ddp": ("cpu_ddp.yaml", {"ACCELERATE_USE_CPU": "1"}),
    "zero2": ("deepspeed_zero2.yaml", {}),
    "zero3": ("deepspeed_zero3.yaml", {}),
}


def _stages(accum: int, rows: int = 2) -> list[dict]:
    return [
        {
            "name": "base", "kind": "pretrain", "steps": 6, "micro_batch_size": rows, "grad_accum": accum,
            "lr": 1e-2, "checkpoint_every": 3, "keep_checkpoints": 2, "log_every": 1,
            "windows": [{"length": 64, "share": 1.0, "rope": "original"}],
        }
    ]  # fmt: skip


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "base" / "metrics.jsonl").read_text().splitlines()]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "base" / "model" / "model.safetensors")


def _launch(kind: str, recipe: Path) -> subprocess.CompletedProcess:
    config, extra = LAUNCH[kind]
    return launch(config, recipe, extra)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, tiny_corpus) -> Path:
    root = tmp_path_factory.mktemp("one")
    recipe = write_recipe(root / "one.yaml", tiny_corpus, root / "out", stages=_stages(2))
    cmd = [sys.executable, str(REPO / "train" / "run.py"), str(recipe)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "out"


@pytest.mark.parametrize("kind", list(LAUNCH))
def test_two_processes_match_one_process(kind, single_process, tmp_path, tiny_corpus):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_corpus, tmp_path / "out", stages=_stages(1))
    proc = _launch(kind, recipe)
    if kind != "ddp":
        ckpt = tmp_path / "out" / "base" / "checkpoints" / "step-6"
        assert (ckpt / "pytorch_model").is_dir(), "a DeepSpeed engine checkpoint, i.e. DeepSpeed really ran"
    assert _losses(tmp_path / "out") == pytest.approx(_losses(single_process), rel=1e-5, abs=1e-6)
    ours, ref = _weights(tmp_path / "out"), _weights(single_process)
    for key, value in ref.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=1e-5, msg=key)
    tokens = json.loads((tmp_path / "out" / "base" / "metrics.jsonl").read_text().splitlines()[0])["tokens"]
    assert tokens == 2 * 2 * 64, f"each rank trained on its own micro-batch ({proc.args[-1]})"


def test_zero3_accumulates_gradients_over_micro_batches(single_process, tmp_path, tiny_corpus):
    """grad_accum 2 × 1 row on each of 2 ZeRO-3 processes = 1 process with grad_accum 2 × 2 rows.
    Before: the tiled loss bypassed ``DeepSpeedEngine.forward``, ZeRO-3's micro-step counter
    never advanced and each micro-batch's gradient overwrote the last (weights 5e-2 away)."""
    recipe = write_recipe(tmp_path / "r.yaml", tiny_corpus, tmp_path / "out", stages=_stages(2, rows=1))
    proc = _launch("zero3", recipe)
    assert "loss: tiled over lm_head" in proc.stderr
    assert _losses(tmp_path / "out") == pytest.approx(_losses(single_process), rel=1e-5, abs=1e-6)
    ours, ref = _weights(tmp_path / "out"), _weights(single_process)
    for key, value in ref.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=1e-5, msg=key)


def test_zero3_resumes_from_its_sharded_checkpoint(single_process, tmp_path, tiny_corpus):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_corpus, tmp_path / "out", stages=_stages(1))
    _launch("zero3", recipe)
    stage = tmp_path / "out" / "base"
    for name in ("COMPLETE", "result.json"):
        (stage / name).unlink()
    shutil.rmtree(stage / "checkpoints" / "step-6")
    shutil.rmtree(stage / "model")
    _launch("zero3", recipe)
    assert json.loads((stage / "result.json").read_text())["resumed_from_step"] == 3
    ours, ref = _weights(tmp_path / "out"), _weights(single_process)
    for key, value in ref.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=1e-5, msg=key)


def _lora_stage(accum: int) -> list[dict]:
    return [
        {"name": "ft", "kind": "finetune", "steps": 3, "micro_batch_size": 2, "grad_accum": accum, "lr": 1e-2,
         "log_every": 1, "windows": [{"length": 128, "share": 1.0, "rope": "rescaled"}],
         "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"], "trainable": ["embed", "norm"]}},
    ]  # fmt: skip


def test_lora_under_zero3_trains_only_adapters_and_merges_them(tmp_path, tiny_corpus, longrope_model):
    from transformers import AutoModelForCausalLM

    from longctx.rope import apply_rope, from_hf_config
    from longctx.train.lora import wrap_lora
    from longctx.train.recipe import LoraCfg

    one = model_recipe(tmp_path / "one.yaml", longrope_model, tiny_corpus, tmp_path / "one", _lora_stage(2))
    run_cli(one)
    two = model_recipe(tmp_path / "two.yaml", longrope_model, tiny_corpus, tmp_path / "two", _lora_stage(1))
    _launch("zero3", two)
    stage = tmp_path / "two" / "ft"
    assert (stage / "checkpoints" / "step-3" / "pytorch_model").is_dir(), "DeepSpeed really ran"
    base = load_file(longrope_model / "model.safetensors")
    merged_w = load_file(stage / "model" / "model.safetensors")
    assert merged_w.keys() == base.keys(), "the export is the merged model, no adapter tensors"
    changed = {k for k in base if not torch.equal(base[k], merged_w[k])}
    assert changed == {
        k for k in base if any(p in k for p in ("q_proj", "v_proj", "norm", "embed_tokens"))
    }, changed
    # the same adapters as one process (every rank starts from the same seeded lora_A)
    ref = load_file(tmp_path / "one" / "ft" / "model" / "model.safetensors")
    for key, value in ref.items():
        torch.testing.assert_close(merged_w[key], value, rtol=0, atol=1e-5, msg=key)
    # the merged export computes what the adapted model computes
    adapter = load_file(stage / "adapter.safetensors")
    assert adapter and all("lora_" in k or "norm" in k or "embed_tokens" in k for k in adapter), sorted(
        adapter
    )
    adapted = AutoModelForCausalLM.from_pretrained(longrope_model, attn_implementation="sdpa")
    spec = from_hf_config(adapted.config)
    adapted = wrap_lora(
        apply_rope(adapted, spec),
        LoraCfg(r=4, target_modules=["q_proj", "v_proj"], trainable=["embed", "norm"]),
    )
    missing = adapted.load_state_dict(adapter, strict=False).unexpected_keys
    assert not missing, missing
    export = apply_rope(
        AutoModelForCausalLM.from_pretrained(stage / "model", attn_implementation="sdpa"), spec
    )
    ids = torch.randint(3, 500, (2, 100))
    with torch.no_grad():
        torch.testing.assert_close(
            export(input_ids=ids).logits, adapted.eval()(input_ids=ids).logits, rtol=1e-5, atol=1e-5
        )
