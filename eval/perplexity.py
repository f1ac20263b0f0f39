"""Perplexity at long lengths without ever building a [seq, vocab] logits tensor.

Protocols:
- **Truncation** (LongRoPE arXiv 2402.13753 §4.1, after PI/YaRN): for an evaluation length N,
  keep the documents with at least N tokens, take the first N tokens with BOS prepended, and
  average the token-level negative log-likelihood over all of them.
- **Sliding window** (PI arXiv 2306.15595 §3.1, the Hugging Face "perplexity of fixed-length
  models" recipe): windows of N tokens moved by a stride S; each window counts only the
  tokens the previous window did not, so every token but the first is counted once, with up
  to N - S tokens of context.
- **Needle-driven** (LongRoPE2 arXiv 2502.20082 §3.2): the loss counts only answer tokens
  (``SyntheticSample.labels != IGNORE_INDEX`` or an explicit ``loss_mask``).

The model's decoder body runs once per row; its last hidden state (already passed through the
final norm in HF Llama/Mistral/Qwen/Phi-3) is gathered at the positions whose next token is
counted, and the LM head is applied to ``chunk_size`` positions at a time with a float32
cross-entropy. Peak memory is O(chunk × vocab) instead of O(seq × vocab); with a loss mask the
head runs only at the counted positions. This is the scorer the factor search calls thousands
of times, so it does no more work than one decoder forward plus the counted head rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from longctx.data.samples import IGNORE_INDEX, SyntheticSample

LOGITS_BUDGET = 2**24
"""Default logits elements per chunk (64 MiB in float32): 512 positions of a 32k vocab."""

TokenRow = Sequence[int] | torch.Tensor | SyntheticSample


def default_chunk_size(vocab_size: int) -> int:
    """Positions per LM-head chunk so that one float32 logits chunk is ~``LOGITS_BUDGET``."""
    return max(16, LOGITS_BUDGET // max(1, vocab_size))


def _labels_of(row: TokenRow, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [seq], labels [seq]) in the Hugging Face convention: ``labels[t]`` is the
    target of position t-1, ``IGNORE_INDEX`` where nothing is counted."""
    if isinstance(row, SyntheticSample):
        ids, labels = torch.tensor(row.input_ids), torch.tensor(row.labels)
    else:
        ids = torch.as_tensor(row, dtype=torch.long).flatten()
        labels = ids.clone()
    if mask is not None:
        mask = torch.as_tensor(mask, dtype=torch.bool).flatten()
        if mask.numel() != ids.numel():
            raise ValueError(
                f"loss_mask: a mask has {mask.numel()} entries for a row of {ids.numel()} tokens"
            )
        labels = torch.where(mask, ids, IGNORE_INDEX)
    if ids.numel() < 2:
        raise ValueError(f"perplexity: a row has {ids.numel()} token(s); expected at least 2")
    return ids, labels


