"""One eval-settings schema: the ``longctx eval`` flags and a recipe's eval stage take every
default from ``eval.settings.EvalSettings`` (before: samples 1 vs 2, depths 5 vs 3, ppl_docs 5 vs 3)."""

from __future__ import annotations

import dataclasses

from longctx.eval.__main__ import build_parser
from longctx.eval.settings import EvalSettings
from longctx.train.stages.eval import SETTINGS_FIELDS, Settings


def test_cli_stage_and_settings_share_every_default():
    fields = {f.name: f for f in dataclasses.fields(EvalSettings)}
    ref = EvalSettings(lengths=[1])
    cli = vars(build_parser().parse_args(["--model", "m", "--lengths", "1", "--out", "o"]))
    stage = Settings(kind="eval", name="e", lengths=[1])
    for name in SETTINGS_FIELDS:
        assert name in fields, name
        assert getattr(stage, name) == getattr(ref, name), name
        if name in cli:
            assert cli[name] == getattr(ref, name), name
    assert cli["seed"] == ref.seed
