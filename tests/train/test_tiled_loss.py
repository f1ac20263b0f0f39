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
