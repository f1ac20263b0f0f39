"""``dynamic``: dynamic NTK (emozilla, 2023) — the NTK base change sized for the CURRENT length.

For an input of length n > L the base becomes ``b · ((s·n/L) − (s−1))^(d/(d−2))``; inputs
of length ≤ L keep the pretrained RoPE. Operation order and dtypes follow transformers'
``_compute_dynamic_ntk_parameters`` so results match bit for bit. Unlike transformers,
which keeps the largest length it has seen in module state, ours depends only on the
current input (``seq_len``), so a forward never depends on call history.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from longctx.rope.params import ScaleParams
from longctx.rope.tables import RopeFrequencies

if TYPE_CHECKING:
    from longctx.rope.spec import RopeSpec


Params = ScaleParams


def inv_freq_at(spec: RopeSpec, seq_len: int | torch.Tensor | None, device=None) -> torch.Tensor:
    """Inverse frequencies for an input of ``seq_len`` tokens (None: L, i.e. the pretrained RoPE)."""
    g = spec.geometry
    factor = spec.method_params.ratio(spec.geometry)
    if seq_len is None:
        seq_len = g.original_length
    elif isinstance(seq_len, torch.Tensor):
        seq_len = torch.maximum(
            seq_len, torch.tensor(g.original_length, dtype=seq_len.dtype, device=seq_len.device)
        )
    else:
        seq_len = max(seq_len, g.original_length)
    dim = g.rotary_dim
    base = g.base * ((factor * seq_len / g.original_length) - (factor - 1)) ** (dim / (dim - 2))
    return 1.0 / (base ** g.exponents(device))


def compute(spec: RopeSpec, seq_len=None, device=None) -> RopeFrequencies:
    """Short set = the pretrained RoPE; long set = sized for ``seq_len`` (default L')."""
    short = inv_freq_at(spec, None, device)
    long = inv_freq_at(spec, spec.target_length if seq_len is None else seq_len, device)
    return RopeFrequencies(short, long, 1.0, 1.0)


def hf_parameters(spec: RopeSpec) -> tuple[dict, float, int]:
    # transformers sizes the dynamic formula by max_position_embeddings, which must stay L.
    return (
        {"rope_type": "dynamic", "factor": spec.method_params.ratio(spec.geometry)},
        spec.base,
        spec.original_length,
    )
