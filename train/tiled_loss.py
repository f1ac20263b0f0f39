"""The causal-LM loss without a ``[tokens, vocab]`` logits tensor, where liger's fused linear
cross-entropy cannot run: under DeepSpeed ZeRO-3 (liger reads ``lm_head.weight`` by attribute and
would see ZeRO-3's empty shard) and under Ulysses sequence parallelism (the loop computes the
shard's loss itself).

The model body runs to its last hidden state; ``lm_head`` is then called as a module (so ZeRO-3's
hooks gather its weight) on one slice of the tokens at a time, each slice's summed cross-entropy
under non-reentrant activation checkpointing: the forward keeps no logits, the backward recomputes
one slice at a time. The logits alive at any moment are ``tokens / shards × vocab``
(``LOGITS_PER_SHARD`` entries, 1 GiB of fp32 at most) instead of ``tokens × vocab`` (63 GiB at
128k for Llama-3's 128k vocabulary), and every slice's gradient reaches the head's weight in the
one backward pass.

Why not DeepSpeed's ``TiledFusedLogitsLoss`` (ALST): it runs each slice's backward inside its
forward, so the head's weight gets a gradient before the body's backward; with tied embeddings
(the tiny recipe, SmolLM2, Llama-3.2) the same parameter then reaches ZeRO-3's reduce bucket
twice — measured: ``AssertionError`` in ``stage3.__reduce_and_partition_ipg_grads`` (DeepSpeed
0.19.8, 2 gloo processes).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from longctx.data.samples import IGNORE_INDEX
from longctx.train.sequence_parallel import shift_labels

LOGITS_PER_SHARD = 1 << 28
"""Most logits entries one slice materialises (fp32: 1 GiB)."""


def shards_for(tokens: int, vocab: int) -> int:
    """Slices for ``tokens × vocab`` logits; ``LONGCTX_LOGITS_PER_SHARD`` lowers the budget so a
    small model takes several slices too (``train.rehearse``)."""
    budget = int(os.environ.get("LONGCTX_LOGITS_PER_SHARD", LOGITS_PER_SHARD))
    return max(1, math.ceil(tokens * vocab / budget))


def vocab_of(head: torch.nn.Module) -> int:
    """The head's output size. Under ZeRO-3 ``head.weight`` is a partition whose ``.shape`` is
    ``(0,)`` outside a gather: read the module's ``out_features`` (or ZeRO-3's ``ds_shape``)."""
    if getattr(head, "out_features", None):
        return int(head.out_features)
    weight = head.weight
    return int(getattr(weight, "ds_shape", weight.shape)[0])


def through_wrapper(wrapper: torch.nn.Module, module: torch.nn.Module, fn: Callable, *args):
    """``fn(*args)`` run as ``module``'s forward, called through ``wrapper`` (the prepared model:
    a DeepSpeed engine, DDP, or ``module`` itself), so the wrapper's forward bookkeeping runs.

    Why: DeepSpeed ≥ 0.18.5 ZeRO-3 advances its micro-step counter only in
    ``DeepSpeedEngine.forward`` (``clear_backward_seen_flag``) and copies instead of accumulating
    a gradient while it is 0; a loss computed by calling the model's parts directly made every
    micro-batch overwrite the last under gradient accumulation. The engine's forward also
    starts ZeRO-3's prefetch trace (the root module's hooks) and registers its backward hooks.
    The instance's own ``forward`` (accelerate may have set one) is put back afterwards."""
    saved = module.__dict__.get("forward")
    module.forward = fn
    try:
        return wrapper(*args)
    finally:
        if saved is None:
            del module.forward
        else:
            module.forward = saved


@dataclass(frozen=True)
class Teacher:
    """The frozen model a retention term keeps a row close to: its ``lm_head`` and its last
    hidden states on the same tokens, laid out as the student's ([batch, seq, h])."""

    head: torch.nn.Module
    hidden: torch.Tensor
    weight: float
    """Weight of Σ KL(teacher ‖ student) over the counted tokens, added to Σ cross-entropy."""


def _slice_loss(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    shifted: torch.Tensor,
    teacher_head: torch.nn.Module | None = None,
    teacher_hidden: torch.Tensor | None = None,
    weight: float = 0.0,
) -> torch.Tensor:
    logits = head(hidden).float()  # [tokens / shards, vocab]: one slice only
    loss = F.cross_entropy(
        logits.view(-1, logits.shape[-1]), shifted.view(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    if teacher_head is None:
        return loss
    with torch.no_grad():  # the teacher's slice of logits, never a [tokens, vocab] tensor
        target = F.log_softmax(teacher_head(teacher_hidden).float(), dim=-1)
    per_token = (target.exp() * (target - F.log_softmax(logits, dim=-1))).sum(-1)
    return loss + weight * per_token[shifted != IGNORE_INDEX].sum()


def tiled_loss_sum(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    shifted: torch.Tensor,
    shards: int | None = None,
    teacher: Teacher | None = None,
):
    """Σ token losses of ``hidden`` [batch, seq, h] against ``shifted`` [batch, seq] (labels already
    shifted: position i predicts ``shifted[i]``), ``shards`` slices of the tokens at a time; with a
    ``teacher``, plus ``teacher.weight`` × Σ KL(teacher ‖ model) over the same counted tokens, the
    teacher's logits taken slice by slice too."""
    from torch.utils.checkpoint import checkpoint

    shards = shards or shards_for(hidden.shape[0] * hidden.shape[1], vocab_of(head))
    flat_h, flat_y = hidden.reshape(-1, hidden.shape[-1]), shifted.reshape(-1)
    teacher_h = (
        teacher.hidden.reshape(-1, teacher.hidden.shape[-1]).chunk(shards) if teacher else [None] * shards
    )
    total = hidden.new_zeros((), dtype=torch.float32)
    for h, y, t in zip(torch.chunk(flat_h, shards), torch.chunk(flat_y, shards), teacher_h):
        args = (head, h, y) if teacher is None else (head, h, y, teacher.head, t, teacher.weight)
        if torch.is_grad_enabled() and h.requires_grad:
            total = total + checkpoint(_slice_loss, *args, use_reentrant=False)
        else:
            total = total + _slice_loss(*args)
    return total


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The ``*ForCausalLM`` (body ``.model`` + ``lm_head``) inside a peft wrapper, or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def hidden_loss_sum(
    model: torch.nn.Module,
    inputs: dict,
    shifted: torch.Tensor,
    shards: int | None = None,
    teacher: Teacher | None = None,
):
    """Σ token losses of the causal LM's body on ``inputs`` (no labels) against ``shifted``
    [batch, seq], through ``lm_head`` a slice at a time (:func:`tiled_loss_sum`)."""
    lm = causal_lm(model)
    hidden = lm.model(**inputs).last_hidden_state  # [batch, seq, h]
    return tiled_loss_sum(lm.lm_head, hidden, shifted.to(hidden.device), shards, teacher)


def causal_lm_loss_sum(
    model: torch.nn.Module, inputs: dict, shards: int | None = None, teacher: Teacher | None = None
) -> tuple[torch.Tensor, int]:
    """(Σ token losses, tokens counted) of a causal LM on ``inputs`` (``input_ids``, ``labels``,
    ``position_ids`` and attention kwargs), through its body and ``lm_head`` — transformers'
    loss (shift by one, ignore -100) without the full logits."""
    inputs = dict(inputs)
    shifted = shift_labels(inputs.pop("labels"))
    return hidden_loss_sum(model, inputs, shifted, shards, teacher), int((shifted != IGNORE_INDEX).sum())
