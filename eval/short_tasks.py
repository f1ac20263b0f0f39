"""Short-task retention through lm-evaluation-harness, on the model already in memory.

LongRoPE (arXiv 2402.13753 §4.3) and LongRoPE2 (arXiv 2502.20082 §4.2) check that an extended
model keeps its short-context quality on the Open LLM Leaderboard tasks (ARC-Challenge 25-shot,
HellaSwag 10-shot, MMLU 5-shot, TruthfulQA 0-shot, ...). The model is wrapped as
``lm_eval.models.huggingface.HFLM(pretrained=model)`` — no reload, so a spec installed with
``rope.apply_rope`` is what gets scored. Tasks come from the recipe: registered lm-eval names
or local task YAML files (relative ``data_files`` resolved against the YAML's folder, so a
task with a local jsonl runs offline), each with its own few-shot count.

Needs the ``eval`` extra (``pip install lm-eval``); the import is lazy.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import yaml


def import_lm_eval(what: str):
    """``(lm_eval, HFLM, TaskManager)``, or an ImportError saying how to install the ``eval`` extra."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError(
            f"{what} need lm-evaluation-harness: pip install 'longctx[eval]' (lm-eval)"
        ) from err
    return lm_eval, HFLM, TaskManager


def local_task_config(yaml_path: str | os.PathLike, what: str = "short task") -> dict:
    """A task YAML as an lm-eval config dict, relative ``dataset_kwargs.data_files`` made absolute
    (``what`` names the task kind in error messages)."""
    path = Path(yaml_path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: no such task YAML")
    cfg = yaml.safe_load(path.read_text())
    if not isinstance(cfg, dict) or "task" not in cfg:
        raise ValueError(f"{what} {path}: expected a mapping with a 'task' key (an lm-eval task config)")
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, str):
        files = str((path.parent / files).resolve())
    elif isinstance(files, dict):
        files = {k: str((path.parent / v).resolve()) for k, v in files.items()}
    if files is not None:
        cfg["dataset_kwargs"]["data_files"] = files
    return cfg


def _task_entry(entry: str | os.PathLike | dict, default_shots: int | None) -> tuple[str | dict, int | None]:
    """(lm-eval task spec, few-shot) for a name, a YAML path or ``{"task": ..., "num_fewshot": k}``."""
    shots = default_shots
    if isinstance(entry, dict):
        if "task" not in entry:
            raise ValueError(f"short task {entry!r}: expected a 'task' key (name or YAML path)")
        shots = entry.get("num_fewshot", default_shots)
        entry = entry["task"]
    text = str(entry)
    if text.endswith((".yaml", ".yml")):
        return local_task_config(text), shots
    return text, shots


def metric_values(task_result: dict) -> dict[str, float]:
    """``{"acc,none": 0.5, "acc_stderr,none": ...}`` → ``{"acc": 0.5}`` (numbers only, no stderr)."""
    out = {}
    for key, value in task_result.items():
        name = key.split(",")[0]
        if "stderr" in name or not isinstance(value, (int, float)) or name == "sample_len":
            continue
        out[name] = float(value)
    return out


def short_task_scores(
    model,
    tokenizer,
    tasks: Sequence[str | os.PathLike | dict],
    *,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int = 1,
    include_path: str | os.PathLike | None = None,
) -> dict:
    """Scores ``{"scores": {task: {metric: value}}, "num_fewshot": {task: k}}`` via lm-eval.

    ``tasks``: lm-eval task names, local task YAML paths, or ``{"task": ..., "num_fewshot": k}``
    (per-task few-shot, as recipes give it); ``num_fewshot`` is the default for the others.
    Tasks sharing a few-shot count run in one ``simple_evaluate`` call.
    """
    lm_eval, HFLM, TaskManager = import_lm_eval("short tasks")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    groups: dict[int | None, list] = {}
    for entry in tasks:
        spec, shots = _task_entry(entry, num_fewshot)
        groups.setdefault(shots, []).append(spec)
    scores, shots_of = {}, {}
    for shots, specs in groups.items():
        res = lm_eval.simple_evaluate(
            model=lm,
            tasks=specs,
            num_fewshot=shots,
            limit=limit,
            task_manager=manager,
            log_samples=False,
            bootstrap_iters=0,
        )
        for name, task_result in res["results"].items():
            scores[name] = metric_values(task_result)
            shots_of[name] = res.get("n-shot", {}).get(name, shots)
    return {"scores": scores, "num_fewshot": shots_of}
