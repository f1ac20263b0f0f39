"""What a training stage trains on: the corpus, short pieces for original-RoPE rows, and
synthetic passkey documents mixed in at ``data.passkey_share`` (the data policy of a stage,
kept out of the runner)."""

from __future__ import annotations

import random
from collections.abc import Callable

from longctx.data.errors import DataError
from longctx.data.synthetic import passkey_sample


def training_documents(
    docs: list[list[int]],
    windows: list[tuple[int, str]],
    *,
    original_length: int,
    tokenizer,
    passkey_share: float,
    seed: int,
    log: Callable[[str], None] = lambda message: None,
) -> list[list[int]]:
    """Documents for a training stage with ``windows`` = [(length, "original" | "rescaled")].

    Short rows are packed from documents ≤ L (LongRoPE2 §3.3). When a corpus has only long
    documents (the KJV books), they are also cut into L-token pieces so short rows exist;
    synthetic passkey documents are mixed in at ``passkey_share``: ≤ L ones among the short
    documents (as many as the share asks of their count), and for each rescaled window ones of
    half to all its length among the long documents, as many as the share asks of the long
    documents' TOKENS (the sampler splits a long document over many rows, so a count per
    document would leave long rows almost without passkeys on a corpus of books).
    """
    L = original_length
    out = list(docs)
    if any(rope == "original" for _, rope in windows) and not any(len(d) <= L for d in docs):
        pieces = [d[i : i + L] for d in docs for i in range(0, len(d) - L // 4, L)]
        log(
            f"data: no document <= L={L}; cut {len(docs)} documents into {len(pieces)} pieces of <= {L} tokens"
        )
        out += pieces
    share = passkey_share
    if share > 0:
        count = round(share / (1 - share) * sum(len(d) <= L for d in out))
        out += passkey_documents(tokenizer, L, count, short=True, seed=seed, log=log)
        long_tokens = sum(len(d) for d in docs if len(d) > L)
        for length in sorted({length for length, rope in windows if rope == "rescaled"}):
            # long rows retrieve too: passkey documents of L' / 2 … L' tokens (¾ L' on average)
            count = round(share / (1 - share) * long_tokens / (0.75 * length))
            out += passkey_documents(tokenizer, length, max(1, count), short=False, seed=seed, log=log)
    return out


def passkey_documents(
    tokenizer, length: int, count: int, *, short: bool, seed: int, log: Callable[[str], None] = lambda m: None
) -> list[list[int]]:
    """``count`` passkey documents of ``length // 2`` … ``length - 1`` tokens (+ EOS).

    ≤ L documents (``short``): the stream the base was pretrained on; each long length its own
    stream and keys (seeds from length·10⁶), so long rows never repeat a short document's key.
    """
    rng = random.Random(seed if short else f"{seed}:{length}")
    first = 0 if short else length * 1_000_000
    docs = []
    for i in range(count):
        # one token short of the length, so the EOS never cuts the answer off
        want, depth = rng.randint(length // 2, length - 1), rng.random()
        try:
            sample = passkey_sample(tokenizer, length=want, depth=depth, seed=first + i)
        except DataError:  # shorter than the fixed prompt: use the longest length that fits
            try:
                sample = passkey_sample(tokenizer, length=length - 1, depth=depth, seed=first + i)
            except DataError as err:
                raise DataError(
                    f"data.passkey_share: passkey documents do not fit in L={length} ({err})"
                ) from None
        eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        docs.append([*sample.input_ids, *eos])
    log(f"data: mixed in {count} synthetic passkey documents of <= {length} tokens")
    return docs
