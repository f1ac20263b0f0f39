"""``python -m longctx.eval`` / ``longctx eval``: evaluate a checkpoint, or a base model under several RoPE specs.

    longctx eval --model DIR [--spec pi.json yarn.json ...] [--include-base] \\
        --tasks ppl,passkey,niah,ruler[,short] --lengths 256,512,1024 --out DIR

One run per spec (each installed into the same loaded model with ``rope.apply_rope``), or one
run of the checkpoint as saved when no spec is given (``--include-base`` adds it before the
specs). Writes ``results.json`` (atomic, after every task so a long run keeps what it has),
``report.md`` and PNG plots (``ppl.png`` one line per run, ``passkey.png``, ``ruler.png``,
``niah_<run>.png``) into ``--out``.

``--qa-data`` adds RULER's qa_1 (SQuAD layout) / qa_2 (HotpotQA layout) to ``--tasks ruler``: a
QA .jsonl, a ``datasets`` ``save_to_disk`` folder (``PATH[:SPLIT]``) or a Hugging Face dataset id
(``NAME[:SPLIT]``, ``NAME:CONFIG:SPLIT``; read from the local cache under
``HF_DATASETS_OFFLINE=1``), e.g. ``--qa-data hotpotqa/hotpot_qa:distractor:validation``; without a
split, ``validation``, then ``test``, then ``train`` (``eval.tasks.read_qa_records``).

A user error — a bad flag, a ``--model`` that is not a local checkpoint directory, a spec file
that is not valid JSON or not a valid RopeSpec, a length too short for a task's prompt, QA data
that cannot be read — is one line on stderr and exit status 2, before any model loads where it
can be checked then.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from longctx.data.errors import DataError
from longctx.errors import LongctxError
from longctx.eval.driver import Run, evaluate
from longctx.eval.models import DTYPES, EvalTarget, load_model_for_eval, load_spec
from longctx.eval.settings import EvalSettings, default
from longctx.eval.tasks import EVAL_TASKS, check_task_inputs
from longctx.rope.errors import RopeExportError, RopeSpecError, UnsupportedArchitectureError


class EvalUsageError(LongctxError, ValueError):
    """An argument of ``longctx eval`` that cannot be used (one line: the flag, the value, what was expected)."""


USER_ERRORS = (LongctxError, DataError, RopeSpecError, RopeExportError, UnsupportedArchitectureError)
"""What :func:`main` reports as one line and exit status 2: every user error of the product
(``longctx.errors.LongctxError``; the others are named too, as they derive from it); anything
else is a bug and keeps its traceback."""

CLI_NAMES = {"lengths": "--lengths", "qa_data": "--qa-data", "ppl_data": "--ppl-data",
             "ruler_tasks": "--ruler-tasks"}  # fmt: skip
"""Setting → flag, for the errors of ``eval.tasks.check_task_inputs``."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line on stderr and exit 2 (argparse would print the usage block first)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="longctx eval", description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", required=True, help="local checkpoint directory (config.json, weights, tokenizer)"
    )
    p.add_argument("--spec", nargs="*", default=[], help="RopeSpec JSON files, one run each")
    p.add_argument(
        "--name", nargs="*", default=[], help="run labels, one per spec (default: spec file stems)"
    )
    p.add_argument("--include-base", action="store_true", help="also evaluate the checkpoint as saved")
    p.add_argument("--tasks", type=_names, default=["ppl"], help=f"comma list of {', '.join(EVAL_TASKS)}")
    p.add_argument("--lengths", type=_ints, required=True, help="comma list of context lengths in tokens")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--depths", type=_floats, default=default("depths"), help="needle depths in [0, 1]")
    p.add_argument(
        "--samples",
        type=int,
        default=default("samples"),
        help="samples per cell (length × depth or task × length)",
    )
    p.add_argument("--seed", type=int, default=default("seed"))
    p.add_argument(
        "--ppl-data", default=default("ppl_data"), help="demo corpus name, .txt/.jsonl file or folder of .txt"
    )
    p.add_argument("--ppl-docs", type=int, default=default("ppl_docs"), help="documents per length")
    p.add_argument("--ppl-mode", choices=["truncate", "sliding"], default=default("ppl_mode"))
    p.add_argument("--ppl-stride", type=int, default=default("ppl_stride"), help="sliding-window stride")
    p.add_argument("--chunk-size", type=int, default=None, help="LM-head positions per chunk")
    p.add_argument("--ruler-tasks", type=_names, default=None, help="comma list (default: all)")
    p.add_argument(
        "--qa-data",
        default=None,
        help="RULER qa_1/qa_2 data: a QA .jsonl, a save_to_disk folder (PATH[:SPLIT]) or a dataset id "
        "(NAME[:SPLIT] or NAME:CONFIG:SPLIT); SQuAD or HotpotQA layout; default split validation, test, train",
    )
    p.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated tokens")
    p.add_argument("--short-tasks", type=_names, default=[], help="lm-eval task names or task YAML paths")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--short-limit", type=float, default=None, help="examples per short task (lm-eval limit)")
    p.add_argument(
        "--long-tasks", type=_names, default=[], help="lm-eval long-context tasks or task YAML paths"
    )
    p.add_argument("--long-limit", type=float, default=None, help="examples per long task and length")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--attn", default="sdpa", help="attention implementation")
    p.add_argument("--no-progress", action="store_true")
    return p


