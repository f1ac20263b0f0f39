"""Bad parameters raise one clear, one-line error each, naming the field."""

from __future__ import annotations

import json

import pytest

from longctx.rope import (
    RopeExportError,
    RopeSpec,
    RopeSpecError,
    UnsupportedArchitectureError,
    apply_rope,
    to_hf_config,
)
from tests.tiny import tiny_config, tiny_model

GOOD = dict(
    method="longrope",
    base=10_000.0,
    head_dim=16,
    original_length=64,
    target_length=256,
    long_factor=[2.0] * 8,
)

CASES = [
    ({"long_factor": [2.0] * 7}, r"^long_factor: expected 8 values \(rotary_dim/2 = 16/2\), got 7$"),
    ({"long_factor": [2.0] * 7 + [0.0]}, r"^long_factor\[7\]: expected a finite factor > 0, got 0.0$"),
    ({"long_factor": [2.0] * 7 + [-1.0]}, r"^long_factor\[7\]: expected a finite factor > 0"),
    (
        {"long_factor": [2.0] * 7 + [float("nan")]},
        r"^long_factor\[7\]: expected a finite factor > 0, got nan$",
    ),
    ({"short_factor": [float("inf")] * 8}, r"^short_factor\[0\]: expected a finite factor > 0, got inf$"),
    ({"target_length": 64}, r"^target_length: .*must exceed original_length L=64; got L'=64$"),
    ({"target_length": 32}, r"^target_length: expected >= original_length \(64\), got 32$"),
    ({"method": "longrop"}, r"^method: unknown RoPE method 'longrop'; did you mean 'longrope'\?"),
    ({"method": "alibi"}, r"^method: unknown RoPE method 'alibi' \(known: default, linear"),
    (
        {"params": {"mscale_shrt": True}},
        r"^params\.mscale_shrt: unknown parameter for method 'longrope'; did you mean",
    ),
    ({"attention_factor": -1.0}, r"^attention_factor: expected a finite number > 0"),
    ({"n_hat": 64}, r"^n_hat: expected 0 <= n_hat < L=64, got 64$"),
    ({"base": float("inf")}, r"^base: expected a finite number > 1.0"),
    ({"head_dim": 15}, r"^rotary_dim: expected an even number >= 2, got 15$"),
    ({"long_factor": None}, r"^long_factor: required for method 'longrope' \(8 floats\)$"),
    ({"method": "yarn"}, r"^long_factor: method 'yarn' derives its factors from params"),
]


@pytest.mark.parametrize("change,message", CASES)
def test_bad_spec_raises_one_clear_line(change, message):
    with pytest.raises(RopeSpecError, match=message) as info:
        RopeSpec(**{**GOOD, **change})
    assert "\n" not in str(info.value)


def test_bad_method_params():
    common = dict(base=1e4, head_dim=16, original_length=64, target_length=256)
    with pytest.raises(RopeSpecError, match=r"^params\.factor: expected a finite number >= 1.0, got 0.5$"):
        RopeSpec("linear", **common, params={"factor": 0.5})
    with pytest.raises(RopeSpecError, match=r"^params\.beta_fast: expected > beta_slow \(8.0\), got 4.0$"):
        RopeSpec("yarn", **common, params={"beta_fast": 4.0, "beta_slow": 8.0})
    with pytest.raises(RopeSpecError, match=r"^params\.high_freq_factor: expected > low_freq_factor"):
        RopeSpec("llama3", **common, params={"low_freq_factor": 4.0, "high_freq_factor": 1.0})
    with pytest.raises(RopeSpecError, match=r"^params\.critical_dim: 8 is outside 1\.\.7"):
        RopeSpec("longrope2", **common, long_factor=[2.0] * 8, params={"critical_dim": 8})


def test_json_errors_name_the_file(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**GOOD, "long_factr": [1.0] * 8}))
    with pytest.raises(
        RopeSpecError, match=rf"^{path}: long_factr: unknown field; did you mean 'long_factor'\?$"
    ):
        RopeSpec.from_json(path)
    path.write_text(json.dumps({**GOOD, "long_factor": [1.0] * 3}))
    with pytest.raises(RopeSpecError, match=rf"^{path}: long_factor: expected 8 values"):
        RopeSpec.from_json(path)
    path.write_text("{not json")
    with pytest.raises(RopeSpecError, match=rf"^{path}: not valid JSON"):
        RopeSpec.from_json(path)
    with pytest.raises(RopeSpecError, match="no such RoPE spec file"):
        RopeSpec.from_json(tmp_path / "missing.json")


def test_export_refuses_n_hat_with_reason():
    with pytest.raises(RopeExportError, match=r"^n_hat=4: .*no stock rope_type expresses"):
        to_hf_config(RopeSpec(**GOOD, n_hat=4))


def test_apply_rope_rejects_unsupported_architecture_and_mismatches():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(
        UnsupportedArchitectureError, match=r"model type 'gpt2' is not supported; supported: llama"
    ):
        apply_rope(gpt2, RopeSpec(**GOOD))
    llama = tiny_model(tiny_config("llama"))
    with pytest.raises(RopeSpecError, match=r"^rotary_dim: spec has 32 rotary dims but the model rotates 16"):
        apply_rope(llama, RopeSpec(**{**GOOD, "head_dim": 32, "long_factor": [2.0] * 16}))
    with pytest.raises(
        RopeSpecError, match=r"^base: spec has rope_theta 500000 but the model was pretrained with 10000"
    ):
        apply_rope(llama, RopeSpec(**{**GOOD, "base": 500_000.0}))
