"""The causal-LM loss without a ``[tokens, vocab]`` logits tensor, where liger's fused linear
cross-entropy cannot run: under DeepSpeed ZeRO-3 (liger reads ``lm_head.weight`` by attribute and
would see ZeRO-3's empty shard) and under Ulysses sequence parallelism (the loop computes the
shard's loss itself).

The model body runs to its last hidden state; DeepSpeed's ``TiledFusedLogitsLoss`` (ALST,
``deepspeed.runtime.sequence_parallel.ulysses_sp``) then calls ``lm_head`` as a module on one
slice of the tokens at a time — so ZeRO-3's hooks gather the head's weight for each call — takes
each slice's summed cross-entropy and its gradient at once, and keeps only the hidden-state
gradient: the logits alive at any moment are ``tokens / shards × vocab`` (``LOGITS_PER_SHARD``
entries, 1 GiB of fp32 at most) instead of ``tokens × vocab`` (63 GiB at 128k for Llama-3's
128k vocabulary). Without DeepSpeed installed the same slices run through plain autograd (the
CPU test of equality with the model's own loss).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from longctx.data.samples import IGNORE_INDEX

LOGITS_PER_SHARD = 1 << 28
"""Most logits entries one slice materialises (fp32: 1 GiB)."""


def shards_for(tokens: int, vocab: int) -> int:
    return max(1, math.ceil(tokens * vocab / LOGITS_PER_SHARD))


def _slice_loss(head: torch.nn.Module, hidden: torch.Tensor, shifted: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()  # [tokens / shards, vocab]: one slice only
    return F.cross_entropy(
        logits.view(-1, logits.shape[-1]), shifted.view(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def tiled_loss_sum(
    head: torch.nn.Module, hidden: torch.Tensor, shifted: torch.Tensor, shards: int | None = None
):
    """Σ token losses of ``hidden`` [batch, seq, h] against ``shifted`` [batch, seq] (labels already
    shifted: position i predicts ``shifted[i]``), ``shards`` slices of the tokens at a time."""
    shards = shards or shards_for(hidden.shape[0] * hidden.shape[1], head.weight.shape[0])
    try:
        from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledFusedLogitsLoss
    except ImportError:
        TiledFusedLogitsLoss = None
    if TiledFusedLogitsLoss is None or not hidden.requires_grad:
        parts = zip(
            torch.chunk(hidden.reshape(-1, hidden.shape[-1]), shards),
            torch.chunk(shifted.reshape(-1), shards),
        )
        return sum(_slice_loss(head, h, y) for h, y in parts)
    params = [p for p in head.parameters() if p.requires_grad]
    return TiledFusedLogitsLoss.apply(_slice_loss, head, hidden, shifted, None, shards, params, "sum")


def causal_lm_loss_sum(
    model: torch.nn.Module, inputs: dict, shards: int | None = None
) -> tuple[torch.Tensor, int]:
    """(Σ token losses, tokens counted) of a causal LM on ``inputs`` (``input_ids``, ``labels``,
    ``position_ids`` and attention kwargs), through its body and ``lm_head`` — transformers'
    loss (shift by one, ignore -100) without the full logits."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: the adapted LM
    hidden = lm.model(**inputs).last_hidden_state  # [batch, seq, h]
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].to(hidden.device)
    return tiled_loss_sum(lm.lm_head, hidden, shifted, shards), int((shifted != IGNORE_INDEX).sum())
