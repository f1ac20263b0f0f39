"""``python -m longctx.eval`` / ``longctx eval``: evaluate a checkpoint, or a base model under several RoPE specs.

    longctx eval --model DIR [--spec pi.json yarn.json ...] [--include-base] \\
        --tasks ppl,passkey,niah,ruler[,short] --lengths 256,512,1024 --out DIR

One run per spec (each installed into the same loaded model with ``rope.apply_rope``), or one
run of the checkpoint as saved when no spec is given (``--include-base`` adds it before the
specs). Writes ``results.json`` (atomic, after every task so a long run keeps what it has),
``report.md`` and PNG plots (``ppl.png`` one line per run, ``passkey.png``, ``ruler.png``,
``niah_<run>.png``) into ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys

from longctx.eval.driver import Run, evaluate
from longctx.eval.models import EvalTarget, load_model_for_eval, load_spec
from longctx.eval.tasks import DEFAULT_DEPTHS, EVAL_TASKS, EvalSettings


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longctx eval", description=__doc__.splitlines()[0])
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
    p.add_argument("--depths", type=_floats, default=list(DEFAULT_DEPTHS), help="needle depths in [0, 1]")
    p.add_argument(
        "--samples", type=int, default=1, help="samples per cell (length × depth or task × length)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ppl-data", default="kjv", help="demo corpus name, .txt/.jsonl file or folder of .txt")
    p.add_argument("--ppl-docs", type=int, default=5, help="documents per length")
    p.add_argument("--ppl-mode", choices=["truncate", "sliding"], default="truncate")
    p.add_argument("--ppl-stride", type=int, default=256, help="sliding-window stride")
    p.add_argument("--chunk-size", type=int, default=None, help="LM-head positions per chunk")
    p.add_argument("--ruler-tasks", type=_names, default=None, help="comma list (default: all)")
    p.add_argument("--qa-data", default=None, help="local QA jsonl (question, answers, context)")
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


def run(args) -> dict:
    """Evaluate every target on every task (:func:`eval.driver.evaluate`); returns the results
    (also written to ``--out``)."""
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
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    return evaluate(runs, tokenizer, args.tasks, settings, args.out)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    run(args)
    print(f"[eval] wrote {os.path.join(args.out, 'report.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
