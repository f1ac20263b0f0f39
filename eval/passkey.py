"""Passkey retrieval accuracy over lengths × depths.

Protocol (LongRoPE arXiv 2402.13753 §4.2, after Landmark Attention / PI): a random 5-digit
pass key is hidden at a relative depth inside ``length`` tokens of repeated filler; the model
greedily continues "What is the pass key? The pass key is" and a sample is correct when the
first group of digits in the output is exactly the key. Accuracy is reported in percent per
length, per depth and per (length, depth) cell.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from longctx.data.samples import SyntheticSample
from longctx.eval.generation import greedy_outputs, mean_by

_DIGITS = re.compile(r"\d+")


def passkey_correct(output: str, key: str) -> bool:
    """True when the first run of digits in ``output`` equals ``key`` exactly.

    "The pass key is 12345." is right; "123456", "1234" or "54321 12345" are wrong (a longer
    number or the key only as a second guess is not retrieval).
    """
    found = _DIGITS.search(output)
    return found is not None and found.group() == key.strip()


def score_passkey(samples: Sequence[SyntheticSample], outputs: Sequence[str]) -> dict:
    """Accuracy (%) overall, by length, by depth and by length × depth, plus per-sample rows."""
    if len(samples) != len(outputs):
        raise ValueError(f"score_passkey: {len(outputs)} outputs for {len(samples)} samples")
    rows = [
        {
            "length": s.length,
            "depth": round(float(s.depth), 4),
            "answer": s.answers[0],
            "output": out,
            "score": 100.0 * passkey_correct(out, s.answers[0]),
        }
        for s, out in zip(samples, outputs)
    ]
    return {
        "accuracy": sum(r["score"] for r in rows) / len(rows) if rows else None,
        "by_length": mean_by(rows, ["length"]),
        "by_depth": mean_by(rows, ["depth"]),
        "by_length_depth": mean_by(rows, ["length", "depth"]),
        "samples": rows,
    }


def passkey_eval(
    model, tokenizer, samples: Sequence[SyntheticSample], *, max_new_tokens: int = 10, progress: bool = True
) -> dict:
    """Greedy-decode each passkey prompt and score it (see :func:`score_passkey`)."""
    outputs = greedy_outputs(
        model, tokenizer, samples, max_new_tokens=max_new_tokens, progress=progress, desc="passkey"
    )
    return score_passkey(samples, outputs)


def passkey_samples(
    tokenizer, lengths: Sequence[int], depths: Sequence[float], *, per_cell: int = 1, seed: int = 0
) -> list[SyntheticSample]:
    """Samples from ``data.synthetic.passkey_sample`` for every (length, depth, repeat)."""
    from longctx.data.synthetic import passkey_sample

    return [
        passkey_sample(tokenizer, length, depth, seed + 1000 * i + k)
        for length in lengths
        for i, depth in enumerate(depths)
        for k in range(per_cell)
    ]
