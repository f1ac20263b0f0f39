"""Packing documents into fixed-length rows without letting one document see another.

Plain packing (concatenate, cut every S tokens) lets a token attend to the previous,
unrelated document and trains it on positions it will never see at inference — a silent
quality bug of several open trainers. Here each row records, per token, which document it
belongs to (``doc_ids``); positions restart at 0 for each document (LongRoPE2 arXiv
2502.20082 §3.3: "position ids restart at 0 per document"), the first token of every
document has label ``IGNORE_INDEX`` so no logit is trained to predict across a boundary,
and the collation helpers give each attention backend what it needs to keep documents
apart:

- flash-attention varlen (GPU): ``cu_seq_lens`` (int32 cumulative segment lengths);
- SDPA / eager (CPU, tests): :func:`attention_mask_4d`, a block-diagonal causal mask;
- flex attention: :func:`flex_block_mask`, a ``BlockMask`` with the same rule.

transformers ≥ 5 also derives the same block-diagonal mask from ``position_ids`` alone
(``find_packed_sequence_indices``), but ONLY with no ``attention_mask`` and no KV cache:
with the default ``use_cache=True`` (also in train mode) it silently lets documents see
each other. Its flash path detects packing only for batch size 1 — hence
:func:`flash_varlen_kwargs` flattens the batch. The tests check every route against
running each document alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch

from longctx.data.errors import DataError
from longctx.data.samples import IGNORE_INDEX

PAD_DOC_ID = -1
"""``doc_ids`` value of padding tokens: a segment of its own that no real token attends to."""

Piece = tuple[int, int, int]
"""``(document index, start, stop)``: a slice of one document placed in a row."""


@dataclass(frozen=True)
class PackedRow:
    input_ids: list[int]
    """``row_length`` token ids: whole documents or pieces of them, then padding."""
    labels: list[int]
    """``input_ids`` with ``IGNORE_INDEX`` on each segment's first token and on padding."""
    position_ids: list[int]
    """0, 1, 2, … restarting at each segment (padding included)."""
    doc_ids: list[int]
    """Index of the source document of each token (``PAD_DOC_ID`` for padding)."""
    seq_lens: list[int]
    """Length of each segment in order; sums to ``row_length`` (padding is the last one)."""


@dataclass
class PackingStats:
    """Counts of what packing did, so nothing is dropped without being reported."""

    documents: int = 0
    rows: int = 0
    tokens: int = 0
    pad_tokens: int = 0
    truncated_tokens: int = 0
    truncated_documents: int = 0
    pieces: list[int] = field(default_factory=list, repr=False)


def _fit(length: int, row_length: int, long_docs: str, stats: PackingStats) -> int:
    if length > row_length and long_docs == "truncate":
        stats.truncated_tokens += length - row_length
        stats.truncated_documents += 1
        return row_length
    return length


def plan_rows(
    lengths: Iterable[tuple[int, int]],
    row_length: int,
    *,
    overflow: Literal["split", "pad"] = "split",
    long_docs: Literal["split", "truncate"] = "split",
    drop_last: bool = False,
    stats: PackingStats | None = None,
) -> Iterator[list[Piece]]:
    """Greedy, order-preserving layout of ``(doc index, length)`` into rows of pieces.

    ``overflow="split"``: a document that does not fit the rest of a row fills it and
    continues in the next row (no padding except the last row); ``"pad"``: it starts a new
    row and the current one is padded. ``long_docs``: documents longer than a row are cut
    into row-sized pieces (``"split"``) or cut to their first ``row_length`` tokens.
    Works on lengths only, so a resumed sampler can replay the layout without tokens.
    """
    if row_length < 2:
        raise DataError(f"packing: row_length={row_length}; expected ≥ 2")
    stats = stats if stats is not None else PackingStats()
    row: list[Piece] = []
    used = 0
    for doc, full_length in lengths:
        stats.documents += 1
        length, start = _fit(full_length, row_length, long_docs, stats), 0
        if overflow == "pad" and row and used + length > row_length:
            stats.rows += 1
            yield row
            row, used = [], 0
        while start < length:
            take = min(length - start, row_length - used)
            row.append((doc, start, start + take))
            used, start = used + take, start + take
            if used == row_length:
                stats.rows += 1
                yield row
                row, used = [], 0
    if row and not drop_last:
        stats.rows += 1
        yield row
    elif row:
        stats.truncated_tokens += used


def build_row(pieces: list[Piece], tokens_of, row_length: int, pad_id: int = 0) -> PackedRow:
    """Materialise one planned row; ``tokens_of(doc)`` returns the document's token ids."""
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    doc_ids: list[int] = []
    seq_lens: list[int] = []
    for doc, start, stop in pieces:
        ids = list(tokens_of(doc)[start:stop])
        input_ids += ids
        labels += [IGNORE_INDEX, *ids[1:]]
        position_ids += range(len(ids))
        doc_ids += [doc] * len(ids)
        seq_lens.append(len(ids))
    pad = row_length - len(input_ids)
    if pad < 0:
        raise DataError(f"packing: pieces hold {len(input_ids)} tokens; expected ≤ row_length={row_length}")
    if pad:
        input_ids += [pad_id] * pad
        labels += [IGNORE_INDEX] * pad
        position_ids += range(pad)
        doc_ids += [PAD_DOC_ID] * pad
        seq_lens.append(pad)
    return PackedRow(input_ids, labels, position_ids, doc_ids, seq_lens)


