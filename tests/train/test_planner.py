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
    """DDP 20 B/param (fp32 weights, grads, DDP's bucket copy, AdamW); DeepSpeed bf16 18 B/param
    (bf16 weights + fp32 master, AdamW and gradient accumulation): ZeRO-2 keeps the 2 B of bf16
    weights whole, ZeRO-3 shards all 18 and holds a gathered copy of one layer (or the head)."""
    shape = ModelShape.from_config(LLAMA3_8B)
    rows = {r["config"]: r for r in plan_memory(shape, 8192, gpus=8, checkpointing=True, gpu_gib=80)}
    assert rows["multi_gpu_ddp"]["states"] == pytest.approx(20 * shape.params / GIB)
    assert rows["deepspeed_zero2"]["states"] == pytest.approx((2 + 16 / 8) * shape.params / GIB)
    gathered = max(3 * 2 * shape.layer_params, 2 * shape.vocab * shape.hidden)  # 3 layers: 1.2 GiB
    assert rows["deepspeed_zero3"]["states"] == pytest.approx((18 / 8 * shape.params + gathered) / GIB)
    assert not rows["multi_gpu_ddp"]["fits"] and rows["deepspeed_zero2"]["fits"]
    lines = format_plan(list(rows.values()), params=shape.params, tokens=8192, gpus=8, gpu_gib=80)
    assert lines[-1] == "  → use accelerate_configs/deepspeed_zero2.yaml (the fastest that fits)"
    t, V, h = 131072, 128256, 4096
    long = {r["config"]: r for r in plan_memory(shape, t, gpus=8, checkpointing=True, gpu_gib=80)}
    # the materialised loss: 12 bytes per logit at its backward (saved log_softmax, nll's and
    # log_softmax's gradients) + the final norm, the head's input and its gradient
    assert long["multi_gpu_ddp"]["loss"] == pytest.approx((12 * t * V + 14 * h * t) / GIB)
    # ZeRO-3's tiled loss keeps one slice of ≤ 2^28 logits, the head's bf16 gradients (slice + sum)
    # and its gathered weight: ≈ 11 GiB where the materialised logits took 125
    assert long["deepspeed_zero3"]["loss"] <= (12 * 2**28 + 4 * V * h + 10 * h * t + 2 * V * h) / GIB < 12
    # but a whole 128k row on one GPU still keeps 32 bf16 checkpoints (32 GiB) and one layer's
    # recompute (32.6 GiB): without sequence parallelism ZeRO-3 does not fit 80 GiB; Ulysses over 8 does
    assert not long["deepspeed_zero3"]["fits"] and long["deepspeed_zero3"]["stored"] == pytest.approx(
        32.1, abs=0.1
    )
    sp = {
        r["config"]: r
        for r in plan_memory(shape, t, gpus=8, checkpointing=True, gpu_gib=80, sequence_parallel=8)
    }
    assert sp["deepspeed_zero3_ulysses"]["fits"] and sp["deepspeed_zero3_ulysses"]["stored"] == pytest.approx(
        4.0, abs=0.1
    )
    no_ckpt = plan_memory(shape, 131072, gpus=8, checkpointing=False, gpu_gib=80)
    lines = format_plan(no_ckpt, params=shape.params, tokens=131072, gpus=8, gpu_gib=80)
    assert lines[-1].startswith("  → nothing fits: enable gradient checkpointing")


def test_dry_run_prints_the_memory_plan(capsys):
    assert main(["recipes/tiny.yaml", "--dry-run", "--gpus", "1", "--gpu-mem", "24"]) == 0
    out = capsys.readouterr().out
    assert "memory plan:" in out and "1 × 24 GiB GPUs" in out and "→ use accelerate_configs/" in out


REAL = {
    # the published geometries, as their config.json files say (max_position_embeddings too: the
    # recipe's checks read L from it)
    "llama3_128k": ("llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                  num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                  max_position_embeddings=8192)),
    "mistral_128k": ("mistral", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                     num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
                                     max_position_embeddings=32768)),
    "phi3_mini_128k": ("phi3", dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                                    num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                                    max_position_embeddings=4096)),
    "llama2_2048k": ("llama", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                   max_position_embeddings=4096)),
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


