"""Resume = uninterrupted run; state/log/plot on disk; bad input fails before any scoring."""

from __future__ import annotations

import dataclasses
import json

import pytest

from longctx.rope.search import (
    DCISConfig,
    EvolutionConfig,
    LongRoPE2Config,
    SearchConfigError,
    readjust,
    run_search,
)
from tests.rope.search.objectives import (
    MONOTONE_TARGET,
    N_PAIRS,
    L,
    Recorder,
    SimulatedCrash,
    never_called,
    template,
)

CONFIGS = {
    "evolution": EvolutionConfig(population=12, generations=6, parents=6, mutants=3, crossovers=3),
    "longrope2": LongRoPE2Config(population=12, generations=6, parents=6, mutants=3, crossovers=3),
    "dcis": DCISConfig(rounds=3),
}


@pytest.mark.parametrize("alg", list(CONFIGS))
@pytest.mark.parametrize("when", ["mid-run", "first generation"])
def test_resume_after_a_crash_equals_the_uninterrupted_run(alg, when, tmp_path):
    whole = run_search(alg, template(), Recorder(MONOTONE_TARGET), CONFIGS[alg], seed=7, progress=False)
    out = tmp_path / alg
    crash_at = whole.evaluations // 2 + 1 if when == "mid-run" else 2  # scores before the crash
    with pytest.raises(SimulatedCrash):
        run_search(
            alg, template(), Recorder(MONOTONE_TARGET, fail_after=crash_at), CONFIGS[alg], seed=7, out_dir=out
        )
    saved = json.loads((out / "state.json").read_text())
    assert saved["evaluations"] < crash_at and not saved["done"]  # the state lags the scores...
    if when == "first generation" and alg != "dcis":  # the population is not scored yet: the state
        # only names the search (DCIS checkpoints after its first candidate)
        assert (saved["generation"], saved["evaluations"], saved["seed"]) == (-1, 0, 7)
    assert len((out / "evaluations.jsonl").read_text().splitlines()) == crash_at  # ...the log does not
    with (out / "evaluations.jsonl").open("a") as fh:
        fh.write('{"eval": 99, "sco')  # a line torn by the kill
    rec = Recorder(MONOTONE_TARGET)
    resumed = run_search(alg, template(), rec, CONFIGS[alg], seed=7, out_dir=out, progress=False)
    assert resumed.spec == whole.spec and resumed.scores == whole.scores
    assert len(rec.seen) == whole.evaluations - crash_at  # nothing logged is evaluated again
    log = [json.loads(line) for line in (out / "evaluations.jsonl").read_text().splitlines()]
    assert [e["eval"] for e in log] == list(range(1, whole.evaluations + 1))
    assert [e["score"] for e in log] == whole.scores
    assert json.loads((out / "state.json").read_text())["done"]
    assert (out / "progress.png").stat().st_size > 0


def test_rerun_of_a_finished_search_evaluates_nothing(tmp_path):
    first = run_search("dcis", template(), Recorder(MONOTONE_TARGET), CONFIGS["dcis"], out_dir=tmp_path)
    again = run_search("dcis", template(), never_called, CONFIGS["dcis"], out_dir=tmp_path, progress=False)
    assert again.spec == first.spec and again.evaluations == first.evaluations


def test_resume_refuses_another_config(tmp_path):
    run_search(
        "dcis", template(), Recorder(MONOTONE_TARGET), CONFIGS["dcis"], out_dir=tmp_path, progress=False
    )
    with pytest.raises(SearchConfigError, match="config differs"):
        run_search("dcis", template(), never_called, DCISConfig(rounds=4), out_dir=tmp_path)
    with pytest.raises(SearchConfigError, match="seed"):
        run_search("dcis", template(), never_called, CONFIGS["dcis"], out_dir=tmp_path, seed=1)


@pytest.mark.parametrize(
    ("alg", "config", "template_kw", "match"),
    [
        (
            "evolution",
            {"population": 8, "parents": 16},
            {},
            "evolution.population: 8 is smaller than parents=16",
        ),
        ("evolution", {"max_factor": 0.5}, {}, "empty search range"),
        ("dcis", {"max_factor": 0.9}, {}, "empty search range"),
        ("longrope2", {"min_ratio": 2.0, "max_ratio": 1.5}, {}, "empty search range"),
        ("evolution", {"mutation_prob": 1.5}, {}, "evolution.mutation_prob"),
        ("evolution", {"populaton": 8}, {}, "evolution.populaton: unknown search parameter"),
        ("dcis", {"increments": 3}, {}, "dcis.increments"),
        ("longrope2", {"critical_dim": 16}, {}, "longrope2.critical_dim"),
        ("anneal", None, {}, "unknown search algorithm 'anneal'"),
    ],
)
def test_bad_config_fails_before_any_scoring(alg, config, template_kw, match):
    with pytest.raises(SearchConfigError, match=match):
        run_search(alg, template(**template_kw), never_called, config, progress=False)


def test_target_not_beyond_L_is_refused():
    from longctx.rope import RopeSpec

    short = RopeSpec("default", base=10_000.0, head_dim=32, original_length=L, target_length=L)
    with pytest.raises(SearchConfigError, match="target_length: a long-factor search needs L' > L=128"):
        run_search("evolution", short, never_called, progress=False)


def test_readjust_searches_short_factor_in_a_small_range():
    target = [1.0 + 0.5 * i / (N_PAIRS - 1) for i in range(N_PAIRS)]
    rec = Recorder(target, field="short_factor")
    base = template().replace(long_factor=tuple(MONOTONE_TARGET))
    result = readjust("dcis", base, rec, length=L, max_factor=2.0, progress=False)
    assert result.spec.long_factor == base.long_factor
    assert all(1.0 <= v <= 2.0 for s in rec.seen for v in s.short_factor)
    assert result.score < rec.value(rec.seen[0])
    evo = readjust(
        "evolution", base, Recorder(target, field="short_factor"), L, CONFIGS["evolution"], progress=False
    )
    assert evo.spec.n_hat == 0 and max(evo.spec.short_factor) <= 2.0
    with pytest.raises(SearchConfigError, match=r"length: readjustment targets a length in 2\.\.L=128"):
        readjust("dcis", base, never_called, length=2 * L)


def test_population_fields_are_shared_and_checked_with_the_algorithms_name():
    from longctx.rope.search import PopulationConfig, resolve_config

    shared = {f.name for f in dataclasses.fields(PopulationConfig)}
    assert shared <= {f.name for f in dataclasses.fields(EvolutionConfig)}
    assert shared <= {f.name for f in dataclasses.fields(LongRoPE2Config)}
    entry, cfg = resolve_config("longrope2", {"population": 4, "parents": 8})
    assert entry.name == "longrope2" and cfg.population == 4
    with pytest.raises(SearchConfigError, match=r"longrope2\.population: 4 is smaller than parents=8"):
        cfg.validate(template())
    with pytest.raises(SearchConfigError, match=r"longrope2\.max_mutation_tries"):
        LongRoPE2Config(max_mutation_tries=0).validate(template())
