"""Tokenisation: BOS/EOS per document, counts kept, on-disk cache reused, long-document selection."""

from __future__ import annotations

import datasets
import pytest

from longctx.data.errors import DataError
from longctx.data.tokenize import select_long_documents, tokenize_documents


def _docs(*texts):
    return datasets.Dataset.from_dict({"text": list(texts)})


def test_each_document_wrapped_in_bos_eos_with_counts(demo_tokenizer, tmp_path):
    texts = ("And God said, Let there be light.", "Jesus wept.")
    out = tokenize_documents(_docs(*texts), demo_tokenizer, cache_dir=tmp_path)
    for text, row in zip(texts, out):
        ids = row["input_ids"]
        assert ids[0] == demo_tokenizer.bos_token_id and ids[-1] == demo_tokenizer.eos_token_id
        assert row["num_tokens"] == len(ids)
        assert demo_tokenizer.decode(ids[1:-1]) == text


def test_no_bos_when_disabled(demo_tokenizer, tmp_path):
    out = tokenize_documents(_docs("abc"), demo_tokenizer, cache_dir=tmp_path, add_bos=False)
    assert out[0]["input_ids"][0] != demo_tokenizer.bos_token_id


def test_rerun_loads_cache_without_tokenising(demo_tokenizer, tmp_path, monkeypatch):
    ds = _docs("In the beginning", "was the Word")
    first = tokenize_documents(ds, demo_tokenizer, cache_dir=tmp_path)

    def no_map(*args, **kwargs):
        raise AssertionError("re-tokenised despite a cache hit")

    monkeypatch.setattr(datasets.Dataset, "map", no_map)
    again = tokenize_documents(_docs("In the beginning", "was the Word"), demo_tokenizer, cache_dir=tmp_path)
    assert again["input_ids"] == first["input_ids"]
    with pytest.raises(AssertionError, match="re-tokenised"):  # other data → other key
        tokenize_documents(_docs("different text"), demo_tokenizer, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="re-tokenised"):  # other EOS choice → other key
        tokenize_documents(ds, demo_tokenizer, cache_dir=tmp_path, add_eos=False)


def test_num_proc_gives_the_same_ids(demo_tokenizer, tmp_path):
    ds = _docs(*(f"verse {i} of the chapter" for i in range(8)))
    one = tokenize_documents(ds, demo_tokenizer, num_proc=1, cache_dir=tmp_path / "a")
    two = tokenize_documents(ds, demo_tokenizer, num_proc=2, cache_dir=tmp_path / "b")
    assert one["input_ids"] == two["input_ids"]


def test_select_long_documents_keeps_order_and_threshold(kjv_tokens):
    picked = select_long_documents(kjv_tokens, 20_000, 3)
    lengths = kjv_tokens["num_tokens"]
    expected = [i for i, n in enumerate(lengths) if n >= 20_000][:3]
    assert picked["num_tokens"] == [lengths[i] for i in expected]


def test_too_few_long_documents_says_how_many_and_lengths(kjv_tokens):
    longest = max(kjv_tokens["num_tokens"])
    with pytest.raises(DataError) as err:
        select_long_documents(kjv_tokens, longest, 2)
    message = str(err.value)
    assert f"need 2 documents of ≥ {longest} tokens, found 1 among 66" in message
    assert str(longest) in message.split("longest:")[1]
