"""The one schema of evaluation settings: :class:`EvalSettings`, whose defaults the ``longctx eval``
flags and a recipe's ``eval`` stage both read (:func:`default`), so the two never disagree.
Imports nothing heavy (a recipe's schema reads it without loading torch's eval stack)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class EvalSettings:
    """What every task needs; the CLI fills it from its flags, a recipe stage from its config."""

    lengths: list[int]
    """Context lengths (tokens) evaluated by every length-based task."""
    depths: list[float] = field(default_factory=lambda: list(DEFAULT_DEPTHS))
    """Relative needle depths for passkey and NIAH (0 = start, 1 = end)."""
    samples: int = 1
    """Samples per (length, depth) cell (passkey, NIAH) or per (task, length) (RULER)."""
    seed: int = 0
    ppl_data: str = "kjv"
    """Perplexity documents: a ``data.corpus`` demo corpus name, a .txt/.jsonl file or a folder of .txt."""
    ppl_docs: int = 5
    """Documents per length (LongRoPE's search uses 5; its evaluation more)."""
    ppl_mode: str = "truncate"
    ppl_stride: int = 256
    chunk_size: int | None = None
    ruler_tasks: list[str] | None = None
    """RULER tasks (default: every key of ``data.synthetic.RULER_TASKS``)."""
    qa_data: str | None = None
    """QA data for RULER's qa_1 (SQuAD layout) / qa_2 (HotpotQA layout): a .jsonl file, a
    ``datasets`` ``save_to_disk`` folder or a Hugging Face dataset id (``NAME[:SPLIT]`` or
    ``NAME:CONFIG:SPLIT``); see :func:`read_qa_records`."""
    max_new_tokens: int | None = None
    """Cap on generated tokens (RULER budgets are 30–128)."""
    short_tasks: list = field(default_factory=list)
    num_fewshot: int | None = None
    short_limit: int | float | None = None
    long_tasks: list = field(default_factory=list)
    """lm-eval long-context tasks (``ruler``, ``niah_*``, ``babilong_*``, local YAMLs) run at each length."""
    long_limit: int | float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        # lm-eval reads an int limit as a count of examples and a float as a share: 5.0 means 5
        for name in ("short_limit", "long_limit"):
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                setattr(self, name, int(value))


def default(name: str):
    """The default of :class:`EvalSettings` field ``name`` (a fresh copy for lists)."""
    f = EvalSettings.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
