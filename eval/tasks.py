"""The evaluation task registry: ``EVAL_TASKS[name](model, tokenizer, settings) -> dict``.

Each task builds its inputs (documents or ``data.synthetic`` samples, seeded), runs one
scorer of this package and returns plain dicts that ``eval.report`` tabulates and plots:

- ``ppl``: perplexity per length (``eval.perplexity``; LongRoPE arXiv 2402.13753 §4.1 protocol);
- ``passkey``: passkey accuracy per length × depth (LongRoPE §4.2);
- ``niah``: needle-in-a-haystack grid (RULER ``niah_single``, arXiv 2404.06654);
- ``ruler``: RULER-style tasks per length, plus qa_1 (SQuAD) / qa_2 (HotpotQA) when ``qa_data``
  names QA data (a .jsonl, a ``save_to_disk`` folder or a dataset id, see :func:`read_qa_records`);
- ``short``: short-task retention through lm-evaluation-harness;
- ``long``: lm-eval's long-context tasks (RULER, NIAH, BABILong, local YAMLs) at each length, on
  the model in memory (``eval.long_tasks``);
- ``serving``: what each serving choice does across L (``eval.serving``): HF's per-length switch
  inside a cached generation, one factor set per server, re-prefilling at the switch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from longctx.data.errors import DataError
from longctx.eval.niah import niah_eval, niah_samples
from longctx.eval.passkey import passkey_eval, passkey_samples
from longctx.eval.perplexity import perplexity_at_lengths
from longctx.eval.ruler import qa_samples, ruler_eval, ruler_samples
from longctx.eval.settings import EvalSettings


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


QA_SPLITS = ("validation", "test", "train")
"""The split a QA dataset is read from when none is named (RULER builds qa_1/qa_2 from the dev sets)."""

QA_LAYOUTS = (
    "SQuAD columns (question, context, answers: {text, answer_start}) or HotpotQA columns "
    "(question, answer, context: {title, sentences})"
)
QA_SOURCES = (
    "a QA .jsonl file, a datasets save_to_disk folder (PATH[:SPLIT]) or a Hugging Face dataset id "
    "(NAME[:SPLIT] or NAME:CONFIG:SPLIT)"
)


def _looks_like_path(source: str) -> bool:
    """A value meant as a local path (never sent to the Hub): a file suffix, an explicit
    directory prefix, or more slashes than a dataset id's ``owner/name``."""
    return (
        Path(source).suffix in (".jsonl", ".json", ".parquet")
        or source.startswith(("/", ".", "~"))
        or source.count("/") > 1
    )


def _qa_source(source: str, where: str) -> tuple[str, str | None, str | None]:
    """(path or dataset id, config, split) of a ``qa_data`` value."""
    if Path(source).exists():
        return source, None, None
    head, sep, split = source.rpartition(":")
    if sep and Path(head).is_dir():
        return head, None, split or None
    if _looks_like_path(source):
        raise DataError(f"{where} {source!r}: no such file or folder; expected {QA_SOURCES}")
    parts = source.split(":")
    if len(parts) > 3 or not parts[0]:
        raise DataError(f"{where} {source!r}: not a dataset id; expected {QA_SOURCES}")
    if len(parts) == 3:
        return parts[0], parts[1] or None, parts[2] or None
    return parts[0], None, (parts[1] or None) if len(parts) == 2 else None


def _qa_split(data, split: str | None, where: str, source: str):
    """One split of a ``DatasetDict``: the named one, else the first of :data:`QA_SPLITS` it has."""
    import datasets

    if not isinstance(data, datasets.DatasetDict):
        if split is not None:
            raise DataError(f"{where} {source!r}: a single dataset, no splits; expected no ':{split}'")
        return data
    names = list(data)
    if split is not None:
        if split not in data:
            raise DataError(f"{where} {source!r}: no split {split!r}; expected one of {names}")
        return data[split]
    chosen = next((n for n in QA_SPLITS if n in data), names[0] if len(names) == 1 else None)
    if chosen is None:
        raise DataError(
            f"{where} {source!r}: splits {names}, none of {list(QA_SPLITS)}; name one, e.g. {source}:{names[0]}"
        )
    return data[chosen]


def _load_qa_dataset(name: str, config: str | None, where: str, source: str):
    import datasets

    try:
        return datasets.load_dataset(name, config)
    except ConnectionError:  # offline (HF_DATASETS_OFFLINE=1 / HF_HUB_OFFLINE=1) or no network
        flags = (os.environ.get(v, "").upper() for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
        offline = datasets.config.HF_HUB_OFFLINE or any(f in ("1", "ON", "YES", "TRUE") for f in flags)
        why = "not in the local datasets cache (offline mode)" if offline else "cannot reach the Hub"
        raise DataError(
            f"{where} {source!r}: not a local file or folder, and dataset {name!r} is {why}; expected {QA_SOURCES}"
        ) from None
    except (OSError, ValueError) as err:  # no such dataset, a missing config, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"{where} {source!r}: cannot load dataset {name!r} ({first}); expected {QA_SOURCES}"
        ) from None


def _check_qa_columns(ds, where: str, source: str) -> None:
    columns = list(ds.column_names)
    if not ({"question", "context"} <= set(columns) and {"answers", "answer"} & set(columns)):
        raise DataError(f"{where} {source!r}: columns {columns}; expected {QA_LAYOUTS}")
    if not len(ds):
        raise DataError(f"{where} {source!r}: 0 rows; expected QA records in {QA_LAYOUTS}")


def _read_qa_jsonl(path: Path, where: str, source: str) -> list[dict]:
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(
                f"{where} {source!r} line {number}: invalid JSON ({err.msg}); expected one QA object per line"
            ) from None
    if not records:
        raise DataError(f"{where} {source!r}: empty file; expected one QA object per line ({QA_LAYOUTS})")
    return records


