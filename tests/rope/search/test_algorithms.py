"""Each algorithm's constraints, convergence and determinism on synthetic objectives."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest

from longctx.rope.longrope2 import ntk_fill
from longctx.rope.search import DCISConfig, EvolutionConfig, LongRoPE2Config, baseline_factors, run_search
from tests.rope.search.objectives import (
    BUMPY_TARGET,
    MONOTONE_TARGET,
    N_PAIRS,
    SCALE,
    Recorder,
    template,
)

SMALL_EVO = EvolutionConfig(population=16, generations=12, parents=8, mutants=4, crossovers=4)
SMALL_LR2 = LongRoPE2Config(population=16, generations=12, parents=8, mutants=4, crossovers=4)


def _search(alg, config, target=MONOTONE_TARGET, seed=0, **kw):
    rec = Recorder(target, n_hat_best=kw.pop("n_hat_best", 0), n_hat_weight=kw.pop("n_hat_weight", 0.01))
    return run_search(alg, template(), rec, config, seed=seed, progress=False, **kw), rec


def test_evolution_keeps_factors_monotone_on_the_grid_and_in_range():
    result, rec = _search("evolution", SMALL_EVO)
    assert len(rec.seen) == result.evaluations == 16 + 12 * 8
    keys = set()
    for spec in rec.seen:
        f = spec.long_factor
        assert all(a <= b for a, b in itertools.pairwise(f)), f
        assert all(1.0 <= v <= 1.25 * SCALE + 1e-9 for v in f)
        assert all(abs(v * 100 - round(v * 100)) < 1e-6 for v in f)  # 0.01 grid
        keys.add((tuple(f), spec.n_hat))
    assert len(keys) == len(rec.seen)  # never evaluated twice


def test_evolution_initial_population_holds_pi_ntk_yarn():
    _, rec = _search("evolution", EvolutionConfig(population=8, generations=0, parents=4))
    firsts = [list(s.long_factor) for s in rec.seen[:3]]
    pi = [SCALE] * N_PAIRS
    assert firsts[0] == pi
    for got, method in zip(firsts[1:], ("ntk", "yarn")):
        want = baseline_factors(template(), method)
        assert max(abs(a - b) for a, b in zip(got, want)) <= 0.01  # on the grid, repaired monotone


def test_evolution_public_init_starts_from_yarn_only():
    _, rec = _search("evolution", EvolutionConfig(population=8, generations=0, parents=4, init="yarn"))
    yarn = baseline_factors(template(), "yarn", beta_fast=32.0, beta_slow=1.0)
    assert max(abs(a - b) for a, b in zip(rec.seen[0].long_factor, yarn)) <= 0.01
    assert list(rec.seen[1].long_factor) != [SCALE] * N_PAIRS


def test_evolution_converges():
    start, _ = _search("evolution", EvolutionConfig(population=16, generations=0, parents=8))
    result, _ = _search("evolution", SMALL_EVO)
    assert result.score - 1 < 0.6 * (start.score - 1)  # distance to the optimum shrinks


def test_evolution_searches_n_hat_and_keeps_it_only_when_it_helps():
    cfg = dataclasses.replace(SMALL_EVO, n_hat_choices=(0, 2, 4, 8, 16))
    found, rec = _search("evolution", cfg, n_hat_best=4, n_hat_weight=5.0)
    assert found.spec.n_hat == 4
    assert {s.n_hat for s in rec.seen} > {0, 4}
    plain, _ = _search("evolution", cfg, n_hat_best=0, n_hat_weight=5.0)
    assert plain.spec.n_hat == 0
    _, rec = _search("evolution", dataclasses.replace(SMALL_EVO, n_hat_choices=(0,)), n_hat_best=4)
    assert {s.n_hat for s in rec.seen} == {0}


def test_same_seed_same_path_other_seed_other_path():
    a, _ = _search("evolution", SMALL_EVO, seed=3)
    b, _ = _search("evolution", SMALL_EVO, seed=3)
    c, _ = _search("evolution", SMALL_EVO, seed=4)
    assert a.scores == b.scores and a.spec == b.spec
    assert a.scores != c.scores


def test_longrope2_searches_above_critical_dim_strictly_increasing_in_s_2s():
    result, rec = _search("longrope2", SMALL_LR2)
    dims = set(LongRoPE2Config().critical_dims(template()))
    assert len(dims) > 1
    seen_dims = set()
    for spec in rec.seen:
        rcd = spec.method_params.critical_dim
        seen_dims.add(rcd)
        f = spec.long_factor
        assert rcd in dims
        assert all(a < b for a, b in zip(f[rcd:], f[rcd + 1 :])), f
        assert all(SCALE - 1e-9 <= v <= 2 * SCALE + 1e-9 for v in f[rcd:])
        assert f[:rcd] == pytest.approx(ntk_fill(f[rcd], rcd))
    assert seen_dims == dims  # the initial population spans the candidate critical dims
    assert result.spec.method == "longrope2"


def test_longrope2_improves_on_its_initial_population():
    start, _ = _search("longrope2", LongRoPE2Config(population=16, generations=0, parents=8))
    result, _ = _search("longrope2", SMALL_LR2)
    assert result.score < start.score


def test_longrope2_fixed_critical_dim():
    _, rec = _search("longrope2", LongRoPE2Config(population=8, generations=1, parents=4, critical_dim=5))
    assert {s.method_params.critical_dim for s in rec.seen} == {5}


def test_dcis_reaches_a_non_monotone_target_evolution_cannot():
    dcis, rec = _search("dcis", DCISConfig(), target=BUMPY_TARGET)
    evo, _ = _search("evolution", SMALL_EVO, target=BUMPY_TARGET)
    f = dcis.spec.long_factor
    assert any(a > b for a, b in itertools.pairwise(f))  # non-monotone factors allowed and found
    assert dcis.score < evo.score
    assert dcis.score < 1.1
    assert all(1.0 <= v <= 1.25 * SCALE + 1e-9 for s in rec.seen for v in s.long_factor)


def test_dcis_pruning_saves_evaluations_at_similar_quality():
    pruned, _ = _search("dcis", DCISConfig())
    full, _ = _search("dcis", DCISConfig(prune=False))
    assert pruned.evaluations < 0.7 * full.evaluations
    assert pruned.score < 1.2 and math.isfinite(full.score)


def test_dcis_warm_start_from_historical_factors():
    t = template().replace(long_factor=tuple(MONOTONE_TARGET))
    rec = Recorder(MONOTONE_TARGET)
    result = run_search("dcis", t, rec, DCISConfig(init="template", rounds=1), progress=False)
    assert list(rec.seen[0].long_factor) == pytest.approx(MONOTONE_TARGET, abs=0.005)
    assert result.score == pytest.approx(rec.value(rec.seen[0]))  # already optimal: nothing beats it


def test_max_evaluations_stops_the_search():
    result, rec = _search("evolution", SMALL_EVO, max_evaluations=30)
    assert result.evaluations == len(rec.seen) == 30


def _dpe_problem():
    from longctx.rope import RopeSpec

    best = [1, 2, 4, 8, 8, 4, 2, 1]
    t = RopeSpec("dpe", base=1e4, head_dim=32, original_length=128, target_length=1024,
                 params={"group_scales": [1] * 8, "local_window": 64, "key_dims": [3, 9]})  # fmt: skip

    def score(specs):
        return [
            sum(abs(math.log2(a) - math.log2(b)) for a, b in zip(s.params["group_scales"], best))
            for s in specs
        ]

    return t, score, best


def test_dpe_detection_picks_each_groups_best_scale():
    from longctx.rope.search.dpe import detect_group_scales

    t, score, best = _dpe_problem()
    result = detect_group_scales(t, score)
    assert list(result.spec.params["group_scales"]) == best
    assert list(result.sweeps[0]) == [1, 2, 4, 8, 16]  # powers of two up to L'/W
    assert result.spec.params["key_dims"] == [3, 9]


def test_dpe_sweep_is_logged_and_an_interrupted_sweep_resumes(tmp_path):
    from longctx.rope.search.dpe import SWEEP_LOG, detect_group_scales

    t, score, _ = _dpe_problem()
    want = detect_group_scales(t, score)
    calls = []

    def counted(specs):
        calls.extend(specs)
        return score(specs)

    first = detect_group_scales(t, counted, out_dir=tmp_path)
    log = tmp_path / SWEEP_LOG
    # 8 groups × 5 scales, less 7 repeats: a group swept to the others' scale (16) is one spec
    assert len(calls) == 33 and len(log.read_text().splitlines()) == 33
    assert first.spec == want.spec and first.sweeps == want.sweeps
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:13]) + lines[13][:25])  # killed while writing the 14th score
    calls.clear()
    resumed = detect_group_scales(t, counted, out_dir=tmp_path)
    assert len(calls) == 20 and resumed.spec == want.spec and resumed.sweeps == want.sweeps
    calls.clear()
    assert detect_group_scales(t, counted, out_dir=tmp_path).spec == want.spec and not calls  # all logged
    assert len(log.read_text().splitlines()) == 33  # the torn line was dropped, not appended to
    other = t.replace(params={**t.params, "key_dims": [4, 9]})  # another key set: nothing reused
    detect_group_scales(other, counted, out_dir=tmp_path)
    assert len(calls) == 33 and len(log.read_text().splitlines()) == 66
