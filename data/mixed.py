"""LongRoPE2's mixed context window sampler: short rows keep the original RoPE, long rows rescale.

Fine-tuning only on long rescaled rows costs short-context quality; LongRoPE2 (arXiv
2502.20082 §3.3) trains on both at once: rows packed from short documents (≤ L, the
pretrained length) run with the ORIGINAL RoPE and a document mask, rows of long
documents (> L, split into row-length pieces) run with the RESCALED RoPE. Without it the paper's
LLaMA3-8B loses RULER-128k (82.03 → 80.18) and MMLU (→ 64.57).

A recipe lists :class:`Window` s (row length, share of tokens or rows, which RoPE). The
sampler yields micro-batches of ONE window each (so the model is told one factor set per
forward, never inferring it from a shard of position ids), with ``row_kind`` set. The
schedule is deterministic: each micro-batch goes to the window whose consumption
(tokens or rows, divided by its share) would stay lowest — shares are met within one
micro-batch at any point. Document order per window is a seeded shuffle per epoch, and
rows are planned from lengths only, so ``iter_from(sample_index)`` replays a resumed run
exactly without touching tokens it skips.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from longctx.data.errors import DataError
from longctx.data.packing import PackingStats, build_row, collate_rows, plan_rows

logger = logging.getLogger(__name__)

ROPE_KINDS = ("original", "rescaled")
SHARE_OF = ("tokens", "rows")


@dataclass(frozen=True)
class Window:
    length: int
    """Row length in tokens."""
    share: float
    """Fraction of all training tokens (or rows) that come from this window."""
    rope: Literal["original", "rescaled"]
    """``original``: rows of documents ≤ L with the pretrained RoPE; ``rescaled``: rows of
    documents > L (split into ``length``-token pieces) with the searched factors."""
    share_of: Literal["tokens", "rows"] = "tokens"
    """What ``share`` counts."""

    def __post_init__(self) -> None:
        if self.length < 2:
            raise DataError(f"window.length: {self.length}; expected ≥ 2")
        if not 0.0 < self.share <= 1.0:
            raise DataError(f"window.share: {self.share}; expected a fraction in (0, 1]")
        if self.rope not in ROPE_KINDS:
            raise DataError(f"window.rope: {self.rope!r}; expected one of {ROPE_KINDS}")
        if self.share_of not in SHARE_OF:
            raise DataError(f"window.share_of: {self.share_of!r}; expected one of {SHARE_OF}")


def _validate(windows: Sequence[Window], original_length: int) -> None:
    if not windows:
        raise DataError("windows: empty; expected at least one window")
    if len({w.share_of for w in windows}) > 1:
        raise DataError("windows: mixed share_of values; expected all 'tokens' or all 'rows'")
    total = sum(w.share for w in windows)
    if abs(total - 1.0) > 1e-6:
        raise DataError(f"windows: shares sum to {total:.6g}; expected 1")
    for i, w in enumerate(windows):
        if w.rope == "rescaled" and w.length <= original_length:
            raise DataError(
                f"windows[{i}].length: {w.length} with rope=rescaled; expected > original length {original_length}"
            )


class MixedWindowSampler:
    """Deterministic, resumable micro-batches of packed rows, one window (row kind) each.

    ``docs_tokens``: token-id lists, or a ``datasets.Dataset`` with ``input_ids`` (and
    ``num_tokens``) from :func:`data.tokenize.tokenize_documents`. ``sample_index`` counts
    rows over all ranks: micro-batch j holds rows ``j*micro_batch_size …``; with
    ``world_size > 1`` rank r gets micro-batches j ≡ r (mod world_size).
    """

    def __init__(
        self,
        docs_tokens,
        windows: Sequence[Window],
        original_length: int,
        micro_batch_size: int,
        seed: int,
        *,
        pad_id: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _validate(windows, original_length)
        if micro_batch_size < 1 or not 0 <= rank < world_size:
            raise DataError(
                f"sampler: micro_batch_size={micro_batch_size}, rank={rank}/{world_size}; expected ≥ 1, 0 ≤ rank < world"
            )
        self.docs, self.windows, self.original_length = docs_tokens, list(windows), original_length
        self.micro_batch_size, self.seed, self.pad_id = micro_batch_size, seed, pad_id
        self.rank, self.world_size = rank, world_size
        lengths = _lengths(docs_tokens)
        self.eligible = [self._eligible(i, w, lengths) for i, w in enumerate(self.windows)]
        self.lengths = lengths
        _report_unused(lengths, self.eligible)
        self.stats = [PackingStats() for _ in self.windows]
        self._start = 0

    def _eligible(self, index: int, window: Window, lengths: list[int]) -> list[int]:
        short = window.rope == "original"
        picked = [d for d, n in enumerate(lengths) if (n <= self.original_length) == short]
        if not picked:
            side = f"≤ {self.original_length}" if short else f"> {self.original_length}"
            raise DataError(
                f"windows[{index}] (rope={window.rope}, length={window.length}): no documents of {side} tokens "
                f"among {len(lengths)} (longest {max(lengths, default=0)}); expected at least one"
            )
        return picked

    def _cost(self, w: int) -> int:
        window = self.windows[w]
        return self.micro_batch_size * (window.length if window.share_of == "tokens" else 1)

    def schedule(self) -> Iterator[int]:
        """Window index of micro-batch 0, 1, 2, … (infinite, deterministic).

        Each micro-batch goes to the window whose consumption after taking it, divided by
        its share, is lowest (ties → lower index): every window's consumed share stays
        within one micro-batch of its target.
        """
        used = [0] * len(self.windows)
        order = range(len(self.windows))
        while True:
            w = min(order, key=lambda i: ((used[i] + self._cost(i)) / self.windows[i].share, i))
            used[w] += self._cost(w)
            yield w

    def _row_plans(self, w: int) -> Iterator[list[tuple[int, int, int]]]:
        window = self.windows[w]

        def lengths():
            epoch = 0
            while True:
                order = list(self.eligible[w])
                random.Random(f"{self.seed}:{w}:{epoch}").shuffle(order)
                yield from ((d, self.lengths[d]) for d in order)
                epoch += 1

        # a document longer than the row continues in the next rows (positions restart per
        # piece): every token of a long document is trained on once per epoch — cutting it to
        # its first window instead repeats those few rows over and over on a corpus of books
        return plan_rows(lengths(), window.length, long_docs="split", stats=self.stats[w])

    def _tokens(self, doc: int) -> list[int]:
        if hasattr(self.docs, "column_names"):
            return self.docs[doc]["input_ids"]
        return self.docs[doc]

    def iter_from(self, sample_index: int) -> Iterator[dict]:
        """Micro-batches from global row ``sample_index`` on, identical to an uninterrupted pass."""
        if sample_index < 0 or sample_index % self.micro_batch_size:
            raise DataError(
                f"sample_index: {sample_index}; expected a multiple of micro_batch_size={self.micro_batch_size} ≥ 0"
            )
        self.stats = [PackingStats() for _ in self.windows]
        plans = [self._row_plans(w) for w in range(len(self.windows))]
        first = sample_index // self.micro_batch_size
        schedule = self.schedule()
        for _ in range(first):  # replay: advance each window's plan, no tokens read
            w = next(schedule)
            for _ in range(self.micro_batch_size):
                next(plans[w])
        for j, w in enumerate(schedule, start=first):
            pieces = [next(plans[w]) for _ in range(self.micro_batch_size)]
            if j % self.world_size == self.rank:
                yield self._batch(w, pieces, j)

    def _batch(self, w: int, pieces: list, j: int) -> dict:
        window = self.windows[w]
        rows = [build_row(p, self._tokens, window.length, self.pad_id) for p in pieces]
        batch = collate_rows(rows)
        batch.update(row_kind=window.rope, window=w, sample_index=j * self.micro_batch_size)
        self._start = (j + 1) * self.micro_batch_size
        return batch

    def __iter__(self) -> Iterator[dict]:
        return self.iter_from(self._start)

    def state_dict(self) -> dict:
        """Where to resume (the next global row) plus what must match on reload."""
        return {"sample_index": self._start, "seed": self.seed, "windows": [asdict(w) for w in self.windows]}

    def load_state_dict(self, state: dict) -> None:
        expected = {"seed": self.seed, "windows": [asdict(w) for w in self.windows]}
        found = {k: state.get(k) for k in expected}
        if found != expected:
            raise DataError(
                f"sampler state: saved with {found}; expected {expected} (same seed and windows to resume)"
            )
        self._start = int(state["sample_index"])


def _report_unused(lengths: list[int], eligible: list[list[int]]) -> None:
    """Documents no window can take (e.g. long ones without a rescaled window) are counted."""
    used = set().union(*map(set, eligible))
    unused = [n for d, n in enumerate(lengths) if d not in used]
    if unused:
        logger.warning(
            "mixed windows: %d of %d documents (%d tokens) fit no window and are not used",
            len(unused), len(lengths), sum(unused),
        )  # fmt: skip


def _lengths(docs_tokens) -> list[int]:
    if hasattr(docs_tokens, "column_names"):
        if "num_tokens" in docs_tokens.column_names:
            return list(docs_tokens["num_tokens"])
        return [len(ids) for ids in docs_tokens["input_ids"]]
    return [len(ids) for ids in docs_tokens]
