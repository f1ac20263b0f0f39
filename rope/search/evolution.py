"""LongRoPE evolution search (Ding et al., arXiv 2402.13753 §3.2, Algorithm 1).

Each generation keeps the top ``parents`` candidates, makes ``mutants`` children by
resampling each pair with probability 0.3 uniformly on the 0.01 grid between its
neighbours' values (which keeps ``λ_i ≤ λ_{i+1}``), and ``crossovers`` children that take
each pair from the second parent with probability 0.15; a child must be valid and novel
(never asked for before), a crossover retried up to 20 times and then replaced by a
mutant. n̂ (start positions with the original RoPE) is part of a candidate: mutated with
the same probability over the paper's choices and inherited by crossover, so a start-token
count survives selection only if it lowers the score. The initial population is PI, NTK
and YaRN factors plus mutants of them (paper) or YaRN(β 32/1) plus mutants (public code).

Unlike the public code, every retry loop is bounded (``max_mutation_tries``), so a crowded
search space shrinks a generation instead of hanging it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from longctx.rope.search.space import Candidate, FactorSpace, SearchConfigError, check_int, check_prob

if TYPE_CHECKING:
    from longctx.rope.search.runner import SearchContext
    from longctx.rope.spec import RopeSpec

PAPER_N_HAT = (0, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 64, 128, 256)
INITS = ("paper", "yarn")


@dataclass(frozen=True)
class PopulationConfig:
    """The evolution loop's sizes and rates, shared by LongRoPE and LongRoPE2 (Algorithm 1 of
    LongRoPE; LongRoPE2 reuses it with the same numbers). Defaults are the papers'."""

    NAME: ClassVar[str] = "evolution"
    """Prefix of this config's error messages (the ``SEARCH_ALGORITHMS`` key)."""

    population: int = 64
    """Initial population size (LongRoPE arXiv 2402.13753 §4.1 and LongRoPE2 §4.1: 64)."""
    generations: int = 40
    """Iterations after the initial population (paper: 40)."""
    parents: int = 32
    """Top candidates kept as parents each generation (paper: 32)."""
    mutants: int = 16
    """Mutated children per generation (paper: 16)."""
    crossovers: int = 16
    """Crossover children per generation (paper: 16)."""
    mutation_prob: float = 0.3
    """Probability that a pair (and n̂) is resampled in a mutant (paper: 0.3)."""
    crossover_prob: float = 0.15
    """Probability that a crossover child takes a pair from the second parent (paper: 0.15)."""
    max_crossover_tries: int = 20
    """Failed crossovers before a mutant replaces the child (paper: 20)."""
    max_mutation_tries: int = 100
    """Bound on mutation retries for one novel valid child (the public code loops forever)."""

    def validate_population(self) -> None:
        name = self.NAME
        for field, minimum in (("population", 1), ("generations", 0), ("parents", 1), ("mutants", 0),
                               ("crossovers", 0), ("max_crossover_tries", 1), ("max_mutation_tries", 1)):  # fmt: skip
            check_int(f"{name}.{field}", getattr(self, field), minimum)
        if self.population < self.parents:
            raise SearchConfigError(
                f"{name}.population: {self.population} is smaller than parents={self.parents}; "
                "expected population >= parents"
            )
        if self.crossovers and self.parents < 2:
            raise SearchConfigError(f"{name}.parents: crossover needs at least 2 parents")
        check_prob(f"{name}.mutation_prob", self.mutation_prob)
        check_prob(f"{name}.crossover_prob", self.crossover_prob)


@dataclass(frozen=True)
class EvolutionConfig(PopulationConfig):
    min_factor: float = 1.0
    """Smallest λ (paper: 1)."""
    max_factor_ratio: float = 1.25
    """Largest λ as a multiple of s = L'/L (paper: 1.25·s; the public code's 1+s: use max_factor)."""
    max_factor: float | None = None
    """Absolute largest λ; overrides ``max_factor_ratio`` (readjustment uses a small one)."""
    init: str = "paper"
    """"paper": PI, NTK, YaRN + mutants; "yarn": YaRN (β_fast 32, β_slow 1) + mutants (public code)."""
    n_hat_choices: tuple[int, ...] = PAPER_N_HAT
    """n̂ values tried (paper's list); values ≥ L are dropped; (0,) disables the n̂ search."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_hat_choices", tuple(self.n_hat_choices))

    def upper(self, template: RopeSpec) -> float:
        return self.max_factor if self.max_factor is not None else self.max_factor_ratio * template.scale

    def validate(self, template: RopeSpec, field: str = "long_factor") -> None:
        self.validate_population()
        if self.init not in INITS:
            raise SearchConfigError(f"evolution.init: expected one of {INITS}, got {self.init!r}")
        if not self.n_hat_choices or any(n < 0 for n in self.n_hat_choices):
            raise SearchConfigError("evolution.n_hat_choices: expected a non-empty list of integers >= 0")
        self.space(template)

    def space(self, template: RopeSpec, monotone: str = "nondecreasing") -> FactorSpace:
        return FactorSpace(template.geometry.n_pairs, self.min_factor, self.upper(template), monotone)

    def n_hats(self, template: RopeSpec, field: str) -> tuple[int, ...]:
        if field != "long_factor":
            return (0,)
        return tuple(n for n in self.n_hat_choices if n < template.original_length) or (0,)

    def for_readjust(self, max_factor: float) -> EvolutionConfig:
        return dataclasses.replace(self, max_factor=max_factor, n_hat_choices=(0,))


def baseline_factors(template: RopeSpec, method: str, **params) -> list[float]:
    """λ per pair of a stock method at the template's geometry (PI = "linear", "ntk", "yarn")."""
    from longctx.rope.spec import RopeSpec

    g = template.geometry
    spec = RopeSpec(
        method,
        base=g.base,
        head_dim=template.head_dim,
        partial_rotary_factor=template.partial_rotary_factor,
        original_length=g.original_length,
        target_length=template.target_length,
        params=params,
    )
    return spec.factors("long")


