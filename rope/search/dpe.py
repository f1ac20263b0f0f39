"""DPE effective-length detection (arXiv 2504.18857, METHODS.md §DPE step 1).

The rotary pairs are split into equal groups (8 in the paper). For each group, the other
groups are held at scale ``2·L'/L`` and the group's scale is swept over
``{1, 2, 4, …, L'/W}`` (the paper: up to L'/1024 with W = 1024); each setting is scored by
a multi-needle task (4 needles; ``eval.scorer.build_scorer(..., "needle_ppl")`` over
``needle_ppl_sample`` with 4 depths), and the best scale is the group's. Every setting
costs one evaluation: groups × sweep length in all (8 × 8 = 64 at 128k with W = 1024).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rope.search.space import SearchConfigError, check_int
from rope.spec import RopeSpec


@dataclass(frozen=True)
class DPEResult:
    spec: RopeSpec
    """``dpe`` spec with the detected ``group_scales``."""
    sweeps: list[dict[float, float]]
    """Per group: scale → score."""


def sweep_scales(target_length: int, original_length: int, window: int) -> list[float]:
    """Powers of two from 1 up to ``L'/W`` (at least up to 2)."""
    top, out, s = max(2.0, target_length / window), [], 1.0
    while s <= top:
        out.append(s)
        s *= 2
    return out


def detect_group_scales(
    template: RopeSpec,
    score: Callable[[list[RopeSpec]], list[float]],
    *,
    groups: int = 8,
    scales: Sequence[float] | None = None,
    others: float | None = None,
) -> DPEResult:
    """Best scale per pair group, one group at a time (others at ``2·L'/L`` by default).

    ``template``: a ``dpe`` spec (its ``key_dims`` and ``local_window`` are kept).
    """
    if template.method != "dpe":
        raise SearchConfigError(f"template.method: expected 'dpe', got {template.method!r}")
    check_int("groups", groups, 1)
    if template.geometry.n_pairs % groups:
        raise SearchConfigError(f"groups: {groups} does not split {template.geometry.n_pairs} pairs equally")
    p = template.method_params
    scales = list(scales or sweep_scales(template.target_length, template.original_length, p.local_window))
    if not scales or any(s < 1 for s in scales):
        raise SearchConfigError(f"scales: expected a non-empty list of values >= 1, got {scales!r}")
    hold = others if others is not None else 2 * template.scale
    chosen, sweeps = [hold] * groups, []
    for g in range(groups):
        candidates = [_with_scale(template, [hold] * groups, g, s) for s in scales]
        values = score(candidates)
        sweeps.append(dict(zip(scales, values)))
        chosen[g] = scales[min(range(len(scales)), key=values.__getitem__)]
    params = {**template.params, "group_scales": chosen}
    return DPEResult(template.replace(params=params), sweeps)


def _with_scale(template: RopeSpec, base: list[float], group: int, scale: float) -> RopeSpec:
    scales = list(base)
    scales[group] = scale
    return template.replace(params={**template.params, "group_scales": scales})
