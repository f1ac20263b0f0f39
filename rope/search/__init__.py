"""Factor search: LongRoPE evolution, LongRoPE2 critical-dim search, DCIS, DPE group scales.

Every algorithm is a plain function ``run(ctx, config)`` written against a
``score(specs) -> list[float]`` callable (lower is better), so it is tested on synthetic
objectives without a model; ``eval.scorer.build_scorer`` builds the real one from a model
and samples (``rope`` imports no other package of longctx). :func:`run_search` adds the
evaluation cache, invalid-candidate rejection, resumable state, rank splitting, the JSONL
log and the progress plot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from longctx.rope.search.dcis import DCISConfig, run_dcis
from longctx.rope.search.dpe import DPEConfig, detect_group_scales
from longctx.rope.search.evolution import EvolutionConfig, PopulationConfig, baseline_factors, run_evolution
from longctx.rope.search.longrope2 import LongRoPE2Config, run_longrope2
from longctx.rope.search.runner import SearchResult, readjust, resolve_config, run_search, to_spec
from longctx.rope.search.space import GRID, Candidate, FactorSpace, SearchConfigError


@dataclass(frozen=True)
class SearchAlgorithm:
    name: str
    config: type
    """Dataclass of the algorithm's parameters (paper defaults)."""
    run: Callable
    """``run(ctx, config)``: asks ``ctx.evaluate``, checkpoints per generation / round."""
    default_objective: str
    """Scorer objective the paper uses: "ppl" or "needle_ppl" (``eval.scorer.OBJECTIVES``)."""
    searches: str = "factors"
    """What it searches: "factors" (a spec's long / short factors, through :func:`run_search`) or
    "positions" (DPE's per-group position scales: :func:`rope.search.dpe.detect_group_scales`
    over the key pairs of :func:`rope.search.dpe.select_key_dims`)."""


SEARCH_ALGORITHMS: dict[str, SearchAlgorithm] = {
    "evolution": SearchAlgorithm("evolution", EvolutionConfig, run_evolution, "ppl"),
    "longrope2": SearchAlgorithm("longrope2", LongRoPE2Config, run_longrope2, "needle_ppl"),
    "dcis": SearchAlgorithm("dcis", DCISConfig, run_dcis, "ppl"),
    "dpe": SearchAlgorithm("dpe", DPEConfig, detect_group_scales, "needle_ppl", searches="positions"),
}

__all__ = [
    "GRID",
    "SEARCH_ALGORITHMS",
    "Candidate",
    "DCISConfig",
    "DPEConfig",
    "EvolutionConfig",
    "FactorSpace",
    "LongRoPE2Config",
    "PopulationConfig",
    "SearchAlgorithm",
    "SearchConfigError",
    "SearchResult",
    "baseline_factors",
    "readjust",
    "resolve_config",
    "run_search",
    "to_spec",
]
