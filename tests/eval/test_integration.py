"""The CLI on ``data.synthetic`` generators: answers flow from generator to scorer intact."""

from __future__ import annotations

import json

import pytest

from longctx.eval import niah as eval_niah
from longctx.eval import passkey as eval_passkey
from longctx.eval import ruler as eval_ruler
from longctx.eval.__main__ import main
from tests.eval.conftest import assert_png

pytest.importorskip("longctx.data.synthetic")


def _oracle(right: bool):
    def outputs(model, tokenizer, samples, **kwargs):
        return [" ".join(s.answers) + "." if right else "I do not know." for s in samples]

    return outputs


@pytest.mark.parametrize("right", [True, False])
def test_generated_tasks_score_oracle_outputs(checkpoint, tmp_path, monkeypatch, right):
    for module in (eval_passkey, eval_niah, eval_ruler):
        monkeypatch.setattr(module, "greedy_outputs", _oracle(right))
    out, qa = tmp_path / "out", tmp_path / "qa.jsonl"
    qa.write_text(
        "".join(
            json.dumps({"question": f"Who is {i}?", "answers": [f"N{i}"], "context": f"{i} is N{i}."}) + "\n"
            for i in range(20)
        )
    )
    args = ["--model", str(checkpoint), "--tasks", "passkey,niah,ruler", "--lengths", "512,640"]
    args += ["--ruler-tasks", "niah_single,vt", "--qa-data", str(qa), "--samples", "2"]
    args += ["--depths", "0,0.5,1", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    expected = 100.0 if right else 0.0
    assert run["tasks"]["passkey"]["accuracy"] == expected
    assert run["tasks"]["niah"]["scores"] == [[expected, expected]] * 3
    assert run["tasks"]["ruler"]["average"] == {"512": expected, "640": expected}
    assert set(run["tasks"]["ruler"]["tasks"]) == {"niah_single_1", "vt", "qa_1"}  # RULER names
    assert len(run["tasks"]["ruler"]["samples"]) == 3 * 2 * 2  # tasks × lengths × samples
    assert_png(out / "niah_ckpt0.png")


def test_niah_and_ruler_generate_with_a_real_model(checkpoint, tmp_path):
    out = tmp_path / "out"
    args = ["--model", str(checkpoint), "--tasks", "niah,ruler", "--lengths", "512", "--ruler-tasks", "vt"]
    args += [
        "--depths",
        "0,1",
        "--max-new-tokens",
        "3",
        "--attn",
        "eager",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert len(run["tasks"]["niah"]["samples"]) == 2
    assert all(len(r["output"]) <= 3 for r in run["tasks"]["ruler"]["samples"])  # 3 char tokens at most
