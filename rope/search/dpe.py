"""DPE effective-length detection (arXiv 2504.18857, step 1).

The rotary pairs are split into equal groups (8 in the paper). For each group, the other
groups are held at scale ``2·L'/L`` and the group's scale is swept over
``{1, 2, 4, …, L'/W}`` (the paper: up to L'/1024 with W = 1024); each setting is scored by
a multi-needle task (4 needles; ``eval.scorer.build_scorer(..., "needle_ppl")`` over
``needle_ppl_sample`` with 4 depths), and the best scale is the group's. Every setting
costs one evaluation: groups × sweep length in all (8 × 8 = 64 at 128k with W = 1024).

With ``out_dir`` every score is appended to ``sweeps.jsonl`` as soon as it is known (one
full-length forward each: minutes on CPU), and a rerun answers the settings already logged
from it, so an interrupted sweep loses at most the settings it was scoring. A setting two
groups share (each at the held scale) is scored once. Under ``accelerate launch`` the
settings are split across the processes, as the factor searches split their candidates.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from longctx.rope.dpe_attention import _attention_modules
from longctx.rope.errors import RopeSpecError
from longctx.rope.files import append_line, read_jsonl
from longctx.rope.search.evaluator import Distributed
from longctx.rope.search.space import SearchConfigError, check_int
from longctx.rope.spec import RopeSpec


@dataclass(frozen=True)
class DPEConfig:
    """DPE's detection (arXiv 2504.18857): ``groups`` equal pair groups (paper: 8), the top
    ``key_fraction`` of pairs by Q/K norm remapped (README: 48 of 64), local window ``W``
    (``local_window``), each group's scale swept over ``scales`` (default 1, 2, … up to L'/W)."""

    groups: int = 8
    key_fraction: float = 0.75
    local_window: int = 1024
    scales: tuple[float, ...] | None = None

    def validate(self, template: RopeSpec | None = None, field: str | None = None) -> None:
        check_int("groups", self.groups, 1)
        check_int("local_window", self.local_window, 1)
        if not 0 < self.key_fraction <= 1:
            raise SearchConfigError(f"key_fraction: expected a fraction in (0, 1], got {self.key_fraction!r}")
        if self.scales is not None and (not self.scales or any(s < 1 for s in self.scales)):
            raise SearchConfigError(f"scales: expected a non-empty list of values >= 1, got {self.scales!r}")
        if template is not None and template.geometry.n_pairs % self.groups:
            raise SearchConfigError(
                f"groups: {self.groups} does not split {template.geometry.n_pairs} pairs equally"
            )


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
    out_dir: str | os.PathLike | None = None,
    progress: bool = False,
    dist: Distributed | None = None,
) -> DPEResult:
    """Best scale per pair group, one group at a time (others at ``2·L'/L`` by default).

    ``template``: a ``dpe`` spec (its ``key_dims`` and ``local_window`` are kept).
    ``out_dir``: the sweep log (read on start, appended to by the main process); ``progress``:
    a tqdm bar over the settings. Under ``accelerate launch`` with N processes a group's
    unlogged settings are scored N at a time, one per rank, and every rank gets every score.
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
    dist = dist or Distributed()
    log = SweepLog(Path(out_dir) / SWEEP_LOG if out_dir is not None else None, dist.is_main)
    from tqdm.auto import tqdm

    chosen, sweeps = [hold] * groups, []
    bar = tqdm(
        total=groups * len(scales), desc="dpe sweep", unit="eval", disable=not (progress and dist.is_main)
    )
    with bar:
        for g in range(groups):
            cands = [_with_scale(template, [hold] * groups, g, s) for s in scales]
            todo = [c for c in cands if log.get(c) is None]
            bar.update(len(cands) - len(todo))
            for part, values in dist.rounds(score, todo):  # one setting per rank at a time
                for cand, value in zip(part, values):
                    log.add(cand, float(value))
                bar.update(len(part))
            values = [log.get(c) for c in cands]
            sweeps.append(dict(zip(scales, values)))
            chosen[g] = scales[min(range(len(scales)), key=values.__getitem__)]
    params = {**template.params, "group_scales": chosen}
    return DPEResult(template.replace(params=params), sweeps)


SWEEP_LOG = "sweeps.jsonl"


class SweepLog:
    """Scores by candidate spec, one JSON line each; a torn last line (killed mid-write) is
    ignored, and lines for other specs (another target, window or key set) are never matched."""

    def __init__(self, path: Path | None, write: bool) -> None:
        """``write``: append new scores to ``path`` (the main process only)."""
        self.path, self.write, self.scores = path, write, {}
        if path is None:
            return
        # a torn line is dropped from the file before this process appends to it
        entries = read_jsonl(
            path, lambda e: (_key(RopeSpec.from_dict(e["spec"])), float(e["score"])), repair=write
        )
        self.scores = dict(entries)

    def get(self, spec: RopeSpec) -> float | None:
        return self.scores.get(_key(spec))

    def add(self, spec: RopeSpec, value: float) -> None:
        self.scores[_key(spec)] = value
        if self.path is None or not self.write:
            return
        append_line(self.path, json.dumps({"spec": spec.to_dict(), "score": value}))


def _key(spec: RopeSpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)


def _with_scale(template: RopeSpec, base: list[float], group: int, scale: float) -> RopeSpec:
    scales = list(base)
    scales[group] = scale
    return template.replace(params={**template.params, "group_scales": scales})


@torch.no_grad()
def key_dim_scores(model, batches: list[torch.Tensor]) -> torch.Tensor:
    """Mean ‖q_pair‖·‖k_pair‖ per rotary pair over layers, heads and tokens (DPE step 2).  # [d/2]

    Rotation keeps a pair's norm, so the projections before RoPE give the same norms.
    """
    layers = _attention_modules(model)
    rot = int(layers[0].head_dim * getattr(model.config, "partial_rotary_factor", 1.0) or layers[0].head_dim)
    half, found = rot // 2, []

    def pair_norm(x, head_dim):  # x: [b, seq, heads*head_dim] → [d/2]
        x = x.view(*x.shape[:-1], -1, head_dim)[..., :rot].float()
        return (x[..., :half] ** 2 + x[..., half:rot] ** 2).sqrt().mean(dim=(0, 1, 2))

    hooks = []
    for attn in layers:
        store: dict = {}
        hooks.append(
            attn.q_proj.register_forward_hook(
                lambda m, i, o, s=store, a=attn: s.__setitem__("q", pair_norm(o, a.head_dim))
            )
        )
        hooks.append(
            attn.k_proj.register_forward_hook(
                lambda m, i, o, s=store, a=attn: s.__setitem__("k", pair_norm(o, a.head_dim))
            )
        )
        found.append(store)
    total = torch.zeros(half)
    try:
        for ids in batches:
            model(input_ids=ids)
            total += sum(s["q"] * s["k"] for s in found).cpu()
    finally:
        for h in hooks:
            h.remove()
    return total / (len(batches) * len(layers))


def select_key_dims(model, batches: list[torch.Tensor], top_k: int) -> tuple[int, ...]:
    """The ``top_k`` pairs by Q/K norm product (paper: 48 of 64 in the README, 32 in the script)."""
    scores = key_dim_scores(model, batches)
    if not 1 <= top_k <= scores.numel():
        raise RopeSpecError(f"top_k: expected 1..{scores.numel()} pairs, got {top_k}")
    return tuple(sorted(int(i) for i in torch.topk(scores, top_k).indices))
