"""liger-kernel option: refused at validation where it cannot run, a logged fallback under
``auto`` on CPU, and — with CUDA and the package faked — applied to the instance with the
right kernels (RMSNorm, SwiGLU, RoPE, fused linear cross-entropy)."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from longctx.rope import RopeSpec, apply_rope
from longctx.rope.install import installed_rotaries
from longctx.train import kernels
from longctx.train.load import RecipeError, load_recipe
from tests.tiny import tiny_config, tiny_model

from .conftest import run_cli, write_recipe


def _fake_liger(monkeypatch) -> list[dict]:
    """CUDA visible and a liger_kernel whose instance patcher records its calls and changes what
    liger changes: the instance's RMSNorm / MLP forwards and (fused CE) the model's forward, and —
    process-wide — the modeling module's RMSNorm class and ``apply_rotary_pos_emb``."""
    calls: list[dict] = []

    def patch(model, **flags):
        calls.append({"model": model, **flags})
        module = sys.modules[type(model).__module__]
        if model.config.model_type not in ("llama", "phi3", "mistral", "qwen2", "qwen3"):
            return  # liger logs a warning and patches nothing for a type it does not know
        if flags["rope"]:
            monkeypatch.setattr(module, "apply_rotary_pos_emb", lambda *a, **k: None)
        for sub in model.modules():
            name = type(sub).__name__
            if (flags["rms_norm"] and name.endswith("RMSNorm")) or (flags["swiglu"] and name.endswith("MLP")):
                sub.forward = types.MethodType(lambda self, x: x, sub)
        if flags["rms_norm"]:
            norm = next(k for k in vars(module) if k.endswith("RMSNorm"))
            monkeypatch.setattr(module, norm, type("LigerRMSNorm", (torch.nn.Module,), {}))
        if flags["fused_linear_cross_entropy"]:
            model.forward = types.MethodType(lambda self, **kw: None, model)

    package = types.ModuleType("liger_kernel")
    transformers_mod = types.ModuleType("liger_kernel.transformers")
    transformers_mod._apply_liger_kernel_to_instance = patch
    package.transformers = transformers_mod
    monkeypatch.setitem(sys.modules, "liger_kernel", package)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", transformers_mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return calls


def test_liger_on_without_cuda_fails_validation(tmp_path, tiny_corpus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_corpus, tmp_path / "out")
    raw = recipe.read_text().replace("model:\n", "model:\n  liger: 'on'\n", 1)
    recipe.write_text(raw)
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    assert len(err.value.lines) == 1
    line = err.value.lines[0]
    assert line.startswith(f"{recipe}: model.liger: 'on'") and "no CUDA GPU" in line, line
    load_recipe(recipe, check_files=False)  # the recipe itself is valid elsewhere
    with pytest.raises(RecipeError, match=r"model\.liger: Input should be 'auto', 'on' or 'off'"):
        load_recipe(recipe, ["model.liger=fast"], check_files=False)


def test_liger_on_validates_where_cuda_and_package_are_present(tmp_path, tiny_corpus, monkeypatch):
    _fake_liger(monkeypatch)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_corpus, tmp_path / "out")
    assert load_recipe(recipe, ["model.liger=on"]).model.liger == "on"


