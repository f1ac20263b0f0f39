"""Every user error derives from ``longctx.errors.LongctxError`` (the runner catches that one
type, not a list to keep in sync), and a stage raising one stops the run with one line."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from longctx.errors import LongctxError

INTERNAL = {"BudgetExhausted", "_NoDocuments"}
"""Control flow inside a module, never shown to a user."""


def _modules():
    import longctx.data
    import longctx.eval
    import longctx.rope
    import longctx.train

    yield longctx
    for package in (longctx, longctx.rope, longctx.data, longctx.eval, longctx.train):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            yield importlib.import_module(info.name)


def test_every_error_class_of_the_product_is_a_longctx_error():
    errors = {}
    for module in _modules():
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Exception) and cls.__module__ == module.__name__ and name not in INTERNAL:
                errors[f"{module.__name__}.{name}"] = cls
    assert len(errors) >= 10, sorted(errors)
    assert [name for name, cls in errors.items() if not issubclass(cls, LongctxError)] == []


def test_a_user_error_inside_a_stage_is_one_line(tmp_path, capsys, monkeypatch):
    """An error type the runner never listed (before: only 7 were caught, the rest a traceback)."""
    from longctx.eval.scorer import ScorerError
    from longctx.train.run import main
    from longctx.train.stages import search
    from tests.train.conftest import write_recipe

    class NewUserError(LongctxError):
        pass

    def boom(stage, ctx):
        raise NewUserError("settings.population: 0; expected ≥ 1")

    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.txt").write_text("In the beginning God created the heaven and the earth. " * 200)
    stages = [{"name": "s", "kind": "search", "algorithm": "dcis", "target_length": 128, "objective": "ppl",
               "num_samples": 1}]  # fmt: skip
    recipe = write_recipe(tmp_path / "r.yaml", corpus, tmp_path / "out", stages=stages)
    monkeypatch.setattr(search, "run", boom)
    monkeypatch.setattr(search, "preflight", lambda stage, ctx: [])
    assert main([str(recipe)]) == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == f"{recipe}: stages.s (search): settings.population: 0; expected ≥ 1"
    )
    assert issubclass(ScorerError, ValueError)  # the builtin base is kept for existing callers