def _check_args(p: argparse.ArgumentParser, args) -> None:
    unknown = [t for t in args.tasks if t not in EVAL_TASKS]
    if unknown:
        p.error(f"--tasks: unknown {unknown}; expected some of {list(EVAL_TASKS)}")
    if not args.lengths or min(args.lengths) < 2:
        p.error("--lengths: expected a comma list of lengths >= 2, e.g. 256,512,1024")
    if args.name and len(args.name) != len(args.spec):
        p.error(f"--name: {len(args.name)} names for {len(args.spec)} specs; expected one per spec")
    if any(not 0 <= d <= 1 for d in args.depths):
        p.error(f"--depths: {args.depths}; expected values in [0, 1]")
    missing = [s for s in args.spec if not os.path.isfile(s)]
    if missing:
        p.error(f"--spec: no such file {missing[0]}")
    if args.samples < 1:
        p.error(f"--samples: {args.samples}; expected an integer >= 1")
    if args.dtype not in DTYPES:
        p.error(f"--dtype: {args.dtype!r}; expected one of {list(DTYPES)}")
    for task, flag, given in (
        ("short", "--short-tasks", args.short_tasks),
        ("long", "--long-tasks", args.long_tasks),
    ):
        if task in args.tasks and not given:
            p.error(
                f"{flag}: task {task!r} needs lm-eval task names or task YAML paths; expected {flag} NAME[,PATH.yaml]"
            )


def check_model_dir(model: str) -> Path:
    """``--model`` must be a local checkpoint directory with a config.json (nothing is downloaded)."""
    path = Path(model)
    if not path.is_dir():
        raise EvalUsageError(
            f"--model {model!r}: no such directory; expected a local checkpoint directory with config.json"
        )
    if not (path / "config.json").is_file():
        raise EvalUsageError(
            f"--model {model!r}: no config.json in it; expected a saved checkpoint directory"
        )
    return path


def preflight(args, settings: EvalSettings | None = None):
    """Every check that needs no model, in order: ``--model`` is a checkpoint directory, its
    tokenizer loads, each ``--spec`` is a valid RopeSpec, and the tasks' inputs build at the
    shortest length (``eval.tasks.check_task_inputs``). Returns the tokenizer."""
    from transformers import AutoTokenizer

    check_model_dir(args.model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise EvalUsageError(
            f"--model {args.model!r}: cannot load its tokenizer ({first}); expected tokenizer files in it"
        ) from None
    for spec in args.spec:
        try:
            load_spec(spec)
        except RopeSpecError as err:
            raise RopeSpecError(f"--spec {err}") from None
    check_task_inputs(tokenizer, args.tasks, settings or settings_from_args(args), names=CLI_NAMES)
    return tokenizer


def targets_from_args(args) -> list[EvalTarget]:
    """The runs, in order: the checkpoint as saved (alone, or first with ``--include-base``), then specs."""
    runs = [EvalTarget(args.model)] if args.include_base or not args.spec else []
    names = args.name or [None] * len(args.spec)
    return runs + [EvalTarget(args.model, spec, name) for spec, name in zip(args.spec, names)]


def settings_from_args(args) -> EvalSettings:
    return EvalSettings(
        lengths=args.lengths,
        depths=args.depths,
        samples=args.samples,
        seed=args.seed,
        ppl_data=args.ppl_data,
        ppl_docs=args.ppl_docs,
        ppl_mode=args.ppl_mode,
        ppl_stride=args.ppl_stride,
        chunk_size=args.chunk_size,
        ruler_tasks=args.ruler_tasks,
        qa_data=args.qa_data,
        max_new_tokens=args.max_new_tokens,
        short_tasks=args.short_tasks,
        num_fewshot=args.num_fewshot,
        short_limit=args.short_limit,
        long_tasks=args.long_tasks,
        long_limit=args.long_limit,
        progress=not args.no_progress,
    )


def run(args, tokenizer=None) -> dict:
    """Evaluate every target on every task (:func:`eval.driver.evaluate`); returns the results
    (also written to ``--out``). ``tokenizer``: the checkpoint's (loaded here when None)."""
    from transformers import AutoTokenizer

    settings = settings_from_args(args)

    def load():
        model, _ = load_model_for_eval(
            args.model, dtype=args.dtype, attn_implementation=args.attn, device=args.device
        )
        return model

    runs = [
        Run(
            name=target.label,
            model=str(target.model_path),
            load=load,
            spec=(lambda _model, path=target.spec_path: load_spec(path)) if target.spec_path else None,
        )
        for target in targets_from_args(args)
    ]
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    return evaluate(runs, tokenizer, args.tasks, settings, args.out)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    try:
        run(args, preflight(args))
    except USER_ERRORS as err:
        message = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
        print(f"{parser.prog}: error: {message or type(err).__name__}", file=sys.stderr)
        return 2
    print(f"[eval] wrote {os.path.join(args.out, 'report.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
