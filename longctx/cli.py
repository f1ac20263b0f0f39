"""``longctx run | plan | eval | reproduce``: one console script over the product's entry points.

- ``longctx run RECIPE [key=value ...]`` — the chain (same as ``accelerate launch train/run.py``;
  put it under ``accelerate launch -m longctx.cli run ...`` for several processes);
- ``longctx plan RECIPE [--gpus N --gpu-mem GiB]`` — validate, print the plan and memory estimate;
- ``longctx eval --model DIR ...`` — evaluate a checkpoint (or a recipe's stage) outside a recipe;
- ``longctx reproduce [--only ...] [--repo DIR]`` — regenerate docs/REPRODUCTION.md from committed
  recipes; works from a checkout (the working directory or ``--repo``), not from an install.
"""

from __future__ import annotations

import sys

COMMANDS = ("run", "plan", "eval", "reproduce")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(
            f"usage: longctx {{{'|'.join(COMMANDS)}}} ...  (longctx COMMAND --help for its options)",
            file=sys.stderr,
        )
        return 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        from longctx.train.run import main as run_main

        return run_main(rest)
    if command == "plan":
        from longctx.train.run import main as run_main

        return run_main([*rest, "--dry-run"])
    if command == "eval":
        from longctx.eval.__main__ import main as eval_main

        return eval_main(rest)
    return _reproduce(rest)


def _reproduce(rest: list[str]) -> int:
    """``benchmarks/reproduce.py`` of the checkout at or above the working directory (or
    ``--repo DIR``): the reproduction tools are not installed with the package."""
    import argparse

    from longctx.checkout import checkout_root
    from longctx.errors import LongctxError

    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--repo", help="the longctx checkout (default: at or above the working directory)")
    known, rest = where.parse_known_args(rest)
    try:
        root = checkout_root(known.repo, purpose="longctx reproduce")
    except LongctxError as err:
        print(f"longctx reproduce: {err}", file=sys.stderr)
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import os

    os.chdir(root)
    from benchmarks.reproduce import main as reproduce_main

    return reproduce_main(rest)


if __name__ == "__main__":
    sys.exit(main())
