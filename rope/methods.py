"""The one registry of RoPE scaling methods: name → parameters, math, stock-config mapping."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from longctx.rope import default, dpe, dynamic, linear, llama3, longrope, longrope2, ntk, yarn


@dataclass(frozen=True)
class RopeMethod:
    name: str
    params: type
    """Dataclass of the method's typed parameters (``RopeSpec.params`` is parsed into it)."""
    compute: Callable
    """``compute(spec, seq_len=None, device=None) -> RopeFrequencies``."""
    hf_parameters: Callable
    """``hf_parameters(spec) -> (rope params, rope_theta, max_position_embeddings)`` or raise."""
    validate: Callable | None
    """Extra checks that need the whole spec (e.g. required factor lists)."""
    uses_factor_lists: bool
    """Whether ``long_factor`` / ``short_factor`` are inputs of this method."""
    extends: bool = True
    """False only for ``default``: L' may equal L."""


def _method(name: str, module: ModuleType, *, factor_lists: bool = False, extends: bool = True) -> RopeMethod:
    return RopeMethod(
        name=name,
        params=module.Params,
        compute=module.compute,
        hf_parameters=module.hf_parameters,
        validate=getattr(module, "validate", None),
        uses_factor_lists=factor_lists,
        extends=extends,
    )


ROPE_METHODS: dict[str, RopeMethod] = {
    "default": _method("default", default, extends=False),
    "linear": _method("linear", linear),
    "ntk": _method("ntk", ntk),
    "dynamic": _method("dynamic", dynamic),
    "yarn": _method("yarn", yarn),
    "llama3": _method("llama3", llama3),
    "longrope": _method("longrope", longrope, factor_lists=True),
    "longrope2": _method("longrope2", longrope2, factor_lists=True),
    "dpe": _method("dpe", dpe),
}
