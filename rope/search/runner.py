"""``run_search`` / ``readjust``: one entry point for every algorithm, resumable and distributed.

An algorithm is a plain function ``algorithm(ctx, config)`` that asks ``ctx.evaluate`` for
scores, draws randomness only from ``ctx.rng(generation)`` (a NumPy generator seeded by
``(seed, generation)``) and calls ``ctx.checkpoint(generation, population)`` after each
generation / round. That contract is what makes a search resumable exactly: the state
written at each checkpoint holds every evaluation so far, and a rerun replays the algorithm
from the start against that cache — no forward pass for what was done, the same random
draws, hence the same path and the same result as an uninterrupted run.

``score(specs) -> list[float]`` (lower is better) comes from the caller, e.g.
``eval.scorer.build_scorer``; ``rope`` never imports ``eval``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longctx.rope.search.evaluator import BudgetExhausted, Distributed, Evaluator
from longctx.rope.search.space import Candidate, SearchConfigError
from longctx.rope.search.state import PLOT_FILE, SearchState, plot_progress
from longctx.rope.spec import RopeSpec

FIELDS = ("long_factor", "short_factor")


@dataclass
class SearchContext:
    template: RopeSpec
    """Geometry and fixed fields of every candidate (a ``longrope`` / ``longrope2`` spec)."""
    field: str
    """"long_factor" (extension) or "short_factor" (short-context readjustment)."""
    evaluate: Evaluator
    seed: int
    checkpoint: Callable[[int, list[tuple[Candidate, float]]], None]

    def rng(self, generation: int) -> np.random.Generator:
        """The only randomness an algorithm may use: seeded by (seed, generation)."""
        return np.random.default_rng([self.seed, generation])

    @property
    def n_pairs(self) -> int:
        return self.template.geometry.n_pairs

    @property
    def scale(self) -> float:
        return self.template.scale


@dataclass(frozen=True)
class SearchResult:
    spec: RopeSpec
    """The template with the best candidate's factors (and n̂ / critical dim) filled in."""
    score: float
    evaluations: int
    """Distinct candidates scored (the cost unit)."""
    rejected: int
    """Invalid candidates rejected before any forward pass."""
    scores: list[float]
    """Score of every evaluation, in order (best-so-far curves, efficiency tables)."""


def to_spec(template: RopeSpec, field: str, cand: Candidate) -> RopeSpec:
    """The spec of a candidate (validated: an invalid one raises ``RopeSpecError``)."""
    if field == "short_factor":
        return template.replace(short_factor=tuple(cand.factors))
    changes: dict[str, Any] = {"long_factor": tuple(cand.factors), "n_hat": cand.n_hat}
    if cand.critical_dim is not None:
        params = {**template.params, "critical_dim": cand.critical_dim}
        return template.replace(method="longrope2", params=params, **changes)
    return template.replace(**changes)


def factor_template(template: RopeSpec, *, target_length: int | None = None) -> RopeSpec:
    """A ``longrope`` spec with ``template``'s geometry (so any method's spec can seed a search)."""
    if template.method in ("longrope", "longrope2") and target_length is None:
        return template
    n = template.geometry.n_pairs
    return RopeSpec(
        "longrope",
        base=template.base,
        head_dim=template.head_dim,
        original_length=template.original_length,
        target_length=target_length or template.target_length,
        partial_rotary_factor=template.partial_rotary_factor,
        long_factor=template.long_factor if template.method == "longrope" else (1.0,) * n,
        short_factor=template.short_factor if template.method == "longrope" else None,
    )


