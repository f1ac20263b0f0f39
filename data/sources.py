"""Where documents come from: a Hugging Face dataset, local files, or an offline demo corpus.

A source is plain config data (a recipe's ``source:`` block) with a ``kind`` picked from
the explicit registry :data:`SOURCE_KINDS`:

- ``hf``: ``datasets.load_dataset(name, config, split=..., streaming=...)``; streaming
  needs ``max_documents`` (the first N are materialised so tokenisation can be cached);
- ``local``: a ``.txt`` file (one document), a ``.jsonl`` file (one document per line,
  ``text_field``), a ``.parquet`` file (column ``text_field``), or a directory of them;
  read by this module so errors can name the file and line (works offline);
- ``demo``: a named offline corpus (:mod:`data.corpus`), e.g. ``{kind: demo, name: kjv}``.

Every loader returns a ``datasets.Dataset`` with a ``text`` column. Bad input raises one
:class:`DataError` line naming the file/field; empty documents are skipped and the count is
logged, never dropped silently.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import datasets

from longctx.data.corpus import load_demo_corpus
from longctx.data.errors import DataError

logger = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")


def _check_keys(cfg: Mapping, kind: str, required: set[str], optional: set[str]) -> None:
    allowed = required | optional | {"kind"}
    for key in cfg:
        if key not in allowed:
            near = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; expected one of {sorted(allowed)}"
            raise DataError(f"source ({kind}): unknown key {key!r}{hint}")
    for key in sorted(required - set(cfg)):
        raise DataError(f"source ({kind}): missing key {key!r}")


def _report_skipped(where: str, skipped: list[str]) -> None:
    if skipped:
        shown = ", ".join(skipped[:5]) + (" …" if len(skipped) > 5 else "")
        logger.warning("%s: skipped %d empty documents (%s)", where, len(skipped), shown)


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{where}: byte {err.start}: not valid UTF-8 ({err.reason}); expected UTF-8 text"
        ) from None


def _read_txt(path: Path, text_field: str) -> tuple[list[str], list[str]]:
    text = _decode(path.read_bytes(), str(path))
    if not text.strip():
        raise DataError(f"{path}: empty file; expected text (one document per .txt file)")
    return [text], []


def _jsonl_text(line: bytes, where: str, text_field: str) -> str | None:
    try:
        record = json.loads(_decode(line, where))
    except json.JSONDecodeError as err:
        raise DataError(
            f"{where}: invalid JSON ({err.msg} at column {err.colno}); expected one object per line"
        ) from None
    if not isinstance(record, dict):
        raise DataError(
            f"{where}: a JSON {type(record).__name__}; expected an object with field {text_field!r}"
        )
    if text_field not in record:
        found = ", ".join(f'"{k}"' for k in list(record)[:8])
        raise DataError(f'{where}: no field "{text_field}" (found: {found}); set text_field')
    text = record[text_field]
    if text is not None and not isinstance(text, str):
        raise DataError(f'{where}: field "{text_field}" is a {type(text).__name__}; expected a string')
    return text


def _read_jsonl(path: Path, text_field: str) -> tuple[list[str], list[str]]:
    docs, skipped = [], []
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            text = _jsonl_text(line, f"{path} line {number}", text_field)
            if text and text.strip():
                docs.append(text)
            else:
                skipped.append(f"line {number}")
    if not docs and not skipped:
        raise DataError(f"{path}: empty file; expected one JSON object per line with field {text_field!r}")
    return docs, skipped


def _read_parquet(path: Path, text_field: str) -> tuple[list[str], list[str]]:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as err:  # pyarrow raises several types for a non-parquet file
        raise DataError(f"{path}: not a readable parquet file ({err}); expected parquet") from None
    if text_field not in schema.names:
        found = ", ".join(f'"{n}"' for n in schema.names[:8])
        raise DataError(f'{path}: no column "{text_field}" (found: {found}); set text_field')
    values = pq.read_table(path, columns=[text_field]).column(text_field).to_pylist()
    if not values:
        raise DataError(f"{path}: empty file (0 rows); expected rows with column {text_field!r}")
    docs, skipped = [], []
    for row, text in enumerate(values):
        if text is not None and not isinstance(text, str):
            raise DataError(
                f'{path} row {row}: column "{text_field}" holds {type(text).__name__}; expected strings'
            )
        (docs.append(text) if text and text.strip() else skipped.append(f"row {row}"))
    return docs, skipped


_READERS: dict[str, Callable[[Path, str], tuple[list[str], list[str]]]] = {
    ".txt": _read_txt,
    ".jsonl": _read_jsonl,
    ".parquet": _read_parquet,
}


def _local_files(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(f"source (local): path {path} does not exist")
    if path.is_file():
        if path.suffix not in _READERS:
            raise DataError(f"{path}: unsupported suffix {path.suffix!r}; expected one of {LOCAL_SUFFIXES}")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _READERS)
    if not files:
        raise DataError(f"{path}: directory holds no {'/'.join(LOCAL_SUFFIXES)} files")
    return files


def _load_local(cfg: Mapping) -> datasets.Dataset:
    _check_keys(cfg, "local", {"path"}, {"text_field"})
    text_field = cfg.get("text_field", "text")
    docs: list[str] = []
    for path in _local_files(Path(cfg["path"])):
        found, skipped = _READERS[path.suffix](path, text_field)
        _report_skipped(str(path), skipped)
        docs.extend(found)
    if not docs:
        raise DataError(f"{cfg['path']}: every document is empty; expected non-empty field {text_field!r}")
    return datasets.Dataset.from_dict({"text": docs})


def _texts_from(rows, text_field: str, where: str, limit: int | None) -> list[str]:
    docs, skipped = [], []
    for index, row in enumerate(rows):
        if limit is not None and len(docs) >= limit:
            break
        if text_field not in row:
            found = ", ".join(f'"{k}"' for k in list(row)[:8])
            raise DataError(f'{where} row {index}: no field "{text_field}" (found: {found}); set text_field')
        text = row[text_field]
        (docs.append(text) if isinstance(text, str) and text.strip() else skipped.append(f"row {index}"))
    _report_skipped(where, skipped)
    return docs


def _load_hf(cfg: Mapping) -> datasets.Dataset:
    _check_keys(
        cfg, "hf", {"name"}, {"config", "split", "streaming", "text_field", "max_documents", "data_files"}
    )
    split, text_field = cfg.get("split", "train"), cfg.get("text_field", "text")
    where = f"hf dataset {cfg['name']}" + (f"/{cfg['config']}" if cfg.get("config") else "") + f"[{split}]"
    if cfg.get("streaming") and not cfg.get("max_documents"):
        raise DataError(f"{where}: streaming needs max_documents (how many documents to take)")
    try:
        ds = datasets.load_dataset(
            cfg["name"], cfg.get("config"), split=split, streaming=bool(cfg.get("streaming")),
            data_files=cfg.get("data_files"),
        )  # fmt: skip
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        raise DataError(f"{where}: cannot load ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if cfg.get("streaming"):
        docs = _texts_from(ds, text_field, where, cfg["max_documents"])
        if not docs:
            raise DataError(f"{where}: no non-empty documents in field {text_field!r}")
        return datasets.Dataset.from_dict({"text": docs})
    return _select_text(ds, text_field, where, cfg.get("max_documents"))


def _select_text(ds: datasets.Dataset, text_field: str, where: str, limit: int | None) -> datasets.Dataset:
    """Keep only the (renamed) text column of a map-style dataset, without reading it into memory."""
    if text_field not in ds.column_names:
        found = ", ".join(f'"{n}"' for n in ds.column_names[:8])
        raise DataError(f'{where}: no column "{text_field}" (found: {found}); set text_field')
    ds = ds.select_columns([text_field])
    if text_field != "text":
        ds = ds.rename_column(text_field, "text")
    before = len(ds)
    ds = ds.filter(lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True)
    if before - len(ds):
        logger.warning("%s: skipped %d empty documents", where, before - len(ds))
    if not len(ds):
        raise DataError(f"{where}: no non-empty documents in field {text_field!r}")
    return ds.select(range(min(limit, len(ds)))) if limit else ds


def _load_demo(cfg: Mapping) -> datasets.Dataset:
    _check_keys(cfg, "demo", {"name"}, set())
    return datasets.Dataset.from_dict({"text": load_demo_corpus(cfg["name"])})


SOURCE_KINDS: dict[str, Callable[[Mapping], datasets.Dataset]] = {
    "hf": _load_hf,
    "local": _load_local,
    "demo": _load_demo,
}
"""Registry of source kinds; a recipe's ``source.kind`` picks one."""


def load_documents(source_cfg: Mapping) -> datasets.Dataset:
    """Load the documents a source config names, as a ``Dataset`` with a ``text`` column."""
    kind = source_cfg.get("kind")
    if kind not in SOURCE_KINDS:
        raise DataError(f"source.kind: {kind!r}; expected one of {sorted(SOURCE_KINDS)}")
    return SOURCE_KINDS[kind](source_cfg)
