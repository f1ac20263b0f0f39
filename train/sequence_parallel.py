"""Ulysses sequence parallelism (DeepSpeed ALST, arXiv 2506.13996) wired through accelerate.

One training row is split over the ``N = recipe.sequence_parallel`` processes of an SP group.
The parallelism itself is DeepSpeed's, reached through accelerate's ``ParallelismConfig``
(``sp_backend="deepspeed"``): at ``accelerator.prepare`` accelerate calls
``UlyssesSPAttentionHF.register_with_transformers``, which builds the SP process groups and
wraps the model's attention function (sdpa / flash) so that each layer all-to-alls q/k/v from
"my tokens, all heads" to "all tokens, my heads", attends, and all-to-alls back; DeepSpeed gets
the groups as its ``mpu`` and reduces gradients over them. This module only does what is ours:

- **which rows a process trains on**: an SP group consumes one global micro-batch at a time,
  so data-parallel rank ``process_index // N`` (DeepSpeed groups consecutive ranks) takes
  global micro-batches ``dp_rank, dp_rank + dp_size, …`` and every rank of the group builds
  the same batch (the sampler is deterministic), then keeps its 1/N slice — what DeepSpeed's
  ``UlyssesSPDataLoaderAdapter`` does after gathering, without the gather;
- **the factor set**: chosen from the GLOBAL row's kind before slicing and forced on the
  rotary for the forward (a rank that judged its shard of position ids — shard 0
  of a long row has ``max(position_ids) + 1 ≤ L`` — would silently use the short factors);
- **labels**: shifted on the whole row before slicing (``shift_labels``), so the token that
  predicts the first token of the next shard keeps its label;
- **the loss**: each rank's sum of token losses (``train.tiled_loss``) is all-reduced over the
  SP group (:func:`group_sum`, differentiable) and divided by the step's label tokens, so every
  rank holds the row's token-weighted share — the number one process gets — and a shard with
  no valid label contributes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from longctx.data.samples import IGNORE_INDEX


@dataclass(frozen=True)
class SPLayout:
    """Where this process sits: its SP group (size, rank in it) and its data-parallel slot."""

    size: int
    rank: int
    dp_size: int
    dp_rank: int

    @classmethod
    def of(cls, process_index: int, num_processes: int, size: int) -> SPLayout:
        if num_processes % size:
            raise ValueError(
                f"sequence_parallel: {size} must divide the number of processes ({num_processes})"
            )
        return cls(size, process_index % size, num_processes // size, process_index // size)


def parallelism_config(size: int, num_processes: int, attention: str):
    """accelerate's ParallelismConfig for DeepSpeed Ulysses with ``size``-way SP (None when 1).

    Row lengths vary between windows (short rows, long rows), hence ``sp_seq_length_is_variable``.
    """
    if size == 1:
        return None
    from accelerate.parallelism_config import ParallelismConfig
    from accelerate.utils import DeepSpeedSequenceParallelConfig

    handler = DeepSpeedSequenceParallelConfig(
        sp_seq_length_is_variable=True, sp_attn_implementation=attention
    )
    return ParallelismConfig(
        dp_replicate_size=num_processes // size, sp_size=size, sp_backend="deepspeed", sp_handler=handler
    )


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """``labels[:, t + 1]`` at ``t`` (the target of position t), IGNORE at the last position."""
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]  # [batch, seq]


VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def shard(batch: dict, rank: int, size: int, varlen: bool = False) -> dict:
    """Rank ``rank``'s contiguous 1/size slice of a global micro-batch (labels shifted first).

    ``varlen``: the micro-batch is first flattened to one sequence (``data.packing
    .flash_varlen_kwargs``) and the slice carries the WHOLE sequence's document boundaries
    (``cu_seq_lens_*``, under ``varlen``): after Ulysses' all-to-all each rank attends over the
    whole sequence (for its heads), so the core attention — flash's varlen kernel, or
    ``train.attention.segment_sdpa_forward`` under sdpa — keeps every document apart, for any
    number of rows per micro-batch.
    """
    seq = batch["input_ids"].shape[1]
    if seq % size:
        raise ValueError(f"sequence_parallel: row length {seq} is not divisible by {size}")
    rows, extra = batch, {}
    if varlen:
        from longctx.data.packing import flash_varlen_kwargs

        rows = flash_varlen_kwargs(batch)
        extra = {"varlen": {k: rows[k] for k in VARLEN_KEYS}}
    return {
        "input_ids": shard_of(rows["input_ids"], rank, size),
        "position_ids": shard_of(rows["position_ids"], rank, size),  # Ulysses all-gathers them back
        "shift_labels": shard_of(shift_labels(rows["labels"]), rank, size),
        "row_kind": batch["row_kind"],  # the global row's kind: the factor set for every shard
        **extra,
    }


def shard_of(tensor: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous 1/size slice of ``tensor``'s sequence dimension (dim 1)."""
    chunk = tensor.shape[1] // size
    return tensor[:, rank * chunk : (rank + 1) * chunk]


