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


def test_batch_under_sequence_parallel_counts_data_parallel_groups_only():
    """Under ``sequence_parallel: 8`` on 8 GPUs there is ONE data-parallel group: llama3_128k's
    global batch is 8 rows (not the 64 its comment used to say), ≈229M tokens (not ≈10B)."""
    from pathlib import Path

    from longctx.train.load import load_recipe
    from longctx.train.schema import batch_plan

    recipe = load_recipe(Path("recipes/llama3_128k.yaml"), check_files=False)
    stage = next(s for s in recipe.stages if s.name == "mixed_ft")
    p = batch_plan(stage, gpus=8, sequence_parallel=recipe.sequence_parallel)
    assert (p["data_parallel"], p["rows"]) == (1, 8)
    # 30 % of tokens in 8k rows, 70 % in 128k rows: a row holds 1 / (0.3/8192 + 0.7/131072) tokens
    assert p["row_tokens"] == pytest.approx(23_831.3, abs=0.1)
    assert p["tokens"] == pytest.approx(1200 * 8 / (0.3 / 8192 + 0.7 / 131072), rel=1e-9)
    assert batch_plan(stage, gpus=64, sequence_parallel=8)["rows"] == 64


@pytest.mark.parametrize(
    "name", ["llama3_128k", "llama2_2048k", "mistral_128k", "phi3_mini_128k", "dcis_llama2_64k", "tiny"]
)
def test_recipe_comments_state_the_batch_the_dry_run_prints(name, capsys):
    """Each training stage's ``steps:`` comment says the global batch and the tokens on 8
    processes, as ``--dry-run --gpus 8`` computes them; no other comment claims a batch."""
    import re
    from pathlib import Path

    from longctx.train.load import load_recipe
    from longctx.train.schema import batch_comment, batch_plan

    path = Path("recipes") / f"{name}.yaml"
    recipe = load_recipe(path, check_files=False)
    text = path.read_text()
    stated = re.findall(
        r"^\s+steps: \d+\s+#.*?(on \d+ processes: global batch \d+ rows, ≈\S+ tokens)", text, re.M
    )
    train = [s for s in recipe.stages if hasattr(s, "grad_accum")]
    if name != "tiny":  # the GPU recipes must state it; tiny runs on one CPU process
        assert len(stated) == len(train), f"{path}: a training stage's steps: line states no batch"
    for stage, claim in zip(train, stated):
        gpus = int(claim.split()[1])
        assert claim == batch_comment(batch_plan(stage, gpus, recipe.sequence_parallel)), (path, stage.name)
    assert not re.search(r"× \d+ GPUs = global batch", text), f"{path}: a batch claim the plan does not make"
    if name == "tiny":
        assert main([str(path), "--dry-run", "--gpus", "1"]) == 0
        out = capsys.readouterr().out
        assert "  base: 1 = 1 data-parallel × 1 sequence-parallel; global batch 16 rows" in out
