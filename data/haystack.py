"""Token-level building blocks shared by the synthetic generators (passkey, needle, RULER).

The generators compose samples from separately encoded pieces (filler, needles,
question, answer) instead of encoding one long string, so that
- a sample hits an exact token budget in one pass, at any length (no re-tokenising a
  2M-token string in a search loop);
- the answer tokens are known exactly and always land inside the target length (the
  LongRoPE2 public code truncates after building and can cut the answer off);
- needles are inserted into a REAL document's token ids (LongRoPE2 arXiv 2502.20082 §3.2)
  at sentence boundaries, without re-tokenising the document.
Pieces that follow other text are encoded with their leading space, as they would appear.
"""

from __future__ import annotations

from collections.abc import Sequence

from longctx.data.errors import DataError
from longctx.data.samples import IGNORE_INDEX, SyntheticSample

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
"""The filler of the passkey test (Mohtashami & Jaggi; LongRoPE arXiv 2402.13753 §4.2) and of
RULER's ``noise`` haystack (arXiv 2404.06654)."""

SENTENCE_ENDS = (".", "!", "?", "\n", '."', ".'")
BOUNDARY_WINDOW = 256
"""How far (tokens) a needle may move back from its exact depth to start a sentence."""


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def bos_ids(tokenizer) -> list[int]:
    return [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]


def noise_filler(tokenizer, n: int) -> list[int]:
    """``n`` tokens of the repeated noise sentence (cut mid-sentence like LongRoPE's filler)."""
    unit = encode(tokenizer, " " + NOISE)
    return (unit * (n // len(unit) + 1))[:n]


def document_body(tokenizer, document_ids: Sequence[int]) -> list[int]:
    """A tokenised document without its BOS/EOS wrapper (they would sit mid-sample)."""
    ids = list(document_ids)
    if ids and ids[0] == tokenizer.bos_token_id:
        ids = ids[1:]
    if ids and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return ids


def haystack(tokenizer, n: int, haystack_ids: Sequence[int] | None, task: str) -> list[int]:
    """``n`` haystack tokens: the real document's if given, else the noise filler."""
    if haystack_ids is None:
        return noise_filler(tokenizer, n)
    body = document_body(tokenizer, haystack_ids)
    if len(body) < n:
        raise DataError(
            f"{task}: haystack document has {len(body)} tokens; expected ≥ {n} to fill the length"
        )
    return body[:n]


def budget(task: str, length: int, fixed: int, minimum: int = 1) -> int:
    """Tokens left for the haystack once the fixed pieces are placed; error if too few."""
    room = length - fixed
    if room < minimum:
        raise DataError(f"{task}: length={length} is too short; expected ≥ {fixed + minimum} tokens")
    return room


def _sentence_start(tokenizer, ids: list[int], target: int) -> int:
    """The latest position ≤ ``target`` that follows a sentence end (or ``target`` if none near)."""
    low = max(0, target - BOUNDARY_WINDOW)
    pieces = tokenizer.batch_decode([[t] for t in ids[low:target]])
    for offset in range(len(pieces) - 1, -1, -1):
        if pieces[offset].rstrip(" ").endswith(SENTENCE_ENDS):
            return low + offset + 1
    return 0 if low == 0 else target


def insert_needles(
    tokenizer, hay: list[int], needles: list[list[int]], depths: Sequence[float]
) -> tuple[list[int], list[int]]:
    """Insert each needle at its relative depth of ``hay`` (snapped back to a sentence start).

    Returns the combined ids and the start index of each needle in them (input order).
    """
    if len(needles) != len(depths):
        raise DataError(f"insert_needles: {len(needles)} needles but {len(depths)} depths; expected equal")
    for depth in depths:
        if not 0.0 <= depth <= 1.0:
            raise DataError(f"insert_needles: depth={depth}; expected a fraction in [0, 1]")
    cuts = [_sentence_start(tokenizer, hay, round(d * len(hay))) for d in depths]
    order = sorted(range(len(needles)), key=lambda i: (cuts[i], i))
    out: list[int] = []
    starts = [0] * len(needles)
    previous = 0
    for i in order:
        out += hay[previous : cuts[i]]
        starts[i] = len(out)
        out += needles[i]
        previous = cuts[i]
    return out + hay[previous:], starts


def make_sample(
    task: str, length: int, prompt: list[int], answer: list[int], answers, depth: float, meta: dict
) -> SyntheticSample:
    """Prompt + answer with loss only on the answer tokens; checks the length budget."""
    if len(prompt) + len(answer) > length:
        raise DataError(f"{task}: built {len(prompt) + len(answer)} tokens; expected ≤ length={length}")
    return SyntheticSample(
        input_ids=prompt + answer,
        labels=[IGNORE_INDEX] * len(prompt) + answer,
        prompt_len=len(prompt),
        answers=tuple(answers),
        task=task,
        length=length,
        depth=depth,
        meta=meta,
    )
