"""``save_extended``: a checkpoint that stock ``AutoModelForCausalLM.from_pretrained`` loads
with no custom code and computes exactly the spec's RoPE (both v5 and v4 config keys)."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

from torch import nn

from longctx.rope.hf_config import to_hf_config
from longctx.rope.install import _check_compatible, _rotary_modules
from longctx.rope.spec import RopeSpec

SPEC_FILE = "longctx_rope_spec.json"
"""The full spec next to the weights, so our tools reload n̂/provenance exactly."""


def _config_for(model: nn.Module, spec: RopeSpec, hf: dict):
    config = copy.deepcopy(model.config)
    config.rope_parameters = copy.deepcopy(hf["rope_parameters"])
    config.max_position_embeddings = hf["max_position_embeddings"]
    if "original_max_position_embeddings" in hf and hasattr(config, "original_max_position_embeddings"):
        config.original_max_position_embeddings = hf["original_max_position_embeddings"]  # Phi-3
    return config


def _write_legacy_keys(config_path: Path, hf: dict) -> None:
    """Add v4's ``rope_scaling`` and top-level keys, identical to ``rope_parameters``."""
    data = json.loads(config_path.read_text())
    for key in ("rope_scaling", "rope_theta", "max_position_embeddings", "original_max_position_embeddings"):
        if key in hf:
            data[key] = hf[key]
    if "partial_rotary_factor" in hf:
        data["partial_rotary_factor"] = hf["partial_rotary_factor"]
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_extended(model: nn.Module, spec: RopeSpec, out_dir: str | os.PathLike, tokenizer=None) -> Path:
    """Write weights + a stock config for ``spec`` to ``out_dir`` atomically (temp dir + rename).

    Raises :class:`rope.RopeExportError` when a stock config cannot express the spec
    (n̂ > 0, a short-only attention factor), before anything is written.
    """
    hf = to_hf_config(spec)
    for _, _, module in _rotary_modules(model):
        _check_compatible(module, spec, model.config)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    original_config = model.config
    model.config = _config_for(model, spec, hf)
    try:
        model.save_pretrained(tmp)
    finally:
        model.config = original_config
    _write_legacy_keys(tmp / "config.json", hf)
    spec.to_json(tmp / SPEC_FILE)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    _replace_dir(tmp, out)
    return out


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` into place at ``dst``; an existing ``dst`` is only removed after the move."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
