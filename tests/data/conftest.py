"""Shared data fixtures: one small demo tokenizer and the tokenised KJV, built once per session."""

from __future__ import annotations

import pytest

from longctx.data.sources import load_documents
from longctx.data.tokenize import tokenize_documents
from longctx.data.tokenizer import train_demo_tokenizer

TEST_VOCAB = 512
"""Small vocab: trains in ~2 s and keeps the tiny test models small."""


@pytest.fixture(scope="session")
def demo_tokenizer(tmp_path_factory):
    return train_demo_tokenizer(tmp_path_factory.mktemp("tokenizer") / "kjv-512", vocab_size=TEST_VOCAB)


@pytest.fixture(scope="session")
def kjv_tokens(demo_tokenizer, tmp_path_factory):
    """The 66 KJV books tokenised (BOS … EOS), cached under a session temp dir."""
    docs = load_documents({"kind": "demo", "name": "kjv"})
    return tokenize_documents(docs, demo_tokenizer, cache_dir=tmp_path_factory.mktemp("tokcache"))


@pytest.fixture(scope="session")
def kjv_lists(kjv_tokens):
    """Token ids of each book as plain lists (fast random access in tests)."""
    return kjv_tokens["input_ids"]
