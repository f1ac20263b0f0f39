"""The tiled loss (ZeRO-3, Ulysses): transformers' causal-LM loss and gradients, without the full
logits, also through a LoRA model and with tied embeddings (the case DeepSpeed's own tiled loss
breaks under ZeRO-3)."""

from __future__ import annotations

import pytest
import torch

from longctx.train import tiled_loss
from longctx.train.tiled_loss import causal_lm_loss_sum, shards_for
from tests.tiny import tiny_config, tiny_model


def _grads(model) -> dict:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("tied", [False, True])
def test_tiled_loss_equals_the_models_own(tied):
    model = tiny_model(tiny_config(attn_implementation="sdpa", tie_word_embeddings=tied)).train()
    ids = torch.randint(3, 128, (2, 33), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[1, 20:] = -100
    plain = model(input_ids=ids, labels=labels, num_items_in_batch=torch.tensor(1.0)).loss
    plain.backward()
    want = _grads(model)
    total, counted = causal_lm_loss_sum(model, {"input_ids": ids, "labels": labels}, shards=5)
    total.backward()
    got = _grads(model)
    assert counted == 32 + 19
    torch.testing.assert_close(total, plain, rtol=1e-6, atol=1e-4)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)


def test_tiled_loss_through_a_lora_model():
    from longctx.train.lora import wrap_lora
    from longctx.train.schema import LoraCfg

    model = wrap_lora(tiny_model(tiny_config(attn_implementation="sdpa")), LoraCfg(r=4), seed=0).train()
    ids = torch.randint(3, 128, (1, 17), generator=torch.Generator().manual_seed(1))
    plain = model(input_ids=ids, labels=ids, num_items_in_batch=torch.tensor(1.0)).loss
    total, _ = causal_lm_loss_sum(model, {"input_ids": ids, "labels": ids}, shards=3)
    torch.testing.assert_close(total, plain, rtol=1e-6, atol=1e-4)


def test_shards_bound_the_logits_alive():
    assert shards_for(131072, 128256) == 63  # Llama-3 at 128k: 63 slices of ≤ 2^28 logits
    assert shards_for(100, 128) == 1
    assert 131072 * 128256 / shards_for(131072, 128256) <= tiled_loss.LOGITS_PER_SHARD


class _PartitionedHead(torch.nn.Module):
    """An ``lm_head`` as ZeRO-3 leaves it between gathers: ``.weight`` an empty partition with
    ``ds_shape``; the forward still computes the full projection (ZeRO-3's hook gathers it)."""

    def __init__(self, hidden: int, vocab: int):
        super().__init__()
        self.out_features = vocab
        self.full = torch.nn.Parameter(torch.randn(vocab, hidden) * 0.1)
        self.weight = torch.empty(0)
        self.weight.ds_shape = torch.Size([vocab, hidden])

    def forward(self, x):
        return x @ self.full.T


def test_a_partitioned_head_still_gives_several_slices(monkeypatch):
    """Before: ``shards_for(..., head.weight.shape[0])`` read 0 from ZeRO-3's partition and took
    one slice of full logits (~25-34 GB at 128k for Llama-3's vocabulary)."""
    monkeypatch.setattr(tiled_loss, "LOGITS_PER_SHARD", 64 * 100)
    head, calls = _PartitionedHead(8, 1000), []
    head.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    hidden, labels = torch.randn(2, 32, 8), torch.randint(0, 1000, (2, 32))
    total = tiled_loss.tiled_loss_sum(head, hidden, labels)
    assert calls == [7] * 9 + [1]  # 64 tokens x 1000 logits in slices of <= 6400
    ref = torch.nn.functional.cross_entropy(head(hidden.view(-1, 8)), labels.view(-1), reduction="sum")
    torch.testing.assert_close(total, ref)
    assert tiled_loss.vocab_of(head) == 1000
    head.out_features = None  # a head without out_features: ZeRO-3's ds_shape
    assert tiled_loss.vocab_of(head) == 1000
