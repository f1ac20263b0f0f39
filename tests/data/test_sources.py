"""Sources: local files, HF builders offline, demo corpora — and one clear error per bad input."""

from __future__ import annotations

import json
import logging
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longctx.data.corpus import load_demo_corpus
from longctx.data.errors import DataError
from longctx.data.sources import load_documents


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_offline_env_is_set():
    assert os.environ.get("HF_DATASETS_OFFLINE") == "1"


def test_txt_directory_one_document_per_file_in_name_order(tmp_path):
    (tmp_path / "b.txt").write_text("second document")
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "ignored.md").write_text("not a source file")
    ds = load_documents({"kind": "local", "path": str(tmp_path)})
    assert ds["text"] == ["first document", "second document"]


def test_jsonl_with_text_field_and_parquet(tmp_path):
    _jsonl(tmp_path / "a.jsonl", [{"content": "alpha", "id": 1}, {"content": "beta", "id": 2}])
    table = pa.table({"body": ["gamma", "delta"], "n": [1, 2]})
    pq.write_table(table, tmp_path / "b.parquet")
    ds = load_documents({"kind": "local", "path": str(tmp_path / "a.jsonl"), "text_field": "content"})
    assert ds["text"] == ["alpha", "beta"]
    ds = load_documents({"kind": "local", "path": str(tmp_path / "b.parquet"), "text_field": "body"})
    assert ds["text"] == ["gamma", "delta"]


def test_hf_builder_by_name_works_offline(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "one"}, {"text": ""}, {"text": "three"}])
    cfg = {"kind": "hf", "name": "json", "data_files": str(path), "split": "train"}
    assert load_documents(cfg)["text"] == ["one", "three"]
    streamed = load_documents({**cfg, "streaming": True, "max_documents": 1})
    assert streamed["text"] == ["one"]


def test_empty_file_names_the_file(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match=r"empty\.txt: empty file"):
        load_documents({"kind": "local", "path": str(tmp_path)})


def test_undecodable_bytes_name_file_and_offset(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"good text \xff\xfe more")
    with pytest.raises(DataError, match=r"bad\.txt: byte 10: not valid UTF-8"):
        load_documents({"kind": "local", "path": str(tmp_path / "bad.txt")})


def test_jsonl_without_text_field_names_line_and_found_fields(tmp_path):
    path = _jsonl(tmp_path / "x.jsonl", [{"text": "ok"}, {"content": "no", "id": 3}])
    with pytest.raises(DataError) as err:
        load_documents({"kind": "local", "path": str(path)})
    message = str(err.value)
    assert "x.jsonl line 2" in message and 'no field "text"' in message and '"content"' in message
    assert "\n" not in message


def test_parquet_without_column_names_columns(tmp_path):
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r'p\.parquet: no column "text" \(found: "body"\)'):
        load_documents({"kind": "local", "path": str(tmp_path / "p.parquet")})


def test_empty_documents_are_counted_not_silently_dropped(tmp_path, caplog):
    path = _jsonl(tmp_path / "m.jsonl", [{"text": "a"}, {"text": ""}, {"text": "  "}, {"text": "b"}])
    with caplog.at_level(logging.WARNING, logger="longctx.data.sources"):
        ds = load_documents({"kind": "local", "path": str(path)})
    assert ds["text"] == ["a", "b"]
    assert "skipped 2 empty documents" in caplog.text and "line 2" in caplog.text


def test_unknown_key_and_kind_suggest_the_fix(tmp_path):
    with pytest.raises(DataError, match="did you mean 'text_field'"):
        load_documents({"kind": "local", "path": str(tmp_path), "text_feild": "x"})
    with pytest.raises(DataError, match="expected one of"):
        load_documents({"kind": "s3"})


def test_demo_kjv_is_66_books_in_canonical_order():
    ds = load_documents({"kind": "demo", "name": "kjv"})
    assert len(ds) == 66
    assert ds[0]["text"].startswith("The First Book of Moses, called Genesis")
    assert "In the beginning God created the heaven" in ds[0]["text"][:200]
    assert "Revelation" in ds[65]["text"][:100]
    assert "1:1" not in ds[0]["text"][:500]  # verse references stripped


def test_demo_kjv_split_partitions_the_books_three_ways():
    """kjv_train, kjv_validation and kjv_heldout share no book and together are the whole corpus."""
    full = load_demo_corpus("kjv")
    train, val, held = (load_demo_corpus(f"kjv_{n}") for n in ("train", "validation", "heldout"))
    assert (len(train), len(val), len(held)) == (54, 6, 6)
    assert held[0].startswith("The Gospel According to Saint Matthew")
    assert held[-1].startswith("The Epistle of Paul the Apostle to the Romans")
    assert val[0].startswith("The First Epistle of Paul the Apostle to the Corinthians")
    assert not set(train) & set(held) and not set(train) & set(val) and not set(val) & set(held)
    assert sorted(train + val + held) == sorted(full)
    assert train[0] == full[0] and train[-1] == full[-1]  # order kept


def test_demo_python_stdlib_is_long_real_source():
    docs = load_demo_corpus("python_stdlib")
    assert len(docs) > 10
    assert max(map(len, docs)) > 100_000
    assert any("def " in d and "# file: " in d for d in docs)


def test_unknown_demo_corpus():
    with pytest.raises(DataError, match="unknown; expected one of"):
        load_demo_corpus("shakespeare")