def segments_under_ulysses() -> None:
    """Make SDPA under Ulysses keep packed documents apart: ``ALL_ATTENTION_FUNCTIONS["sdpa"]``
    is overridden (locally) with :func:`train.attention.segment_sdpa_forward` before
    ``accelerator.prepare``, so DeepSpeed's wrapper takes it as its core attention; it runs
    plain SDPA when no ``cu_seq_lens_q`` comes (:func:`release_groups` drops the override)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from longctx.train.attention import segment_sdpa_forward

    ALL_ATTENTION_FUNCTIONS["sdpa"] = segment_sdpa_forward


def group_sum(total: torch.Tensor, group=None) -> torch.Tensor:
    """Σ of the group's shard sums on every rank (differentiable all-reduce).

    Every rank gets the same value; backward sends each rank's share of the gradient to its own
    shard (the all-reduce's backward sums the N identical upstream gradients, and the engine's
    average over the N ranks of the group divides them back).
    """
    if group is None:
        return total
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(total, group=group)


def sp_group():
    """DeepSpeed's SP process group (initialised by accelerate's prepare)."""
    from deepspeed.runtime.sequence_parallel import parallel_state_sp

    return parallel_state_sp.get_sequence_parallel_group()


SP_GROUP_NAMES = ("_SEQUENCE_PARALLEL_GROUP", "_SEQUENCE_DATA_PARALLEL_GROUP")
"""DeepSpeed's module-level SP groups (``parallel_state_sp``): ``initialize_sequence_parallel``
asserts they are unset, so the next training stage's ``prepare`` would fail on them."""


def release_groups() -> None:
    """Undo what a training stage's ``prepare`` did process-wide under Ulysses, so the next
    training stage of the same run (and any model loaded later: eval, export) starts clean:

    - DeepSpeed's SP process groups: destroyed and unset (0.19.8 unsets them only at WORLD
      teardown; ``initialize_sequence_parallel`` asserts they are unset);
    - the attention wrapper ``register_with_transformers`` writes over transformers'
      ``ALL_ATTENTION_FUNCTIONS[<sdpa|flash_attention_2>]`` (a local override of the mapping):
      deleted, which restores transformers' own function. Left in place, a second registration
      would wrap the wrapper (the heads split twice) and eval models would all-to-all.
    """
    import sys

    state = sys.modules.get("deepspeed.runtime.sequence_parallel.parallel_state_sp")
    if state is None:
        return
    for name in SP_GROUP_NAMES:
        group = getattr(state, name, None)
        if group is not None and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group(group)
        setattr(state, name, None)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    for key in list(ALL_ATTENTION_FUNCTIONS):
        name = getattr(ALL_ATTENTION_FUNCTIONS[key], "__qualname__", "")
        if "UlyssesSPAttentionHF" in name or (key == "sdpa" and name == "segment_sdpa_forward"):
            del ALL_ATTENTION_FUNCTIONS[key]  # drops the local override only
