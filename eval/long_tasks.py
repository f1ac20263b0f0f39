"""Long-context tasks of lm-evaluation-harness on the model already in memory, offline.

lm-eval ships long-context suites: ``ruler`` (13 tasks, among them the ``niah_*`` needle
tasks; RULER arXiv 2404.06654), ``babilong``, ``longbench`` / ``longbench2``,
``infinitebench``, ``scrolls``. :func:`long_task_scores` runs them — or local task YAML
files — on the model as it is in memory, wrapped as
``lm_eval.models.huggingface.HFLM(pretrained=model)``: a spec installed with
``rope.apply_rope`` is what gets scored, nothing is exported or reloaded. Each task runs once
per evaluation length L (``limit`` counts per task and length):

- **Window.** HFLM is given ``max_length = L + g`` (g: the task's largest ``max_gen_toks``
  for ``generate_until`` tasks, 0 for likelihood tasks), so a prompt of L tokens is never cut
  to the config's ``max_position_embeddings`` (HFLM's default ``max_length``) and no task
  sees more than L context tokens; ``max_length=`` sets one window for every length instead.
- **Length metadata.** The task manager gets ``metadata={"max_seq_lengths": [L],
  "tokenizer": DIR}``; lm-eval merges it into every task's config
  (``lm_eval/tasks/_factory.py``, ``TaskFactory._load_full_config``) and passes it as keyword
  arguments to a task's ``custom_dataset`` function (``lm_eval/api/task.py``,
  ``ConfigurableTask.download``). RULER's generators read ``max_seq_lengths`` and size their
  samples with the tokenizer named by ``tokenizer`` (``lm_eval/tasks/ruler/niah_utils.py``,
  ``common_utils.get_tokenizer``): the in-memory tokenizer is saved to a temporary folder and
  that folder is named. BABILong reads ``max_seq_lengths`` as its dataset config name
  (``lm_eval/tasks/babilong/common_utils.py``), so it gets ``f"{L // 1024}k"``.
- **Local tasks.** A task YAML path (relative ``data_files`` resolved against its folder,
  ``eval.short_tasks.local_task_config``); documents with a ``length`` field are filtered to
  ``length == L``, so one file holds every length (a length with no document scores None);
  documents without it run at every length, in window L.
- **Offline only.** Task data is loaded with the Hugging Face hub in offline mode: a local
  file, the local datasets cache, or data a task generates (RULER ``niah_single_1``). A task
  whose data is not there raises :class:`LongTaskError`, one line naming the task and what to
  provide; RULER's QA tasks, which fetch JSON by URL on every load, are refused up front.

Results: ``{"lengths": [...], "scores": {task: {L: {metric: value} | None}}, "inputs": {task:
{L: {"window", "max_input_tokens", "samples"}}}}`` — every task and group lm-eval reports
under ``scores``; RULER's per-length metric (named by the length) is ``"score"``.
``inputs`` is per requested task: the HFLM window and the longest input it gave the model.

Needs the ``eval`` extra (``pip install lm-eval``; written against lm-eval 0.4.13's
``TaskManager``); the import is lazy.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from longctx.data.errors import DataError
from longctx.eval.short_tasks import import_lm_eval, local_task_config, metric_values

DEFAULT_GEN_TOKENS = 256
"""HFLM's ``max_gen_toks`` when a generation task sets none."""

LENGTH_FIELD = "length"
"""Document field of local tasks holding the evaluation length a document belongs to."""

NO_OFFLINE_SOURCE = {
    "ruler_qa_squad": "the SQuAD v2 dev JSON from rajpurkar.github.io",
    "ruler_qa_hotpot": "the HotpotQA dev JSON by URL",
}
"""Registered tasks that download their data by URL on every load (no cache): refused."""

_LIKELIHOOD = ("loglikelihood", "loglikelihood_rolling", "multiple_choice")
_DATA_ERRORS = (ConnectionError, OSError)
"""Offline hub (OfflineModeIsEnabled), uncached dataset (DatasetNotFoundError), missing file or tokenizer."""


class LongTaskError(DataError):
    """A long task that cannot run as given (unknown, or its data not available offline); one line."""


class _NoDocuments(Exception):
    """A local task has no document for the current length."""


