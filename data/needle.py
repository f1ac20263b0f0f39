"""Needle-driven samples: LongRoPE2's needle perplexity and the needle pieces RULER reuses.

LongRoPE2 (arXiv 2502.20082 §3.2) scores candidate RoPE factors by perplexity on the
ANSWER tokens of a long real document with needles inserted, instead of plain
perplexity: most tokens of a long document are predictable from a short local context, so
plain PPL barely sees whether the far context is usable; the loss on a needle's value at
the end only drops if the model retrieved it. (Searching on plain PPL drops RULER-128k
from 82.03 to 78.68 in the paper's ablation.)

A sample here is ``BOS, intro, document with needles at the given depths, question,
answer``, exactly ``length`` tokens, the answer always inside (built to fit, never
truncated after building). Needles use RULER's sentence (arXiv 2404.06654):
"One of the special magic numbers for {key} is: {7 digits}."
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from longctx.data.corpus import english_words
from longctx.data.errors import DataError
from longctx.data.haystack import bos_ids, budget, document_body, encode, insert_needles, make_sample
from longctx.data.samples import SyntheticSample

INTRO = (
    "Some special magic numbers are hidden within the following text. "
    "Make sure to memorize it. I will quiz you about the numbers afterwards.\n"
)


def needle_sentence(key: str, value: str) -> str:
    return f"One of the special magic numbers for {key} is: {value}."


def draw_keys(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct real words as needle keys (RULER draws random English words)."""
    return rng.sample(english_words(), n)


def draw_values(rng: random.Random, n: int, digits: int = 7) -> list[str]:
    """``n`` distinct numbers of ``digits`` digits (RULER's needle values have 7)."""
    values: list[str] = []
    while len(values) < n:
        value = str(rng.randint(10 ** (digits - 1), 10**digits - 1))
        if value not in values:
            values.append(value)
    return values


def join_keys(keys: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b, and c`` — RULER's multi-query phrasing."""
    return (
        keys[0]
        if len(keys) == 1
        else ", ".join(keys[:-1]) + (", and " if len(keys) > 2 else " and ") + keys[-1]
    )


def _question(keys: list[str]) -> tuple[str, str]:
    if len(keys) == 1:
        q = f"What is the special magic number for {keys[0]} mentioned in the provided text?"
        return q, f" The special magic number for {keys[0]} mentioned in the provided text is"
    joined = join_keys(keys)
    q = f"What are the special magic numbers for {joined} mentioned in the provided text?"
    return q, f" The special magic numbers for {joined} mentioned in the provided text are"


def needle_ppl_sample(
    tokenizer, document_ids: list[int], length: int, depths: Sequence[float], seed: int
) -> SyntheticSample:
    """A real document with one needle per depth, ending in the question and the answer.

    ``document_ids``: the document tokenised by the model's tokenizer (BOS/EOS are
    stripped here). Each depth gets its own key; the question asks for all keys in
    insertion order and the answer lists their values (``", "``-separated). Only the
    answer tokens are labelled.
    """
    if not depths:
        raise DataError("needle_ppl: depths is empty; expected at least one depth in [0, 1]")
    rng = random.Random(seed)
    keys, values = draw_keys(rng, len(depths)), draw_values(rng, len(depths))
    needles = [encode(tokenizer, " " + needle_sentence(k, v)) for k, v in zip(keys, values)]
    question, prefix = _question(keys)
    head = bos_ids(tokenizer) + encode(tokenizer, INTRO)
    tail = encode(tokenizer, "\n" + question + prefix)
    answer = encode(tokenizer, " " + ", ".join(values))
    fixed = len(head) + sum(map(len, needles)) + len(tail) + len(answer)
    n_doc = budget("needle_ppl", length, fixed)
    body = document_body(tokenizer, document_ids)
    if len(body) < n_doc:
        raise DataError(
            f"needle_ppl: document has {len(body)} tokens; expected ≥ {n_doc} to fill length={length}; "
            "select documents with select_long_documents(ds, length, n)"
        )
    text, starts = insert_needles(tokenizer, body[:n_doc], needles, depths)
    prompt = head + text + tail
    meta = {
        "seed": seed,
        "keys": keys,
        "values": values,
        "depths": list(depths),
        "needle_positions": [len(head) + s for s in starts],
    }
    return make_sample("needle_ppl", length, prompt, answer, values, float(depths[0]), meta)
