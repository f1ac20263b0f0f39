"""Crash-safe files: a kill leaves the old content or the new one, never half of either."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temp file beside ``path``, then ``os.replace`` it (no temp left behind)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line and fsync it: a log entry is on disk before the next one is computed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike, parse: Callable[[Any], Any], *, repair: bool) -> list:
    """``parse(record)`` of every line of an append-only JSON-lines log that reads as JSON and
    that ``parse`` accepts (``ValueError`` / ``KeyError`` / ``TypeError`` drop the line). With
    ``repair``, a log that had such a line — a write torn by a kill — or lacks its last newline is
    rewritten atomically with the kept lines, so the next :func:`append_line` starts a line of its
    own. A missing file reads as empty."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    kept, out = [], []
    for line in text.splitlines():
        try:
            out.append(parse(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue
        kept.append(line)
    if repair and text and (not text.endswith("\n") or len(kept) != len(text.splitlines())):
        write_text_atomic(path, "".join(f"{line}\n" for line in kept))
    return out
