"""The evaluation task registry: ``EVAL_TASKS[name](model, tokenizer, settings) -> dict``.

Each task builds its inputs (documents or ``data.synthetic`` samples, seeded), runs one
scorer of this package and returns plain dicts that ``eval.report`` tabulates and plots:

- ``ppl``: perplexity per length (``eval.perplexity``; LongRoPE arXiv 2402.13753 §4.1 protocol);
- ``passkey``: passkey accuracy per length × depth (LongRoPE §4.2);
- ``niah``: needle-in-a-haystack grid (RULER ``niah_single``, arXiv 2404.06654);
- ``ruler``: RULER-style tasks per length, plus QA when ``qa_data`` is given;
- ``short``: short-task retention through lm-evaluation-harness;
- ``long``: lm-eval's long-context tasks (RULER, NIAH, BABILong, local YAMLs) at each length, on
  the model in memory (``eval.long_tasks``);
- ``serving``: what each serving choice does across L (``eval.serving``): HF's per-length switch
  inside a cached generation, one factor set per server, re-prefilling at the switch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from longctx.eval.niah import niah_eval, niah_samples
from longctx.eval.passkey import passkey_eval, passkey_samples
from longctx.eval.perplexity import perplexity_at_lengths
from longctx.eval.ruler import qa_samples, ruler_eval, ruler_samples

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
    """Local QA jsonl (``question``, ``answers``, ``context`` per line) for RULER's ``qa`` task."""
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


def read_documents(source: str) -> list[str]:
    """Texts of a demo corpus name, or of a local .txt / .jsonl (``text`` field) / .parquet file or
    folder of them — read by ``data.sources`` (the recipe's reader), so eval and training agree."""
    from longctx.data.corpus import DEMO_CORPORA
    from longctx.data.sources import load_documents

    if not Path(source).exists() and source in DEMO_CORPORA:
        return list(load_documents({"kind": "demo", "name": source})["text"])
    if not Path(source).exists():
        raise FileNotFoundError(
            f"ppl_data {source!r}: not a file or folder, nor a demo corpus ({', '.join(sorted(DEMO_CORPORA))})"
        )
    return list(load_documents({"kind": "local", "path": source})["text"])


def run_ppl(model, tokenizer, s: EvalSettings) -> dict:
    docs = [tokenizer.encode(t, add_special_tokens=False) for t in read_documents(s.ppl_data)]
    by_length = perplexity_at_lengths(
        model,
        docs,
        s.lengths,
        bos_id=getattr(tokenizer, "bos_token_id", None),
        mode=s.ppl_mode,
        stride=s.ppl_stride,
        max_docs=s.ppl_docs,
        chunk_size=s.chunk_size,
        progress=s.progress,
    )
    return {"mode": s.ppl_mode, "data": s.ppl_data, "by_length": by_length}


def run_passkey(model, tokenizer, s: EvalSettings) -> dict:
    samples = passkey_samples(tokenizer, s.lengths, s.depths, per_cell=s.samples, seed=s.seed)
    return passkey_eval(model, tokenizer, samples, max_new_tokens=s.max_new_tokens or 10, progress=s.progress)


def run_niah(model, tokenizer, s: EvalSettings) -> dict:
    samples = niah_samples(tokenizer, s.lengths, s.depths, per_cell=s.samples, seed=s.seed)
    return niah_eval(model, tokenizer, samples, max_new_tokens=s.max_new_tokens or 32, progress=s.progress)


def run_ruler(model, tokenizer, s: EvalSettings) -> dict:
    from longctx.data.synthetic import RULER_TASKS

    tasks = s.ruler_tasks or list(RULER_TASKS)
    samples = ruler_samples(tokenizer, tasks, s.lengths, per_cell=s.samples, seed=s.seed)
    if s.qa_data:
        records = [json.loads(line) for line in Path(s.qa_data).read_text().splitlines() if line.strip()]
        samples += qa_samples(tokenizer, records, s.lengths, n=s.samples, seed=s.seed)
    return ruler_eval(model, tokenizer, samples, max_new_tokens=s.max_new_tokens, progress=s.progress)


def run_long(model, tokenizer, s: EvalSettings) -> dict:
    from longctx.eval.long_tasks import long_task_scores

    if not s.long_tasks:
        raise ValueError("task 'long': no long tasks given; expected --long-tasks NAME[,PATH.yaml...]")
    gen = {"max_gen_toks": s.max_new_tokens} if s.max_new_tokens else None
    return long_task_scores(
        model, tokenizer, s.long_tasks, lengths=s.lengths, limit=s.long_limit, gen_kwargs=gen
    )


def run_serving(model, tokenizer, s: EvalSettings) -> dict:
    from longctx.eval.serving import serving_parity

    return serving_parity(model, tokenizer, s)


def run_short(model, tokenizer, s: EvalSettings) -> dict:
    from longctx.eval.short_tasks import short_task_scores

    if not s.short_tasks:
        raise ValueError("task 'short': no short tasks given; expected --short-tasks NAME[,PATH.yaml...]")
    return short_task_scores(model, tokenizer, s.short_tasks, num_fewshot=s.num_fewshot, limit=s.short_limit)


EVAL_TASKS: dict[str, Callable[..., dict]] = {
    "ppl": run_ppl,
    "passkey": run_passkey,
    "niah": run_niah,
    "ruler": run_ruler,
    "short": run_short,
    "long": run_long,
    "serving": run_serving,
}
"""Task name → ``fn(model, tokenizer, settings: EvalSettings) -> dict`` (plain, JSON-ready)."""
