"""The search scorer: equals eval's perplexity for the same spec; cache; rejection; abandonment."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from longctx.data.samples import IGNORE_INDEX, SyntheticSample
from longctx.eval.perplexity import perplexity
from longctx.eval.scorer import ScorerError, build_scorer
from longctx.rope import RopeSpec, RopeSpecError, apply_rope, factor_set
from tests.tiny import tiny_config, tiny_model

L = 64


def _spec(factors=None, **kw) -> RopeSpec:
    n = 8  # head_dim 16 → 8 pairs
    return RopeSpec(
        "longrope",
        base=10_000.0,
        head_dim=16,
        original_length=L,
        target_length=4 * L,
        long_factor=factors or [1.0 + 0.4 * i for i in range(n)],
        **kw,
    )


@pytest.fixture(scope="module")
def model():
    return tiny_model(tiny_config("llama", max_position_embeddings=L))


def _rows(n=3, length=4 * L, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 128, (length,), generator=g).tolist() for _ in range(n)]


def test_scorer_equals_eval_perplexity_for_the_same_spec(model):
    rows = _rows()
    spec = _spec(n_hat=4)
    (score,) = build_scorer(model, rows)([spec])
    apply_rope(model, spec)
    with factor_set(model, "long"):
        want = perplexity(model, rows)
    assert score == want
    other = _spec([4.0] * 8)
    short = build_scorer(model, rows, factor_set="short")([other])[0]
    apply_rope(model, other)
    with factor_set(model, "short"):
        assert short == perplexity(model, rows)


def test_needle_objective_counts_answer_tokens_only(model):
    rows = _rows(2)
    samples = [
        SyntheticSample(r, [IGNORE_INDEX] * (len(r) - 3) + r[-3:], len(r) - 3, ("x",), "needle_ppl", len(r))
        for r in rows
    ]
    (score,) = build_scorer(model, samples, "needle_ppl")([_spec()])
    apply_rope(model, _spec())
    masks = [[False] * (len(r) - 3) + [True] * 3 for r in rows]
    with factor_set(model, "long"):
        assert score == pytest.approx(perplexity(model, rows, loss_mask=masks), rel=1e-9)


def test_cache_is_keyed_by_the_rotary_the_spec_computes(model):
    """One measurement cache (``eval.measure``): a spec computing the same rotary under the
    scorer's factor set is served (its short factors do not matter to a long-set score); a
    spec off by 1e-4 is not the same rotary and is scored (before: rounded to 0.01, served)."""
    scorer = build_scorer(model, _rows(2))
    first = scorer([_spec(), _spec([2.0] * 8)])
    forwards = scorer.forwards
    assert scorer([_spec(short_factor=[1.5] * 8)]) == first[:1]
    assert scorer.forwards == forwards
    scorer([_spec([1.0 + 0.4 * i + 1e-4 for i in range(8)])])
    assert scorer.forwards == forwards + 2


def test_a_file_backed_cache_serves_a_new_scorer_in_another_process(model, tmp_path):
    from longctx.eval.measure import MeasurementCache

    path = tmp_path / "measurements.jsonl"
    first = build_scorer(model, _rows(2), cache=MeasurementCache(path))([_spec(), _spec([2.0] * 8)])
    again = build_scorer(model, _rows(2), cache=MeasurementCache(path))
    assert again([_spec(), _spec([2.0] * 8)]) == first and again.forwards == 0
    other_rows = build_scorer(model, _rows(2, seed=1), cache=MeasurementCache(path))
    other_rows([_spec()])
    assert other_rows.forwards == 2  # other inputs: another measurement
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        tuned.lm_head.weight.add_(1e-3)
    changed = build_scorer(tuned, _rows(2), cache=MeasurementCache(path))
    changed([_spec()])
    assert changed.forwards == 2  # other weights: another model


def test_invalid_candidates_rejected_before_any_forward(model):
    scorer = build_scorer(model, _rows(1))
    bad = RopeSpec(
        "longrope", base=10_000.0, head_dim=32, original_length=L, target_length=4 * L, long_factor=[2.0] * 16
    )
    with pytest.raises(RopeSpecError, match="rotary_dim"):
        scorer([_spec(), bad])
    assert scorer.forwards == 0


@pytest.mark.parametrize(
    ("samples", "objective", "kw", "match"),
    [
        ([[1, 2, 3]], "needle_ppl", {}, r"samples\[0\]: objective 'needle_ppl' needs needle samples"),
        ([], "ppl", {}, "samples: expected at least one sample"),
        ([[1, 2, 3]], "bleu", {}, "objective: expected one of"),
        ([[1, 2, 3]], "ppl", {"factor_set": "medium"}, "factor_set"),
        ([[1, 2, 3]], "ppl", {"abandon_margin": -1}, "abandon_margin"),
    ],
)
def test_bad_scorer_input_is_one_clear_error(model, samples, objective, kw, match):
    with pytest.raises(ScorerError, match=match):
        build_scorer(model, samples, objective, **kw)


def test_early_abandonment_stops_a_hopeless_candidate(model):
    rows = _rows(4)
    scorer = build_scorer(model, rows, abandon_margin=0.0)
    good = scorer([_spec()])[0]
    before = scorer.forwards
    hopeless = scorer([_spec([40.0] * 8)], cut=good / 10)[0]
    assert scorer.forwards - before == 1 and scorer.abandoned == 1
    assert hopeless > good / 10 and math.isfinite(hopeless)
    kept = build_scorer(model, rows)([_spec([40.0] * 8)], cut=good / 10)[0]  # no margin: no abandonment
    assert kept != hopeless or len(rows) == 1


def test_the_model_fingerprint_is_remembered_until_a_weight_changes(model, monkeypatch):
    from longctx.eval.measure import model_fingerprint

    tuned = copy.deepcopy(model)
    first = model_fingerprint(tuned)
    calls, real = [], torch.linalg.vector_norm
    monkeypatch.setattr(torch.linalg, "vector_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert model_fingerprint(tuned) == first and calls == []  # remembered: no pass over the weights
    with torch.no_grad():
        tuned.lm_head.weight.add_(1e-3)  # in place: the version counter moves
    assert model_fingerprint(tuned) != first and calls
