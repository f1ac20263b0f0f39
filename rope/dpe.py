"""``dpe``: Dimension-wise Positional Embeddings manipulation (arXiv 2504.18857), training-free —
the method: its parameters, validation, frequencies and the position remapping.

DPE keeps the pretrained frequencies and changes POSITIONS, per group of rotary pairs:
the pairs are split into equal groups, each with its own scale ``s_g`` (its detected
effective length); only the selected key pairs (``key_dims``, chosen by Q/K norms) are
remapped, the others keep their original positions. Per DPE's step 3 (arXiv 2504.18857;
a Self-Extend-like rule): keys within the local window ``W`` of a query use normal
positions; beyond it, the query takes ``q // s_g + W − W // s_g`` and the key ``k // s_g``
in group g. The attention that applies it is ``rope.dpe_attention``; the detection of the
scales and key pairs is ``rope.search.dpe``. A stock config cannot express any of this:
export raises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from longctx.rope.errors import RopeExportError, RopeSpecError
from longctx.rope.tables import RopeFrequencies

if TYPE_CHECKING:
    from longctx.rope.spec import RopeSpec


@dataclass(frozen=True)
class Params:
    group_scales: tuple[float, ...] = ()
    """Scale per pair group (8 groups in the paper), each ≥ 1; 1 = original positions."""
    key_dims: tuple[int, ...] | None = None
    """Pair indices that are remapped (top-k by Q/K norm); None = all pairs."""
    local_window: int = 1024
    """W: keys closer than W to the query keep normal positions (paper: 1024)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "group_scales", tuple(self.group_scales))
        if self.key_dims is not None:
            object.__setattr__(self, "key_dims", tuple(self.key_dims))
        if not self.group_scales:
            raise RopeSpecError("params.group_scales: expected one scale per pair group (e.g. 8 values)")
        for i, s in enumerate(self.group_scales):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 1:
                raise RopeSpecError(f"params.group_scales[{i}]: expected a number >= 1, got {s!r}")
        if (
            isinstance(self.local_window, bool)
            or not isinstance(self.local_window, int)
            or self.local_window < 1
        ):
            raise RopeSpecError(f"params.local_window: expected an integer >= 1, got {self.local_window!r}")


def validate(spec: RopeSpec) -> None:
    p, n = spec.method_params, spec.geometry.n_pairs
    if n % len(p.group_scales):
        raise RopeSpecError(
            f"params.group_scales: {len(p.group_scales)} groups do not split {n} rotary pairs equally"
        )
    for d in p.key_dims or ():
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < n:
            raise RopeSpecError(f"params.key_dims: expected pair indices in 0..{n - 1}, got {d!r}")
    if p.key_dims is not None and len(set(p.key_dims)) != len(p.key_dims):
        raise RopeSpecError("params.key_dims: expected distinct pair indices")


def compute(spec: RopeSpec, seq_len=None, device=None) -> RopeFrequencies:
    """The original frequencies (DPE moves positions, not frequencies), attention factor 1."""
    return RopeFrequencies.single(spec.geometry.base_inv_freq(device))


def hf_parameters(spec: RopeSpec):
    raise RopeExportError(
        "method 'dpe': per-group position remapping of selected pairs cannot be expressed in a "
        "stock config (no rope_type does it); keep loading the model through rope.apply_rope"
    )


def pair_scales(spec: RopeSpec) -> torch.Tensor:
    """Scale per pair [d/2]: its group's scale if selected, else 1 (original positions)."""
    p, n = spec.method_params, spec.geometry.n_pairs
    per_group = n // len(p.group_scales)
    scales = torch.tensor([float(p.group_scales[i // per_group]) for i in range(n)])
    if p.key_dims is not None:
        keep = torch.ones(n, dtype=torch.bool)
        keep[list(p.key_dims)] = False
        scales[keep] = 1.0
    return scales


def remapped_positions(pos: torch.Tensor, scales: torch.Tensor, window: int, query: bool) -> torch.Tensor:
    """Beyond-window positions per pair: query ``p // s + W − W // s``, key ``p // s``.  # [..., d/2]"""
    p = pos[..., None].double()
    s = scales.double().to(pos.device)
    moved = torch.floor(p / s)
    if query:
        moved = moved + window - torch.floor(window / s)
    return moved