def test_auto_falls_back_with_a_log_line_and_trains(tmp_path, tiny_corpus):
    stages = [
        {"name": "base", "kind": "pretrain", "steps": 3, "micro_batch_size": 2, "lr": 1e-2, "log_every": 1,
         "windows": [{"length": 64, "share": 1.0, "rope": "original"}]},
    ]  # fmt: skip
    recipe = write_recipe(tmp_path / "r.yaml", tiny_corpus, tmp_path / "out", stages=stages)
    proc = run_cli(recipe)
    fallback = [line for line in proc.stderr.splitlines() if "liger: off" in line]
    assert len(fallback) == 1 and "no CUDA GPU is visible" in fallback[0], proc.stderr[-2000:]
    losses = [
        json.loads(x)["loss"] for x in (tmp_path / "out" / "base" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_apply_calls_liger_on_the_instance_with_all_kernels(monkeypatch):
    calls = _fake_liger(monkeypatch)
    model, logged = tiny_model(tiny_config("llama")), []
    assert kernels.apply_liger(model, "auto", logged.append) is not None
    assert len(calls) == 1 and calls[0].pop("model") is model
    assert calls[0] == {
        "rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False, "fused_linear_cross_entropy": True,
    }  # fmt: skip
    # the log names what was found applied: 2 layers x 2 norms + the final norm, 2 MLPs
    assert logged == [
        "liger: applied rms_norm ×5, swiglu ×2, rope (apply_rotary_pos_emb), fused_linear_cross_entropy"
    ]
    # off never touches it; ZeRO-3 keeps the fused CE off (lm_head.weight is a shard there)
    assert kernels.apply_liger(model, "off", logged.append) is None and len(calls) == 1
    kernels.apply_liger(tiny_model(tiny_config("llama")), "on", logged.append, zero3=True)
    assert calls[1]["fused_linear_cross_entropy"] is False and calls[1]["rms_norm"] is True
    assert "fused_linear_cross_entropy" not in logged[-1].split("(")[0]


def test_liger_stays_on_the_training_model(monkeypatch):
    """Models built later in the process (eval, export, the LoRA merge copy) get transformers' own
    classes at once, and its own apply_rotary_pos_emb once the stage calls restore()."""
    import transformers.models.llama.modeling_llama as modeling

    original_norm, original_rope = modeling.LlamaRMSNorm, modeling.apply_rotary_pos_emb
    _fake_liger(monkeypatch)
    restore = kernels.apply_liger(tiny_model(tiny_config("llama")), "on", lambda m: None)
    assert modeling.LlamaRMSNorm is original_norm
    later = tiny_model(tiny_config("llama"))
    assert all(type(m).__name__ != "LigerRMSNorm" for m in later.modules())
    assert modeling.apply_rotary_pos_emb is not original_rope  # the training model still uses it
    restore()
    assert modeling.apply_rotary_pos_emb is original_rope


def test_an_unknown_model_type_is_logged_as_nothing_applied(monkeypatch):
    _fake_liger(monkeypatch)
    model = tiny_model(tiny_config("llama"))
    model.config.model_type = "somethingnew"
    logged = []
    assert kernels.apply_liger(model, "auto", logged.append) is None
    assert logged == ["liger: applied nothing — no liger kernels for model type 'somethingnew'"]


def test_partial_rotary_models_keep_our_rope_path(monkeypatch):
    calls = _fake_liger(monkeypatch)
    model = tiny_model(tiny_config("phi3", partial_rotary_factor=0.5))
    kernels.apply_liger(model, "on", lambda m: None)
    assert calls[0]["rope"] is False and calls[0]["swiglu"] is True


def test_on_without_the_package_raises_at_apply(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # import fails
    monkeypatch.setattr(kernels, "liger_unavailable", lambda: None)
    with pytest.raises(ImportError):
        kernels.apply_liger(tiny_model(tiny_config("llama")), "on", lambda m: None)
    logged = []
    assert kernels.apply_liger(tiny_model(tiny_config("llama")), "auto", logged.append) is None
    assert "does not import" in logged[0]


def test_our_cos_sin_have_the_halves_liger_rope_assumes():
    """liger's RoPE kernel reads cos/sin[..., :d/2] only: our rescaled tables (per-pair factors,
    attention factor, n̂ start positions) must repeat the first half in the second."""
    model = tiny_model(tiny_config("llama", max_position_embeddings=64))
    spec = RopeSpec(
        "longrope", 10_000.0, 16, 64, 256, long_factor=tuple(1.0 + i for i in range(8)), n_hat=4,
    )  # fmt: skip
    apply_rope(model, spec)
    rotary = installed_rotaries(model)[0]
    rotary.factor_set = "long"
    positions = torch.arange(200)[None]
    cos, sin = rotary(torch.zeros(1, 200, 64), positions)
    assert torch.equal(cos[..., :8], cos[..., 8:]) and torch.equal(sin[..., :8], sin[..., 8:])
    rotary.factor_set = "short"
    assert not torch.equal(rotary(torch.zeros(1, 200, 64), positions)[0], cos), (
        "the long set is really rescaled"
    )
