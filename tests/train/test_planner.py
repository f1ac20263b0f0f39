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
    long = {r["config"]: r for r in plan_memory(shape, 131072, gpus=8, checkpointing=True, gpu_gib=80)}
    assert long["multi_gpu_ddp"]["logits"] == pytest.approx(8 * 131072 * 128256 / GIB)
    # ZeRO-3's tiled loss keeps one slice of 2^28 logits: it fits where the full logits (125 GiB) did not
    assert (
        long["deepspeed_zero3"]["logits"] == pytest.approx(8 * 2**28 / GIB)
        and long["deepspeed_zero3"]["fits"]
    )
    no_ckpt = plan_memory(shape, 131072, gpus=8, checkpointing=False, gpu_gib=80)
    lines = format_plan(no_ckpt, params=shape.params, tokens=131072, gpus=8, gpu_gib=80)
    assert lines[-1].startswith("  → nothing fits: enable gradient checkpointing")


def test_dry_run_prints_the_memory_plan(capsys):
    assert main(["recipes/tiny.yaml", "--dry-run", "--gpus", "1", "--gpu-mem", "24"]) == 0
    out = capsys.readouterr().out
    assert "memory plan:" in out and "1 × 24 GiB GPUs" in out and "→ use accelerate_configs/" in out


REAL = {
    # the published geometries, as their config.json files say
    "llama3_128k": ("llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                  num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)),
    "mistral_128k": ("mistral", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                     num_attention_heads=32, num_key_value_heads=8, vocab_size=32000)),
    "phi3_mini_128k": ("phi3", dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                                    num_attention_heads=32, num_key_value_heads=32, vocab_size=32064)),
    "llama2_2048k": ("llama", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(REAL))
def test_each_long_recipe_launches_with_a_config_its_plan_says_fits(name, tmp_path, capsys):
    """Only the model's config.json is local (a user plans before downloading 16 GB); the dry run
    on a CPU machine prints the plan, and the recipe's launch line names the config it advises."""
    import re
    from pathlib import Path

    from transformers import AutoConfig

    arch, geometry = REAL[name]
    AutoConfig.for_model(arch, **geometry).save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    recipe = Path("recipes") / f"{name}.yaml"
    launch = re.search(r"accelerate launch --config_file accelerate_configs/(\S+)\.yaml", recipe.read_text())
    assert launch, f"{recipe}: no launch line"
    args = [str(recipe), f"model.path={tmp_path}", "--dry-run", "--gpus", "8", "--gpu-mem", "80"]
    if "tokenizer:" in recipe.read_text():
        args.insert(2, f"tokenizer.path={tmp_path}")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"→ use accelerate_configs/{launch.group(1)}.yaml" in out, out[-1500:]
    row = next(line for line in out.splitlines() if line.strip().startswith(launch.group(1) + " "))
    assert " yes" in row
