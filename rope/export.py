"""``save_extended``: a checkpoint that stock ``AutoModelForCausalLM.from_pretrained`` loads
with no custom code and computes exactly the spec's RoPE (both v5 and v4 config keys)."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

from torch import nn

try:  # transformers 5.x configs are huggingface_hub strict dataclasses
    from huggingface_hub.errors import StrictDataclassError
except ImportError:  # pragma: no cover - older huggingface_hub
    StrictDataclassError = ValueError

from longctx.rope.errors import RopeExportError
from longctx.rope.hf_config import lift_sliding_window, to_hf_config
from longctx.rope.install import _check_compatible, _rotary_modules
from longctx.rope.spec import RopeSpec

SPEC_FILE = "longctx_rope_spec.json"
"""The full spec next to the weights, so our tools reload n̂/provenance exactly."""
FACTOR_SET_FILE = "longctx_factor_set.json"
"""Written by ``save_extended(..., single_factor_set=True)`` only: the one-set choice and the
short factors it replaced (the spec file holds the exported spec, short_factor = long_factor)."""


def _config_for(model: nn.Module, spec: RopeSpec, hf: dict):
    config = copy.deepcopy(model.config)
    config.rope_parameters = copy.deepcopy(hf["rope_parameters"])
    config.max_position_embeddings = hf["max_position_embeddings"]
    if "original_max_position_embeddings" in hf and hasattr(config, "original_max_position_embeddings"):
        config.original_max_position_embeddings = hf["original_max_position_embeddings"]  # Phi-3
    lift_sliding_window(config, hf["max_position_embeddings"])  # the served length passes the window
    _check_stock_config(config, spec)
    return config


def _config_head_dim(config) -> int | None:
    head_dim = getattr(config, "head_dim", None)
    if head_dim:
        return int(head_dim)
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    return hidden // heads if hidden and heads else None


def _check_stock_config(config, spec: RopeSpec) -> None:
    """Raise one :class:`RopeExportError` line if stock transformers would reject or misread ``config``.

    Runs the config class's own save-time validation (transformers 5.x ``save_pretrained``
    calls ``config.validate()``) before anything is written, so a config the class cannot
    express never surfaces as a bare ``KeyError`` / ``ValueError`` from inside transformers.
    """
    model_type = getattr(config, "model_type", type(config).__name__)
    head_dim = _config_head_dim(config)
    if head_dim is not None and int(head_dim * spec.partial_rotary_factor) != spec.rotary_dim:
        raise RopeExportError(
            f"{model_type}: the config's head_dim {head_dim} × partial_rotary_factor "
            f"{spec.partial_rotary_factor:g} rotates {int(head_dim * spec.partial_rotary_factor)} dims but "
            f"the spec rotates {spec.rotary_dim} (head_dim {spec.head_dim}); a stock reload would compute a "
            "different RoPE: build the spec with rope.from_hf_config(model.config)"
        )
    validate = getattr(config, "validate", None)
    if validate is None:
        return
    try:
        validate()
    except (KeyError, ValueError, TypeError, AttributeError, StrictDataclassError) as err:
        cause = err.__cause__ if isinstance(err, StrictDataclassError) and err.__cause__ else err
        detail = " ".join(str(cause).split())
        raise RopeExportError(
            f"{model_type}: transformers' {type(config).__name__} rejects the exported config "
            f"({type(cause).__name__}: {detail}); export a spec this config class accepts or keep "
            "loading the model through rope.apply_rope"
        ) from err


def _write_legacy_keys(config_path: Path, hf: dict) -> None:
    """Add v4's ``rope_scaling`` and top-level keys, identical to ``rope_parameters``."""
    data = json.loads(config_path.read_text())
    for key in ("rope_scaling", "rope_theta", "max_position_embeddings", "original_max_position_embeddings"):
        if key in hf:
            data[key] = hf[key]
    if "partial_rotary_factor" in hf:
        data["partial_rotary_factor"] = hf["partial_rotary_factor"]
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_extended(
    model: nn.Module,
    spec: RopeSpec,
    out_dir: str | os.PathLike,
    tokenizer=None,
    *,
    single_factor_set: bool = False,
) -> Path:
    """Write weights + a stock config for ``spec`` to ``out_dir`` atomically (temp dir + rename).

    Raises :class:`rope.RopeExportError` when a stock config cannot express the spec
    (n̂ > 0, a short-only attention factor, a rope_type or key set the model's config class
    rejects), before anything is written.

    ``single_factor_set=True`` (longrope / longrope2 only) exports ``short_factor = long_factor``:
    every length uses the long set, so a KV-cached generation never switches sets when it passes
    L (what vLLM does for every request when ``max_model_len > L``); short inputs pay the long
    factors. The spec file holds that exported spec, and ``FACTOR_SET_FILE`` records the choice
    and the replaced short factors. The default writes exactly what it always did.
    """
    note = None
    if single_factor_set:
        spec, note = _single_set(spec)
    hf = to_hf_config(spec, model_type=getattr(getattr(model, "config", None), "model_type", None))
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
    if note is not None:
        (tmp / FACTOR_SET_FILE).write_text(json.dumps(note, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    _replace_dir(tmp, out)
    return out


def _single_set(spec: RopeSpec) -> tuple[RopeSpec, dict]:
    """(the spec with short_factor = long_factor, the sidecar note) for ``single_factor_set``."""
    if spec.long_factor is None or spec.method not in ("longrope", "longrope2"):
        raise RopeExportError(
            f"single_factor_set: method {spec.method!r} has no short/long factor sets to merge; "
            "it applies to longrope / longrope2 specs"
        )
    short = list(spec.short_factor) if spec.short_factor is not None else [1.0] * spec.geometry.n_pairs
    note = {
        "single_factor_set": True,
        "factor_set": "long",
        "original_length": spec.original_length,
        "replaced_short_factor": short,
        "reason": (
            "short_factor = long_factor: every length uses the long set, so a KV-cached generation "
            "does not switch sets when it passes original_max_position_embeddings (as vLLM serves "
            "every request when max_model_len > original_max_position_embeddings); inputs of at most "
            "that length pay the long factors"
        ),
    }
    return spec.replace(short_factor=spec.long_factor), note


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` into place at ``dst``; an existing ``dst`` is only removed after the move."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
