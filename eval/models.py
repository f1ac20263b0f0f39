"""Models under evaluation: a saved checkpoint, or a base model plus a ``RopeSpec`` JSON.

The second form is how a comparison of methods is run without saving weights: one base
model, one spec per method (PI, NTK, YaRN, LongRoPE, LongRoPE2 — e.g. search results), each
installed in place with ``rope.apply_rope`` before its evaluation. Everything is local:
``local_files_only=True``, no hub access.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""Accepted ``--dtype`` names."""


@dataclass(frozen=True)
class EvalTarget:
    """One line in the plots: a checkpoint and, optionally, the spec installed into it."""

    model_path: str
    spec_path: str | None = None
    name: str | None = None
    """Label in tables and plots; default: the spec file stem, else the checkpoint dir name."""

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return Path(self.spec_path).stem if self.spec_path else Path(self.model_path).name


def _check_model_dir(model_path: str | os.PathLike) -> Path:
    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model {path}: no config.json there; expected a local checkpoint directory")
    return path


def load_spec(spec_path: str | os.PathLike):
    """``rope.RopeSpec`` from a JSON file (``rope`` imported lazily)."""
    from longctx.rope import RopeSpec

    return RopeSpec.from_json(spec_path)


def install_spec(model, spec_path: str | os.PathLike | None):
    """Install the spec file into ``model`` in place; a checkpoint's own spec when None.

    A checkpoint written by ``rope.save_extended`` carries the full spec next to its weights
    (``rope.SPEC_FILE``): it is re-installed so n̂ and other non-stock parts apply exactly.
    Returns the spec installed, or None when the model keeps its config's RoPE.
    """
    from longctx.rope import SPEC_FILE, apply_rope

    if spec_path is None:
        own = Path(getattr(model, "name_or_path", "") or "") / SPEC_FILE
        if not own.is_file():
            return None
        spec_path = own
    spec = load_spec(spec_path)
    apply_rope(model, spec)
    return spec


def load_model_for_eval(
    model_path: str | os.PathLike,
    spec_path: str | os.PathLike | None = None,
    *,
    dtype: str | torch.dtype = "auto",
    attn_implementation: str = "sdpa",
    device: str | None = None,
):
    """(model, tokenizer) for evaluation: local checkpoint, spec installed, ``eval()`` mode.

    ``dtype``: a torch dtype or a name in ``DTYPES``. ``device``: default CUDA when present.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _check_model_dir(model_path)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}: expected one of {sorted(DTYPES)}")
        dtype = DTYPES[dtype]
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    install_spec(model, spec_path)
    return model, tokenizer
