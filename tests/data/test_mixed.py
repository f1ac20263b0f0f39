"""Mixed context windows: shares as the recipe says, kinds kept apart, seeded, exactly resumable."""

from __future__ import annotations

import itertools
import logging
import random
from collections import Counter

import pytest
import torch

from longctx.data.errors import DataError
from longctx.data.mixed import MixedWindowSampler, Window

L = 512
WINDOWS = [Window(256, 0.5, "original"), Window(1024, 0.3, "rescaled"), Window(2048, 0.2, "rescaled")]


@pytest.fixture(scope="module")
def docs(kjv_lists):
    """KJV slices of 20–3000 tokens: plenty of documents on both sides of L."""
    rng = random.Random(0)
    out = []
    for _ in range(300):
        book = kjv_lists[rng.randrange(66)]
        n = rng.randint(20, min(3000, len(book) - 1))
        start = rng.randrange(len(book) - n)
        out.append(book[start : start + n])
    return out


def _take(sampler, n, start=0):
    return list(itertools.islice(sampler.iter_from(start), n))


def _same(a, b):
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("input_ids", "labels", "position_ids"))


@pytest.mark.parametrize("share_of", ["tokens", "rows"])
def test_shares_match_the_recipe(docs, share_of):
    windows = [Window(w.length, w.share, w.rope, share_of) for w in WINDOWS]
    sampler = MixedWindowSampler(docs, windows, L, micro_batch_size=2, seed=0)
    got = Counter()
    for batch in _take(sampler, 200):  # 400 rows
        real = int((batch["doc_ids"] >= 0).sum())
        got[batch["window"]] += real if share_of == "tokens" else len(batch["input_ids"])
    total = sum(got.values())
    for i, window in enumerate(windows):
        assert abs(got[i] / total - window.share) < 0.03, (i, got[i] / total)


def test_rows_hold_only_their_kind_of_documents(docs):
    sampler = MixedWindowSampler(docs, WINDOWS, L, micro_batch_size=3, seed=1)
    kinds = Counter()
    for batch in _take(sampler, 40):
        window = WINDOWS[batch["window"]]
        assert batch["row_kind"] == window.rope and batch["input_ids"].shape == (3, window.length)
        used = {int(d) for d in batch["doc_ids"].unique() if d >= 0}
        if window.rope == "original":
            assert all(len(docs[d]) <= L for d in used)
            assert int(batch["position_ids"].max()) < L  # the original RoPE never sees a position ≥ L
        else:
            assert all(len(docs[d]) > L for d in used)
        kinds[batch["row_kind"]] += 1
    assert set(kinds) == {"original", "rescaled"}


def test_long_documents_are_split_and_every_token_is_used(docs):
    """Rescaled rows hold contiguous pieces of long documents (positions restarting per piece),
    and documents longer than the row are used past their first window, not cut to it."""
    sampler = MixedWindowSampler(docs, WINDOWS, L, micro_batch_size=1, seed=2)
    seen: dict[int, list[int]] = {}  # document → start offsets of its pieces
    for batch in _take(sampler, 400):
        if batch["row_kind"] != "rescaled":
            continue
        ids, doc_ids = batch["input_ids"][0].tolist(), batch["doc_ids"][0].tolist()
        positions = batch["position_ids"][0].tolist()
        offset = 0
        for n in torch.diff(batch["cu_seq_lens"]).tolist():
            doc, piece = doc_ids[offset], ids[offset : offset + n]
            assert positions[offset : offset + n] == list(range(n))
            full = docs[doc]
            starts = [i for i in range(len(full) - n + 1) if full[i : i + n] == piece]
            assert starts, "a piece is a contiguous run of its document"
            seen.setdefault(doc, []).append(starts[0])
            offset += n
    top = max(w.length for w in WINDOWS)
    long_docs = [d for d, toks in enumerate(docs) if len(toks) > top]
    assert long_docs, "the fixture must hold documents longer than the long window"
    past = [d for d in long_docs if any(start >= top for start in seen.get(d, []))]
    assert past, "documents longer than the row are used past their first window (truncation never is)"
    assert all(s.truncated_documents == 0 for s in sampler.stats)


def test_same_seed_same_rows_other_seed_other_rows(docs):
    a = _take(MixedWindowSampler(docs, WINDOWS, L, 2, seed=5), 12)
    b = _take(MixedWindowSampler(docs, WINDOWS, L, 2, seed=5), 12)
    c = _take(MixedWindowSampler(docs, WINDOWS, L, 2, seed=6), 12)
    assert _same(a, b) and not _same(a, c)


def test_resume_from_sample_index_equals_uninterrupted_pass(docs):
    full = _take(MixedWindowSampler(docs, WINDOWS, L, 2, seed=3), 60)
    resumed = _take(MixedWindowSampler(docs, WINDOWS, L, 2, seed=3), 20, start=80)
    assert [b["sample_index"] for b in resumed] == list(range(80, 120, 2))
    assert _same(full[40:], resumed)
    # through state_dict, as a restarted training run does it
    first = MixedWindowSampler(docs, WINDOWS, L, 2, seed=3)
    list(itertools.islice(iter(first), 7))
    second = MixedWindowSampler(docs, WINDOWS, L, 2, seed=3)
    second.load_state_dict(first.state_dict())
    assert _same([next(iter(second))], [full[7]])


def test_ranks_split_the_global_stream(docs):
    full = _take(MixedWindowSampler(docs, WINDOWS, L, 2, seed=4), 10)
    r0 = _take(MixedWindowSampler(docs, WINDOWS, L, 2, seed=4, rank=0, world_size=2), 5)
    r1 = _take(MixedWindowSampler(docs, WINDOWS, L, 2, seed=4, rank=1, world_size=2), 5)
    assert _same(full[0::2], r0) and _same(full[1::2], r1)


def test_documents_no_window_takes_are_counted(docs, caplog):
    with caplog.at_level(logging.WARNING, logger="longctx.data.mixed"):
        MixedWindowSampler(docs, [Window(256, 1.0, "original")], L, 1, 0)
    n_long = sum(len(d) > L for d in docs)
    assert f"{n_long} of {len(docs)} documents" in caplog.text and "fit no window" in caplog.text


def test_bad_windows_and_state_are_clear_errors(docs):
    with pytest.raises(
        DataError, match=r"windows\[1\] \(rope=rescaled, length=4096\): no documents of > 3000"
    ):
        MixedWindowSampler(docs, [Window(256, 0.5, "original"), Window(4096, 0.5, "rescaled")], 3000, 1, 0)
    with pytest.raises(DataError, match=r"shares sum to 0\.9; expected 1"):
        MixedWindowSampler(docs, [Window(256, 0.5, "original"), Window(1024, 0.4, "rescaled")], L, 1, 0)
    with pytest.raises(DataError, match=r"windows\[0\].length: 256 with rope=rescaled; expected > original"):
        MixedWindowSampler(docs, [Window(256, 1.0, "rescaled")], L, 1, 0)
    with pytest.raises(DataError, match=r"window\.rope: 'long'"):
        Window(256, 1.0, "long")
    sampler = MixedWindowSampler(docs, WINDOWS, L, 2, seed=0)
    with pytest.raises(DataError, match="multiple of micro_batch_size=2"):
        next(sampler.iter_from(3))
    with pytest.raises(DataError, match="same seed and windows"):
        sampler.load_state_dict({**sampler.state_dict(), "seed": 1})
