"""SDPA per document (train.attention.SEGMENTS) equals the masked packed path, with no mask built."""

from __future__ import annotations

import pytest
import torch

from longctx.data.packing import collate_rows, pack_documents
from longctx.train.attention import SEGMENTS, segment_attention, supports_segments
from longctx.train.loop import model_inputs
from tests.tiny import tiny_config, tiny_model


def _batch(lengths, row_length=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(3, 128, (n,), generator=g).tolist() for n in lengths]
    return docs, collate_rows(list(pack_documents(docs, row_length=row_length, pad_id=0)))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_segments_loss_and_gradients_equal_the_masked_path(arch):
    model = tiny_model(tiny_config(arch, attn_implementation="sdpa")).train()
    _, batch = _batch((10, 17, 5, 30, 17, 9, 20, 3))
    masked = model_inputs(batch, varlen=False)
    assert "attention_mask" in masked  # several documents per row: the dense-mask path
    ref = model(**masked).loss
    ref.backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with segment_attention(model):
        assert model.config._attn_implementation == SEGMENTS
        loss = model(**model_inputs(batch, varlen=True)).loss
        loss.backward()
    assert model.config._attn_implementation == "sdpa"  # restored
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    for p, g in zip(model.parameters(), ref_grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)


def test_segments_logits_equal_each_document_alone():
    model = tiny_model(tiny_config("llama", attn_implementation="sdpa"))
    _, batch = _batch((12, 12, 7, 25, 12), row_length=40, seed=1)  # equal lengths share a call
    ids, rows = batch["input_ids"].reshape(-1), batch["doc_ids"]
    # a document's tokens in the flattened batch: same row, same doc id (padding is -1)
    flat_doc = (rows + (rows.max() + 1) * torch.arange(len(rows))[:, None]).reshape(-1)
    flat_doc[rows.reshape(-1) < 0] = -1
    with torch.no_grad(), segment_attention(model):
        inputs = {k: v for k, v in model_inputs(batch, varlen=True).items() if k != "labels"}
        flat = model(**inputs).logits[0]  # [batch*seq, vocab]
        docs = [d for d in flat_doc.unique().tolist() if d >= 0]
        assert len(docs) >= 5
        for d in docs:
            where = (flat_doc == d).nonzero().reshape(-1)
            alone = model(input_ids=ids[where][None]).logits[0]
            torch.testing.assert_close(flat[where], alone, rtol=1e-5, atol=1e-5)


def test_without_cu_seq_lens_it_is_plain_sdpa():
    model = tiny_model(tiny_config("llama", attn_implementation="sdpa"))
    ids = torch.randint(3, 128, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        with segment_attention(model):
            got = model(input_ids=ids).logits
    torch.testing.assert_close(got, ref)
    assert supports_segments(model)


def test_one_document_row_equals_plain_causal_sdpa():
    """The one-piece case (views, no concatenation) gives the plain causal loss and gradients."""
    model = tiny_model(tiny_config("llama", attn_implementation="sdpa")).train()
    docs, batch = _batch((32,), row_length=32, seed=3)
    ids = torch.tensor(docs)
    ref = model(input_ids=ids, labels=ids).loss
    ref.backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with segment_attention(model):
        loss = model(**model_inputs(batch, varlen=True)).loss
        loss.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    for p, g in zip(model.parameters(), ref_grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)


def test_auto_attention_is_flash_only_where_cuda_and_flash_attn_are_present(monkeypatch):
    import importlib.util

    import torch

    from longctx.train.attention import attention_implementation

    real_find = importlib.util.find_spec
    for cuda, flash, want in (
        (True, True, "flash_attention_2"),
        (True, False, "sdpa"),
        (False, True, "sdpa"),
    ):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda name, *a, flash=flash: (
                (object() if flash else None) if name == "flash_attn" else real_find(name, *a)
            ),
        )
        assert attention_implementation("auto") == want, (cuda, flash)
    assert attention_implementation("flash") == "flash_attention_2"
    assert attention_implementation("eager") == "eager"
