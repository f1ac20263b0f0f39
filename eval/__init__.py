"""Evaluation of extended-context models; every function returns plain dicts.

- ``eval.perplexity``: chunked perplexity (``perplexity``, ``nll_per_sample``, ``iter_nll``,
  ``perplexity_at_lengths``) — never a [seq, vocab] logits tensor; the search's scorer core;
- ``eval.passkey`` / ``eval.niah`` / ``eval.ruler``: greedy-decoding tasks on
  ``data.synthetic`` samples, scored as LongRoPE and RULER score them;
- ``eval.short_tasks``: short-task retention through lm-evaluation-harness (``eval`` extra);
- ``eval.long_tasks``: lm-eval's long-context tasks at each length, on the model in memory;
- ``eval.serving``: serving parity across L (cached generation vs full forward, per serving choice);
- ``eval.models``: a checkpoint, or a base model plus a ``RopeSpec`` JSON;
- ``eval.tasks.EVAL_TASKS``: the task registry; ``eval.report``: results.json, report.md, PNGs;
- ``eval.scorer``: the factor-search objective built on ``iter_nll``;
- ``eval.driver.evaluate``: the one driver behind ``longctx eval`` (``python -m longctx.eval``)
  and a recipe's eval stage.

Layering: imports ``rope`` and ``data``, never ``train``. (``perplexity`` itself is not
re-exported here: the name would shadow the ``eval.perplexity`` module.) The names below load
on first use, so ``eval.settings`` (read by a recipe's schema) imports no torch.
"""

import importlib

_EXPORTS = {
    "EVAL_TASKS": "longctx.eval.tasks",
    "EvalSettings": "longctx.eval.settings",
    "iter_nll": "longctx.eval.perplexity",
    "load_model_for_eval": "longctx.eval.models",
    "nll_per_sample": "longctx.eval.perplexity",
    "perplexity_at_lengths": "longctx.eval.perplexity",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'longctx.eval' has no attribute {name!r}")


__all__ = [
    "EVAL_TASKS",
    "EvalSettings",
    "iter_nll",
    "load_model_for_eval",
    "nll_per_sample",
    "perplexity_at_lengths",
]
