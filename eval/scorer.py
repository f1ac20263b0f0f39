"""The search objective: ``score(list[RopeSpec]) -> list[float]`` from a model and samples.

Objectives (lower is better):
- ``ppl`` — perplexity at the target length over every token of the samples (LongRoPE
  arXiv 2402.13753 §3.2: 5 PG19 documents truncated to L', BOS first);
- ``needle_ppl`` — LongRoPE2's needle-driven perplexity (arXiv 2502.20082 §3.2): the loss
  counts only the answer tokens of ``data.synthetic.needle_ppl_sample`` samples, and the
  LM head runs only at those positions (``eval.perplexity`` gathers them).

Each candidate is installed with ``rope.apply_rope`` and scored under an explicit
``rope.factor_set`` ("long" for extension, "short" for short-context readjustment), with
eval's chunked perplexity, so a score is exactly ``eval.perplexity.perplexity`` of the same
spec. Scores go through the one measurement cache (``eval.measure``), keyed by the model,
the samples, the objective and the rotary the spec computes (:func:`eval.measure.rope_fingerprint`
under the scorer's factor set): specs that compute the same rotary share a score, and with a
file-backed cache a rerun re-scores nothing. A spec the model cannot take
(wrong rotary dim or base) is rejected before any forward pass.

Early abandonment (optional, ``abandon_margin``): the search passes ``cut``, the score a
candidate must beat to matter (the worst surviving parent; the current best for DCIS).
After each sample (at least ``min_samples``), if the running perplexity already exceeds
``cut · (1 + abandon_margin)``, the candidate is abandoned and the running perplexity is
returned. It is a heuristic, not a bound — a later sample could pull the mean back — so
the margin keeps it conservative; abandoned scores are not cached by the scorer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from longctx.data.samples import IGNORE_INDEX, SyntheticSample
from longctx.errors import LongctxError
from longctx.eval.perplexity import iter_nll
from longctx.rope import RopeSpec, apply_rope, factor_set, installed_spec
from longctx.rope.install import _check_compatible, _rotary_modules

OBJECTIVES = ("ppl", "needle_ppl")
FACTOR_SETS = ("long", "short")


class ScorerError(LongctxError, ValueError):
    """Bad scorer input, raised before any model work."""


def _check_samples(samples, objective: str) -> list:
    if objective not in OBJECTIVES:
        raise ScorerError(f"objective: expected one of {OBJECTIVES}, got {objective!r}")
    if not samples:
        raise ScorerError("samples: expected at least one sample")
    if objective == "needle_ppl":
        for i, s in enumerate(samples):
            if not isinstance(s, SyntheticSample) or all(t == IGNORE_INDEX for t in s.labels):
                raise ScorerError(
                    f"samples[{i}]: objective 'needle_ppl' needs needle samples (SyntheticSample with "
                    "answer labels, e.g. data.synthetic.needle_ppl_sample); got "
                    f"{type(s).__name__}"
                )
        return list(samples)
    # plain perplexity counts every token: a SyntheticSample is just its token row here
    return [list(s.input_ids) if isinstance(s, SyntheticSample) else s for s in samples]


class Scorer:
    """Callable ``scorer(specs, cut=None) -> list[float]``; see the module docstring."""

    def __init__(
        self,
        model,
        samples,
        objective,
        factor_set_name,
        abandon_margin,
        min_samples,
        cache=None,
        **nll_kwargs,
    ):
        from longctx.eval.measure import MeasurementCache, inputs_fingerprint, model_fingerprint

        self.model = model
        self.samples = samples
        self.objective = objective
        self.factor_set = factor_set_name
        self.abandon_margin = abandon_margin
        self.min_samples = min_samples
        self.nll_kwargs = nll_kwargs
        self.cache = cache if cache is not None else MeasurementCache()
        self._identity = {
            "measure": f"score:{objective}",
            "model": model_fingerprint(model),
            "inputs": inputs_fingerprint(samples),
        }
        self._length = max(len(s.input_ids) if isinstance(s, SyntheticSample) else len(s) for s in samples)
        """The samples' longest row: the length the rotary fingerprint is taken at."""
        self.forwards = 0
        """Samples run through the model so far (cost accounting; early abandonment lowers it)."""
        self.abandoned = 0

    def check(self, spec: RopeSpec) -> None:
        """Raise ``RopeSpecError`` if the model cannot take ``spec`` (before any forward)."""
        for _, _, module in _rotary_modules(self.model):
            _check_compatible(module, spec, getattr(self.model, "config", None))

    def __call__(self, specs: Sequence[RopeSpec], cut: float | None = None) -> list[float]:
        for spec in specs:
            self.check(spec)
        previous = installed_spec(self.model)
        try:
            return [self._score(spec, cut) for spec in specs]
        finally:
            if previous is not None:
                apply_rope(self.model, previous)

    def key(self, spec: RopeSpec) -> str:
        """The measurement key of ``spec``'s score (see the module docstring)."""
        from longctx.eval.measure import MeasurementCache, rope_fingerprint

        return MeasurementCache.key(
            **self._identity, rope=rope_fingerprint(spec, self._length, self.factor_set)
        )

    def _score(self, spec: RopeSpec, cut: float | None) -> float:
        key = self.key(spec)
        found = self.cache.get(key)
        if found is not None:
            return found["value"]
        apply_rope(self.model, spec)
        limit = None
        if cut is not None and self.abandon_margin is not None and math.isfinite(cut):
            limit = math.log(cut * (1 + self.abandon_margin))
        total, count = 0.0, 0
        with factor_set(self.model, self.factor_set):
            for i, (nll, n) in enumerate(iter_nll(self.model, self.samples, **self.nll_kwargs)):
                self.forwards += 1
                total, count = total + nll, count + n
                if limit is not None and i + 1 >= self.min_samples and count and total / count > limit:
                    self.abandoned += 1
                    return math.exp(total / count)
        value = math.exp(total / count) if count else math.inf
        self.cache.put(key, {"value": value, "spec": spec.to_dict(), "factor_set": self.factor_set})
        return value


def build_scorer(
    model,
    samples: Sequence,
    objective: str = "ppl",
    *,
    factor_set: str = "long",
    abandon_margin: float | None = None,
    min_samples: int = 1,
    chunk_size: int | None = None,
    batch_size: int = 1,
    cache=None,
) -> Scorer:
    """A search objective over ``samples`` (token rows for ``ppl``; needle samples for
    ``needle_ppl``), scoring each spec under ``factor_set`` ("long", or "short" for
    readjustment). ``cache``: an ``eval.measure.MeasurementCache`` (default: one in memory).
    All arguments are checked here, before any forward pass."""
    samples = _check_samples(samples, objective)
    if factor_set not in FACTOR_SETS:
        raise ScorerError(f"factor_set: expected one of {FACTOR_SETS}, got {factor_set!r}")
    if abandon_margin is not None and not (isinstance(abandon_margin, (int, float)) and abandon_margin >= 0):
        raise ScorerError(f"abandon_margin: expected None or a number >= 0, got {abandon_margin!r}")
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
        raise ScorerError(f"min_samples: expected an integer >= 1, got {min_samples!r}")
    return Scorer(
        model,
        samples,
        objective,
        factor_set,
        abandon_margin,
        min_samples,
        cache=cache,
        chunk_size=chunk_size,
        batch_size=batch_size,
    )
