"""RULER's eight needle-in-a-haystack tasks (Hsieh et al., arXiv 2404.06654 §3.1, Table 2).

One generator, eight configurations — RULER's ``niah.py`` with the arguments of its
``synthetic.yaml``:

=================  ==========  ======  ========  =============================================
task               haystack    keys    values    needles
=================  ==========  ======  ========  =============================================
niah_single_1      noise       words   numbers   1 key, 1 value, asked
niah_single_2      essay       words   numbers   1 key, 1 value, asked
niah_single_3      essay       words   uuids     1 key, 1 value, asked
niah_multikey_1    essay       words   numbers   4 keys (3 distractor needles), 1 asked
niah_multikey_2    needle      words   numbers   1 asked; the haystack is made only of needles
niah_multikey_3    needle      uuids   uuids     as multikey_2 with uuid keys and values
niah_multivalue    essay       words   numbers   1 key with 4 values, all asked
niah_multiquery    essay       words   numbers   4 keys, all asked
=================  ==========  ======  ========  =============================================

- "noise" is RULER's ``repeat`` haystack (the passkey filler sentence, repeated);
- "essay" is RULER's Paul Graham essays; offline it is the KJV (``data.corpus`` "kjv"), read
  from its start as RULER reads the essays (cycled past its end, ~1M tokens); a caller's
  ``haystack_ids`` (a tokenised document) replaces it;
- "needle" is a haystack of needle sentences with other keys and values, one per line.

Numbers have 7 digits; uuids are random version-4 UUIDs; word keys are real English words
(``data.needle.draw_keys``). Each needle goes at a depth drawn from RULER's 40 evenly spaced
depths (``depth`` fixes the first needle's instead), snapped back to a sentence start (in
a needle haystack: between two lines). The
prompt is RULER's template with its answer prefix, in the singular form RULER uses when one
value is asked ("A special magic number is hidden …"). Every sample is exactly ``length``
tokens: the haystack is cut at the token that fills the budget.
"""

from __future__ import annotations

import functools
import math
import random
import uuid
from collections.abc import Callable

from longctx.data.corpus import english_words, load_demo_corpus
from longctx.data.haystack import bos_ids, budget, encode, haystack, insert_needles, make_sample
from longctx.data.needle import draw_keys, draw_values, join_keys
from longctx.data.samples import SyntheticSample

RULER_DEPTHS = tuple(round(100 * i / 39) / 100 for i in range(40))
"""RULER's needle depths: ``np.round(np.linspace(0, 100, 40))`` percent, as fractions."""

NIAH_CONFIGS: dict[str, dict] = {
    "niah_single_1": {"haystack": "noise", "key": "words", "value": "numbers", "k": 1, "v": 1, "q": 1},
    "niah_single_2": {"haystack": "essay", "key": "words", "value": "numbers", "k": 1, "v": 1, "q": 1},
    "niah_single_3": {"haystack": "essay", "key": "words", "value": "uuids", "k": 1, "v": 1, "q": 1},
    "niah_multikey_1": {"haystack": "essay", "key": "words", "value": "numbers", "k": 4, "v": 1, "q": 1},
    "niah_multikey_2": {"haystack": "needle", "key": "words", "value": "numbers", "k": 1, "v": 1, "q": 1},
    "niah_multikey_3": {"haystack": "needle", "key": "uuids", "value": "uuids", "k": 1, "v": 1, "q": 1},
    "niah_multivalue": {"haystack": "essay", "key": "words", "value": "numbers", "k": 1, "v": 4, "q": 1},
    "niah_multiquery": {"haystack": "essay", "key": "words", "value": "numbers", "k": 4, "v": 1, "q": 4},
}
"""RULER's ``synthetic.yaml`` niah arguments: haystack type, key and value types, needle keys
(``k``), values per key (``v``) and keys asked (``q``)."""


def rng_for(task: str, seed: int) -> random.Random:
    """A generator per (task, seed), so two tasks with one seed do not share their draws."""
    return random.Random(f"{task}:{seed}")


def encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, encoded in one batch (no special tokens)."""
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def draw_items(rng: random.Random, kind: str, n: int, taken=()) -> list[str]:
    """``n`` distinct keys or values of RULER's type ``kind``, none of them in ``taken``."""
    out: list[str] = []
    while len(out) < n:
        if kind == "uuids":
            item = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        elif kind == "numbers":
            item = draw_values(rng, 1)[0]
        else:
            item = draw_keys(rng, 1)[0]
        if item not in taken and item not in out:
            out.append(item)
    return out


def needle_text(kind: str, key: str, value: str) -> str:
    """RULER's needle: "One of the special magic {numbers|uuids} for {key} is: {value}."."""
    return f"One of the special magic {kind} for {key} is: {value}."


def niah_prompt(kind: str, query: str, single: bool) -> tuple[str, str]:
    """RULER's niah template around the context, ending in its answer prefix.

    With one asked value RULER rewrites it in the singular ("Some"→"A", "are all"/"are"→"is",
    "numbers"→"number")."""
    if single:
        kind = kind[:-1]
        return (
            f"A special magic {kind} is hidden within the following text. Make sure to memorize it."
            f" I will quiz you about the {kind} afterwards.\n",
            f"\nWhat is the special magic {kind} for {query} mentioned in the provided text?"
            f" The special magic {kind} for {query} mentioned in the provided text is",
        )
    return (
        f"Some special magic {kind} are hidden within the following text. Make sure to memorize it."
        f" I will quiz you about the {kind} afterwards.\n",
        f"\nWhat are all the special magic {kind} for {query} mentioned in the provided text?"
        f" The special magic {kind} for {query} mentioned in the provided text are",
    )


@functools.lru_cache(maxsize=1)
def _kjv_paragraphs() -> tuple[str, ...]:
    return tuple(p for doc in load_demo_corpus("kjv") for p in doc.split("\n\n") if p.strip())


_ESSAY_IDS: dict[int, tuple[object, list[int], int]] = {}
"""id(tokenizer) → (the tokenizer, KJV token ids so far, paragraphs encoded); holding the
tokenizer keeps its id from being reused while cached."""


def essay_haystack(tokenizer, n: int) -> list[int]:
    """The first ``n`` tokens of the KJV (paragraphs encoded once per tokenizer, cycled)."""
    paragraphs = _kjv_paragraphs()
    _, ids, used = _ESSAY_IDS.get(id(tokenizer), (tokenizer, [], 0))
    while len(ids) < n:
        batch = [paragraphs[(used + i) % len(paragraphs)] + "\n\n" for i in range(16)]
        for piece in encode_many(tokenizer, batch):
            ids.extend(piece)
        used += len(batch)
    if id(tokenizer) not in _ESSAY_IDS and len(_ESSAY_IDS) >= 4:
        _ESSAY_IDS.pop(next(iter(_ESSAY_IDS)))
    _ESSAY_IDS[id(tokenizer)] = (tokenizer, ids, used)
    return ids[:n]


def _distractor(rng: random.Random, kind: str, taken, words) -> str:
    if kind != "words":
        return draw_items(rng, kind, 1, taken)[0]
    item = rng.choice(words)
    while item in taken:
        item = rng.choice(words)
    return item


def needle_haystack(tokenizer, n: int, rng: random.Random, cfg: dict, keys, values) -> list[list[int]]:
    """Lines of distractor needles (``"…\\n"``) of ``n`` tokens in all, the last line cut to fit.

    Their keys and values are never the asked ones (RULER draws them at random; distinctness
    is enforced here so that no distractor answers the question)."""
    words = english_words()
    lines: list[list[int]] = []
    total, per_line = 0, None
    while total < n:
        count = 1 if per_line is None else math.ceil((n - total) / per_line) + 1
        texts = [
            needle_text(cfg["value"], _distractor(rng, cfg["key"], keys, words),
                        _distractor(rng, cfg["value"], values, words)) + "\n"
            for _ in range(count)
        ]  # fmt: skip
        for ids in encode_many(tokenizer, texts):
            per_line = per_line or max(1, len(ids))
            if total < n:
                lines.append(ids[: n - total])
                total += len(lines[-1])
    return lines