def long_task_scores(
    model,
    tokenizer,
    tasks: Sequence[str | os.PathLike],
    *,
    lengths: Sequence[int],
    limit: int | float | None = None,
    batch_size: int = 1,
    max_length: int | None = None,
    gen_kwargs: dict | None = None,
    metadata: dict | None = None,
    include_path: str | os.PathLike | None = None,
    task_manager=None,
) -> dict:
    """Scores of lm-eval long tasks per task and length, on the in-memory ``model`` (see module doc).

    ``tasks``: registered lm-eval task / group / tag names, or local task YAML paths.
    ``lengths``: evaluation lengths in tokens (each one a separate run of every task).
    ``limit``: documents per task and length (lm-eval's ``limit``: an int counts, a float is a share).
    ``max_length``: one HFLM window for every length (default ``L + max_gen_toks`` per length).
    ``gen_kwargs``: lm-eval generation overrides, e.g. ``{"max_gen_toks": 32}``.
    ``metadata``: extra task metadata (``tokenizer`` overrides the saved in-memory tokenizer).
    ``include_path`` / ``task_manager``: extra task folders, or a ready ``lm_eval.tasks.TaskManager``
    to reuse (building the default index takes seconds; one is cached per ``include_path``).
    """
    lm_eval, _, _ = import_lm_eval("long tasks")
    lengths = _check_lengths(lengths)
    specs = [_task_spec(entry) for entry in tasks]
    if not specs:
        raise LongTaskError("long tasks: no tasks given; expected lm-eval task names or task YAML paths")
    if task_manager is None:
        registered = any(isinstance(spec, str) for _, spec in specs)
        task_manager = _task_manager(str(include_path) if include_path else None, registered)
    leaves = {name: _leaf_configs(task_manager, name, spec) for name, spec in specs}
    scores: dict[str, dict] = {}
    inputs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="longctx_tok_") as tok_dir:
        base_meta = {"tokenizer": tok_dir, **(metadata or {})}
        if base_meta["tokenizer"] == tok_dir:
            tokenizer.save_pretrained(tok_dir)  # RULER sizes its samples with AutoTokenizer(tok_dir)
        for length in lengths:
            for name, spec in specs:
                window = max_length or length + _generation_budget(leaves[name], gen_kwargs)
                meta = {**base_meta, **_length_metadata(name, leaves[name], length)}
                lm = _recording_hflm()(
                    pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=window
                )
                try:
                    res = lm_eval.simple_evaluate(
                        model=lm,
                        tasks=[_at_length(spec, length)],
                        limit=limit,
                        gen_kwargs=gen_kwargs,
                        task_manager=_guarded(_with_metadata(task_manager, meta), name, length),
                        log_samples=False,
                        bootstrap_iters=0,
                    )
                except _NoDocuments:
                    res = {"results": {name: None}}
                for task, task_result in res["results"].items():
                    scores.setdefault(task, {})[length] = (
                        None if task_result is None else _length_scores(task_result, length)
                    )
                samples = sum(int(n.get("effective", 0)) for n in res.get("n-samples", {}).values())
                inputs.setdefault(name, {})[length] = {
                    "window": window,
                    "max_input_tokens": lm.max_input_tokens,
                    "samples": samples,
                }
    return {"lengths": lengths, "scores": scores, "inputs": inputs}


def _check_lengths(lengths: Sequence[int]) -> list[int]:
    out = [int(n) for n in lengths]
    if not out or min(out) < 1 or any(float(n) != int(n) for n in lengths):
        raise LongTaskError(f"long tasks: lengths {list(lengths)!r}; expected positive integers (tokens)")
    return out


def _task_spec(entry: str | os.PathLike) -> tuple[str, str | dict]:
    """(name, lm-eval spec): a registered name, or a local YAML's config dict."""
    text = str(entry)
    if text.endswith((".yaml", ".yml")):
        cfg = local_task_config(text, what="long task")
        return str(cfg["task"]), cfg
    return text, text


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: str | None, include_defaults: bool):
    """One lm-eval TaskManager per (include_path, defaults) — its index takes seconds to build."""
    _, _, TaskManager = import_lm_eval("long tasks")
    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def _with_metadata(manager, metadata: dict):
    """A copy of ``manager`` sharing its task index whose tasks get ``metadata``.

    lm-eval 0.4.13 keeps the metadata in ``TaskManager._factory`` (a ``TaskFactory``, which
    merges it into each task config) and in ``.metadata``; a new TaskManager would rebuild the
    index for every length.
    """
    clone = copy.copy(manager)
    clone.metadata = dict(metadata)
    factory = getattr(manager, "_factory", None)
    if factory is not None and hasattr(factory, "_meta"):
        clone._factory = copy.copy(factory)
        clone._factory._meta = dict(metadata)
    return clone