def _chunk_logits(head, hidden: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """float32 logits [n, vocab] of ``hidden`` [n, hidden], written into ``buf`` when possible.

    A bias-free ``nn.Linear`` head in float32 writes straight into the reused buffer, so the
    chunks cost no fresh allocation (and no page faults); other heads are called as modules.
    """
    n = hidden.shape[0]
    if isinstance(head, torch.nn.Linear) and head.bias is None and head.weight.dtype == torch.float32:
        return torch.matmul(hidden, head.weight.t(), out=buf[:n])
    return buf[:n].copy_(head(hidden))


def _head_nll(model, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Per-position NLL [n] (float32) of ``targets`` [n] given final hidden states [n, hidden].

    Cross-entropy in place on one reused float32 buffer: ``logsumexp(z) - z[target]`` with the
    row max subtracted first (what ``F.cross_entropy`` computes, without its log-softmax copy).
    """
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    n_total = targets.numel()
    out = torch.empty(n_total, dtype=torch.float32, device=hidden.device)
    buf = torch.empty(
        min(chunk_size, n_total), head.weight.shape[0], dtype=torch.float32, device=hidden.device
    )
    for start in range(0, n_total, chunk_size):
        stop = min(start + chunk_size, n_total)
        logits = _chunk_logits(head, hidden[start:stop], buf)  # [chunk, vocab] float32
        if softcap:
            logits.div_(softcap).tanh_().mul_(softcap)
        picked = logits.gather(1, targets[start:stop, None]).squeeze(1)  # [chunk]
        peak = logits.amax(dim=1, keepdim=True)  # [chunk, 1]
        lse = logits.sub_(peak).exp_().sum(dim=1).log_().add_(peak.squeeze(1))  # [chunk]
        out[start:stop] = lse - picked
    return out


def _batch_nll(model, ids: torch.Tensor, labels: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Summed NLL per row [batch] (float64) for ids/labels [batch, seq]."""
    targets = labels[:, 1:]  # [batch, seq-1]
    counted = targets != IGNORE_INDEX  # [batch, seq-1]
    hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state  # [batch, seq, hidden]
    hidden = hidden[:, :-1]  # position t predicts token t+1
    if bool(counted.all()):
        rows = torch.arange(ids.shape[0], device=ids.device).repeat_interleave(targets.shape[1])
        flat_h = hidden.reshape(-1, hidden.shape[-1])  # [batch*(seq-1), hidden]
        flat_t = targets.reshape(-1)
    else:
        rows, cols = counted.nonzero(as_tuple=True)
        flat_h, flat_t = hidden[rows, cols], targets[rows, cols]  # [n, hidden], [n]
    del hidden
    nll = _head_nll(model, flat_h, flat_t, chunk_size)  # [n]
    sums = torch.zeros(ids.shape[0], dtype=torch.float64, device=ids.device)
    return sums.index_add_(0, rows, nll.double())


def _batches(rows: list[tuple[torch.Tensor, torch.Tensor]], batch_size: int):
    """Consecutive rows of equal length stacked into batches (no padding, so no masks)."""
    i = 0
    while i < len(rows):
        j = i + 1
        while j < len(rows) and j - i < batch_size and rows[j][0].numel() == rows[i][0].numel():
            j += 1
        yield torch.stack([r[0] for r in rows[i:j]]), torch.stack([r[1] for r in rows[i:j]])
        i = j


def iter_nll(
    model,
    samples: Sequence[TokenRow],
    *,
    loss_mask: Sequence | None = None,
    chunk_size: int | None = None,
    batch_size: int = 1,
    progress: bool = False,
) -> Iterator[tuple[float, int]]:
    """Yield ``(sum_nll, n_tokens)`` per sample, in order, so a caller can stop early.

    ``samples``: token lists / 1-D tensors (every token after the first counted) or
    ``SyntheticSample`` (counted where ``labels != IGNORE_INDEX``). ``loss_mask``: one bool
    sequence per sample, ``mask[t]`` True when token t counts (token 0 never does, having no
    context). Runs under ``torch.inference_mode``; the RoPE factor set is whatever the caller's
    context selects (``rope.factor_set``), automatic otherwise.
    """
    if loss_mask is not None and len(loss_mask) != len(samples):
        raise ValueError(
            f"loss_mask: {len(loss_mask)} masks for {len(samples)} samples; expected one per sample"
        )
    chunk = chunk_size or default_chunk_size(model.config.vocab_size)
    device = model.get_input_embeddings().weight.device
    rows = [_labels_of(s, None if loss_mask is None else loss_mask[i]) for i, s in enumerate(samples)]
    bar = tqdm(total=len(rows), desc="nll", unit="row", disable=not progress, leave=False)
    try:
        for ids, labels in _batches(rows, max(1, batch_size)):
            # inference mode only around the work: a generator suspended inside the ``with``
            # would leave the caller's thread in inference mode between two samples
            with torch.inference_mode():
                sums = _batch_nll(model, ids.to(device), labels.to(device), chunk).tolist()
            counts = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1).tolist()
            bar.update(len(sums))
            yield from zip(sums, counts)
    finally:
        bar.close()


def nll_per_sample(model, samples: Sequence[TokenRow], **kwargs) -> list[tuple[float, int]]:
    """``(sum_nll, n_tokens)`` for every sample; keyword arguments as :func:`iter_nll`."""
    return list(iter_nll(model, samples, **kwargs))


def ppl_from_nll(pairs: Sequence[tuple[float, int]]) -> float:
    """Token-weighted perplexity exp(Σ nll / Σ n); ``inf`` when no token was counted."""
    total, count = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    return math.exp(total / count) if count else math.inf


def perplexity(model, samples: Sequence[TokenRow], **kwargs) -> float:
    """Token-weighted perplexity of ``samples`` (keyword arguments as :func:`iter_nll`)."""
    return ppl_from_nll(nll_per_sample(model, samples, **kwargs))


def truncated_rows(
    documents: Sequence[Sequence[int]], length: int, *, bos_id: int | None, max_docs: int | None = None
):
    """LongRoPE protocol rows: the first ``length`` tokens (BOS first) of each long-enough document.

    A document qualifies when it has at least ``length`` tokens of its own (BOS not counted),
    so every row is exactly ``length`` tokens and shorter documents never pad the average.
    """
    return [doc[:length] for doc in qualifying_documents(documents, length, bos_id=bos_id, max_docs=max_docs)]


def qualifying_documents(
    documents: Sequence[Sequence[int]], length: int, *, bos_id: int | None, max_docs: int | None = None
) -> list[list[int]]:
    """The documents a perplexity at ``length`` measures, in order, BOS prepended: those with at
    least ``length`` tokens of their own (BOS not counted). Both modes use exactly these."""
    out = []
    for doc in documents:
        doc = list(doc)
        if len(doc) < length:
            continue
        out.append([bos_id, *doc] if bos_id is not None and doc[0] != bos_id else doc)
        if max_docs is not None and len(out) == max_docs:
            break
    return out


def sliding_windows(
    tokens: Sequence[int], window: int, stride: int
) -> tuple[list[list[int]], list[list[bool]]]:
    """(windows, loss masks) of the strided protocol: each window counts only its new tokens."""
    if not 0 < stride <= window:
        raise ValueError(f"sliding_windows: stride={stride} must be in 1..window={window}")
    tokens = list(tokens)
    windows, masks, counted_to = [], [], 1  # token 0 has no context: never counted
    for begin in range(0, max(1, len(tokens) - 1), stride):
        end = min(begin + window, len(tokens))
        if end <= counted_to:
            break
        windows.append(tokens[begin:end])
        masks.append([begin + t >= counted_to for t in range(end - begin)])
        counted_to = end
        if end == len(tokens):
            break
    return windows, masks


def perplexity_at_lengths(
    model,
    documents: Sequence[Sequence[int]],
    lengths: Sequence[int],
    *,
    bos_id: int | None,
    mode: str = "truncate",
    stride: int = 256,
    max_docs: int | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
) -> dict[int, dict]:
    """Perplexity per evaluation length: ``{length: {"ppl", "nll", "tokens", "docs"}}``.

    ``mode="truncate"``: LongRoPE protocol (first ``length`` tokens of each document with at
    least that many, BOS prepended). ``mode="sliding"``: windows of ``length`` tokens moved by
    ``stride`` over the same qualifying documents (BOS prepended to the document). A length
    that no document reaches reports ``ppl = None`` and ``docs = 0``.
    """
    if mode not in ("truncate", "sliding"):
        raise ValueError(f"perplexity_at_lengths: mode={mode!r}; expected 'truncate' or 'sliding'")
    out = {}
    for length in tqdm(list(lengths), desc="ppl lengths", disable=not progress):
        docs = qualifying_documents(documents, length, bos_id=bos_id, max_docs=max_docs)
        n_docs, rows, masks = len(docs), [d[:length] for d in docs], None
        if mode == "sliding" and docs:
            pairs = [sliding_windows(d, length, stride) for d in docs]
            rows = [w for windows, _ in pairs for w in windows]
            masks = [m for _, ms in pairs for m in ms]
        nll = nll_per_sample(model, rows, loss_mask=masks, chunk_size=chunk_size, progress=progress)
        total, count = sum(p[0] for p in nll), sum(p[1] for p in nll)
        ppl = math.exp(total / count) if count else None
        out[int(length)] = {
            "ppl": ppl,
            "nll": total / count if count else None,
            "tokens": count,
            "docs": n_docs,
        }
    return out
