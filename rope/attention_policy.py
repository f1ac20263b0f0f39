"""How short and long inputs are each scaled: the attention factor ("mscale") as a recorded choice.

Stock transformers' ``longrope`` multiplies cos/sin by ONE attention factor, sqrt(1 + ln s / ln L)
by default, for both factor sets: a training-free export changes short inputs even when its
short factors are all 1 (SmolLM2 ppl@4k 5.98 → 7.24 at 8×; docs/REPRODUCTION.md §5). A spec records
which of three policies it follows, through its ``attention_factor`` and ``params.mscale_short``:

- ``hf``: transformers' default, one factor for both sets (``attention_factor`` unset);
- ``balanced``: one explicit factor for both sets, chosen by :func:`balance_attention_factor`
  to trade short against long quality — stock-HF expressible (``attention_factor``);
- ``short_original``: short inputs 1.0 (exactly the pretrained RoPE), long inputs the method's
  factor. Stock transformers cannot express it (the HF export refuses it, with the reason);
  vLLM can: its ``longrope`` reads ``short_mscale`` / ``long_mscale`` from the rope parameters
  (``vllm/model_executor/layers/rotary_embedding/__init__.py``, ``get_rope`` → ``Phi3LongRoPE
  ScaledRotaryEmbedding(short_mscale, long_mscale)``) and ignores ``attention_factor``, so
  :func:`serving_parameters` writes both keys for every policy.
"""

from __future__ import annotations

from collections.abc import Callable

from longctx.rope.errors import RopeSpecError
from longctx.rope.spec import RopeSpec

POLICIES = ("hf", "balanced", "short_original")
METHODS = ("longrope", "longrope2")
"""Methods whose two factor sets can carry different attention factors."""


def attention_policy(spec: RopeSpec) -> str:
    """The policy a spec follows (``hf`` for methods with one factor set)."""
    if spec.method not in METHODS:
        return "hf"
    if not spec.method_params.mscale_short:
        return "short_original"
    return "hf" if spec.attention_factor is None else "balanced"


def with_attention_policy(spec: RopeSpec, policy: str, factor: float | None = None) -> RopeSpec:
    """``spec`` under ``policy``; ``balanced`` needs the shared ``factor``."""
    if policy not in POLICIES:
        raise RopeSpecError(f"attention policy: {policy!r}; expected one of {POLICIES}")
    if spec.method not in METHODS:
        raise RopeSpecError(f"attention policy: {spec.method!r} has one factor set; policies need {METHODS}")
    if policy == "balanced" and factor is None:
        raise RopeSpecError("attention policy 'balanced': give the shared factor (balance_attention_factor)")
    params = dict(spec.params)
    params["mscale_short"] = policy != "short_original"
    if policy == "hf":
        return spec.replace(attention_factor=None, params=params)
    if policy == "balanced":
        return spec.replace(attention_factor=float(factor), params=params)
    return spec.replace(params=params)


def serving_parameters(spec: RopeSpec) -> dict:
    """The spec's HF ``longrope`` parameters plus vLLM's ``short_mscale`` / ``long_mscale``: what
    an engine that reads them needs to serve the spec's policy exactly (``short_original``
    included), whatever ``attention_factor`` it ignores."""
    from longctx.rope.longrope import attention_factors, short_factor_of

    if spec.method not in METHODS:
        raise RopeSpecError(f"serving parameters: for {METHODS} specs, got {spec.method!r}")
    short, long = attention_factors(spec)
    params = {
        "rope_type": "longrope",
        "long_factor": list(spec.long_factor),
        "short_factor": list(short_factor_of(spec)),
        "original_max_position_embeddings": spec.original_length,
        "short_mscale": short,
        "long_mscale": long,
    }
    if short == long:
        params["attention_factor"] = long
    return params


def balance_attention_factor(
    template: RopeSpec,
    short_score: Callable[[list[RopeSpec]], list[float]],
    long_score: Callable[[list[RopeSpec]], list[float]],
    *,
    points: int = 9,
    short_tolerance: float | None = None,
) -> tuple[RopeSpec, list[dict]]:
    """The ``balanced`` factor, one shared factor f in [1, f_hf]. Scores are perplexities (lower
    is better) of the SHORT set at a length ≤ L and of the LONG set at L'.

    - ``short_tolerance`` None: the f whose worse relative loss, max(short(f) / short(1),
      long(f) / min_f long(f)), is smallest — short inputs lose as little as long inputs give up;
    - ``short_tolerance`` t: the f with the best long score among those whose short score is
      within (1 + t) × short(1) — a short-quality budget first (f = 1 always qualifies).

    Returns the spec and one row per factor tried."""
    from longctx.rope.longrope import default_attention_factor

    top = default_attention_factor(template)
    grid = [1.0 + (top - 1.0) * i / (points - 1) for i in range(points)] if top > 1 else [1.0]
    specs = [with_attention_policy(template, "balanced", f) for f in grid]
    short, long = short_score(specs), long_score(specs)
    best_long = min(long)
    rows = [
        {"factor": f, "short": s, "long": lg, "worse": max(s / short[0], lg / best_long)}
        for f, s, lg in zip(grid, short, long)
    ]
    if short_tolerance is None:
        chosen = min(range(len(rows)), key=lambda i: rows[i]["worse"])
    else:
        within = [i for i, r in enumerate(rows) if r["short"] <= (1.0 + short_tolerance) * short[0]]
        chosen = min(within, key=lambda i: rows[i]["long"])
    return specs[chosen], rows
