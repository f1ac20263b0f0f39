"""The loop's forward inputs keep packed documents apart (eager and SDPA)."""

from __future__ import annotations

import pytest
import torch

from longctx.data.packing import collate_rows, pack_documents
from longctx.train.loop import model_inputs
from tests.tiny import tiny_config, tiny_model


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_row_logits_equal_each_document_alone(attn):
    model = tiny_model(tiny_config("llama", attn_implementation=attn))
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (10, 17, 5)]
    rows = list(pack_documents(docs, row_length=32, pad_id=0))
    batch = collate_rows(rows[:1])
    inputs = model_inputs(batch, varlen=False)
    with torch.no_grad():
        packed = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits[0]
        start = 0
        for doc in docs:
            alone = model(input_ids=torch.tensor([doc])).logits[0]
            torch.testing.assert_close(packed[start : start + len(doc)], alone, rtol=1e-5, atol=1e-5)
            start += len(doc)


def test_single_document_rows_use_the_causal_fast_path():
    docs = [list(range(3, 40)), list(range(3, 50))]
    rows = list(pack_documents(docs, row_length=64, pad_id=0, overflow="pad"))
    batch = collate_rows(rows)
    assert "attention_mask" not in model_inputs(batch, varlen=False)
    mixed = collate_rows(list(pack_documents([docs[0][:20], docs[1][:20]], row_length=64, pad_id=0)))
    assert "attention_mask" in model_inputs(mixed, varlen=False)
