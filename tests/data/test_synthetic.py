"""Synthetic generators: exact budgets, answers inside the length, loss only on answers, seeded."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

from longctx.data.errors import DataError
from longctx.data.ruler import RULER_13, RULER_QA
from longctx.data.samples import IGNORE_INDEX
from longctx.data.synthetic import needle_ppl_sample, passkey_sample, ruler_sample
from tests.tiny import tiny_config, tiny_model


def _answer_text(tok, sample):
    return tok.decode(sample.input_ids[sample.prompt_len :])


def _check_labels_only_on_answer(sample):
    assert len(sample.input_ids) <= sample.length
    labelled = [i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX]
    assert labelled == list(range(sample.prompt_len, len(sample.input_ids)))
    assert sample.labels[sample.prompt_len :] == sample.input_ids[sample.prompt_len :]


@pytest.mark.parametrize(("length", "depth"), [(200, 0.0), (500, 0.5), (2000, 1.0), (3000, 0.3)])
def test_passkey_exact_length_key_at_depth(demo_tokenizer, length, depth):
    s = passkey_sample(demo_tokenizer, length, depth, seed=length)
    key = s.answers[0]
    assert len(s.input_ids) == length and re.fullmatch(r"\d{5}", key)
    text = demo_tokenizer.decode(s.input_ids)
    assert text.count(key) == 3  # twice in the information line, once as the answer
    prompt = demo_tokenizer.decode(s.input_ids[: s.prompt_len])
    assert prompt.endswith("What is the pass key? The pass key is")
    assert _answer_text(demo_tokenizer, s).strip() == key
    _check_labels_only_on_answer(s)
    before, after = text.split(f"The pass key is {key}. Remember it.")
    n_before, n_after = before.count("The sky is blue"), after.count("The sky is blue")
    assert abs(n_before - depth * (n_before + n_after)) <= 1  # depth is a fraction of the filler


def test_passkey_is_seeded(demo_tokenizer):
    a, b = passkey_sample(demo_tokenizer, 400, 0.5, 7), passkey_sample(demo_tokenizer, 400, 0.5, 7)
    assert a == b
    assert passkey_sample(demo_tokenizer, 400, 0.5, 8).answers != a.answers
    with pytest.raises(DataError, match=r"passkey: length=20 is too short; expected ≥ \d+ tokens"):
        passkey_sample(demo_tokenizer, 20, 0.5, 0)


def test_needle_ppl_answer_inside_length_and_needles_at_depths(demo_tokenizer, kjv_lists):
    depths = [0.8, 0.2, 0.5]
    s = needle_ppl_sample(demo_tokenizer, kjv_lists[0], 1024, depths, seed=3)
    assert len(s.input_ids) == 1024 and s.task == "needle_ppl"
    _check_labels_only_on_answer(s)
    assert _answer_text(demo_tokenizer, s) == " " + ", ".join(s.answers)
    positions = s.meta["needle_positions"]
    assert sorted(positions, key=lambda p: depths[positions.index(p)]) == sorted(positions)
    for key, value, pos in zip(s.meta["keys"], s.answers, positions):
        needle = demo_tokenizer.decode(s.input_ids[pos : pos + 40])
        assert needle.startswith(f" One of the special magic numbers for {key} is: {value}.")
    body = demo_tokenizer.decode(s.input_ids[: s.prompt_len])
    assert "In the beginning God created" in body  # the haystack is the real document


def test_needle_ppl_loss_counts_only_answer_tokens(demo_tokenizer, kjv_lists):
    s = needle_ppl_sample(demo_tokenizer, kjv_lists[1], 256, [0.5], seed=0)
    model = tiny_model(tiny_config(vocab_size=len(demo_tokenizer), max_position_embeddings=256))
    ids, labels = torch.tensor([s.input_ids]), torch.tensor([s.labels])
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
        logp = out.logits[0, :-1].log_softmax(-1)  # [seq-1, vocab]: position t predicts t+1
    targets = range(s.prompt_len, len(s.input_ids))
    manual = -torch.stack([logp[t - 1, s.input_ids[t]] for t in targets]).mean()
    torch.testing.assert_close(out.loss, manual, atol=1e-5, rtol=0)


def test_needle_ppl_rejects_a_short_document(demo_tokenizer):
    with pytest.raises(DataError, match=r"needle_ppl: document has 3 tokens; expected ≥ \d+"):
        needle_ppl_sample(demo_tokenizer, [1, 50, 60, 70, 2], 512, [0.5], seed=0)


def _context(tok, s):
    return tok.decode(s.input_ids[: s.prompt_len])


@pytest.mark.parametrize("task", [t for t in RULER_13 if t not in RULER_QA])  # QA: test_ruler_tasks.py
@pytest.mark.parametrize("length", [700, 4096])
def test_ruler_tasks_fit_and_answers_are_recoverable(demo_tokenizer, task, length):
    s = ruler_sample(task, demo_tokenizer, length, seed=11)
    assert length - 16 <= len(s.input_ids) <= length and s.task == task
    assert s.meta["metric"] == "all"
    _check_labels_only_on_answer(s)
    assert s == ruler_sample(task, demo_tokenizer, length, seed=11)
    assert s.input_ids != ruler_sample(task, demo_tokenizer, length, seed=12).input_ids
    context = _context(demo_tokenizer, s)
    answer = _answer_text(demo_tokenizer, s)
    assert all(a in answer for a in s.answers)
    if task.startswith("niah"):
        for key, value in re.findall(r"special magic (?:numbers|uuids) for ([\w-]+) is: ([\w-]+)\.", context):
            assert (value in s.answers) == (key in s.meta["query"])
        assert all(f"is: {a}." in context for a in s.answers)
        expected = {"niah_multivalue": 4, "niah_multiquery": 4}.get(task, 1)
        assert len(s.answers) == expected
    elif task == "vt":
        chain = re.findall(r"VAR (\w+) = (?:VAR )?(\w+)\.", context)
        assert [c[0] for c in chain] == list(s.answers) and chain[0][1] == s.meta["value"]
    elif task == "cwe":
        counts = Counter(re.findall(r"\d+\. ([a-z]+)", context.split("\nQuestion")[0]))
        top = [w for w, _ in counts.most_common(10)]
        assert set(top) == set(s.answers) and counts.most_common(11)[-1][1] < counts[s.answers[-1]]
    else:  # fwe: rank 1 is the noise "....", answers are ranks 2-4
        counts = Counter(context.split("\nQuestion")[0].split()[-s.meta["n_words"] :])
        assert [w for w, _ in counts.most_common(4)] == ["....", *s.answers]


def test_ruler_haystack_document_and_unknown_task(demo_tokenizer, kjv_lists):
    s = ruler_sample("niah_multikey", demo_tokenizer, 1500, seed=0, haystack_ids=kjv_lists[0])
    assert "In the beginning God created" in _context(demo_tokenizer, s)
    assert len(re.findall(r"special magic numbers for \w+ is:", _context(demo_tokenizer, s))) == 4
    with pytest.raises(DataError, match="unknown; expected one of"):
        ruler_sample("qa_squad", demo_tokenizer, 1000, seed=0)