def read_qa_records(source: str, where: str = "qa_data") -> list[dict]:
    """The QA records ``qa_data`` names, checked, for ``eval.ruler.qa_samples``.

    ``source`` is one of
    - a ``.jsonl`` file, one record per line (SQuAD- or HotpotQA-style, ``data.ruler.qa_record``);
    - a ``datasets`` ``save_to_disk`` folder (``datasets.load_from_disk``), optionally ``PATH:SPLIT``;
    - a Hugging Face dataset id (``datasets.load_dataset``): ``NAME``, ``NAME:SPLIT`` or
      ``NAME:CONFIG:SPLIT`` (an empty SPLIT picks the default), e.g. ``rajpurkar/squad`` (qa_1) or
      ``hotpotqa/hotpot_qa:distractor:validation`` (qa_2). Offline (``HF_DATASETS_OFFLINE=1``) it is
      read from the local cache; a dataset not cached there is an error, never a download.

    A dataset has SQuAD columns (``question``, ``context`` a string, ``answers: {text,
    answer_start}``: qa_1) or HotpotQA's (``question``, ``answer``, ``context: {title,
    sentences}``, each paragraph's sentences joined: qa_2, the distractor setting). Without a
    named split the first of ``validation``, ``test``, ``train`` present is used (the only one if
    there is one). Every problem — no such path or id, a dataset not cached offline, missing
    columns, a misshapen record, no answerable record — is one :class:`DataError` line naming
    ``where``, the value and what was expected.
    """
    from longctx.data.ruler import qa_tasks

    name, config, split = _qa_source(source, where)
    path = Path(name)
    if path.is_file():
        if split is not None:
            raise DataError(f"{where} {source!r}: a file has no splits; expected no ':{split}'")
        records = _read_qa_jsonl(path, where, source)
    else:
        import datasets

        if path.is_dir():
            try:
                data = datasets.load_from_disk(str(path))
            except FileNotFoundError:
                raise DataError(
                    f"{where} {source!r}: a folder but not a datasets save_to_disk folder; expected {QA_SOURCES}"
                ) from None
        else:
            data = _load_qa_dataset(name, config, where, source)
        ds = _qa_split(data, split, where, source)
        _check_qa_columns(ds, where, source)
        records = ds.to_list()
    if not qa_tasks(records, where=f"{where} {source!r} record"):
        raise DataError(f"{where} {source!r}: no answerable record; expected {QA_LAYOUTS} with answers")
    return records


def check_task_inputs(
    tokenizer,
    tasks: Sequence[str],
    s: EvalSettings,
    *,
    names: Mapping[str, str] | None = None,
) -> None:
    """What the tasks read, checked before any model loads (one :class:`DataError` line each):
    ``ppl_data`` exists, ``qa_data`` reads (:func:`read_qa_records`), and the generation tasks'
    samples build at the shortest length (RULER's templates, the passkey and NIAH prompts need a
    minimum; a length below it would fail only after the model loaded). ``names`` maps a setting
    to the name its errors use (the CLI's ``--qa-data``, a recipe's ``stages.X.qa_data``)."""
    from longctx.data.corpus import DEMO_CORPORA
    from longctx.data.synthetic import RULER_TASKS

    def key(setting: str) -> str:
        return (names or {}).get(setting, setting)

    if "ppl" in tasks and not Path(s.ppl_data).exists() and s.ppl_data not in DEMO_CORPORA:
        raise DataError(
            f"{key('ppl_data')} {s.ppl_data!r}: not a file or folder, nor a demo corpus "
            f"({', '.join(sorted(DEMO_CORPORA))}); expected a .txt/.jsonl/.parquet file or a folder of them"
        )
    unknown = [t for t in s.ruler_tasks or [] if t not in RULER_TASKS]
    if "ruler" in tasks and unknown:
        raise DataError(f"{key('ruler_tasks')}: unknown {unknown}; expected some of {list(RULER_TASKS)}")
    records = read_qa_records(s.qa_data, key("qa_data")) if "ruler" in tasks and s.qa_data else None
    shortest = [min(s.lengths)]
    try:
        if "passkey" in tasks:
            passkey_samples(tokenizer, shortest, s.depths, seed=s.seed)
        if "niah" in tasks:
            niah_samples(tokenizer, shortest, s.depths, seed=s.seed)
        if "ruler" in tasks:
            ruler_samples(tokenizer, s.ruler_tasks or list(RULER_TASKS), shortest, seed=s.seed)
            if records:
                qa_samples(tokenizer, records, shortest, n=s.samples, seed=s.seed)
    except DataError as err:
        raise DataError(f"{key('lengths')} {shortest[0]}: {err}") from None


_PPL_DOCS: dict[tuple, list[list[int]]] = {}


def ppl_documents(tokenizer, source: str) -> list[list[int]]:
    """The token ids (no special tokens) of every ``source`` document, tokenised once per
    (source, tokenizer) in a process: an eval stage's preflight and its ppl task share them."""
    key = (source, getattr(tokenizer, "name_or_path", None), len(tokenizer), id(tokenizer))
    if key not in _PPL_DOCS:
        _PPL_DOCS.clear()  # one corpus at a time: a folder of books can be large
        _PPL_DOCS[key] = [tokenizer.encode(t, add_special_tokens=False) for t in read_documents(source)]
    return _PPL_DOCS[key]


def run_ppl(model, tokenizer, s: EvalSettings) -> dict:
    docs = ppl_documents(tokenizer, s.ppl_data)
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
        records = read_qa_records(s.qa_data)
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
