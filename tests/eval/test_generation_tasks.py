"""Passkey / NIAH / RULER scorers on constructed right and wrong outputs, and greedy decoding."""

from __future__ import annotations

import pytest
import torch

from longctx.eval import niah as eval_niah
from longctx.eval import passkey as eval_passkey
from longctx.eval import ruler as eval_ruler
from longctx.eval.generation import clean_prediction, greedy_outputs
from longctx.eval.niah import score_niah
from longctx.eval.passkey import passkey_correct, score_passkey
from longctx.eval.ruler import generation_budget, score_ruler, string_match_all, string_match_part
from tests.eval.conftest import make_sample
from tests.tiny import tiny_config, tiny_model


@pytest.mark.parametrize(
    ("output", "ok"),
    [
        ("12345", True),
        (" The pass key is 12345. Remember it.", True),
        ("12345 is it", True),
        ("123456", False),
        ("1234", False),
        ("54321 12345", False),
        ("no digits here", False),
        ("", False),
    ],
)
def test_passkey_correct(output, ok):
    assert passkey_correct(output, "12345") is ok


def test_score_passkey_by_length_and_depth(tokenizer):
    samples = [
        make_sample(tokenizer, "key ... ?", "11111", task="passkey", length=64, depth=0.0),
        make_sample(tokenizer, "key ... ?", "22222", task="passkey", length=64, depth=1.0),
        make_sample(tokenizer, "key ... ?", "33333", task="passkey", length=128, depth=0.0),
        make_sample(tokenizer, "key ... ?", "44444", task="passkey", length=128, depth=1.0),
    ]
    res = score_passkey(samples, ["11111", "2222", "33333.", "x 44444"])
    assert res["accuracy"] == 75.0
    assert res["by_length"] == {64: 50.0, 128: 100.0}
    assert res["by_depth"] == {0.0: 100.0, 1.0: 50.0}
    assert res["by_length_depth"][64] == {0.0: 100.0, 1.0: 0.0}
    with pytest.raises(ValueError, match="outputs"):
        score_passkey(samples, ["1"])


def test_ruler_string_match_as_ruler():
    assert string_match_all("Values: 111, 333", ["111", "222", "333", "444"]) == 0.5
    assert string_match_all("PARIS", ["paris"]) == 1.0
    assert string_match_part("it is 333", ["111", "333"]) == 1.0
    assert string_match_part("nothing", ["111", "333"]) == 0.0
    assert clean_prediction(" a\x00b\n ") == "a\nb"
    assert generation_budget("niah_multikey") == 128 and generation_budget("vt", cap=8) == 8


def test_score_ruler_per_task_and_average(tokenizer):
    def s(task, length, answers, metric="all"):
        smp = make_sample(tokenizer, "q", "x", task=task, length=length, metric=metric)
        return type(smp)(
            smp.input_ids, smp.labels, smp.prompt_len, tuple(answers), task, length, 0.5, smp.meta
        )

    samples = [
        s("niah_multivalue", 64, ["1", "2", "3", "4"]),
        s("niah_multivalue", 64, ["5", "6"]),
        s("vt", 64, ["X", "Y"]),
        s("qa", 64, ["paris", "Paris, France"], metric="part"),
        s("vt", 128, ["X"]),
    ]
    outputs = ["1 2 3 4", "5", "x and y", "PARIS", "nope"]
    res = score_ruler(samples, outputs)
    assert res["tasks"]["niah_multivalue"][64] == 75.0
    assert res["tasks"]["vt"] == {64: 100.0, 128: 0.0}
    assert res["tasks"]["qa"][64] == 100.0
    assert res["average"] == {64: pytest.approx((75 + 100 + 100) / 3), 128: 0.0}
    with pytest.raises(ValueError, match="metric"):
        score_ruler([s("vt", 64, ["X"], metric="f1")], ["X"])


def test_score_niah_grid(tokenizer):
    samples = [
        make_sample(tokenizer, "haystack", "7777", task="niah_single", length=n, depth=d)
        for n in (64, 128)
        for d in (0.0, 0.5, 1.0)
    ]
    outputs = ["7777", "7777", "7777", "7777", "0000", ""]  # misses at 128 from depth 0.5 on
    res = score_niah(samples, outputs)
    assert res["lengths"] == [64, 128] and res["depths"] == [0.0, 0.5, 1.0]
    assert res["scores"] == [[100.0, 100.0], [100.0, 0.0], [100.0, 0.0]]
    assert res["average"] == pytest.approx(400 / 6)


def test_greedy_outputs_is_greedy_on_prompt_only(tokenizer):
    model = tiny_model(tiny_config("llama", vocab_size=128, max_position_embeddings=64))
    sample = make_sample(tokenizer, "The pass key is 12345. What is it?", "12345", task="passkey", length=64)
    (text,) = greedy_outputs(model, tokenizer, [sample], max_new_tokens=4, progress=False)
    ids = torch.tensor([sample.input_ids[: sample.prompt_len]])
    with torch.inference_mode():
        for _ in range(4):
            nxt = model(ids).logits[0, -1].argmax()
            if int(nxt) == 2:  # EOS stops generation
                break
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    expected = tokenizer.decode(ids[0, sample.prompt_len :].tolist(), skip_special_tokens=True)
    assert text == clean_prediction(expected)


def test_evals_score_what_was_generated(tokenizer, monkeypatch):
    """passkey/NIAH/RULER evals pass the model's outputs to their scorers, one per sample."""
    samples = [make_sample(tokenizer, "p", a, task="niah_single", length=64) for a in ("12345", "54321")]
    fake = lambda model, tok, smp, **kw: ["12345", "wrong"][: len(smp)]  # noqa: E731
    for module in (eval_passkey, eval_niah, eval_ruler):
        monkeypatch.setattr(module, "greedy_outputs", fake)
    assert eval_passkey.passkey_eval(None, tokenizer, samples)["accuracy"] == 50.0
    assert eval_niah.niah_eval(None, tokenizer, samples)["scores"] == [[50.0]]
    assert eval_ruler.ruler_eval(None, tokenizer, samples)["average"] == {64: 50.0}


def test_qa_samples_fit_length_and_hold_the_gold_document(tokenizer):
    records = [
        {
            "question": f"Who wrote book {i}?",
            "answers": [f"Author{i}"],
            "context": f"Book {i} was written by Author{i}.",
        }
        for i in range(12)
    ]
    samples = eval_ruler.qa_samples(tokenizer, records, [400, 800], n=3, seed=1)
    assert len(samples) == 6
    for smp in samples:
        text = tokenizer.decode(smp.input_ids, skip_special_tokens=True)
        assert len(smp.input_ids) <= smp.length and smp.meta["metric"] == "part"
        author = smp.answers[0]
        assert f"was written by {author}." in text and text.endswith("Answer:")
    assert samples[3].meta["documents"] > samples[0].meta["documents"] > 1
    with pytest.raises(ValueError, match="qa data record"):
        eval_ruler.qa_sample(tokenizer, records, 0, 50, seed=0)
