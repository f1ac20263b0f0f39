"""DPE effective-length detection (arXiv 2504.18857, METHODS.md §DPE step 1).

The rotary pairs are split into equal groups (8 in the paper). For each group, the other
groups are held at scale ``2·L'/L`` and the group's scale is swept over
``{1, 2, 4, …, L'/W}`` (the paper: up to L'/1024 with W = 1024); each setting is scored by
a multi-needle task (4 needles; ``eval.scorer.build_scorer(..., "needle_ppl")`` over
``needle_ppl_sample`` with 4 depths), and the best scale is the group's. Every setting
costs one evaluation: groups × sweep length in all (8 × 8 = 64 at 128k with W = 1024).

With ``out_dir`` every score is appended to ``sweeps.jsonl`` as soon as it is known (one
full-length forward each: minutes on CPU), and a rerun answers the settings already logged
from it, so an interrupted sweep loses at most the setting it was scoring.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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
    out_dir: str | os.PathLike | None = None,
    write: bool = True,
    progress: bool = False,
) -> DPEResult:
    """Best scale per pair group, one group at a time (others at ``2·L'/L`` by default).

    ``template``: a ``dpe`` spec (its ``key_dims`` and ``local_window`` are kept).
    ``out_dir``: the sweep log (read on start, appended to when ``write``, i.e. on the main
    process); ``progress``: a tqdm bar over the settings.
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
    log = SweepLog(Path(out_dir) / SWEEP_LOG if out_dir is not None else None, write)
    from tqdm.auto import tqdm

    chosen, sweeps = [hold] * groups, []
    with tqdm(total=groups * len(scales), desc="dpe sweep", unit="eval", disable=not progress) as bar:
        for g in range(groups):
            values = []
            for s in scales:
                cand = _with_scale(template, [hold] * groups, g, s)
                value = log.get(cand)
                if value is None:
                    value = float(score([cand])[0])
                    log.add(cand, value)
                values.append(value)
                bar.update(1)
            sweeps.append(dict(zip(scales, values)))
            chosen[g] = scales[min(range(len(scales)), key=values.__getitem__)]
    params = {**template.params, "group_scales": chosen}
    return DPEResult(template.replace(params=params), sweeps)


SWEEP_LOG = "sweeps.jsonl"


class SweepLog:
    """Scores by candidate spec, one JSON line each; a torn last line (killed mid-write) is
    ignored, and lines for other specs (another target, window or key set) are never matched."""

    def __init__(self, path: Path | None, write: bool) -> None:
        self.path, self.write, self.scores = path, write, {}
        if path is None or not path.exists():
            return
        text = path.read_text()
        if write and text and not text.endswith("\n"):  # drop the torn line before appending
            text = text[: text.rfind("\n") + 1]
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                self.scores[_key(RopeSpec.from_dict(entry["spec"]))] = float(entry["score"])
            except (ValueError, KeyError, TypeError):
                continue

    def get(self, spec: RopeSpec) -> float | None:
        return self.scores.get(_key(spec))

    def add(self, spec: RopeSpec, value: float) -> None:
        self.scores[_key(spec)] = value
        if self.path is None or not self.write:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps({"spec": spec.to_dict(), "score": value}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def _key(spec: RopeSpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)


def _with_scale(template: RopeSpec, base: list[float], group: int, scale: float) -> RopeSpec:
    scales = list(base)
    scales[group] = scale
    return template.replace(params={**template.params, "group_scales": scales})
