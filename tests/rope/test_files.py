"""rope.files.read_jsonl: the append-only logs' reader (search sweeps, benchmark memos)."""

from __future__ import annotations

from longctx.rope.files import append_line, read_jsonl


def test_torn_and_unparsed_lines_are_dropped_and_repaired_only_when_asked(tmp_path):
    path = tmp_path / "log.jsonl"
    assert read_jsonl(path, dict, repair=True) == [] and not path.exists()
    text = '{"k": 1}\n{"k": 2, "v\n{"other": 3}\n{"k": 4}\n{"k": 5, "v'  # torn middle, no key, torn end
    path.write_text(text)
    assert read_jsonl(path, lambda r: r["k"], repair=False) == [1, 4]
    assert path.read_text() == text  # a reader that does not append leaves the file alone
    assert read_jsonl(path, lambda r: r["k"], repair=True) == [1, 4]
    assert path.read_text() == '{"k": 1}\n{"k": 4}\n'
    append_line(path, '{"k": 6}')  # the next entry starts a line of its own
    assert read_jsonl(path, lambda r: r["k"], repair=True) == [1, 4, 6]