def _insert_lines(lines: list[list[int]], needles: list[list[int]], depths) -> tuple[list[int], list[int]]:
    """Needles between whole lines (RULER inserts them among the haystack's sentences), each before
    line ``round(depth × lines)`` (never after the cut last line); returns ids and needle starts."""
    slots = [min(round(d * len(lines)), len(lines) - 1) for d in depths]
    out: list[int] = []
    starts = [0] * len(needles)
    previous = 0
    for i in sorted(range(len(needles)), key=lambda i: (slots[i], i)):
        out += [t for line in lines[previous : slots[i]] for t in line]
        starts[i] = len(out)
        out += needles[i]
        previous = slots[i]
    return out + [t for line in lines[previous:] for t in line], starts


def _niah(tokenizer, length, seed, depth, haystack_ids, *, task) -> SyntheticSample:
    cfg = NIAH_CONFIGS[task]
    rng = rng_for(task, seed)
    keys = draw_items(rng, cfg["key"], cfg["k"])
    values = draw_items(rng, cfg["value"], cfg["k"] * cfg["v"])
    pairs = [(k, values[i * cfg["v"] + j]) for i, k in enumerate(keys) for j in range(cfg["v"])]
    line = "{}\n" if cfg["haystack"] == "needle" else " {}"
    needles = [encode(tokenizer, line.format(needle_text(cfg["value"], k, v))) for k, v in pairs]
    depths = rng.sample(RULER_DEPTHS, len(pairs))
    if depth is not None:
        depths[0] = depth
    asked = keys[: cfg["q"]]
    answers = [v for k, v in pairs if k in asked]
    intro, question = niah_prompt(cfg["value"], join_keys(asked), single=len(answers) == 1)
    head = bos_ids(tokenizer) + encode(tokenizer, intro)
    tail = encode(tokenizer, question)
    answer = encode(tokenizer, " " + ", ".join(answers))
    n_hay = budget(task, length, len(head) + sum(map(len, needles)) + len(tail) + len(answer))
    kind = cfg["haystack"] if haystack_ids is None or cfg["haystack"] == "needle" else "document"
    if kind == "needle":
        lines = needle_haystack(tokenizer, n_hay, rng, cfg, set(keys), set(values))
        text, starts = _insert_lines(lines, needles, depths)
    else:  # at sentence starts of the essay, the noise or the caller's document
        hay = (
            essay_haystack(tokenizer, n_hay)
            if kind == "essay"
            else haystack(tokenizer, n_hay, haystack_ids, task)
        )
        text, starts = insert_needles(tokenizer, hay, needles, depths)
    meta = {"seed": seed, "metric": "all", "haystack": kind,
            "keys": keys, "query": asked, "depths": depths,
            "needle_positions": [len(head) + s for s in starts]}  # fmt: skip
    return make_sample(task, length, head + text + tail, answer, answers, depths[0], meta)


def _niah_task(task: str) -> Callable[..., SyntheticSample]:
    def generate(tokenizer, length, seed, *, depth=None, haystack_ids=None) -> SyntheticSample:
        return _niah(tokenizer, length, seed, depth, haystack_ids, task=task)

    generate.__name__ = generate.__qualname__ = task
    generate.__doc__ = f"RULER ``{task}``: {NIAH_CONFIGS[task]} (see the module docstring)."
    return generate


NIAH_TASKS: dict[str, Callable[..., SyntheticSample]] = {task: _niah_task(task) for task in NIAH_CONFIGS}
"""``(tokenizer, length, seed, *, depth=None, haystack_ids=None) -> SyntheticSample`` per niah task;
``haystack_ids`` does not apply to the needle haystacks (multikey_2/3)."""
