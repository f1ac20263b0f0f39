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
    """CUDA visible and a liger_kernel whose instance patcher records its calls."""
    calls: list[dict] = []
    package = types.ModuleType("liger_kernel")
    transformers_mod = types.ModuleType("liger_kernel.transformers")
    transformers_mod._apply_liger_kernel_to_instance = lambda model, **flags: calls.append(
        {"model": model, **flags}
    )
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
    assert kernels.apply_liger(model, "auto", logged.append) is True
    assert len(calls) == 1 and calls[0].pop("model") is model
    assert calls[0] == {
        "rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False, "fused_linear_cross_entropy": True,
    }  # fmt: skip
    assert logged and logged[0].startswith("liger: applied")
    # off never touches it; ZeRO-3 keeps the fused CE off (lm_head.weight is a shard there)
    assert kernels.apply_liger(model, "off", logged.append) is False and len(calls) == 1
    kernels.apply_liger(model, "on", logged.append, zero3=True)
    assert calls[1]["fused_linear_cross_entropy"] is False and calls[1]["rms_norm"] is True


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
    assert kernels.apply_liger(tiny_model(tiny_config("llama")), "auto", logged.append) is False
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
