"""Passkey retrieval in the LongRoPE format (arXiv 2402.13753 §4.2, after Mohtashami & Jaggi).

The public LongRoPE evaluation builds::

    {task description}
    {filler prefix}
    The pass key is {key}. Remember it. {key} is the pass key.
    {filler suffix}
    What is the pass key? The pass key is

with the filler ``"The grass is green. The sky is blue. …"`` cut to length (the prefix
is ``depth`` of the filler). Here the same pieces are composed at token level so a sample
is exactly ``length`` tokens (BOS included) for any length and depth; the key has 5 digits
(the public code draws 1…50000, so short keys occur there; a fixed width keeps the answer
length, and so the scoring, uniform across samples).
"""

from __future__ import annotations

import random

from longctx.data.errors import DataError
from longctx.data.haystack import bos_ids, budget, encode, make_sample, noise_filler
from longctx.data.samples import SyntheticSample

TASK_DESCRIPTION = (
    "There is an important info hidden inside a lot of irrelevant text. "
    "Find it and memorize them. I will quiz you about the important information there."
)
QUESTION = "What is the pass key? The pass key is"


def _information_line(key: str) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key."


def passkey_sample(tokenizer, length: int, depth: float, seed: int) -> SyntheticSample:
    """A passkey prompt of exactly ``length`` tokens with the key at relative ``depth``.

    Answer tokens (the only labelled ones) are the 5-digit key; ``prompt_len`` ends after
    "The pass key is" so a generation scorer can decode from there.
    """
    if not 0.0 <= depth <= 1.0:
        raise DataError(f"passkey: depth={depth}; expected a fraction in [0, 1]")
    key = str(random.Random(seed).randint(10_000, 99_999))
    head = bos_ids(tokenizer) + encode(tokenizer, TASK_DESCRIPTION)
    info = encode(tokenizer, "\n" + _information_line(key) + "\n")
    question = encode(tokenizer, "\n" + QUESTION)
    answer = encode(tokenizer, " " + key)
    n_filler = budget("passkey", length, len(head) + len(info) + len(question) + len(answer))
    n_prefix = round(depth * n_filler)
    prompt = (
        head
        + noise_filler(tokenizer, n_prefix)
        + info
        + noise_filler(tokenizer, n_filler - n_prefix)
        + question
    )
    meta = {"seed": seed, "key_position": len(head) + n_prefix}
    return make_sample("passkey", length, prompt, answer, (key,), depth, meta)
