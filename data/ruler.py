"""RULER-style synthetic tasks (Hsieh et al., arXiv 2404.06654), with their expected answers.

RULER measures a model's *effective* context with tasks whose answer is known exactly;
LongRoPE2 reports its RULER average at 4k…128k (arXiv 2502.20082 Table 2). The
templates, needle sentence and answer prefixes follow RULER's ``synthetic`` configs
(including its spelling "assgined", kept so prompts match published runs):

- ``niah_single``: one needle (key → 7-digit value) in the haystack, one query;
- ``niah_multikey``: the needle plus 3 distractor needles with other keys;
- ``niah_multivalue``: one key with 4 values, all asked for;
- ``niah_multiquery``: 4 keys, all asked for;
- ``vt``: variable tracking, a chain ``VAR A = 12345 … VAR E = VAR D`` hidden in noise;
- ``cwe``: common-words extraction from a numbered word list (10 words ×30, others ×3);
- ``fwe``: frequent-words extraction from Zipf-distributed coded words (α = 2).

Every task returns exactly ``length`` tokens or fewer (the fill is greedy at item
granularity), prompt = template + RULER's answer prefix, answer tokens labelled.
Scoring is RULER's ``string_match_all`` (fraction of ``answers`` found in the output,
case-insensitive) for all seven tasks — RULER uses ``string_match_part`` only for QA —
and is recorded as ``meta["metric"] = "all"``.
"""

from __future__ import annotations

import itertools
import math
import random
import string
from collections.abc import Callable

from longctx.data.corpus import english_words
from longctx.data.errors import DataError
from longctx.data.haystack import bos_ids, budget, encode, haystack, insert_needles, make_sample
from longctx.data.needle import INTRO, draw_keys, draw_values, join_keys, needle_sentence
from longctx.data.samples import SyntheticSample


def _rng(task: str, seed: int) -> random.Random:
    """A generator per (task, seed), so two tasks with one seed do not share their draws."""
    return random.Random(f"{task}:{seed}")


def _niah(tokenizer, length, seed, depth, haystack_ids, *, task, n_keys=1, n_values=1, n_queries=1):
    """Needles for ``n_keys`` keys (``n_values`` each); the first ``n_queries`` keys are asked."""
    rng = _rng(task, seed)
    keys = draw_keys(rng, n_keys)
    values = draw_values(rng, n_keys * n_values)
    pairs = [(k, values[i * n_values + j]) for i, k in enumerate(keys) for j in range(n_values)]
    needles = [encode(tokenizer, " " + needle_sentence(k, v)) for k, v in pairs]
    depths = [depth] + [rng.random() for _ in pairs[1:]]
    asked = keys[:n_queries]
    answers = [v for k, v in pairs if k in asked]
    query = join_keys(asked)
    head = bos_ids(tokenizer) + encode(tokenizer, INTRO)
    tail = encode(
        tokenizer,
        f"\nWhat are all the special magic numbers for {query} mentioned in the provided text?"
        f" The special magic numbers for {query} mentioned in the provided text are",
    )
    answer = encode(tokenizer, " " + ", ".join(answers))
    n_hay = budget(task, length, len(head) + sum(map(len, needles)) + len(tail) + len(answer))
    text, starts = insert_needles(tokenizer, haystack(tokenizer, n_hay, haystack_ids, task), needles, depths)
    meta = {"seed": seed, "metric": "all", "keys": keys, "query": asked, "depths": depths,
            "needle_positions": [len(head) + s for s in starts]}  # fmt: skip
    return make_sample(task, length, head + text + tail, answer, answers, depth, meta)


def niah_single(tokenizer, length, seed, *, depth=0.5, haystack_ids=None) -> SyntheticSample:
    return _niah(tokenizer, length, seed, depth, haystack_ids, task="niah_single")


def niah_multikey(tokenizer, length, seed, *, depth=0.5, haystack_ids=None) -> SyntheticSample:
    return _niah(tokenizer, length, seed, depth, haystack_ids, task="niah_multikey", n_keys=4)


def niah_multivalue(tokenizer, length, seed, *, depth=0.5, haystack_ids=None) -> SyntheticSample:
    return _niah(tokenizer, length, seed, depth, haystack_ids, task="niah_multivalue", n_values=4)


