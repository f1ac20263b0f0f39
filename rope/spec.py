"""``RopeSpec``: the serialisable description of a RoPE extension that every stage reads and writes.

A spec is data: method, the pretrained geometry (base, head dim, partial rotary, L), the
target L', per-pair factor lists where the method takes them, attention factor, n̂ start
positions and method parameters. Factors are always relative to the ORIGINAL base (LongRoPE
§3: 2048k factors end ≈ 576 for Llama-2, relative to b = 10000). Validation is complete at
construction; each problem raises :class:`RopeSpecError` with the field path.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from longctx.rope.errors import RopeSpecError
from longctx.rope.files import write_text_atomic
from longctx.rope.geometry import RopeGeometry, factors_from_inv_freq
from longctx.rope.methods import ROPE_METHODS, RopeMethod
from longctx.rope.params import check_factor_list, check_positive, parse_params
from longctx.rope.tables import RopeFrequencies


@dataclass(frozen=True)
class RopeSpec:
    method: str
    """A key of ``rope.ROPE_METHODS``."""
    base: float
    """rope_theta of the pretrained model."""
    head_dim: int
    """Per-head dimension of the attention (the rotary part is head_dim × partial_rotary_factor)."""
    original_length: int
    """L: pretrained context length (``original_max_position_embeddings`` in HF configs)."""
    target_length: int
    """L': extended context length (``max_position_embeddings`` in HF configs)."""
    partial_rotary_factor: float = 1.0
    """Fraction of head_dim that is rotated (Phi-3-small / Phi-2 style partial rotary)."""
    long_factor: tuple[float, ...] | None = None
    """λ per pair for inputs longer than L (longrope / longrope2 only)."""
    short_factor: tuple[float, ...] | None = None
    """λ per pair for inputs of at most L (longrope / longrope2; default all ones)."""
    attention_factor: float | None = None
    """Multiplier of cos/sin ("mscale"); None = the method's default."""
    n_hat: int = 0
    """LongRoPE start positions that keep the original RoPE (no interpolation, no mscale)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Method-specific parameters, parsed into ``ROPE_METHODS[method].params``."""

    def __post_init__(self) -> None:
        method = _lookup_method(self.method)
        for name in ("head_dim", "original_length", "target_length", "n_hat"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise RopeSpecError(f"{name}: expected an integer, got {value!r}")
        check_positive("partial_rotary_factor", self.partial_rotary_factor)
        if self.partial_rotary_factor > 1:
            raise RopeSpecError(
                f"partial_rotary_factor: expected a value in (0, 1], got {self.partial_rotary_factor}"
            )
        check_positive("base", self.base, minimum=1.0)
        geom = RopeGeometry(
            float(self.base), self.rotary_dim, self.original_length, max(self.target_length, 1)
        )
        object.__setattr__(self, "_geometry", geom)
        if method.extends and self.target_length <= self.original_length:
            raise RopeSpecError(
                f"target_length: method {self.method!r} extends the context, so L' must exceed "
                f"original_length L={self.original_length}; got L'={self.target_length}"
            )
        self._check_factor_lists(method, geom)
        check_positive("attention_factor", self.attention_factor)
        if self.n_hat < 0 or (self.n_hat and self.n_hat >= self.original_length):
            raise RopeSpecError(f"n_hat: expected 0 <= n_hat < L={self.original_length}, got {self.n_hat}")
        if self.n_hat and not method.extends:
            raise RopeSpecError("n_hat: start positions only make sense for a method that rescales RoPE")
        if not isinstance(self.params, dict):
            raise RopeSpecError(f"params: expected a mapping, got {type(self.params).__name__}")
        object.__setattr__(self, "_params", parse_params(method.params, self.params, self.method))
        if method.validate is not None:
            method.validate(self)

    def _check_factor_lists(self, method: RopeMethod, geom: RopeGeometry) -> None:
        for name in ("long_factor", "short_factor"):
            values = getattr(self, name)
            if values is None:
                continue
            if not method.uses_factor_lists:
                raise RopeSpecError(
                    f"{name}: method {self.method!r} derives its factors from params; "
                    "per-pair lists are for longrope / longrope2"
                )
            checked = check_factor_list(name, values, geom.n_pairs, geom.rotary_dim)
            object.__setattr__(self, name, tuple(checked))

    # ----- derived views -------------------------------------------------------------------
    @property
    def rotary_dim(self) -> int:
        """d = int(head_dim × partial_rotary_factor), as transformers computes it."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def geometry(self) -> RopeGeometry:
        return self._geometry

    @property
    def method_params(self) -> Any:
        """The typed parameters (a dataclass of ``ROPE_METHODS[method].params``)."""
        return self._params

    @property
    def scale(self) -> float:
        return self.target_length / self.original_length

    def frequencies(self, seq_len: int | torch.Tensor | None = None, device=None) -> RopeFrequencies:
        """Short/long inverse frequencies and attention factors (``seq_len`` matters for dynamic)."""
        return ROPE_METHODS[self.method].compute(self, seq_len, device)

    def inv_freq(self, kind: str = "long", device=None) -> torch.Tensor:
        freqs = self.frequencies(device=device)
        return freqs.long_inv_freq if kind == "long" else freqs.short_inv_freq

    def factors(self, kind: str = "long") -> list[float]:
        """Per-pair λ of any method, relative to the original base (for search seeds, plots)."""
        return factors_from_inv_freq(self.geometry, self.inv_freq(kind))

    def replace(self, **changes: Any) -> RopeSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ----- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("long_factor", "short_factor"):
            if out[name] is not None:
                out[name] = list(out[name])
        out["params"] = dict(self.params)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "RopeSpec") -> RopeSpec:
        """Strict: unknown keys are errors (with a suggestion); errors are prefixed by ``source``."""
        if not isinstance(data, dict):
            raise RopeSpecError(f"{source}: expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise RopeSpecError(f"{source}: {key}: unknown field{hint}")
        missing = [
            n for n in ("method", "base", "head_dim", "original_length", "target_length") if n not in data
        ]
        if missing:
            raise RopeSpecError(f"{source}: {missing[0]}: required field is missing")
        try:
            return cls(**data)
        except RopeSpecError as err:
            raise RopeSpecError(f"{source}: {err}") from None

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename)."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> RopeSpec:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise RopeSpecError(f"{path}: no such RoPE spec file") from None
        except json.JSONDecodeError as err:
            raise RopeSpecError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        return cls.from_dict(data, source=str(path))


def _lookup_method(name: Any) -> RopeMethod:
    if name in ROPE_METHODS:
        return ROPE_METHODS[name]
    close = difflib.get_close_matches(str(name), list(ROPE_METHODS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise RopeSpecError(f"method: unknown RoPE method {name!r}{hint} (known: {', '.join(ROPE_METHODS)})")
