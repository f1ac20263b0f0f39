"""RULER's 13 tasks (Hsieh et al., arXiv 2404.06654 §3, Table 2), with their expected answers.

RULER measures a model's *effective* context with tasks whose answer is known exactly;
papers report the average of its 13 tasks per length (LongRoPE2 arXiv 2502.20082 Table 2).
The templates, needle sentence and answer prefixes follow RULER's ``synthetic`` configs
(including its spelling "assgined", kept so prompts match published runs):

- retrieval, 8 needle-in-a-haystack variants (``data.ruler_niah``): ``niah_single_1/2/3``,
  ``niah_multikey_1/2/3``, ``niah_multivalue``, ``niah_multiquery``;
- multi-hop tracing, ``vt``: variable tracking, a chain ``VAR A = 12345 … VAR E = VAR D``
  hidden in noise (1 chain, 4 hops);
- aggregation, ``cwe``: common-words extraction from a numbered word list (10 words ×30,
  others ×3); ``fwe``: frequent-words extraction from Zipf-distributed coded words (α = 2);
- question answering, ``qa_1`` (SQuAD) and ``qa_2`` (HotpotQA): the gold paragraph(s) of a
  question among distractor paragraphs. RULER ships the datasets; offline they come from
  local records (:func:`qa_record` reads either format), and without records the QA tasks
  are not generated — the scorer reports them as not run.

Everything but QA is generated from the package's offline text (KJV, its word list), seeded.
niah and vt samples are exactly ``length`` tokens; cwe, fwe and qa fill greedily at item
granularity (``≤ length``). Prompt = template + RULER's answer prefix; the answer tokens are
labelled (qa: none, the prompt ends at "Answer:"). Scoring (``meta["metric"]``): RULER's
``string_match_all`` ("all": fraction of ``answers`` found) for the 11 synthetic tasks,
``string_match_part`` ("part": any answer found) for qa_1/qa_2.

Names: :data:`RULER_TASKS` holds the 13 tasks and two aliases kept for existing callers
(``niah_single`` → ``niah_single_1``, ``niah_multikey`` → ``niah_multikey_1``, see
:data:`RULER_ALIASES`); :data:`RULER_13` is the suite, each task once.
"""

from __future__ import annotations

import itertools
import math
import random
import string
from collections.abc import Callable, Sequence

from longctx.data.corpus import english_words
from longctx.data.errors import DataError
from longctx.data.haystack import bos_ids, budget, encode, haystack, insert_needles, make_sample
from longctx.data.ruler_niah import NIAH_TASKS, encode_many, rng_for
from longctx.data.samples import IGNORE_INDEX, SyntheticSample


def vt(tokenizer, length, seed, *, depth=None, haystack_ids=None, hops: int = 4) -> SyntheticSample:
    """Variable tracking: one chain of ``hops`` re-assignments at random sorted depths (RULER);
    ``depth`` fixes the first one and puts the others after it."""
    rng = rng_for("vt", seed)
    names: list[str] = []
    while len(names) < hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        names += [name] if name not in names else []
    value = str(rng.randint(10_000, 99_999))
    lines = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in itertools.pairwise(names)]
    needles = [encode(tokenizer, " " + line) for line in lines]
    if depth is None:
        depths = sorted(rng.random() for _ in range(hops + 1))
    else:
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
    return make_sample("vt", length, head + text + tail, answer, names, depths[0], meta)


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


