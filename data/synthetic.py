"""Synthetic long inputs shared by the factor search and the evaluation, in one import.

All generators are seeded and deterministic (same tokenizer, length, depth and seed →
the same ``SyntheticSample``), so a search and its evaluation see identical inputs:

- :func:`passkey_sample` — LongRoPE's passkey retrieval (arXiv 2402.13753 §4.2);
- :func:`needle_ppl_sample` — LongRoPE2's needle-driven perplexity (arXiv 2502.20082 §3.2);
- :data:`RULER_TASKS` / :func:`ruler_sample` — RULER-style tasks (arXiv 2404.06654).
"""

from __future__ import annotations

from longctx.data.needle import needle_ppl_sample
from longctx.data.passkey import passkey_sample
from longctx.data.ruler import RULER_TASKS, ruler_sample
from longctx.data.samples import IGNORE_INDEX, SyntheticSample

__all__ = [
    "IGNORE_INDEX",
    "RULER_TASKS",
    "SyntheticSample",
    "needle_ppl_sample",
    "passkey_sample",
    "ruler_sample",
]
