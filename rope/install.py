"""Install a :class:`RopeSpec` into a Hugging Face model, and choose its factor set per forward.

transformers' Llama-family models (Llama, Mistral, Qwen2, Qwen3, Phi-3) compute ``(cos, sin)``
once per forward in ``model.model.rotary_emb(hidden_states, position_ids)`` and hand them to
every attention layer. We replace that one module with :class:`ScaledRotaryEmbedding`, which
computes cos/sin with the same float32 operations as transformers (so factors of a stock
type give bit-identical logits) and adds what stock cannot do:

- an explicit factor-set choice: ``factor_set(model, "long")`` forces the rescaled set and
  ``"short"`` the short one, e.g. per training batch from the data pipeline's row kind, or
  so that sequence-parallel ranks, which each see only a shard of the position ids, agree;
  ``None`` (default) applies transformers' rule: long iff ``max(position_ids) + 1 > L``;
- LongRoPE's n̂ start positions, which keep the original RoPE under the long set.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from longctx.rope.dpe_attention import sync_attention
from longctx.rope.errors import RopeSpecError, UnsupportedArchitectureError
from longctx.rope.spec import RopeSpec

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3")
ANGLE_FP64_FROM = 2**20
"""Longest context whose RoPE angles are computed in fp32; longer ones in float64."""
FACTOR_SET_ALIASES = {
    "short": "short", "original": "short", "long": "long", "rescaled": "long", "stitched": "stitched", None: None,
}  # fmt: skip
"""``stitched``: per token position, the short set below L and the long set from L on — TGI's
rule (one cos/sin table stitched from both); used to measure how an engine serves an export."""


class ScaledRotaryEmbedding(nn.Module):
    """Drop-in replacement for ``<Arch>RotaryEmbedding``: ``forward(x, position_ids) -> (cos, sin)``."""

    def __init__(self, spec: RopeSpec, device: torch.device | None = None) -> None:
        super().__init__()
        self.spec = spec
        freqs = spec.frequencies(device=device)
        self.register_buffer("short_inv_freq", freqs.short_inv_freq, persistent=False)
        self.register_buffer("long_inv_freq", freqs.long_inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", spec.geometry.base_inv_freq(device), persistent=False)
        self.short_scale = freqs.short_attention_factor
        self.long_scale = freqs.long_attention_factor
        self.factor_set: str | None = None
        """Forced set ("short" / "long"), or None for the automatic length rule."""

    def use_long(self, position_ids: torch.Tensor) -> bool | torch.Tensor:
        """True/False when forced; otherwise a 0-d bool tensor (no host sync, like transformers)."""
        if self.factor_set == "stitched":
            return (position_ids >= self.spec.original_length)[..., None]  # [batch, seq, 1]
        if self.factor_set is not None:
            return self.factor_set == "long"
        return (torch.max(position_ids) + 1) > self.spec.original_length

    def _inv_freq(self, use_long: bool | torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        long = self.long_inv_freq
        if self.spec.method == "dynamic" and not isinstance(use_long, bool):
            # dynamic NTK sizes the base change for the current length
            long = self.spec.frequencies(torch.max(position_ids) + 1, device=long.device).long_inv_freq
        if isinstance(use_long, bool):
            return long if use_long else self.short_inv_freq
        return torch.where(use_long, long, self.short_inv_freq)

    def _scale(self, use_long: bool | torch.Tensor) -> float | torch.Tensor:
        if self.short_scale == self.long_scale:
            return self.long_scale
        if isinstance(use_long, bool):
            return self.long_scale if use_long else self.short_scale
        return torch.where(use_long, self.long_scale, self.short_scale)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [batch, seq, hidden] (only its dtype/device matter); position_ids: [batch, seq]
        if self.short_inv_freq.dtype != torch.float32 or self.long_inv_freq.dtype != torch.float32:
            raise RopeSpecError(
                f"rotary inv_freq was cast to {self.long_inv_freq.dtype}: RoPE angles need fp32 inv_freq "
                "(something cast the model's buffers, e.g. DeepSpeed < 0.19.2 in bf16); re-run apply_rope"
            )
        use_long = self.use_long(position_ids)
        inv_freq = self._inv_freq(use_long, position_ids).to(device=x.device, dtype=self.angle_dtype)
        freqs = position_ids[..., None].to(self.angle_dtype) * inv_freq  # [batch, seq, d/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [batch, seq, d]
        scale = self._scale(use_long)
        cos, sin = emb.cos() * scale, emb.sin() * scale
        if self.spec.n_hat and use_long is not False:
            cos, sin = self._keep_start_positions(cos, sin, position_ids, use_long)
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)

    @property
    def angle_dtype(self) -> torch.dtype:
        """fp32 angles up to 2^20 positions; float64 beyond, where an fp32 product position × inv_freq
        errs by up to ~0.06 rad at 2^20 and ~0.12 rad at 2^21 (the 2048k recipe)."""
        return (
            torch.float64
            if max(self.spec.target_length, self.spec.original_length) > ANGLE_FP64_FROM
            else torch.float32
        )

    def _keep_start_positions(self, cos, sin, position_ids, use_long):
        """LongRoPE n̂: positions < n̂ get the original RoPE (no interpolation, no mscale)."""
        original = self.original_inv_freq.to(device=position_ids.device, dtype=self.angle_dtype)
        freqs = position_ids[..., None].to(self.angle_dtype) * original
        emb = torch.cat((freqs, freqs), dim=-1)
        keep = (position_ids < self.spec.n_hat)[..., None]  # [batch, seq, 1]
        if not isinstance(use_long, bool):
            keep = keep & use_long
        return torch.where(keep, emb.cos(), cos), torch.where(keep, emb.sin(), sin)

    def extra_repr(self) -> str:
        s = self.spec
        return f"method={s.method}, L={s.original_length}, L'={s.target_length}, rotary_dim={s.rotary_dim}"


def _rotary_modules(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, module) for every model-level rotary embedding."""
    found = []
    for name, module in model.named_modules():
        if name.split(".")[-1] == "rotary_emb":
            parent_name, _, attr = name.rpartition(".")
            found.append((model.get_submodule(parent_name) if parent_name else model, attr, module))
    return found


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", type(model).__name__)


