"""A model with a sliding window (Mistral-7B-v0.1: 4096, Phi-3-mini: 2047) extended past it gets
full attention: lifted at load (training sees every key) and at export (the served config has
no window). Before: training, every long eval and the exported config kept the window."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from longctx.rope import RopeSpec, apply_rope, save_extended
from longctx.rope.hf_config import lift_sliding_window
from tests.tiny import tiny_config, tiny_model

from .conftest import model_recipe, run_cli

L, TARGET, WINDOW = 64, 256, 32


def _spec() -> RopeSpec:
    return RopeSpec("longrope", 10_000.0, 16, L, TARGET, long_factor=tuple(1.0 + i for i in range(8)))


def _ids(vocab: int, n: int = TARGET) -> torch.Tensor:
    return torch.randint(3, vocab, (1, n), generator=torch.Generator().manual_seed(0))


def test_lift_only_when_the_length_passes_the_window():
    config = tiny_config("mistral", sliding_window=WINDOW)
    assert lift_sliding_window(config, WINDOW) is None and config.sliding_window == WINDOW
    assert lift_sliding_window(config, WINDOW + 1) == WINDOW and config.sliding_window is None
    qwen = tiny_config("qwen2", sliding_window=WINDOW, use_sliding_window=True, max_window_layers=0)
    assert qwen.layer_types == ["sliding_attention"] * 2
    assert lift_sliding_window(qwen, TARGET) == WINDOW
    assert qwen.layer_types == ["full_attention"] * 2 and not qwen.use_sliding_window


def test_export_past_the_window_serves_full_attention(tmp_path):
    model = tiny_model(tiny_config("mistral", sliding_window=WINDOW, attn_implementation="sdpa"))
    apply_rope(model, _spec())
    ids = _ids(model.config.vocab_size)
    out = save_extended(model, _spec(), tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["sliding_window"] is None
    served = AutoModelForCausalLM.from_pretrained(out, attn_implementation="sdpa").eval()
    reference = AutoModelForCausalLM.from_pretrained(
        out, attn_implementation="sdpa", sliding_window=None
    ).eval()
    windowed = AutoModelForCausalLM.from_pretrained(
        out, attn_implementation="sdpa", sliding_window=WINDOW
    ).eval()
    with torch.no_grad():
        got, ref, old = (m(ids).logits for m in (served, reference, windowed))
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert (old - ref).abs().max() > 1e-3, "the window really changes logits at 256 (the negative control)"


def _saved_mistral(root, window: int | None):
    """A tiny Mistral (L = 64) saved with a longrope config to 256, its ``sliding_window`` as given."""
    from longctx.data.tokenizer import train_demo_tokenizer

    tok = train_demo_tokenizer(root / "tokenizer", vocab_size=512)
    config = tiny_config(
        "mistral", vocab_size=len(tok), hidden_size=32, num_heads=2, attn_implementation="sdpa",
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    model = apply_rope(tiny_model(config), _spec())
    out = save_extended(model, _spec(), root / "model", tokenizer=tok)
    data = json.loads((out / "config.json").read_text())
    data["sliding_window"] = window  # as Mistral-7B-v0.1 ships it
    (out / "config.json").write_text(json.dumps(data))
    return out


def test_training_and_export_past_the_window_equal_a_model_without_one(tmp_path, tiny_corpus):
    windowed = _saved_mistral(tmp_path / "a", WINDOW)
    plain = tmp_path / "b" / "model"
    shutil.copytree(windowed, plain)
    data = json.loads((plain / "config.json").read_text())
    (plain / "config.json").write_text(json.dumps({**data, "sliding_window": None}))
    stages = [
        {"name": "ft", "kind": "finetune", "steps": 2, "micro_batch_size": 2, "lr": 1e-2, "log_every": 1,
         "windows": [{"length": TARGET, "share": 1.0, "rope": "rescaled"}]},
        {"name": "export", "kind": "export"},
    ]  # fmt: skip
    runs = {}
    for name, model_dir in (("windowed", windowed), ("plain", plain)):
        recipe = model_recipe(tmp_path / f"{name}.yaml", model_dir, tiny_corpus, tmp_path / name, stages)
        runs[name] = (run_cli(recipe), tmp_path / name)
    proc, out = runs["windowed"]
    assert (
        f"sliding_window {WINDOW} lifted (full attention): the recipe runs to {TARGET} tokens" in proc.stderr
    )
    ours = load_file(out / "ft" / "model" / "model.safetensors")
    ref = load_file(runs["plain"][1] / "ft" / "model" / "model.safetensors")
    for key, value in ref.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)
    exported = out / "export" / "model"
    assert json.loads((exported / "config.json").read_text())["sliding_window"] is None
    ids = _ids(500)
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(exported, attn_implementation="sdpa").eval()(ids).logits
        want = (
            AutoModelForCausalLM.from_pretrained(
                runs["plain"][1] / "export" / "model", attn_implementation="sdpa"
            )
            .eval()(ids)
            .logits
        )
    torch.testing.assert_close(got, want, rtol=0, atol=0)