def _guarded(manager, name: str, length: int):
    """``manager`` whose ``load`` (where lm-eval builds task data) runs offline and turns a data
    download it cannot make into :class:`LongTaskError`."""
    load = manager.load

    def guarded_load(task_list):
        try:
            with _hub_offline():
                return load(task_list)
        except ImportError as err:
            raise LongTaskError(
                f"long task {name!r}: lm-eval's code for it needs a package that is not installed "
                f"({_first_line(err)}); install what it names (lm-eval's extra for the suite)"
            ) from None
        except _DATA_ERRORS as err:
            first = _first_line(err)
            raise LongTaskError(
                f"long task {name!r} at length {length}: its data is not available offline "
                f"({first}); put it in the local Hugging Face cache first (load the "
                "task or its dataset once with network) or give a local task YAML with local data_files"
            ) from None
        except (ValueError, AssertionError) as err:
            raise LongTaskError(
                f"long task {name!r} at length {length}: lm-eval could not build its data ({_first_line(err)})"
            ) from None

    manager.load = guarded_load
    return manager


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: " + (str(err).strip().splitlines() or [""])[0]


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Hugging Face hub, datasets and transformers in offline mode (cache only) inside the block."""
    import datasets
    from huggingface_hub import constants

    saved = (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE)
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = saved


def _leaf_configs(manager, name: str, spec: str | dict) -> list[tuple[str, dict, Path | None]]:
    """(name, raw config, YAML path) of every task ``spec`` runs; refuses unknown and URL-only tasks."""
    if isinstance(spec, dict):
        return [(name, spec, None)]
    index = manager.task_index
    if name not in index:
        raise LongTaskError(
            f"long task {name!r}: not a registered lm-eval task, group or tag, nor a task YAML path "
            "(long-context suites: ruler, niah_single_1, babilong, longbench, ...)"
        )
    leaves = _leaves(index, name, depth=0)
    for leaf, cfg, _ in leaves:
        source = NO_OFFLINE_SOURCE.get(leaf)
        if source is None and Path(str(cfg.get("custom_dataset", ""))).stem == "qa_utils":
            source = "its QA documents by URL"
        if source:
            where = f"{leaf!r} (in {name!r})" if leaf != name else repr(leaf)
            raise LongTaskError(
                f"long task {where}: downloads {source} on every load and lm-eval keeps no local copy, "
                "so it cannot run offline; leave it out (name the other tasks) or give a local task YAML "
                "with local data_files"
            )
    if any(_family(cfg, path) == "ruler" for _, cfg, path in leaves):
        _check_ruler_dependencies(name)
    return leaves


def _family(cfg: dict, path: Path | None) -> str | None:
    """The lm-eval suite folder of a task that generates or fetches its own data (``custom_dataset``)."""
    return Path(path).parent.name if path and cfg.get("custom_dataset") else None


def _check_ruler_dependencies(name: str) -> None:
    """RULER's generators import ``wonderwords`` and ``nltk`` and, on import, download nltk's
    ``punkt_tab`` when it is missing (``lm_eval/tasks/ruler/prepare_niah.py``): check first."""
    import importlib.util

    missing = [pkg for pkg in ("wonderwords", "nltk") if importlib.util.find_spec(pkg) is None]
    if missing:
        raise LongTaskError(
            f"long task {name!r}: lm-eval's RULER tasks need {' and '.join(missing)}; "
            "pip install 'lm_eval[ruler]' (wonderwords, nltk)"
        )
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab")
    except LookupError:
        raise LongTaskError(
            f"long task {name!r}: lm-eval's RULER tasks need nltk's punkt_tab data, which they would "
            "download on import; install it first: python -m nltk.downloader punkt_tab"
        ) from None


def _leaves(index: dict, name: str, depth: int) -> list[tuple[str, dict, Path | None]]:
    entry = index.get(name)
    if entry is None or depth > 8:
        return []
    kind = getattr(entry.kind, "name", str(entry.kind)).upper()
    cfg = entry.cfg or {}
    if kind == "GROUP":
        return _members(index, cfg.get("task") or [], depth)
    if kind == "TAG":
        return [leaf for task in sorted(entry.tags or ()) for leaf in _leaves(index, task, depth + 1)]
    return [(name, cfg, entry.yaml_path)]


def _members(index: dict, items, depth: int) -> list[tuple[str, dict, Path | None]]:
    out = []
    for item in items if isinstance(items, list) else [items]:
        if isinstance(item, str):
            out += _leaves(index, item, depth + 1)
        elif isinstance(item, dict) and item.get("group") in index:
            out += _leaves(index, item["group"], depth + 1)
        elif isinstance(item, dict) and "group" in item:
            out += _members(index, item.get("task") or [], depth + 1)
        elif isinstance(item, dict) and isinstance(item.get("task"), str):
            leaves = _leaves(index, item["task"], depth + 1)
            out += leaves or [(item["task"], item, None)]
    return out


def _generation_budget(leaves: list[tuple[str, dict, Path | None]], gen_kwargs: dict | None) -> int:
    """Tokens the window keeps for generation: the largest ``max_gen_toks`` of the generation tasks."""
    budget = 0
    for _, cfg, _ in leaves:
        if cfg.get("output_type") in _LIKELIHOOD:
            continue
        own = (cfg.get("generation_kwargs") or {}).get("max_gen_toks")
        toks = (gen_kwargs or {}).get("max_gen_toks") or own
        budget = max(budget, int(toks or DEFAULT_GEN_TOKENS))
    return budget


def _length_metadata(name: str, leaves: list[tuple[str, dict, Path | None]], length: int) -> dict:
    """``max_seq_lengths`` as the task's data generator reads it: ``[L]``, or BABILong's ``"Nk"``."""
    families = {_family(cfg, path) for _, cfg, path in leaves} - {None}
    if "babilong" not in families:
        return {"max_seq_lengths": [length]}
    if len(families) > 1:
        raise LongTaskError(
            f"long task {name!r}: mixes BABILong with other length-generated tasks ({sorted(families)}); "
            "name them separately"
        )
    if length % 1024:
        raise LongTaskError(
            f"long task {name!r}: BABILong has datasets of 1k, 2k, 4k, ... tokens; length {length} is not "
            "a multiple of 1024"
        )
    return {"max_seq_lengths": f"{length // 1024}k"}


def _at_length(spec: str | dict, length: int) -> str | dict:
    """A local task keeps only its documents of ``length`` (when they have a length field)."""
    if isinstance(spec, str):
        return spec
    cfg = copy.deepcopy(spec)
    cfg["process_docs"] = functools.partial(_documents_of_length, length=length, task=cfg["task"])
    return cfg


def _documents_of_length(dataset, *, length: int, task: str):
    if LENGTH_FIELD not in dataset.column_names:
        return dataset
    keep = [i for i, n in enumerate(dataset[LENGTH_FIELD]) if n is not None and int(n) == length]
    if not keep:
        raise _NoDocuments(f"{task}: no document of length {length}")
    return dataset.select(keep)


def _length_scores(task_result: dict, length: int) -> dict[str, float | None]:
    """Metrics of one run; RULER's per-length metric (named ``"4096"`` …) of ``length`` → ``"score"``."""
    out: dict[str, float | None] = {}
    for metric, value in metric_values(task_result).items():
        if metric.isdigit():
            if int(metric) != length:
                continue  # RULER reports -1 for the lengths it did not generate
            out["score"] = None if value == -1 else value
        else:
            out[metric] = value
    return out


@functools.cache
def _recording_hflm():
    """HFLM that records the longest input it gives the model (``max_input_tokens``)."""
    _, HFLM, _ = import_lm_eval("long tasks")

    class RecordingHFLM(HFLM):
        max_input_tokens = 0

        def _model_call(self, inps, attn_mask=None, labels=None):
            self.max_input_tokens = max(self.max_input_tokens, int(inps.shape[-1]))
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            self.max_input_tokens = max(self.max_input_tokens, int(context.shape[-1]))
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    return RecordingHFLM
