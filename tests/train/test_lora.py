"""LoRA trains only adapters (+ LongLoRA's embeddings/norms); the merged model equals the adapted one."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from longctx.train.lora import merged, trainable_names, wrap_lora
from longctx.train.recipe import LoraCfg
from tests.tiny import tiny_config, tiny_model

from .conftest import run_cli, write_recipe


def test_only_adapters_and_chosen_parameters_train():
    model = wrap_lora(tiny_model(tiny_config("llama")), LoraCfg(r=4, trainable=["embed", "norm"]))
    names = trainable_names(model)
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    assert any("embed_tokens" in n for n in names) and any(n.endswith("norm.weight") for n in names)
    for n in names:
        assert "lora_" in n or "embed_tokens" in n or "norm" in n, n
    assert not any("q_proj.base_layer" in n or "mlp" in n or "lm_head" in n for n in names)
    plain = trainable_names(wrap_lora(tiny_model(tiny_config("llama")), LoraCfg(r=4)))
    assert all("lora_" in n for n in plain)


def test_merged_model_matches_the_adapted_model():
    model = wrap_lora(tiny_model(tiny_config("llama")), LoraCfg(r=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # non-zero adapters (B starts at zero)
    ids = torch.randint(3, 128, (2, 40))
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        folded = merged(model)(input_ids=ids).logits
    assert not any("lora" in n for n, _ in merged(model).named_parameters())
    torch.testing.assert_close(folded, adapted, rtol=1e-5, atol=1e-5)


def test_lora_finetune_stage_saves_merged_weights(tmp_path, tiny_corpus):
    stages = [
        {"name": "base", "kind": "pretrain", "steps": 2, "micro_batch_size": 2, "lr": 1e-2,
         "windows": [{"length": 64, "share": 1.0, "rope": "original"}]},
        {"name": "ft", "kind": "finetune", "steps": 3, "micro_batch_size": 2, "lr": 1e-2,
         "windows": [{"length": 64, "share": 1.0, "rope": "original"}],
         "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"], "trainable": ["norm"]}},
    ]  # fmt: skip
    recipe = write_recipe(tmp_path / "r.yaml", tiny_corpus, tmp_path / "out", stages=stages)
    run_cli(recipe)
    base = load_file(tmp_path / "out" / "base" / "model" / "model.safetensors")
    tuned = load_file(tmp_path / "out" / "ft" / "model" / "model.safetensors")
    assert base.keys() == tuned.keys(), "merged: no adapter tensors in the saved model"
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert any("q_proj" in k for k in changed) and any("v_proj" in k for k in changed)
    assert any("norm" in k for k in changed)
    assert not any("k_proj" in k or "mlp" in k or "embed_tokens" in k for k in changed), changed