def _check_compatible(module: nn.Module, spec: RopeSpec, config) -> None:
    pairs = (
        module.original_inv_freq.numel()
        if isinstance(module, ScaledRotaryEmbedding)
        else module.inv_freq.numel()
    )
    if pairs * 2 != spec.rotary_dim:
        raise RopeSpecError(
            f"rotary_dim: spec has {spec.rotary_dim} rotary dims but the model rotates {pairs * 2} "
            "(head_dim × partial_rotary_factor); build the spec with rope.from_hf_config(model.config)"
        )
    if isinstance(module, ScaledRotaryEmbedding):
        base = module.spec.base
    else:
        base = (getattr(config, "rope_parameters", None) or {}).get(
            "rope_theta", getattr(config, "rope_theta", None)
        )
    if base is not None and float(base) != spec.base:
        raise RopeSpecError(
            f"base: spec has rope_theta {spec.base:g} but the model was pretrained with {float(base):g}; "
            "factors are relative to the pretrained base"
        )


def apply_rope(model: nn.Module, spec: RopeSpec) -> nn.Module:
    """Replace the model's rotary embedding by one computing ``spec``; returns the same model.

    Supported: transformers' Llama, Mistral, Qwen2, Qwen3 and Phi-3 models (any head).
    Applying again replaces the previous spec (the search does this for every candidate).
    """
    model_type = _model_type(model)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitectureError(
            f"apply_rope: model type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    targets = _rotary_modules(model)
    if not targets:
        raise UnsupportedArchitectureError(
            f"apply_rope: no rotary_emb module found in {type(model).__name__}"
        )
    for parent, attr, module in targets:
        _check_compatible(module, spec, getattr(model, "config", None))
        buffer = module.original_inv_freq if isinstance(module, ScaledRotaryEmbedding) else module.inv_freq
        rotary = ScaledRotaryEmbedding(spec, device=buffer.device)
        rotary.factor_set = getattr(module, "factor_set", None)
        setattr(parent, attr, rotary)
    sync_attention(model, spec)  # DPE remaps positions inside attention; other methods restore it
    return model


def installed_rotaries(model: nn.Module) -> list[ScaledRotaryEmbedding]:
    return [m for m in model.modules() if isinstance(m, ScaledRotaryEmbedding)]


def installed_spec(model: nn.Module) -> RopeSpec | None:
    """The spec ``apply_rope`` installed, or None."""
    rotaries = installed_rotaries(model)
    return rotaries[0].spec if rotaries else None


def set_factor_set(model: nn.Module, kind: str | None) -> None:
    """Force "short"/"original" or "long"/"rescaled" for every following forward; None = automatic."""
    if kind not in FACTOR_SET_ALIASES:
        raise ValueError(f"factor set: expected one of short, long, original, rescaled or None, got {kind!r}")
    rotaries = installed_rotaries(model)
    if not rotaries:
        raise ValueError("factor set: the model has no RoPE installed by rope.apply_rope")
    for rotary in rotaries:
        rotary.factor_set = FACTOR_SET_ALIASES[kind]


@contextlib.contextmanager
def factor_set(model: nn.Module, kind: str | None) -> Iterator[nn.Module]:
    """``with factor_set(model, "long"): model(...)`` — forced set inside, previous choice restored after."""
    previous = [r.factor_set for r in installed_rotaries(model)]
    set_factor_set(model, kind)
    try:
        yield model
    finally:
        for rotary, prev in zip(installed_rotaries(model), previous):
            rotary.factor_set = prev
