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
) -> bool:
    """Patch ``model`` (the instance, before LoRA/accelerate wrap it) per ``model.liger``.

    Returns whether liger was applied. ``choice``: ``off`` → nothing; ``auto`` → apply where it
    can run, else one logged line with the reason; ``on`` → apply (validation has already
    refused ``on`` where it cannot run; a failure here raises).
    """
    if choice == "off":
        return False
    reason = liger_unavailable()
    if reason is not None:
        if choice == "on":
            raise RuntimeError(f"model.liger: 'on' but {reason}")
        log(f"liger: off — {reason}; using the plain torch RMSNorm/SwiGLU/RoPE/cross-entropy")
        return False
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError as err:
        if choice == "on":
            raise
        log(f"liger: off — liger_kernel.transformers does not import ({err})")
        return False
    flags = liger_flags(model, zero3=zero3)
    _apply_liger_kernel_to_instance(model=model, **flags)
    notes = []
    if not flags["rope"]:
        notes.append("RoPE kernel off (partial rotary)")
    if not flags["fused_linear_cross_entropy"]:
        notes.append("fused linear CE off under ZeRO-3")
    kernels = [k for k, on in flags.items() if on]
    log(f"liger: applied {', '.join(kernels)}" + (f" ({'; '.join(notes)})" if notes else ""))
    return True