def pack_documents(
    docs: Iterable[list[int]],
    row_length: int,
    *,
    pad_id: int = 0,
    overflow: Literal["split", "pad"] = "split",
    long_docs: Literal["split", "truncate"] = "split",
    drop_last: bool = False,
    stats: PackingStats | None = None,
) -> Iterator[PackedRow]:
    """Pack tokenised documents (in order) into rows of exactly ``row_length`` tokens.

    ``doc_ids`` are the documents' positions in ``docs``. See :func:`plan_rows` for the
    options; ``stats`` (if given) is filled with counts of rows, padding and truncation.
    """
    stats = stats if stats is not None else PackingStats()
    held: dict[int, list[int]] = {}

    def lengths() -> Iterator[tuple[int, int]]:
        for index, ids in enumerate(docs):
            if not len(ids):
                raise DataError(f"packing: document {index} is empty; expected ≥ 1 token")
            held[index] = ids
            yield index, len(ids)

    plan = plan_rows(
        lengths(), row_length, overflow=overflow, long_docs=long_docs, drop_last=drop_last, stats=stats
    )
    for pieces in plan:
        row = build_row(pieces, held.__getitem__, row_length, pad_id)
        real = sum(stop - start for _, start, stop in pieces)
        stats.tokens += real
        stats.pad_tokens += row_length - real
        last_doc, _, last_stop = pieces[-1]
        for doc in [d for d in held if d < last_doc or (d == last_doc and last_stop >= len(held[d]))]:
            del held[doc]
        yield row


def collate_rows(rows: list[PackedRow]) -> dict[str, torch.Tensor | int]:
    """Stack rows into tensors, with ``cu_seq_lens`` for flash-attention varlen.

    ``cu_seq_lens`` indexes the batch flattened to one sequence of ``batch*seq`` tokens
    (the layout flash-attn's varlen kernels and transformers' padding-free path use).
    """
    if not rows:
        raise DataError("collate_rows: no rows; expected at least one PackedRow")
    if len({len(r.input_ids) for r in rows}) != 1:
        raise DataError(
            f"collate_rows: rows of lengths {sorted({len(r.input_ids) for r in rows})}; expected one length"
        )
    seq_lens = [n for r in rows for n in r.seq_lens]
    cu = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)  # [segments + 1]
    cu[1:] = torch.cumsum(torch.tensor(seq_lens, dtype=torch.int32), 0)
    return {
        "input_ids": torch.tensor([r.input_ids for r in rows], dtype=torch.long),  # [batch, seq]
        "labels": torch.tensor([r.labels for r in rows], dtype=torch.long),  # [batch, seq]
        "position_ids": torch.tensor([r.position_ids for r in rows], dtype=torch.long),  # [batch, seq]
        "doc_ids": torch.tensor([r.doc_ids for r in rows], dtype=torch.long),  # [batch, seq]
        "cu_seq_lens": cu,
        "max_seq_len": max(seq_lens),
    }


def flash_varlen_kwargs(batch: dict) -> dict[str, torch.Tensor | int]:
    """The batch flattened to ``[1, batch*seq]`` plus transformers' flash varlen kwargs.

    transformers passes ``cu_seq_lens_q/k`` and ``max_length_q/k`` to flash-attention's
    varlen kernel (``FlashAttentionKwargs``); with them no mask tensor is built at all.
    """
    flat = {k: batch[k].reshape(1, -1) for k in ("input_ids", "labels", "position_ids")}  # [1, batch*seq]
    cu, longest = batch["cu_seq_lens"], int(batch["max_seq_len"])
    return {
        **flat,
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": longest,
        "max_length_k": longest,
    }


def attention_mask_4d(doc_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Block-diagonal causal mask ``[batch, 1, seq, seq]``: query i sees key j iff j ≤ i, same doc.

    transformers 5 passes a 4D mask to the attention function unchanged; eager attention
    ADDS it to the scores, so the default is additive float (0 = attend, dtype min = not);
    ``dtype=torch.bool`` gives True = attend, for SDPA ONLY: eager attention adds a bool
    mask as 0/1 and so masks nothing (measured: packed logits off by ~0.4). Memory is
    batch·seq² — for CPU and tests; on GPU use :func:`flash_varlen_kwargs`.
    """
    seq = doc_ids.shape[-1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=doc_ids.device).tril()  # [seq, seq]
    same = doc_ids[:, :, None] == doc_ids[:, None, :]  # [batch, seq, seq]
    allowed = (same & causal)[:, None]  # [batch, 1, seq, seq]
    if dtype == torch.bool:
        return allowed
    mask = torch.zeros(allowed.shape, dtype=dtype, device=doc_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def flex_block_mask(doc_ids: torch.Tensor, block_size: int = 128):
    """A flex-attention ``BlockMask`` with the rule of :func:`attention_mask_4d`.

    Blocks wholly outside every document are skipped, so cost grows with the documents'
    lengths, not with seq². CPU supports the forward only (no backward on CPU).
    """
    try:
        from torch.nn.attention.flex_attention import create_block_mask
    except ImportError as err:  # torch < 2.5
        raise DataError(
            f"flex_block_mask: flex attention unavailable in torch {torch.__version__} ({err})"
        ) from None
    batch, seq = doc_ids.shape

    def same_doc_causal(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (doc_ids[b, q_idx] == doc_ids[b, kv_idx])

    return create_block_mask(
        same_doc_causal, batch, None, seq, seq, device=str(doc_ids.device), BLOCK_SIZE=block_size
    )
