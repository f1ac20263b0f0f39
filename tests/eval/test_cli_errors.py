"""``longctx eval`` user errors: one line on stderr naming the flag / file and what was expected,
exit status 2, no traceback, and — for what can be checked without a model — before it loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import datasets
import pytest

from longctx.eval import __main__ as cli

SPEC = {"method": "longrope", "base": 10000.0, "head_dim": 16, "original_length": 128, "target_length": 512}
"""A LongRoPE spec for the tiny checkpoint (head_dim 16: 8 factors per list)."""


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the CLI gets as far as loading a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the error was reported")

    monkeypatch.setattr(cli, "load_model_for_eval", refuse)


def one_line_error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("longctx eval: error: ")
    return lines[0]


def spec_file(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def args(checkpoint, tmp_path, *extra) -> list[str]:
    return ["--model", str(checkpoint), "--out", str(tmp_path / "out"), "--no-progress", *extra]


def test_bad_spec_files_are_one_line_before_the_model_loads(checkpoint, tmp_path, capsys, no_model):
    malformed = spec_file(tmp_path, "malformed.json", '{"method": "linear",')
    nan = spec_file(tmp_path, "nan.json", json.dumps({**SPEC, "long_factor": [float("nan")] * 8}))
    few = spec_file(
        tmp_path, "few.json", json.dumps({**SPEC, "long_factor": [2.0] * 3, "short_factor": [1.0] * 3})
    )
    base = args(checkpoint, tmp_path, "--tasks", "ppl", "--lengths", "64", "--spec")
    line = one_line_error(capsys, [*base, malformed])
    assert f"--spec {malformed}: not valid JSON" in line
    line = one_line_error(capsys, [*base, nan])
    assert f"--spec {nan}: long_factor[0]: expected a finite factor > 0, got nan" in line
    line = one_line_error(capsys, [*base, few])
    assert f"--spec {few}: long_factor: expected 8 values" in line


def test_a_length_too_short_for_ruler_is_one_line_before_the_model_loads(
    checkpoint, tmp_path, capsys, no_model
):
    line = one_line_error(capsys, args(checkpoint, tmp_path, "--tasks", "ruler", "--lengths", "128,2048"))
    assert "--lengths 128: " in line and "length=128 is too short; expected ≥ " in line and "tokens" in line
    line = one_line_error(capsys, args(checkpoint, tmp_path, "--tasks", "passkey", "--lengths", "16"))
    assert "--lengths 16: passkey: length=16 is too short" in line


def test_model_must_be_a_local_checkpoint_directory(tmp_path, capsys, no_model):
    base = ["--tasks", "ppl", "--lengths", "64", "--out", str(tmp_path / "out")]
    missing = str(tmp_path / "no-such-model")
    line = one_line_error(capsys, ["--model", missing, *base])
    assert (
        f"--model {missing!r}: no such directory; expected a local checkpoint directory with config.json"
        in line
    )
    line = one_line_error(capsys, ["--model", "not/a-repo-we-download", *base])  # never a hub lookup
    assert "no such directory" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_line_error(capsys, ["--model", str(empty), *base])
    assert "no config.json in it" in line


def test_bad_qa_data_is_one_line_naming_the_flag(checkpoint, tmp_path, capsys, no_model):
    bad = tmp_path / "bad_qa"
    datasets.Dataset.from_dict({"question": ["q"], "text": ["t"]}).save_to_disk(bad)
    capsys.readouterr()  # save_to_disk's progress bar
    base = args(
        checkpoint, tmp_path, "--tasks", "ruler", "--ruler-tasks", "vt", "--lengths", "2048", "--qa-data"
    )
    line = one_line_error(capsys, [*base, str(bad)])
    assert f"--qa-data {str(bad)!r}: columns ['question', 'text']; expected SQuAD columns" in line
    line = one_line_error(capsys, [*base, str(tmp_path / "qa.jsonl")])
    assert "no such file or folder" in line


def test_other_argument_errors_are_one_line_too(checkpoint, tmp_path, capsys, no_model):
    for extra, expected in [
        (["--tasks", "ppl,bogus", "--lengths", "64"], "--tasks: unknown ['bogus']"),
        (
            ["--tasks", "ruler", "--ruler-tasks", "vt,nope", "--lengths", "2048"],
            "--ruler-tasks: unknown ['nope']",
        ),
        (["--tasks", "ppl", "--lengths", "64", "--ppl-data", str(tmp_path / "gone")], "--ppl-data"),
        (["--tasks", "ppl", "--lengths", "64", "--dtype", "fp8"], "--dtype: 'fp8'; expected one of"),
        (["--tasks", "short", "--lengths", "64"], "--short-tasks: task 'short' needs"),
        (["--lengths", "64", "--spec", str(tmp_path / "absent.json")], "--spec: no such file"),
    ]:
        try:
            line = one_line_error(capsys, args(checkpoint, tmp_path, *extra))
        except SystemExit as exit_:  # argparse's own errors exit 2 with one line
            assert exit_.code == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "Traceback" not in err[0], err
            line = err[0]
        assert expected in line, (extra, line)


def test_the_process_prints_one_line_and_exits_2(checkpoint, tmp_path):
    """As a user sees it: ``python -m longctx.eval`` (the ``longctx eval`` entry point)."""
    spec = spec_file(tmp_path, "nan.json", json.dumps({**SPEC, "long_factor": [float("nan")] * 8}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "longctx.eval", *args(checkpoint, tmp_path, "--lengths", "64", "--spec", spec)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"longctx eval: error: --spec {spec}: long_factor[0]: expected a finite factor > 0, got nan"
    ]