def test_layer_terms_are_the_hand_computation_for_llama3_8b():
    """One recomputed Llama-3-8B layer, per token, counted tensor by tensor (planner docstring):
    the RMSNorms' fp32 input and product, the linears' inputs, q/k after RoPE and v, the attention
    output and log-sum-exp, gate / act / up / product; then its backward's two MLP gradients and
    the incoming gradient. Not the 34·h the plan used to assume for the whole layer."""
    from longctx.train.planner import (
        AUTOCAST,
        FP32,
        HALF,
        layer_backward_bytes,
        layer_saved_bytes,
        loss_bytes,
        stored_bytes,
    )

    s = ModelShape.from_config(LLAMA3_8B)
    h, a, k, i, heads = 4096, 4096, 1024, 14336, 32
    assert (s.attn_dim, s.kv_dim, s.intermediate, s.heads) == (a, k, i, heads)
    # DeepSpeed bf16 (c = r = 2): norms 12h, q/k/v's and gate/up's shared inputs 2·2h
    half = 12 * h + 2 * 2 * h + 2 * (a + 2 * k) + 2 * a + 4 * heads + 4 * 2 * i
    assert layer_saved_bytes(s, HALF) == half == 200_832  # ≈ 49·h
    assert layer_backward_bytes(s, HALF) == half + 2 * 2 * i + 2 * h == 266_368  # ≈ 65·h
    # autocast (c = 2, r = 4): 3 + 2 bf16 casts of the norms' fp32 outputs; fp32: everything 4 bytes
    assert layer_saved_bytes(s, AUTOCAST) == 12 * h + 5 * 2 * h + 2 * (a + 2 * k) + 2 * a + 128 + 8 * i
    assert layer_backward_bytes(s, AUTOCAST) == layer_saved_bytes(s, AUTOCAST) + 4 * i + 4 * h + 2 * h
    assert layer_saved_bytes(s, FP32) == 12 * h + 8 * h + 4 * (a + 2 * k) + 4 * a + 128 + 16 * i
    # checkpoints: one bf16 hidden per layer (fp32 under autocast), cos/sin, ids
    assert stored_bytes(s, HALF) == 32 * 2 * h + 2 * 128 * 2 + 24
    assert stored_bytes(s, AUTOCAST) == 32 * 4 * h + 2 * 128 * 4 + 24
    # Phi-3's fused qkv_proj output stays alive through its v view: + c·(a + k)
    phi3 = ModelShape(params=1, hidden=3072, layers=32, vocab=32064, intermediate=8192, heads=32,
                      kv_heads=32, head_dim=96, fused_qkv=True)  # fmt: skip
    assert (
        layer_saved_bytes(phi3, HALF)
        - layer_saved_bytes(ModelShape(**{**phi3.__dict__, "fused_qkv": False}), HALF)
        == 2 * 6144
    )
    # the materialised loss at 128k: 12 bytes per logit (saved log_softmax, two gradients)
    t, V = 131072, 128256
    assert loss_bytes(s, t, HALF, "plain") == 12 * t * V + 10 * h * t
    # DeepSpeed bf16 states: 18 B/param, all sharded under ZeRO-3 (1 GPU: all of it here)
    zero3 = next(
        r
        for r in plan_memory(s, 8192, gpus=1, checkpointing=True, gpu_gib=80)
        if r["config"] == "deepspeed_zero3"
    )
    assert zero3["states"] * GIB == pytest.approx(18 * s.params + 3 * 2 * s.layer_params)


def test_plan_is_within_25_percent_of_measured_micro_steps():
    """benchmarks/planner_memory.py's measurement (torch.profiler's allocation events) on small
    shapes, one per phase the plan says peaks: a training step peaking in the loss (full logits,
    fp32), one peaking in a layer's recompute (bf16 module: DeepSpeed's precision, tiled loss; a
    1k vocabulary so the layer dominates at 2k tokens), one under autocast (fp32 weights, the tiled
    loss), a perplexity forward (no grad) and a generation prefill (KV cache)."""
    from benchmarks.planner_memory import Row, measure

    rows = [Row(256, 2, 1024, loss="plain"), Row(512, 2, 2048, precision="bf16", vocab=1024),
            Row(256, 2, 1024, precision="autocast"), Row(256, 2, 4096, precision="bf16", loss="ppl"),
            Row(256, 2, 2048, precision="bf16", loss="generate")]  # fmt: skip
    phases = []
    for row in rows:
        r = measure(row)
        phases.append(r["phase"])
        assert 0.75 <= r["planned"] / r["peak"] <= 1.25, r
        assert 0.75 <= r["planned_dynamic"] / r["dynamic"] <= 1.25, r  # the step's own allocations too
    assert phases == ["loss", "layer", "loss", "forward", "cache"]