def cwe(tokenizer, length, seed, *, depth=None, haystack_ids=None) -> SyntheticSample:
    """Common-words extraction; ``depth``/``haystack_ids`` do not apply (the list is the context)."""
    rng = rng_for("cwe", seed)
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
    word_ids = encode_many(tokenizer, [" " + w for w in words])
    number_ids = encode_many(tokenizer, [f" {k}." for k in range(1, room // 2 + 2)])
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


def fwe(tokenizer, length, seed, *, depth=None, haystack_ids=None) -> SyntheticSample:
    """Frequent-words extraction; rank 1 is the noise word "...", answers are ranks 2–4."""
    rng = rng_for("fwe", seed)
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
    word_ids = encode_many(tokenizer, [" " + w for w in vocab])

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


QA_TEMPLATE = (
    "Answer the question based on the given documents. Only give me the answer and do not output "
    "any other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based "
    "on the given documents. Only give me the answer and do not output any other words.\n\n"
    "Question: {query} Answer:"
)
"""RULER's ``qa`` template (``scripts/data/synthetic/constants.py``); documents are
``"Document {i}:\\n{text}"`` joined by blank lines."""

RULER_QA = {"qa_1": "SQuAD", "qa_2": "HotpotQA"}
"""RULER's QA tasks and the dataset format each is built from."""


def _answers(rec: dict) -> list[str]:
    got = rec.get("answers", rec.get("answer"))
    if isinstance(got, str):
        return [got]
    if isinstance(got, dict):  # HF squad: {"text": [...], "answer_start": [...]}
        return [str(a) for a in got.get("text", [])]
    if isinstance(got, list):  # plain strings, or SQuAD's [{"text", "answer_start"}]
        return [a["text"] if isinstance(a, dict) else str(a) for a in got]
    return []


def qa_record(rec: dict, where: str = "qa record") -> dict | None:
    """One QA record of either format as ``{task, question, answers, documents, title}``.

    - SQuAD-style → ``qa_1``: ``context`` is one paragraph (a string); ``answers`` a list of
      strings, SQuAD's ``[{"text": …}]`` or HF's ``{"text": [...]}``; ``title`` (optional)
      groups paragraphs of one article (RULER's preferred distractors);
    - HotpotQA-style → ``qa_2``: ``answer`` a string; ``context`` the paragraphs as
      ``[[title, [sentences]], …]`` or HF's ``{"title": [...], "sentences": [[...], ...]}``;
      each becomes the document ``"{title}\\n{sentences joined}"`` (RULER's ``read_hotpotqa``).

    ``documents`` (a list of paragraph strings) may replace ``context``. A ``task`` field
    ("qa_1"/"qa_2") overrides the inferred one. Unanswerable records (SQuAD
    2.0 ``is_impossible``, no answer) give None: RULER skips them.
    """
    if not isinstance(rec, dict) or "question" not in rec:
        raise DataError(f"{where}: no 'question' field; expected a SQuAD- or HotpotQA-format record")
    ctx = rec.get("documents", rec.get("context"))
    if isinstance(ctx, str):
        task, docs = "qa_1", [ctx]
    elif isinstance(ctx, dict) and "title" in ctx and "sentences" in ctx:
        task, docs = "qa_2", [f"{t}\n{''.join(s)}" for t, s in zip(ctx["title"], ctx["sentences"])]
    elif isinstance(ctx, list) and ctx:
        task = "qa_2"
        docs = [d if isinstance(d, str) else f"{d[0]}\n{''.join(d[1])}" for d in ctx]
    else:
        raise DataError(f"{where}: 'context' is {type(ctx).__name__}; expected a string (SQuAD) or HotpotQA "
                        "paragraphs ([[title, sentences], ...] or {title: [...], sentences: [[...], ...]})")  # fmt: skip
    task = rec.get("task", task)
    if task not in RULER_QA:
        raise DataError(f"{where}: task {task!r}; expected one of {list(RULER_QA)}")
    answers = _answers(rec)
    if rec.get("is_impossible") or not answers:
        return None
    return {"task": task, "question": rec["question"], "answers": answers, "documents": docs,
            "title": rec.get("title")}  # fmt: skip


def qa_tasks(
    records: Sequence[dict], task: str | None = None, *, where: str = "qa record"
) -> dict[str, list[int]]:
    """Indices of the usable records per QA task (``task`` puts them all under one name);
    errors name a record as ``f"{where} {index}"``."""
    groups: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        r = qa_record(rec, f"{where} {i}")
        if r is not None:
            groups.setdefault(task or r["task"], []).append(i)
    return {t: groups[t] for t in sorted(groups)}


def _qa_pool(rng: random.Random, recs: list, index: int, same_task: bool) -> list[str]:
    """Distractor paragraphs for record ``index``: its article's first (RULER's ``more_context``,
    by ``title``), then the others', each group in a seeded order; without duplicates."""
    rec, seen = recs[index], set(recs[index]["documents"])
    near: list[str] = []
    far: list[str] = []
    for j, r in enumerate(recs):
        if r is None or j == index or (same_task and r["task"] != rec["task"]):
            continue
        for doc in r["documents"]:
            if doc not in seen:
                seen.add(doc)
                (near if rec["title"] is not None and r["title"] == rec["title"] else far).append(doc)
    rng.shuffle(near)
    rng.shuffle(far)
    return near + far


def qa_sample(tokenizer, records: Sequence[dict], index: int, length: int, seed: int, *, task=None):
    """RULER ``qa`` sample: record ``index``'s gold paragraph(s) among distractors, ``≤ length`` tokens.

    ``records``: SQuAD- or HotpotQA-format dicts (see :func:`qa_record`); the distractors are the
    other records' paragraphs (of the same format unless ``task`` names one for all), as many as
    fit; all documents are then shuffled (seeded), as RULER does. ``task`` defaults to the
    record's format ("qa_1" SQuAD, "qa_2" HotpotQA). Scored by ``string_match_part``.
    """
    recs = [qa_record(r, f"qa data record {i}") for i, r in enumerate(records)]
    rec = recs[index]
    if rec is None:
        raise DataError(
            f"qa data record {index}: has no answer (unanswerable); expected an answerable record"
        )
    task = task or rec["task"]
    rng = rng_for(task, seed)
    pool = _qa_pool(rng, recs, index, same_task=task == rec["task"])
    bos = bos_ids(tokenizer)

    def build(k: int) -> tuple[list[str], list[int]]:
        docs = rec["documents"] + pool[:k]
        random.Random(f"{task}:{seed}:{k}").shuffle(docs)
        context = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(docs))
        return docs, bos + encode(tokenizer, QA_TEMPLATE.format(context=context, query=rec["question"]))

    docs, ids = build(0)
    if len(ids) > length:
        raise DataError(
            f"qa data record {index}: its own document(s) need {len(ids)} tokens > length {length}"
        )
    costs: list[int] = []  # tokens each distractor adds (estimated on its own)
    room = length - len(ids)
    while sum(costs) <= room and len(costs) < len(pool):
        chunk = pool[len(costs) : len(costs) + 32]
        costs += [len(c) for c in encode_many(tokenizer, [f"\n\nDocument 99:\n{d}" for d in chunk])]
    k = len(list(itertools.takewhile(lambda c: c <= room, itertools.accumulate(costs))))
    docs, ids = build(k)
    while len(ids) > length:  # the estimate missed by a few tokens: drop enough distractors, retry
        over, drop = len(ids) - length, 0
        while k > 0 and drop < over:
            k, drop = k - 1, drop + costs[k - 1]
        docs, ids = build(k)
    gold = [i for i, d in enumerate(docs) if d in rec["documents"]]
    meta = {"metric": "part", "seed": seed, "documents": len(docs), "gold": gold}
    depth = gold[0] / max(1, len(docs) - 1)
    return SyntheticSample(
        ids, [IGNORE_INDEX] * len(ids), len(ids), tuple(rec["answers"]), task, length, depth, meta
    )


def _qa_task(task: str) -> Callable[..., SyntheticSample]:
    def generate(tokenizer, length, seed, *, depth=None, haystack_ids=None, records=None) -> SyntheticSample:
        if not records:
            raise DataError(
                f"{task}: no records; expected local {RULER_QA[task]}-format records (records=...)"
            )
        group = qa_tasks(records).get(task)
        if not group:
            raise DataError(
                f"{task}: none of the {len(records)} records is {RULER_QA[task]}-format and answerable"
            )
        return qa_sample(tokenizer, records, rng_for(task, seed).choice(group), length, seed)

    generate.__name__ = generate.__qualname__ = task
    generate.__doc__ = (
        f"RULER ``{task}`` from local {RULER_QA[task]}-format ``records`` (see :func:`qa_sample`)."
    )
    return generate


RULER_ALIASES = {"niah_single": "niah_single_1", "niah_multikey": "niah_multikey_1"}
"""Former names, kept for callers (``eval.niah``'s default task, recipes' ``ruler_tasks``). The old
``niah_single`` was RULER's niah_single_1 (noise haystack); the old ``niah_multikey`` used the
noise haystack by default, RULER's niah_multikey_1 uses the essay (KJV) one."""

RULER_13: tuple[str, ...] = (*NIAH_TASKS, "vt", "cwe", "fwe", *RULER_QA)
"""RULER's 13 tasks, each once: the suite whose average per length papers report."""

RULER_TASKS: dict[str, Callable[..., SyntheticSample]] = {
    **NIAH_TASKS,
    "vt": vt,
    "cwe": cwe,
    "fwe": fwe,
    **{task: _qa_task(task) for task in RULER_QA},
    **{alias: NIAH_TASKS[name] for alias, name in RULER_ALIASES.items()},
}
"""Registry: ``(tokenizer, length, seed, *, depth=None, haystack_ids=None) -> SyntheticSample``
(qa_1/qa_2 also take ``records=``). Aliases map to the same functions, whose samples carry the
RULER name; resolve names with :func:`canonical_task` before counting tasks."""


def canonical_task(task: str) -> str:
    """RULER's name of ``task`` (aliases resolved; other names unchanged)."""
    return RULER_ALIASES.get(task, task)


def ruler_sample(task: str, tokenizer, length: int, seed: int, **kw) -> SyntheticSample:
    """One sample of the named RULER task (see :data:`RULER_TASKS`)."""
    if task not in RULER_TASKS:
        raise DataError(f"ruler task {task!r}: unknown; expected one of {sorted(RULER_TASKS)}")
    return RULER_TASKS[canonical_task(task)](tokenizer, length, seed, **kw)
