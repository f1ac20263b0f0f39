"""Fused GPU kernels chosen by the recipe: liger-kernel (``model.liger: auto|on|off``).

liger-kernel (arXiv 2410.10989) patches a transformers model instance with Triton kernels:
RMSNorm, SwiGLU, RoPE and a fused linear cross-entropy that never materialises the
``[tokens, vocab]`` logits (the memory that dominates at 128k rows). Triton needs a GPU, so
``auto`` applies it only where CUDA is visible and the package imports, otherwise it logs one
line saying why and training goes on with plain torch; ``on`` where it cannot run is refused
at validation (``train.load``).

Why the rescaled RoPE stays exact under liger's RoPE kernel: liger's ``rope=True`` replaces the
module function ``apply_rotary_pos_emb`` of the model's ``modeling_<arch>`` file, i.e. only the
step that ROTATES q and k with a given ``(cos, sin)``. The attention layers still receive
``position_embeddings = model.model.rotary_emb(hidden, position_ids)``, and that module is our
``rope.install.ScaledRotaryEmbedding`` (per-pair factors, forced factor set, attention factor,
n̂ start positions): our cos/sin flow into the kernel unchanged. The kernel reads only the
first half of cos/sin (``head_dim/2`` values) and assumes the second half repeats it, which
holds for ours (``cat(freqs, freqs)`` scaled by one attention factor; the n̂ override is per
position, so both halves still agree). It also assumes the rotary width is the whole head, so
for partial-rotary models (``partial_rotary_factor < 1``) the RoPE kernel is left off.

Fused linear cross-entropy replaces the model's ``forward``: in training with ``labels`` it
returns the loss with ``logits=None``. The training loop only reads ``.loss`` (and under
sequence parallelism asks for logits-free per-shard losses the same way), so nothing else
changes. Under DeepSpeed ZeRO-3 it is left off: liger reads ``lm_head.weight`` by attribute,
outside ``lm_head``'s forward hook where ZeRO-3 gathers the shard, so it would see an empty
partition (the known liger + ZeRO-3 size-mismatch failure); RMSNorm/SwiGLU/RoPE patch module
forwards and are unaffected.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable

import torch


def liger_unavailable() -> str | None:
    """Why liger-kernel cannot run on this machine, or None when it can."""
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (liger's Triton kernels need one)"
    try:
        found = importlib.util.find_spec("liger_kernel") is not None
    except ValueError:  # a module already in sys.modules without a spec
        found = True
    if not found:
        return "the liger-kernel package is not installed (pip install -e '.[gpu]')"
    return None


def liger_flags(model: torch.nn.Module, *, zero3: bool) -> dict[str, bool]:
    """The kernels to apply to ``model``: all four unless a reason above turns one off."""
    config = model.config
    params = getattr(config, "rope_parameters", None) or {}  # transformers 5 keeps it here
    factor = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None))
    partial = float(factor or 1.0) < 1.0
    return {
        "rope": not partial,
        "rms_norm": True,
        "swiglu": True,
        "cross_entropy": False,
        "fused_linear_cross_entropy": not zero3,
    }


def apply_liger(
    model: torch.nn.Module, choice: str, log: Callable[[str], None], *, zero3: bool = False
) -> Callable[[], None] | None:
    """Patch ``model`` (the instance, before LoRA/accelerate wrap it) per ``model.liger``.

    ``choice``: ``off`` → nothing; ``auto`` → apply where it can run, else one logged line with
    the reason; ``on`` → apply (validation has already refused ``on`` where it cannot run; a
    failure here raises). Returns None when nothing was applied, else ``restore``: liger also
    swaps names in the model's ``modeling_<arch>`` module (its RMSNorm/MLP classes, the
    module-level ``apply_rotary_pos_emb``), which would reach every model built later in the
    process (eval, export, the LoRA merge copy). Swapped classes are put back at once (the
    instance's modules are already patched); the functions the instance still calls through
    the module are put back by ``restore()`` when the training stage ends. The log names what
    was applied, found by comparing the instance and its module before and after.
    """
    if choice == "off":
        return None
    reason = liger_unavailable()
    if reason is not None:
        if choice == "on":
            raise RuntimeError(f"model.liger: 'on' but {reason}")
        log(f"liger: off — {reason}; using the plain torch RMSNorm/SwiGLU/RoPE/cross-entropy")
        return None
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError as err:
        if choice == "on":
            raise
        log(f"liger: off — liger_kernel.transformers does not import ({err})")
        return None
    flags = liger_flags(model, zero3=zero3)
    module = sys.modules.get(type(model).__module__)  # transformers.models.<arch>.modeling_<arch>
    names_before = dict(vars(module)) if module is not None else {}
    forwards = {name: sub.forward for name, sub in model.named_modules()}
    _apply_liger_kernel_to_instance(model=model, **flags)
    changed = [
        k for k, v in (vars(module).items() if module is not None else ()) if names_before.get(k) is not v
    ]
    for key in [k for k in changed if isinstance(names_before.get(k), type)]:
        setattr(module, key, names_before[key])  # classes: models built from now on are transformers' own
    functions = [k for k in changed if not isinstance(names_before.get(k), type)]
    patched = [type(sub).__name__ for name, sub in model.named_modules() if sub.forward != forwards[name]]
    applied = _applied_kernels(patched, functions, type(model).__name__)
    if not applied:
        _restore(module, names_before, functions)
        log(f"liger: applied nothing — no liger kernels for model type {model.config.model_type!r}")
        return None
    notes = []
    if not flags["rope"]:
        notes.append("RoPE kernel off (partial rotary)")
    if not flags["fused_linear_cross_entropy"]:
        notes.append("fused linear CE off under ZeRO-3")
    log(f"liger: applied {', '.join(applied)}" + (f" ({'; '.join(notes)})" if notes else ""))
    return lambda: _restore(module, names_before, functions)


def _applied_kernels(patched: list[str], functions: list[str], model_class: str) -> list[str]:
    """What liger changed, by kind: module forwards it rebound, module functions it swapped."""
    out = []
    for label, suffix in (("rms_norm", "RMSNorm"), ("swiglu", "MLP")):
        count = sum(name.endswith(suffix) for name in patched)
        if count:
            out.append(f"{label} ×{count}")
    out += [f"rope ({name})" for name in functions if "rotary" in name]
    if model_class in patched:
        out.append("fused_linear_cross_entropy")
    return out


def _restore(module, names_before: dict, functions: list[str]) -> None:
    for key in functions:
        if key in names_before:
            setattr(module, key, names_before[key])
        else:
            delattr(module, key)
