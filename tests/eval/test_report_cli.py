"""Report files (JSON, markdown, valid PNGs) and the ``longctx eval`` CLI end to end."""

from __future__ import annotations

import json

import pytest

from longctx.eval.__main__ import main
from longctx.eval.models import load_model_for_eval
from longctx.eval.report import markdown_report, write_report
from tests.eval.conftest import assert_png

RESULTS = {
    "lengths": [256, 512],
    "runs": [
        {
            "name": "pi",
            "model": "m",
            "spec": "pi.json",
            "tasks": {
                "ppl": {"by_length": {256: {"ppl": 12.5}, 512: {"ppl": 30.25}}},
                "passkey": {"by_length": {256: 100.0, 512: 50.0}},
                "niah": {
                    "lengths": [256, 512],
                    "depths": [0.0, 1.0],
                    "scores": [[100.0, None], [0.0, 50.0]],
                    "average": 50.0,
                },
                "ruler": {"average": {256: 80.0, 512: 40.0}, "tasks": {}},
                "short": {"scores": {"mmlu": {"acc": 0.61234}}, "num_fewshot": {"mmlu": 5}},
            },
        },
        {
            "name": "yarn/β=32",
            "model": "m",
            "spec": None,
            "tasks": {"ppl": {"by_length": {"256": {"ppl": 9.0}, "512": {"ppl": None}}}},
        },
    ],
}


def test_write_report_files(tmp_path):
    written = {p.name for p in write_report(RESULTS, tmp_path)}
    assert written == {"results.json", "report.md", "ppl.png", "passkey.png", "ruler.png", "niah_pi.png"}
    for name in ("ppl.png", "passkey.png", "ruler.png", "niah_pi.png"):
        assert_png(tmp_path / name)
    back = json.loads((tmp_path / "results.json").read_text())
    assert back["runs"][0]["tasks"]["ppl"]["by_length"]["512"]["ppl"] == 30.25
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_markdown_tables():
    md = markdown_report(json.loads(json.dumps(RESULTS)))
    assert "| run | 256 | 512 |" in md
    assert "| pi | 12.50 | 30.25 |" in md and "| yarn/β=32 | 9.00 | – |" in md
    assert "| pi | 100.0 | 50.0 |" in md  # passkey
    assert "| 0 | 100 | – |" in md and "| 1 | 0 | 50 |" in md  # NIAH grid rows by depth
    assert "| pi | 0.6123 |" in md  # short tasks


def test_load_model_for_eval_and_errors(checkpoint, tmp_path):
    model, tok = load_model_for_eval(checkpoint, attn_implementation="eager", device="cpu")
    assert model.config.vocab_size == 128 and tok.bos_token_id == 1 and not model.training
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_model_for_eval(tmp_path)


def _spec(tmp_path, method, **params):
    from longctx.rope import RopeSpec

    spec = RopeSpec(
        method=method, base=10000.0, head_dim=16, original_length=128, target_length=512, params=params
    )
    return str(spec.to_json(tmp_path / f"{method}.json"))


def test_cli_compares_specs_end_to_end(checkpoint, tmp_path):
    text = tmp_path / "doc.txt"
    text.write_text(("In the beginning was the word, and the word was with light. " * 40)[:2000])
    out = tmp_path / "out"
    args = ["--model", str(checkpoint), "--spec", _spec(tmp_path, "linear"), _spec(tmp_path, "yarn")]
    args += ["--include-base", "--tasks", "ppl,passkey", "--lengths", "256,512", "--out", str(out)]
    args += [
        "--ppl-data",
        str(text),
        "--depths",
        "0,1",
        "--attn",
        "eager",
        "--max-new-tokens",
        "4",
        "--no-progress",
    ]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in res["runs"]] == ["ckpt0", "linear", "yarn"]
    ppl = [r["tasks"]["ppl"]["by_length"]["512"]["ppl"] for r in res["runs"]]
    assert len(set(ppl)) == 3  # each spec really changed the model's RoPE
    assert all(r["tasks"]["passkey"]["accuracy"] is not None for r in res["runs"])
    assert sorted(res["runs"][1]["tasks"]["passkey"]["by_length"]) == ["256", "512"]
    assert_png(out / "ppl.png")
    assert_png(out / "passkey.png")
    assert "| linear |" in (out / "report.md").read_text()


def test_cli_rejects_bad_arguments(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--model", str(checkpoint), "--tasks", "ppl,bogus", "--lengths", "64", "--out", str(tmp_path)])
    assert "--tasks: unknown ['bogus']" in capsys.readouterr().err


def test_summary_puts_the_last_run_against_the_others_at_L_8x_and_16x():
    def run(name, ppl, passkey):
        return {"name": name, "model": "m", "spec": None,
                "tasks": {"ppl": {"by_length": {n: {"ppl": v} for n, v in ppl.items()}},
                          "passkey": {"by_length": passkey}}}  # fmt: skip

    results = {"lengths": [128, 512, 1024, 2048], "runs": [
        run("base", {128: 50.0, 1024: 900.0, 2048: 2000.0}, {128: 100.0, 1024: 0.0, 2048: 0.0}),
        run("yarn", {128: 52.0, 1024: 80.0, 2048: 150.0}, {128: 100.0, 1024: 25.0, 2048: 0.0}),
        run("chain", {128: 51.0, 1024: 60.0, 2048: 70.0}, {128: 100.0, 1024: 100.0, 2048: 75.0}),
    ]}  # fmt: skip
    md = markdown_report(json.loads(json.dumps(results)))
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "**chain** (the last run) against the others at L = 128, 1024 (8×), 2048 (16×):" in summary
    assert (
        "| run | ppl @ 128 | passkey % @ 128 | ppl @ 1024 | passkey % @ 1024 | ppl @ 2048 | passkey % @ 2048 |"
        in summary
    )
    rows = [line for line in summary.splitlines() if line.startswith("| ")][1:]
    assert rows[0] == "| **chain** | 51.00 | 100 | 60.00 | 100 | 70.00 | 75 |"
    assert rows[2] == "| yarn | 52.00 | 100 | 80.00 | 25 | 150.00 | 0 |"
    assert "ppl at L: 1.020× the base run's." in summary
    assert "512" not in summary  # only L, 8× and 16×
    assert "## Summary" not in markdown_report({"lengths": [128], "runs": results["runs"][:1]})
