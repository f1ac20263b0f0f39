"""RoPE position math: scaling methods, the RopeSpec contract, installation and stock export.

``rope`` imports none of ``data``, ``eval`` or ``train``: the layering is rope ← data ← eval ←
train, and ``tests/test_layering.py`` holds every module to it.
"""

from longctx.rope.errors import RopeExportError, RopeSpecError, UnsupportedArchitectureError
from longctx.rope.export import SPEC_FILE, save_extended
from longctx.rope.hf_config import from_hf_config, to_hf_config
from longctx.rope.install import (
    SUPPORTED_MODEL_TYPES,
    ScaledRotaryEmbedding,
    apply_rope,
    factor_set,
    installed_spec,
    set_factor_set,
)
from longctx.rope.methods import ROPE_METHODS
from longctx.rope.spec import RopeSpec

__all__ = [
    "ROPE_METHODS",
    "SPEC_FILE",
    "SUPPORTED_MODEL_TYPES",
    "RopeExportError",
    "RopeSpec",
    "RopeSpecError",
    "ScaledRotaryEmbedding",
    "UnsupportedArchitectureError",
    "apply_rope",
    "factor_set",
    "from_hf_config",
    "installed_spec",
    "save_extended",
    "set_factor_set",
    "to_hf_config",
]