def _dry_run(name: str, tmp_path, capsys, *overrides: str) -> str:
    from pathlib import Path

    from transformers import AutoConfig

    arch, geometry = REAL[name]
    AutoConfig.for_model(arch, **geometry).save_pretrained(tmp_path)
    args = [str(Path("recipes") / f"{name}.yaml"), f"model.path={tmp_path}", *overrides,
            "--dry-run", "--gpus", "8", "--gpu-mem", "80"]  # fmt: skip
    assert main(args) == 0
    return capsys.readouterr().out


def test_a_2048k_forward_does_not_fit_one_gpu_and_the_recipe_no_longer_runs_one(tmp_path, capsys):
    """Search and eval run one forward per GPU on the whole model (no grad). Llama-2-7B at
    2,097,152 tokens: the MLP's largest op keeps the embeddings, the layer's input, its residual and
    normed input (4·2·h) and act(gate), up and their product (3·2·i): 193 GiB; plus 12.6 GiB of
    weights. The plan says so; llama2_2048k's last search now targets a length that fits, and its
    passkey (Llama-2's KV cache, 0.5 MiB a token) runs in its own eval stage up to 64k."""
    from longctx.train.planner import inference_memory

    shape = ModelShape.from_config(LlamaConfig(**REAL["llama2_2048k"][1]))
    t = 2_097_152
    m = inference_memory(shape, t, 2)
    mlp = (4 * 2 * 4096 + 3 * 2 * 11008) * t
    assert m["total"] == 2 * shape.params + (2 * 128 * 2 + 16) * t + mlp and m["total"] / GIB > 200
    assert inference_memory(shape, 131072, 2, generate=True)["cache"] >= 2 * 32 * 2 * 4096 * 131072  # 64 GiB

    out = _dry_run("llama2_2048k", tmp_path, capsys)
    rows = [
        line.split()
        for line in out.splitlines()
        if line.startswith("    search_") or line.startswith("    eval ")
    ]
    searches = [r for r in rows if r[0].startswith("search_")]
    assert [r[0] for r in searches] == ["search_128k", "search_256k", "search_512k"]
    assert all(r[-1] == "yes" for r in searches), searches
    flagged = [line for line in out.splitlines() if "does not fit one 80 GiB GPU" in line]
    assert flagged == [], flagged
    assert any(line.split()[:1] == ["eval_passkey"] and line.split()[-1] == "yes" for line in
               (x.strip() for x in out.splitlines())), "passkey planned with its KV cache"  # fmt: skip
    # the recipe as it was (a 2048k search): flagged, with the longest forward that would fit
    out = _dry_run("llama2_2048k", tmp_path, capsys, "stages.search_512k.target_length=2097152")
    assert (
        "  → search_512k: search evolution ppl at 2,097,152 tokens does not fit one 80 GiB GPU "
        "(longest that fits: 707,390 tokens)" in out
    )


def test_each_long_recipe_plans_every_search_and_eval_that_fits_one_gpu(capsys, tmp_path):
    """The 128k recipes' searches and evals (ppl, and passkey/RULER with their KV cache) fit one
    80 GiB GPU: each gets a line, and none is flagged."""
    for name in ("llama3_128k", "mistral_128k", "phi3_mini_128k"):
        out = _dry_run(name, tmp_path / name, capsys)
        lines = [
            line
            for line in out.splitlines()
            if line.startswith("    search_") or line.startswith("    eval ")
        ]
        assert len(lines) >= 3 and all(line.endswith("yes") for line in lines), (name, lines)
        assert "does not fit one" not in out