def niah_multiquery(tokenizer, length, seed, *, depth=0.5, haystack_ids=None) -> SyntheticSample:
    return _niah(tokenizer, length, seed, depth, haystack_ids, task="niah_multiquery", n_keys=4, n_queries=4)


def vt(tokenizer, length, seed, *, depth=0.5, haystack_ids=None, hops: int = 4) -> SyntheticSample:
    """Variable tracking: one chain of ``hops`` re-assignments; the first at ``depth``."""
    rng = _rng("vt", seed)
    names: list[str] = []
    while len(names) < hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        names += [name] if name not in names else []
    value = str(rng.randint(10_000, 99_999))
    lines = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in itertools.pairwise(names)]
    needles = [encode(tokenizer, " " + line) for line in lines]
    depths = sorted([depth] + [rng.uniform(depth, 1.0) for _ in range(hops)])
    head = bos_ids(tokenizer) + encode(
        tokenizer, "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    )
    tail = encode(
        tokenizer,
        f"\nQuestion: Find all variables that are assigned the value {value} in the text above."
        f" Answer: According to the chain(s) of variable assignment in the text above, {len(names)} variables"
        f" are assgined the value {value}, they are:",
    )
    answer = encode(tokenizer, " " + " ".join(names))
    n_hay = budget("vt", length, len(head) + sum(map(len, needles)) + len(tail) + len(answer))
    text, starts = insert_needles(tokenizer, haystack(tokenizer, n_hay, haystack_ids, "vt"), needles, depths)
    meta = {"seed": seed, "metric": "all", "value": value, "depths": depths,
            "needle_positions": [len(head) + s for s in starts]}  # fmt: skip
    return make_sample("vt", length, head + text + tail, answer, names, depth, meta)


def _encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def _largest_fit(cost: Callable[[int], int], room: int, upper: int) -> int | None:
    """Largest m in [0, upper] with ``cost(m) ≤ room`` (cost non-decreasing); None if none."""
    if cost(0) > room:
        return None
    low, high = 0, upper
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if cost(mid) <= room else (low, mid - 1)
    return low


CWE_LEVELS = ((30, 3), (60, 6), (120, 12), (240, 24), (480, 48))
"""(common, uncommon) frequencies: RULER's long setting first; when the word list runs out
before the length is filled, both grow together (ratio kept at 10)."""
CWE_SHORT = (2, 1)
"""RULER's setting for contexts too short to hold 10 words ×30."""


def _cwe_plan(word_len: list[int], number_cum: list[int], room: int) -> tuple[int, int, int]:
    """(common freq, uncommon freq, number of uncommon words) filling ``room`` tokens."""
    common_len, uncommon_cum = sum(word_len[:10]), [0]
    for n in word_len[10:]:
        uncommon_cum.append(uncommon_cum[-1] + n)
    n_uncommon, best = len(word_len) - 10, None

    def cost_at(f_cw, f_ucw):
        def cost(m):
            items = 10 * f_cw + f_ucw * m
            return (
                room + 1
                if items >= len(number_cum)
                else f_cw * common_len + f_ucw * uncommon_cum[m] + number_cum[items]
            )

        return cost

    for f_cw, f_ucw in CWE_LEVELS:
        m = _largest_fit(cost_at(f_cw, f_ucw), room, n_uncommon)
        if m is None:
            break
        best = (f_cw, f_ucw, m)
        if m < n_uncommon:
            break
    if best is None:
        m = _largest_fit(cost_at(*CWE_SHORT), room, n_uncommon)
        if m is None:
            raise DataError(f"cwe: {room} tokens cannot hold 10 common words twice; expected a longer length")
        best = (*CWE_SHORT, m)
    return best


def cwe(tokenizer, length, seed, *, depth=0.5, haystack_ids=None) -> SyntheticSample:
    """Common-words extraction; ``depth``/``haystack_ids`` do not apply (the list is the context)."""
    rng = _rng("cwe", seed)
    words = english_words()
    rng.shuffle(words)
    head = bos_ids(tokenizer) + encode(
        tokenizer,
        "Below is a numbered list of words. In these words, some appear more often than others."
        " Memorize the ones that appear most often.\n",
    )
    tail = encode(
        tokenizer,
        "\nQuestion: What are the 10 most common words in the above list?"
        " Answer: The top 10 words that appear most often in the list are:",
    )
    answer = encode(tokenizer, " " + ", ".join(words[:10]))
    room = budget("cwe", length, len(head) + len(tail) + len(answer))
    word_ids = _encode_many(tokenizer, [" " + w for w in words])
    number_ids = _encode_many(tokenizer, [f" {k}." for k in range(1, room // 2 + 2)])
    number_cum = [0]
    for ids in number_ids:
        number_cum.append(number_cum[-1] + len(ids))
    f_cw, f_ucw, m = _cwe_plan([len(ids) for ids in word_ids], number_cum, room)
    items = list(range(10)) * f_cw + list(range(10, 10 + m)) * f_ucw
    rng.shuffle(items)
    context = [t for k, w in enumerate(items) for t in number_ids[k] + word_ids[w]]
    meta = {"seed": seed, "metric": "all", "freq_common": f_cw, "freq_uncommon": f_ucw, "n_uncommon": m}
    return make_sample("cwe", length, head + context + tail, answer, words[:10], 0.0, meta)


FWE_ALPHA = 2.0
FWE_VOCAB = 2000
FWE_WORD_LEN = 6
"""RULER's fwe defaults: Zipf exponent, number of coded words, letters per coded word."""


def _fwe_counts(n_words: int) -> list[int]:
    zeta = math.pi**2 / 6  # ζ(2); RULER uses scipy.special.zeta(α)
    return [int(n_words * k**-FWE_ALPHA / zeta) for k in range(1, FWE_VOCAB + 1)]


def fwe(tokenizer, length, seed, *, depth=0.5, haystack_ids=None) -> SyntheticSample:
    """Frequent-words extraction; rank 1 is the noise word "...", answers are ranks 2–4."""
    rng = _rng("fwe", seed)
    vocab: list[str] = []
    while len(vocab) < FWE_VOCAB:
        word = "".join(rng.choices(string.ascii_lowercase, k=FWE_WORD_LEN))
        vocab += [word] if word not in vocab else []
    vocab[0] = "...."
    head = bos_ids(tokenizer) + encode(
        tokenizer,
        "Read the following coded text and track the frequency of each coded word."
        " Find the three most frequently appeared coded words.",
    )
    tail = encode(
        tokenizer,
        "\nQuestion: Do not provide any explanation. Please ignore the dots '....'."
        " What are the three most frequently appeared words in the above coded text?"
        " Answer: According to the coded text above, the three most frequently appeared words are:",
    )
    answer = encode(tokenizer, " " + " ".join(vocab[1:4]))
    room = budget("fwe", length, len(head) + len(tail) + len(answer))
    word_ids = _encode_many(tokenizer, [" " + w for w in vocab])

    def cost(n_words: int) -> int:
        return sum(c * len(ids) for c, ids in zip(_fwe_counts(n_words), word_ids))

    n_words = _largest_fit(cost, room, room) or 0
    counts = _fwe_counts(n_words)
    if not counts[1] > counts[2] > counts[3] > counts[4]:
        raise DataError(
            f"fwe: length={length} leaves too few words to rank the top 3; expected a longer length"
        )
    items = [w for w, c in enumerate(counts) for _ in range(c)]
    rng.shuffle(items)
    context = [t for w in items for t in word_ids[w]]
    meta = {"seed": seed, "metric": "all", "n_words": len(items), "counts_top5": counts[:5]}
    return make_sample("fwe", length, head + context + tail, answer, vocab[1:4], 0.0, meta)


RULER_TASKS: dict[str, Callable[..., SyntheticSample]] = {
    "niah_single": niah_single,
    "niah_multikey": niah_multikey,
    "niah_multivalue": niah_multivalue,
    "niah_multiquery": niah_multiquery,
    "vt": vt,
    "cwe": cwe,
    "fwe": fwe,
}
"""Registry: ``(tokenizer, length, seed, *, depth=0.5, haystack_ids=None) -> SyntheticSample``."""


def ruler_sample(task: str, tokenizer, length: int, seed: int, **kw) -> SyntheticSample:
    """One sample of the named RULER task (see :data:`RULER_TASKS`)."""
    if task not in RULER_TASKS:
        raise DataError(f"ruler task {task!r}: unknown; expected one of {sorted(RULER_TASKS)}")
    return RULER_TASKS[task](tokenizer, length, seed, **kw)
