"""What a training stage trains on: the corpus, short pieces for original-RoPE rows, and
synthetic retrieval documents (passkey, RULER needle tasks) mixed in at ``data.synthetic_mix``
(the data policy of a stage, kept out of the runner)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

from longctx.data.errors import DataError
from longctx.data.synthetic import RULER_TASKS, passkey_sample, ruler_sample

SYNTHETIC_TASKS = ("passkey", "kv_recall", *(t for t in RULER_TASKS if not t.startswith("qa_")))
"""Tasks a training mix can generate (RULER's QA needs outside records); ``kv_recall`` is for
training only (:func:`kv_recall_document`)."""

TRAIN_SEED_BASE = 10**12
"""Training documents take their seeds from 10¹² up; every evaluation and search sample uses
seeds below it (small integers: ``eval.tasks.EvalSettings.seed`` plus offsets < 10⁹), so no
evaluated key, needle or haystack draw is one the model was trained on."""


def training_documents(
    docs: list[list[int]],
    windows: list[tuple[int, str]],
    *,
    original_length: int,
    tokenizer,
    mix: Mapping[str, float],
    seed: int,
    log: Callable[[str], None] = lambda message: None,
) -> list[list[int]]:
    """Documents for a training stage with ``windows`` = [(length, "original" | "rescaled")].

    Short rows are packed from documents ≤ L (LongRoPE2 §3.3). When a corpus has only long
    documents (the KJV books), they are also cut into L-token pieces so short rows exist.
    Synthetic documents are mixed in at ``mix`` = {task: share}: ≤ L ones among the short
    documents (as many as the shares ask of their count), and for each rescaled window ones of
    half to all its length among the long documents, as many as the shares ask of the long
    documents' TOKENS (the sampler splits a long document over many rows, so a count per
    document would leave long rows almost without retrieval documents on a corpus of books).
    """
    L = original_length
    out = list(docs)
    if any(rope == "original" for _, rope in windows) and not any(len(d) <= L for d in docs):
        pieces = [d[i : i + L] for d in docs for i in range(0, len(d) - L // 4, L)]
        log(
            f"data: no document <= L={L}; cut {len(docs)} documents into {len(pieces)} pieces of <= {L} tokens"
        )
        out += pieces
    total = sum(mix.values())
    if total <= 0:
        return out
    n_short = sum(len(d) <= L for d in out)
    long_tokens = sum(len(d) for d in docs if len(d) > L)
    for task, share in mix.items():
        count = round(share / (1 - total) * n_short)
        out += synthetic_documents(tokenizer, task, L, count, short=True, seed=seed, log=log)
    for length in sorted({length for length, rope in windows if rope == "rescaled"}):
        for task, share in mix.items():
            # long rows retrieve too: documents of L' / 2 … L' tokens (¾ L' on average)
            count = max(1, round(share / (1 - total) * long_tokens / (0.75 * length)))
            out += synthetic_documents(tokenizer, task, length, count, short=False, seed=seed, log=log)
    return out


def synthetic_documents(
    tokenizer,
    task: str,
    length: int,
    count: int,
    *,
    short: bool,
    seed: int,
    log: Callable[[str], None] = lambda m: None,
) -> list[list[int]]:
    """``count`` documents of ``task`` of ``length // 2`` … ``length - 1`` tokens (+ EOS).

    ≤ L documents (``short``): the stream the base was pretrained on; each long length its own
    stream and keys (seeds offset by length·10⁶), so long rows never repeat a short document's
    key. Seeds start at :data:`TRAIN_SEED_BASE` (+ the recipe seed · 10⁹): never an eval's.
    """
    rng = random.Random(f"{task}:{seed}" if short else f"{task}:{seed}:{length}")
    first = TRAIN_SEED_BASE + seed * 10**9 + (0 if short else length * 1_000_000)
    docs = []
    for i in range(count):
        # one token short of the length, so the EOS never cuts the answer off; ≤ L documents of
        # every length from L/8 (a retrieval over a few tokens is learned first), long ones ½–1×
        low = max(16, length // 8) if short else length // 2
        want, depth = rng.randint(low, length - 1), rng.random()
        ids = None
        while ids is None:
            try:
                ids = _sample(tokenizer, task, want, depth, first + i)
            except DataError as err:  # shorter than the fixed prompt: the shortest that fits
                if want >= length - 1:
                    raise DataError(
                        f"data.synthetic_mix: {task} documents do not fit in {length} tokens ({err})"
                    ) from None
                want = min(length - 1, want + 8)
        eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        docs.append([*ids, *eos])
    log(f"data: mixed in {count} synthetic {task} documents of <= {length} tokens")
    return docs


def _sample(tokenizer, task: str, length: int, depth: float, seed: int) -> list[int]:
    if task == "passkey":
        return passkey_sample(tokenizer, length=length, depth=depth, seed=seed).input_ids
    if task == "kv_recall":
        return kv_recall_document(tokenizer, length, seed)
    return ruler_sample(task, tokenizer, length, seed).input_ids  # RULER draws its own needle depths


KV_FORMATS = (
    ("One of the special magic numbers for {key} is: {value}.",
     "What is the special magic number for {key}? The special magic number for {key} is {value}."),
    ("The pass key of {key} is {value}. Remember it.",
     "What is the pass key of {key}? The pass key of {key} is {value}."),
)  # fmt: skip
"""Needle and question of a :func:`kv_recall_document`, in the wording of RULER's niah and of the
passkey prompt (values: 5 or 7 digits, or a uuid)."""


def kv_recall_document(tokenizer, length: int, seed: int) -> list[int]:
    """A dense retrieval document of at most ``length`` tokens: up to 8 needles (a word key, a
    value; as many as fit in 60 % of it), then questions about some of them in another order,
    each answered — many retrievals per document where a passkey or niah sample has one
    (training only)."""
    from longctx.data.haystack import bos_ids, encode
    from longctx.data.needle import draw_keys, draw_values
    from longctx.data.ruler_niah import draw_items, encode_many

    rng = random.Random(f"kv_recall:{seed}")
    needle, question = rng.choice(KV_FORMATS)
    n = rng.randint(2, 8)
    keys = draw_keys(rng, n)
    kind = rng.choice(["5", "7", "uuid"])
    values = draw_items(rng, "uuids", n) if kind == "uuid" else draw_values(rng, n, digits=int(kind))
    lines = encode_many(tokenizer, [" " + needle.format(key=k, value=v) for k, v in zip(keys, values)])
    ids = bos_ids(tokenizer)
    for i, line in enumerate(lines):  # needles while they leave room for questions (≥ 1 needle)
        if i and len(ids) + len(line) > 0.6 * length:
            n = i
            break
        ids += line
    for i in rng.sample(range(n), rng.randint(1, n)):
        more = encode(tokenizer, " " + question.format(key=keys[i], value=values[i]))
        if len(ids) + len(more) > length:
            break
        ids += more
    if len(ids) > length:
        raise DataError(f"kv_recall: {n} needles take {len(ids)} tokens; expected ≤ {length}")
    return ids
