"""The --dry-run memory planner: parameter count, ZeRO sharding arithmetic, config advice."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig

from longctx.train.planner import GIB, ModelShape, format_plan, plan_memory
from longctx.train.run import main

LLAMA3_8B = LlamaConfig(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False,
)  # fmt: skip


def test_parameter_count_of_llama3_8b():
    assert ModelShape.from_config(LLAMA3_8B).params == 8_030_261_248  # the published count


def test_zero_sharding_and_advice():
    shape = ModelShape.from_config(LLAMA3_8B)
    rows = {r["config"]: r for r in plan_memory(shape, 8192, gpus=8, checkpointing=True, gpu_gib=80)}
    assert rows["multi_gpu_ddp"]["states"] == pytest.approx(16 * shape.params / GIB)
    assert rows["deepspeed_zero2"]["states"] == pytest.approx((2 + 14 / 8) * shape.params / GIB)
    assert rows["deepspeed_zero3"]["states"] == pytest.approx(2 * shape.params / GIB)
    assert not rows["multi_gpu_ddp"]["fits"] and rows["deepspeed_zero2"]["fits"]
    lines = format_plan(list(rows.values()), params=shape.params, tokens=8192, gpus=8, gpu_gib=80)
    assert lines[-1] == "  → use accelerate_configs/deepspeed_zero2.yaml (the fastest that fits)"
    long = plan_memory(shape, 131072, gpus=8, checkpointing=True, gpu_gib=80)
    assert long[0]["logits"] == pytest.approx(8 * 131072 * 128256 / GIB)
    assert "logits dominate" in format_plan(long, params=shape.params, tokens=131072, gpus=8, gpu_gib=80)[-1]


def test_dry_run_prints_the_memory_plan(capsys):
    assert main(["recipes/tiny.yaml", "--dry-run", "--gpus", "1", "--gpu-mem", "24"]) == 0
    out = capsys.readouterr().out
    assert "memory plan:" in out and "1 × 24 GiB GPUs" in out and "→ use accelerate_configs/" in out