@dataclass
class Operators:
    """What differs between LongRoPE's and LongRoPE2's evolution: which pairs move, and how
    a child is completed (LongRoPE2 refills the pairs below the critical dim)."""

    space: FactorSpace
    n_hats: tuple[int, ...]
    start: Callable[[Candidate], int] = lambda c: 0
    finish: Callable[[Candidate, list[float], int], Candidate] = lambda c, f, n: Candidate(tuple(f), n)

    def valid(self, cand: Candidate) -> bool:
        return self.space.is_valid(cand.factors, self.start(cand))

    def mutate(self, rng: np.random.Generator, cand: Candidate, prob: float) -> Candidate:
        factors = self.space.mutate(rng, cand.factors, prob, self.start(cand))
        n_hat = cand.n_hat
        if len(self.n_hats) > 1 and rng.random() < prob:
            n_hat = int(self.n_hats[int(rng.integers(len(self.n_hats)))])
        return self.finish(cand, factors, n_hat)

    def crossover(self, rng: np.random.Generator, a: Candidate, b: Candidate, prob: float) -> Candidate:
        take = rng.random(len(a.factors)) < prob
        factors = [fb if t else fa for fa, fb, t in zip(a.factors, b.factors, take)]
        n_hat = b.n_hat if rng.random() < prob else a.n_hat
        return self.finish(a, factors, n_hat)


def novel_mutant(ctx: SearchContext, ops: Operators, rng, parent: Candidate, prob: float, tries: int, taken):
    """A valid mutant of ``parent`` never asked for before, or None after ``tries`` attempts."""
    for _ in range(tries):
        child = ops.mutate(rng, parent, prob)
        if ops.valid(child) and not ctx.evaluate.seen(child) and child.key not in taken:
            return child
    return None


def initial_population(
    ctx: SearchContext, ops: Operators, seeds: list[Candidate], size: int, prob: float, tries: int
):
    """Seeds (deduplicated) plus mutants of them, round robin, up to ``size`` candidates."""
    rng = ctx.rng(0)
    pop: dict[tuple, Candidate] = {}
    for seed in seeds:
        pop.setdefault(seed.key, seed)
    i = 0
    while len(pop) < size and i < size * tries:
        child = novel_mutant(ctx, ops, rng, seeds[i % len(seeds)], prob, 1, pop)
        if child is not None:
            pop[child.key] = child
        i += 1
    return list(pop.values())[:size]


def next_children(ctx: SearchContext, cfg, ops: Operators, rng, parents: list[Candidate]) -> list[Candidate]:
    """``mutants`` mutants and ``crossovers`` crossover children of ``parents``, all novel."""
    taken: dict[tuple, Candidate] = {}
    for _ in range(cfg.mutants):
        parent = parents[int(rng.integers(len(parents)))]
        child = novel_mutant(ctx, ops, rng, parent, cfg.mutation_prob, cfg.max_mutation_tries, taken)
        if child is not None:
            taken[child.key] = child
    for _ in range(cfg.crossovers):
        child = None
        for _ in range(cfg.max_crossover_tries):
            i, j = rng.choice(len(parents), size=2, replace=False)
            trial = ops.crossover(rng, parents[int(i)], parents[int(j)], cfg.crossover_prob)
            if ops.valid(trial) and not ctx.evaluate.seen(trial) and trial.key not in taken:
                child = trial
                break
        if child is None:  # paper: after 20 failed crossovers, mutate instead
            parent = parents[int(rng.integers(len(parents)))]
            child = novel_mutant(ctx, ops, rng, parent, cfg.mutation_prob, cfg.max_mutation_tries, taken)
        if child is not None:
            taken[child.key] = child
    return list(taken.values())


def ranked(pairs: list[tuple[Candidate, float]]) -> list[tuple[Candidate, float]]:
    """Sorted by score; ties keep their order (stable), so selection is deterministic."""
    return sorted(pairs, key=lambda p: p[1])


def evolve(ctx: SearchContext, cfg, ops: Operators, seeds: list[Candidate]) -> None:
    """The generation loop shared by LongRoPE and LongRoPE2 (Algorithm 1)."""
    pop = initial_population(ctx, ops, seeds, cfg.population, cfg.mutation_prob, cfg.max_mutation_tries)
    population = ranked(list(zip(pop, ctx.evaluate(pop))))
    ctx.checkpoint(0, population)
    for generation in range(1, cfg.generations + 1):
        rng = ctx.rng(generation)
        parents = population[: cfg.parents]
        children = next_children(ctx, cfg, ops, rng, [c for c, _ in parents])
        cut = parents[-1][1]  # a child must beat the worst parent to survive selection
        scores = ctx.evaluate(children, cut=cut)
        population = ranked(parents + list(zip(children, scores)))
        ctx.checkpoint(generation, population)


def run_evolution(ctx: SearchContext, cfg: EvolutionConfig) -> None:
    """LongRoPE evolution over all pairs, non-decreasing, in ``[min_factor, max_factor]``."""
    space = cfg.space(ctx.template)
    ops = Operators(space, cfg.n_hats(ctx.template, ctx.field))
    if cfg.init == "paper":
        names = [("linear", {}), ("ntk", {}), ("yarn", {})]
    else:
        names = [("yarn", {"beta_fast": 32.0, "beta_slow": 1.0})]
    seeds = [Candidate(tuple(space.make_monotone(baseline_factors(ctx.template, m, **p)))) for m, p in names]
    evolve(ctx, cfg, ops, seeds)
