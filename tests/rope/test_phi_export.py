"""Phi-3 / Phi-4-mini exports: ``save_extended`` of checkpoint-shaped Phi configs reloads in stock
transformers with identical logits, and what Phi3Config cannot express is one RopeExportError line.

transformers 5.x ``Phi3Config.validate_rope`` (run by ``save_pretrained``) reads
``rope_parameters["partial_rotary_factor"]`` unconditionally, so the exported rope dict of a phi3
model must carry it even when it is 1.0 (real Phi-3-mini configs have no such key anywhere).
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, Phi3Config

from longctx.rope import (
    SPEC_FILE,
    RopeExportError,
    RopeSpec,
    ScaledRotaryEmbedding,
    apply_rope,
    factor_set,
    from_hf_config,
    save_extended,
    to_hf_config,
)
from tests.tiny import random_logits, random_longrope, tiny_model

L = 64  # pretrained length of the tiny models
HIDDEN, HEADS = 64, 4
HEAD_DIM = HIDDEN // HEADS  # Phi3Config has no head_dim field: hidden_size // num_attention_heads


def _checkpoint_config(tmp_path, *, partial=None, original=L, rope_scaling=None):
    """A 2-layer config read from a config.json laid out like the Hub's Phi checkpoints.

    Phi-3-mini-4k-instruct: top-level ``original_max_position_embeddings``, ``rope_scaling: null``
    and no ``partial_rotary_factor``; Phi-4-mini-instruct adds ``partial_rotary_factor: 0.75``.
    """
    data = {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "vocab_size": 128,
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "num_hidden_layers": 2,
        "hidden_act": "silu",
        "max_position_embeddings": L,
        "rope_theta": 10_000.0,
        "rope_scaling": rope_scaling,
        "rms_norm_eps": 1e-5,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    if original is not None:
        data["original_max_position_embeddings"] = original
    if partial is not None:
        data["partial_rotary_factor"] = partial
    src = tmp_path / "base"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(data))
    return AutoConfig.from_pretrained(src, attn_implementation="eager")


def _longrope(partial: float, seed: int = 0) -> RopeSpec:
    return random_longrope(HEAD_DIM, L, partial=partial, seed=seed, low=2.0)


# (name, partial_rotary_factor in the checkpoint, top-level original_max_position_embeddings, rope_scaling)
SHAPES = [
    ("phi3-mini-4k", None, L, None),
    ("phi3-mini-no-original", None, None, None),  # Phi3Config then defaults it to 4096
    ("phi4-mini", 0.75, L, None),
    (
        "phi4-mini-longrope",
        0.75,
        L,
        {"type": "longrope", "long_factor": [1.5] * 6, "short_factor": [1.0] * 6},
    ),
]


@pytest.mark.parametrize(("name", "partial", "original", "rope_scaling"), SHAPES, ids=[s[0] for s in SHAPES])
def test_phi_export_reloads_in_stock_transformers(tmp_path, name, partial, original, rope_scaling):
    config = _checkpoint_config(tmp_path, partial=partial, original=original, rope_scaling=rope_scaling)
    if partial is None:
        assert "partial_rotary_factor" not in json.loads((tmp_path / "base" / "config.json").read_text())
    spec = _longrope(partial or 1.0, seed=len(name))
    model = apply_rope(tiny_model(config), spec)
    out = save_extended(model, spec, tmp_path / "export")

    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert not any(isinstance(m, ScaledRotaryEmbedding) for m in reloaded.modules()), "stock classes only"
    for length in (L // 2, L, L + 1, 3 * L):  # ≤ L: short factors; > L: long factors
        torch.testing.assert_close(
            random_logits(reloaded, length), random_logits(model, length), rtol=0, atol=1e-5
        )
    with factor_set(model, "short"):  # the long rows really switched to the long factors
        assert not torch.allclose(
            random_logits(model, 3 * L), random_logits(reloaded, 3 * L), rtol=0, atol=1e-3
        )

    cfg = json.loads((out / "config.json").read_text())
    rope = cfg["rope_parameters"]
    assert rope["rope_type"] == "longrope"
    assert rope["partial_rotary_factor"] == (partial or 1.0), "Phi3Config.validate_rope reads this key"
    assert cfg["rope_scaling"] == rope, "v4 rope_scaling must be identical to v5 rope_parameters"
    assert cfg["original_max_position_embeddings"] == rope["original_max_position_embeddings"] == L
    assert cfg["max_position_embeddings"] == 4 * L
    assert len(rope["long_factor"]) == len(rope["short_factor"]) == spec.rotary_dim // 2
    assert RopeSpec.from_json(out / SPEC_FILE) == spec
    assert from_hf_config(AutoConfig.from_pretrained(out)) == spec


def test_phi3_rope_dict_without_partial_rotary_factor_fails_to_save(tmp_path):
    """Negative control: the pre-fix export path (the generic rope dict, which omits
    partial_rotary_factor when it is 1.0) makes Phi3Config.save_pretrained raise KeyError."""
    config = _checkpoint_config(tmp_path)
    spec = _longrope(1.0)
    generic = to_hf_config(spec)["rope_parameters"]
    assert "partial_rotary_factor" not in generic
    config.rope_parameters = dict(generic)
    with pytest.raises(KeyError, match="partial_rotary_factor"):
        config.save_pretrained(tmp_path / "bare")

    phi3 = to_hf_config(spec, model_type="phi3")
    assert phi3["rope_parameters"] == {**generic, "partial_rotary_factor": 1.0}
    assert phi3["rope_scaling"] == phi3["rope_parameters"]
    config.rope_parameters = dict(phi3["rope_parameters"])
    config.save_pretrained(tmp_path / "fixed")
    assert isinstance(Phi3Config.from_pretrained(tmp_path / "fixed"), Phi3Config)


def test_other_model_types_export_unchanged():
    for partial in (1.0, 0.5):
        spec = _longrope(partial)
        for model_type in (None, "llama", "mistral", "qwen2", "qwen3"):
            assert to_hf_config(spec, model_type=model_type) == to_hf_config(spec)


def _assert_one_line_export_error(excinfo, *fragments):
    assert excinfo.type is RopeExportError
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_phi3_rope_type_it_cannot_express_is_a_rope_export_error(tmp_path):
    config = _checkpoint_config(tmp_path)
    spec = RopeSpec("yarn", base=10_000.0, head_dim=HEAD_DIM, original_length=L, target_length=4 * L)
    model = apply_rope(tiny_model(config), spec)
    with pytest.raises(RopeExportError) as excinfo:
        save_extended(model, spec, tmp_path / "export")
    _assert_one_line_export_error(excinfo, "phi3", "'yarn'", "longrope")
    assert not (tmp_path / "export").exists()


def test_phi3_config_rejection_is_a_rope_export_error(tmp_path):
    """head_dim ≠ hidden_size // num_attention_heads: Phi3Config.validate_rope sizes the factor lists
    by the latter, so no stock Phi-3 config expresses the model's RoPE."""
    config = _checkpoint_config(tmp_path)
    config.head_dim = HEAD_DIM // 2
    spec = RopeSpec(
        "longrope",
        base=10_000.0,
        head_dim=HEAD_DIM // 2,
        original_length=L,
        target_length=4 * L,
        long_factor=[4.0] * (HEAD_DIM // 4),
        short_factor=[1.0] * (HEAD_DIM // 4),
    )
    model = apply_rope(tiny_model(config), spec)
    with pytest.raises(RopeExportError) as excinfo:
        save_extended(model, spec, tmp_path / "export")
    _assert_one_line_export_error(excinfo, "phi3", "Phi3Config", "short_factor")
    assert not (tmp_path / "export").exists()
    assert not any(p.name.startswith(".export") for p in tmp_path.iterdir()), "nothing written"