def resolve_config(algorithm: str, config: Any):
    """``(SEARCH_ALGORITHMS[algorithm], its config)`` from a config dataclass, a dict of its
    fields or None (defaults); an unknown algorithm, field or config type raises
    :class:`SearchConfigError`. Ranges that depend on the template are checked later by
    ``config.validate(template, field)``."""
    from longctx.rope.search import SEARCH_ALGORITHMS

    if algorithm not in SEARCH_ALGORITHMS:
        raise SearchConfigError(
            f"algorithm: unknown search algorithm {algorithm!r} (known: {', '.join(SEARCH_ALGORITHMS)})"
        )
    entry = SEARCH_ALGORITHMS[algorithm]
    if config is None:
        return entry, entry.config()
    if isinstance(config, dict):
        names = {f.name for f in dataclasses.fields(entry.config)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise SearchConfigError(
                f"{algorithm}.{unknown[0]}: unknown search parameter (allowed: {', '.join(sorted(names))})"
            )
        return entry, entry.config(**config)
    if not isinstance(config, entry.config):
        raise SearchConfigError(
            f"config: expected a {entry.config.__name__} for {algorithm!r}, got {type(config).__name__}"
        )
    return entry, config


def check_template(template: RopeSpec, field: str) -> None:
    if field not in FIELDS:
        raise SearchConfigError(f"field: expected one of {FIELDS}, got {field!r}")
    if field == "long_factor" and template.target_length <= template.original_length:
        raise SearchConfigError(
            f"target_length: a long-factor search needs L' > L={template.original_length}, got "
            f"{template.target_length}; for a short target use rope.search.readjust"
        )


def run_search(
    algorithm: str,
    template: RopeSpec,
    score: Callable,
    config: Any = None,
    *,
    out_dir: str | os.PathLike | None = None,
    seed: int = 0,
    max_evaluations: int | None = None,
    progress: bool = True,
    field: str = "long_factor",
) -> SearchResult:
    """Search factors for ``template``'s geometry with ``SEARCH_ALGORITHMS[algorithm]``.

    ``config``: the algorithm's config dataclass, a dict of its fields, or None (paper
    defaults). Every setting is checked before ``score`` is first called. ``out_dir``:
    ``state.json`` (after each generation), ``evaluations.jsonl`` and ``progress.png``; a
    rerun with the same arguments continues from the state. ``max_evaluations`` stops the
    search after that many distinct candidates (the best so far is returned).
    """
    check_template(template, field)
    entry, config = resolve_config(algorithm, config)
    if entry.searches != "factors":
        raise SearchConfigError(
            f"algorithm: {algorithm!r} searches {entry.searches}, not factors (rope.search.dpe.detect_group_scales)"
        )
    template = factor_template(template)
    config.validate(template, field)
    config_json = dataclasses.asdict(config)
    dist = Distributed()
    evaluator = Evaluator(
        score,
        lambda c: to_spec(template, field, c),
        log_dir=out_dir,
        max_evaluations=max_evaluations,
        progress=progress,
        dist=dist,
    )
    saved = SearchState.load(out_dir) if out_dir is not None else None
    dist.barrier()  # every rank has read the state before the main process writes one
    if saved is not None:
        saved.check_matches(algorithm, seed, config_json, str(out_dir))
    evaluator.restore(saved.history if saved else [], logged=saved is not None)
    state = SearchState(algorithm, seed, config_json)
    if out_dir is not None and dist.is_main:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        if saved is None:  # algorithm, seed and config on disk before the first score
            dataclasses.replace(state, generation=-1).save(out_dir)

    def checkpoint(generation: int, population: list[tuple[Candidate, float]]) -> None:
        state.generation, state.population = generation, list(population)
        state.history = list(evaluator.history)
        replaying = saved is not None and generation <= saved.generation
        if out_dir is not None and dist.is_main and not replaying:
            state.save(out_dir)

    ctx = SearchContext(template, field, evaluator, seed, checkpoint)
    try:
        entry.run(ctx, config)
    except BudgetExhausted:
        pass
    finally:
        evaluator.close()
    return _finish(ctx, state, out_dir, algorithm)


def _finish(ctx: SearchContext, state: SearchState, out_dir, algorithm: str) -> SearchResult:
    best = ctx.evaluate.best
    if best is None:
        raise SearchConfigError(f"{algorithm}: no valid candidate was evaluated; check the factor range")
    state.history, state.done = list(ctx.evaluate.history), True
    scores = [s for _, s in ctx.evaluate.history]
    if out_dir is not None and ctx.evaluate.dist.is_main:
        state.save(out_dir)
        plot_progress({algorithm: scores}, Path(out_dir) / PLOT_FILE, title=f"{algorithm} search")
    return SearchResult(
        spec=to_spec(ctx.template, ctx.field, best[0]),
        score=best[1],
        evaluations=ctx.evaluate.evaluations,
        rejected=ctx.evaluate.rejected,
        scores=scores,
    )


def readjust(
    algorithm: str,
    template: RopeSpec,
    score: Callable,
    length: int,
    config: Any = None,
    *,
    max_factor: float = 2.0,
    **kwargs,
) -> SearchResult:
    """Short-context readjustment (LongRoPE §3.3): search ``short_factor`` at ``length`` ≤ L.

    The same machinery as :func:`run_search`, on the short factor set, with factors in
    ``[1, max_factor]`` (the paper's "smaller maximum λ"; 2.0 by default, our choice) and no
    n̂. ``score`` must evaluate at ``length`` with the SHORT factor set
    (``build_scorer(..., factor_set="short")``). Returns the template with ``short_factor`` set.
    """
    if not isinstance(length, int) or not 1 < length <= template.original_length:
        raise SearchConfigError(
            f"length: readjustment targets a length in 2..L={template.original_length}, got {length!r}"
        )
    if algorithm == "longrope2":
        raise SearchConfigError(
            "algorithm: readjust supports 'evolution' and 'dcis' (longrope2 is long-only)"
        )
    _, config = resolve_config(algorithm, config)
    config = config.for_readjust(max_factor)
    return run_search(algorithm, template, score, config, field="short_factor", **kwargs)
