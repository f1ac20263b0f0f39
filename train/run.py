"""Run a recipe: ``accelerate launch train/run.py recipes/tiny.yaml [key.path=value ...]``.

Loads and validates the whole recipe first (all errors at once, each naming the file and key
path), then runs its stages in order. A stage with a completion marker is skipped; an
interrupted one resumes from its last checkpoint. ``--dry-run`` prints the resolved recipe
and the plan and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from rope.files import write_text_atomic
from train.load import RecipeError, load_recipe
from train.recipe import Recipe, source_stage

MARKER = "COMPLETE"


def _stage_errors() -> tuple[type[Exception], ...]:
    """The errors our own layers raise with a message meant for the user (bad data, settings,
    specs, a non-finite loss): a stage that raises one stops the run with that one line."""
    from data.errors import DataError
    from eval.scorer import ScorerError
    from rope.errors import RopeExportError, RopeSpecError, UnsupportedArchitectureError
    from train.loop import TrainingError

    return DataError, ScorerError, RopeSpecError, RopeExportError, UnsupportedArchitectureError, TrainingError


DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml"


def write_json(path: Path, data: dict) -> None:
    """Atomic JSON write (temp file + rename)."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def describe_plan(recipe: Recipe) -> list[str]:
    """One line per stage: what it reads, what it does, what it writes."""
    lines = []
    for i, stage in enumerate(recipe.stages):
        reads = []
        if stage.kind not in ("pretrain",) and hasattr(stage, "model_from"):
            reads.append(f"model←{source_stage(recipe, stage, 'model_from') or 'recipe model'}")
        if hasattr(stage, "spec_from"):
            reads.append(f"spec←{source_stage(recipe, stage, 'spec_from') or 'base RoPE'}")
        what = stage.kind
        if hasattr(stage, "steps"):
            longest = max(w.length for w in stage.windows)
            tokens = stage.steps * stage.grad_accum * stage.micro_batch_size * longest
            what += f" {stage.steps} steps, ≤{tokens:,} tokens/process, windows {[(w.length, w.share, w.rope) for w in stage.windows]}"
        if stage.kind in ("search", "readjust"):
            what += f" {stage.algorithm} → L'={stage.target_length} ({stage.objective})"
        if stage.kind == "eval":
            what += f" {stage.tasks} at {stage.lengths} for {[r.name for r in stage.runs] or [stage.name]}"
        out = Path(recipe.output_dir) / stage.name
        lines.append(f"[{i}] {stage.name}: {what}; reads {', '.join(reads) or 'nothing'}; writes {out}/")
    return lines


def make_accelerator(project_dir: str | None = None, sequence_parallel: int = 1, attention: str = "sdpa"):
    import torch
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    from train.sequence_parallel import parallelism_config

    # Without CUDA, accelerate leaves the backend unset and every rank believes it is rank 0 of 1.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world > 1
    handlers = (
        [InitProcessGroupKwargs(backend="gloo")] if distributed and not torch.cuda.is_available() else []
    )
    log_with = "tensorboard" if _has("tensorboard") else None
    return Accelerator(
        kwargs_handlers=handlers,
        log_with=log_with,
        project_dir=project_dir,
        parallelism_config=parallelism_config(sequence_parallel, world, attention),
    )


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


RESUMED_SCORES = ("search", "readjust")
"""Stage kinds whose unfinished work on disk is scores (evaluations.jsonl / state.json, DPE's
sweeps.jsonl): a rerun answers candidates from them, so it must score the same way."""


def _check_same_config(stage, stage_dir: Path, recipe_file: Path, *, complete: bool = True) -> None:
    """A completed stage is reused, and an interrupted search resumed, only with the same settings."""
    saved = json.loads((stage_dir / "config.json").read_text())
    current = stage.model_dump(mode="json")
    if saved != current:
        keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        how = "completed" if complete else "started (its scores would be reused)"
        raise RecipeError(
            [
                f"{recipe_file}: stages.{stage.name}: {how} in {stage_dir} with other settings "
                f"({', '.join(keys)} differ); use another output_dir or delete {stage_dir}"
            ]
        )


def run(recipe: Recipe, recipe_file: Path) -> dict:
    from train.context import RunContext
    from train.stages import STAGES

    attention = {"flash": "flash_attention_2", "auto": "sdpa"}.get(
        recipe.model.attention, recipe.model.attention
    )
    accelerator = make_accelerator(
        str(Path(recipe.output_dir) / "tensorboard"), recipe.sequence_parallel, attention
    )
    ctx = RunContext(recipe, recipe_file, accelerator)
    if accelerator.log_with:
        accelerator.init_trackers(recipe.name, config={"seed": recipe.seed})
    results = {}
    for stage in recipe.stages:
        stage_dir = ctx.stage_dir(stage.name)
        if (stage_dir / MARKER).exists():
            _check_same_config(stage, stage_dir, recipe_file)
            ctx.log(f"[{stage.name}] complete, skipped")
            results[stage.name] = json.loads((stage_dir / "result.json").read_text())
            continue
        if stage.kind in RESUMED_SCORES and (stage_dir / "config.json").exists():
            _check_same_config(stage, stage_dir, recipe_file, complete=False)
        ctx.log(f"[{stage.name}] {stage.kind} …")
        if accelerator.is_main_process:
            write_json(stage_dir / "config.json", stage.model_dump(mode="json"))
        started = time.perf_counter()
        try:
            result = STAGES[stage.kind](stage, ctx)
        except _stage_errors() as err:
            raise RecipeError([f"{recipe_file}: stages.{stage.name} ({stage.kind}): {err}"]) from err
        result["wall_seconds"] = round(time.perf_counter() - started, 2)
        if accelerator.is_main_process:
            write_json(stage_dir / "result.json", result)
            (stage_dir / MARKER).write_text("ok\n")
        accelerator.wait_for_everyone()
        results[stage.name] = result
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a longctx recipe (search → fine-tune → eval → export).")
    parser.add_argument(
        "recipe", nargs="?", default=str(DEFAULT_RECIPE), help="recipe YAML (default: recipes/tiny.yaml)"
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. stages.finetune.lr=1e-5 seed=3")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved recipe and the plan, then exit"
    )
    parser.add_argument("--gpus", type=int, default=8, help="GPUs the memory plan assumes (--dry-run)")
    parser.add_argument(
        "--gpu-mem", type=float, default=80.0, help="GiB per GPU for the memory plan (--dry-run)"
    )
    args = parser.parse_intermixed_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as err:
        for line in err.lines:
            print(line, file=sys.stderr)
        return 2
    if args.dry_run:
        print(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
        from train.planner import describe_memory

        print("plan:")
        print("\n".join(describe_plan(recipe)))
        print("\n".join(describe_memory(recipe, Path(args.recipe), gpus=args.gpus, gpu_gib=args.gpu_mem)))
        return 0
    try:
        run(recipe, Path(args.recipe))
    except RecipeError as err:
        for line in err.lines:
            print(line, file=sys.stderr)
        return 2
    finally:
        _close_process_group()
    return 0


def _close_process_group() -> None:
    """Tear the process group down before exit: left to interpreter shutdown, a multi-process CPU
    (gloo) run could abort in a rank after its work was done ("terminate called without an
    active exception", exit -6), and the launcher then kills the other ranks."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank tears its connections down while another still uses them
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
