"""Every registered stage kind conforms to ``train.stages.StageKind``, checked at import: a module
missing a piece fails naming it (before: a module without ``RESUMES_SCORES`` validated a recipe,
then raised AttributeError when its stage's turn came, after every earlier stage had run)."""

from __future__ import annotations

import types

import pytest

from longctx.train.stages import STAGES, _registry, conformance, search


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_registered_stage_kind_conforms(name):
    assert conformance(name, STAGES[name]) == []
    assert STAGES[name].Settings.model_fields["kind"].annotation.__args__ == (name,)


def _copy_without(module, *names, **replace):
    clone = types.ModuleType("longctx.train.stages.fake")
    clone.__dict__.update({k: v for k, v in vars(module).items() if k not in names and k != "__name__"})
    clone.__dict__.update(replace)
    return clone


def test_a_module_missing_resumes_scores_is_named():
    fake = _copy_without(search, "RESUMES_SCORES")
    assert conformance("fake", fake) == [
        "stage kind 'fake' (longctx.train.stages.fake): missing RESUMES_SCORES"
    ]
    with pytest.raises(TypeError, match="missing RESUMES_SCORES"):
        _registry({"fake": fake})


def test_wrong_signatures_and_values_are_named():
    fake = _copy_without(search, run=lambda stage: {}, PRODUCES=frozenset({"weights"}), TRAINS="no")
    problems = " ".join(conformance("fake", fake))
    assert "run is" in problems and "PRODUCES is" in problems and "TRAINS is" in problems
