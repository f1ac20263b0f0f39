"""Packing: documents never see each other, labels never cross a boundary, positions restart.

The strongest check is the model itself: a tiny Llama's logits for a packed row equal the
logits of each document run alone, for every attention route (4D float mask with eager,
4D bool mask with SDPA, position ids alone, flex BlockMask).
"""

from __future__ import annotations

import random

import pytest
import torch

from longctx.data.errors import DataError
from longctx.data.packing import (
    PAD_DOC_ID,
    PackingStats,
    attention_mask_4d,
    collate_rows,
    flash_varlen_kwargs,
    pack_documents,
)
from longctx.data.samples import IGNORE_INDEX
from tests.tiny import tiny_config, tiny_model


def _random_docs(kjv_lists, n: int, max_len: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        book = kjv_lists[rng.randrange(len(kjv_lists))]
        length = rng.randint(1, max_len)
        start = rng.randrange(len(book) - length)
        docs.append(book[start : start + length])
    return docs


@pytest.mark.parametrize("overflow", ["split", "pad"])
def test_rows_keep_documents_apart(kjv_lists, overflow):
    docs = _random_docs(kjv_lists, 60, 90)
    rows = list(pack_documents(docs, 64, overflow=overflow))
    batch = collate_rows(rows)
    mask = attention_mask_4d(batch["doc_ids"], torch.bool)[:, 0]  # [batch, seq, seq]
    doc = batch["doc_ids"]  # [batch, seq]
    same = doc[:, :, None] == doc[:, None, :]
    assert not (mask & ~same).any(), "a position attends to another document"
    assert not mask.triu(1).any(), "a position attends to the future"
    assert (mask == (same & torch.ones(64, 64, dtype=torch.bool).tril())).all()
    for row in rows:
        assert len(row.input_ids) == 64 and sum(row.seq_lens) == 64
        for t in range(63):  # the logit at t is trained on labels[t + 1]
            if row.labels[t + 1] != IGNORE_INDEX:
                assert row.doc_ids[t] == row.doc_ids[t + 1] != PAD_DOC_ID
        starts = [0] + [t for t in range(1, 64) if row.doc_ids[t] != row.doc_ids[t - 1]]
        assert [row.position_ids[t] for t in starts] == [0] * len(starts)
        assert all(row.labels[t] == IGNORE_INDEX for t in starts)
    # cu_seq_lens boundaries are exactly the document changes of the flattened batch
    flat = doc.reshape(-1)
    changes = (
        [0] + [t for t in range(1, flat.numel()) if flat[t] != flat[t - 1] or t % 64 == 0] + [flat.numel()]
    )
    assert batch["cu_seq_lens"].tolist() == changes and batch["cu_seq_lens"].dtype == torch.int32


def test_split_mode_loses_no_token_and_keeps_order(kjv_lists):
    docs = _random_docs(kjv_lists, 40, 150, seed=1)
    stats = PackingStats()
    rows = list(pack_documents(docs, 64, stats=stats))
    real = [t for r in rows for t, d in zip(r.input_ids, r.doc_ids) if d != PAD_DOC_ID]
    assert real == [t for d in docs for t in d]
    assert stats.tokens == len(real) and stats.pad_tokens == 64 * len(rows) - len(real) < 64


def test_pad_mode_keeps_short_documents_whole_and_counts_truncation(kjv_lists):
    docs = _random_docs(kjv_lists, 40, 100, seed=2)
    stats = PackingStats()
    rows = list(pack_documents(docs, 64, overflow="pad", long_docs="truncate", stats=stats))
    for index, ids in enumerate(docs):
        holders = [r for r in rows if index in r.doc_ids]
        assert len(holders) == 1
        assert [t for t, d in zip(holders[0].input_ids, holders[0].doc_ids) if d == index] == ids[:64]
    assert stats.truncated_tokens == sum(max(0, len(d) - 64) for d in docs)
    assert stats.truncated_documents == sum(len(d) > 64 for d in docs)


def test_empty_document_is_an_error():
    with pytest.raises(DataError, match="document 1 is empty"):
        list(pack_documents([[1, 2], [], [3]], 8))


def _check_against_alone(model, batch, rows, logits):
    for i, row in enumerate(rows):
        offset = 0
        for n in row.seq_lens:
            if row.doc_ids[offset] != PAD_DOC_ID:
                alone = model(input_ids=batch["input_ids"][i : i + 1, offset : offset + n]).logits
                torch.testing.assert_close(logits[i, offset : offset + n], alone[0], atol=1e-5, rtol=0)
            offset += n


@pytest.mark.parametrize(
    "route", ["eager_float4d", "sdpa_bool4d", "sdpa_position_ids", "flash_flat_position_ids"]
)
def test_packed_logits_equal_each_document_alone(kjv_lists, demo_tokenizer, route):
    model = tiny_model(tiny_config(vocab_size=len(demo_tokenizer), max_position_embeddings=128))
    model.config._attn_implementation = "eager" if route.startswith("eager") else "sdpa"
    rows = list(pack_documents(_random_docs(kjv_lists, 9, 50, seed=3), 96, overflow="pad"))
    batch = collate_rows(rows)
    with torch.no_grad():
        if route == "eager_float4d":
            mask = attention_mask_4d(batch["doc_ids"])
            logits = model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask
            ).logits
        elif route == "sdpa_bool4d":
            mask = attention_mask_4d(batch["doc_ids"], torch.bool)
            logits = model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask
            ).logits
        elif route == "sdpa_position_ids":
            # transformers finds packed documents from position ids only without a KV cache
            logits = model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
            ).logits
        else:
            flat = flash_varlen_kwargs(batch)
            assert flat["input_ids"].shape == (1, batch["input_ids"].numel())
            out = model(
                input_ids=flat["input_ids"], position_ids=flat["position_ids"], use_cache=False
            ).logits
            logits = out.reshape(*batch["input_ids"].shape, -1)
        _check_against_alone(model, batch, rows, logits)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_block_mask_matches_dense_mask(kjv_lists):
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    from longctx.data.packing import flex_block_mask

    batch = collate_rows(list(pack_documents(_random_docs(kjv_lists, 12, 40, seed=4), 64)))
    q, k, v = torch.randn(3, len(batch["input_ids"]), 2, 64, 8).unbind(0)  # [batch, heads, seq, dim]
    with torch.no_grad():
        out = flex.flex_attention(q, k, v, block_mask=flex_block_mask(batch["doc_ids"], block_size=16))
    dense = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=attention_mask_4d(batch["doc_ids"], torch.bool)
    )
    torch.testing.assert_close(out, dense, atol=1e-5, rtol=0)
