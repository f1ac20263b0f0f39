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
from datetime import timedelta
from pathlib import Path

import yaml

from longctx.errors import LongctxError
from longctx.rope.files import write_text_atomic
from longctx.train.load import RecipeError, load_recipe
from longctx.train.recipe import Recipe, source_stage

MARKER = "COMPLETE"


DEFAULT_RECIPE = Path("recipes") / "tiny.yaml"
"""The embedded default, relative to the working directory (a checkout's root): recipes are not
installed with the package."""


def write_json(path: Path, data: dict) -> None:
    """Atomic JSON write (temp file + rename)."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def describe_plan(recipe: Recipe) -> list[str]:
    """One line per stage: what it reads, what it does (its module's ``plan``), what it writes."""
    from longctx.train.stages import STAGES

    lines = []
    for i, stage in enumerate(recipe.stages):
        reads = []
        if hasattr(stage, "model_from") and stage.kind != "pretrain":
            reads.append(f"model←{source_stage(recipe, stage, 'model_from') or 'recipe model'}")
        if hasattr(stage, "spec_from"):
            reads.append(f"spec←{source_stage(recipe, stage, 'spec_from') or 'base RoPE'}")
        what = STAGES[stage.kind].plan(recipe, stage)
        out = Path(recipe.output_dir) / stage.name
        lines.append(f"[{i}] {stage.name}: {what}; reads {', '.join(reads) or 'nothing'}; writes {out}/")
    return lines


PROCESS_GROUP_TIMEOUT = timedelta(hours=4)
"""Ranks wait at a barrier while the main process evaluates or exports (``train/stages/eval.py``):
long enough for a 128k eval, unlike torch's 10 min (NCCL) default."""


def make_accelerator(
    project_dir: str | None = None,
    sequence_parallel: int = 1,
    attention: str = "sdpa",
    precision: str = "float32",
):
    """The run's one Accelerator. ``precision`` (the recipe's ``model.dtype``, resolved) decides
    autocast, whatever the launch config says (``train.precision``)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    from longctx.train.precision import Precision
    from longctx.train.sequence_parallel import parallelism_config

    # Without CUDA, accelerate leaves the backend unset and every rank believes it is rank 0 of 1.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world > 1
    backend = "gloo" if distributed and not torch.cuda.is_available() else None
    handlers = [InitProcessGroupKwargs(backend=backend, timeout=PROCESS_GROUP_TIMEOUT)] if distributed else []
    log_with = "tensorboard" if _has("tensorboard") else None
    return Accelerator(
        kwargs_handlers=handlers,
        log_with=log_with,
        project_dir=project_dir,
        mixed_precision=Precision.of(precision).mixed_precision,
        parallelism_config=parallelism_config(sequence_parallel, world, attention),
    )


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _check_same_config(stage, stage_dir: Path, recipe_file: Path, *, complete: bool = True) -> None:
    """A completed stage is reused, and an interrupted search resumed, only with the same settings.
    A key its config.json lacks counts as that setting's default: a setting added to the schema
    later, left at its default, keeps the stages that earlier versions completed."""
    saved = json.loads((stage_dir / "config.json").read_text())
    current = stage.model_dump(mode="json")
    for key, field in type(stage).model_fields.items():
        if key not in saved and not field.is_required():
            saved[key] = json.loads(json.dumps(field.get_default(call_default_factory=True), default=str))
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if keys:
        how = "completed" if complete else "started (its scores would be reused)"
        raise RecipeError(
            [
                f"{recipe_file}: stages.{stage.name}: {how} in {stage_dir} with other settings "
                f"({', '.join(keys)} differ); use another output_dir or delete {stage_dir}"
            ]
        )


def run(recipe: Recipe, recipe_file: Path) -> dict:
    """Run the stages in order under the output directory's lock; each stage releases what it
    prepared before the next one starts."""
    from longctx.train.attention import attention_implementation
    from longctx.train.context import RunContext
    from longctx.train.lock import RunLockError, run_lock
    from longctx.train.stages import STAGES

    out = Path(recipe.output_dir)
    try:
        # the main process holds the lock before any rank starts: the others wait for it in the
        # process group's rendezvous (make_accelerator); a refused main process exits
        with run_lock(out):
            accelerator = make_accelerator(
                str(out / "tensorboard"),
                recipe.sequence_parallel,
                attention_implementation(recipe.model.attention),
                recipe.model.dtype,
            )
            ctx = RunContext(recipe, recipe_file, accelerator)
            if accelerator.log_with:
                accelerator.init_trackers(recipe.name, config={"seed": recipe.seed})
            return _run_stages(recipe, recipe_file, ctx, STAGES)
    except RunLockError as err:
        raise RecipeError([f"{recipe_file}: output_dir: {err}"]) from None


def _preflight(recipe: Recipe, recipe_file: Path, ctx, stages: dict) -> None:
    """Data checks of every unfinished stage, before any model loads (one line each)."""
    lines = []
    for stage in recipe.stages:
        if not (ctx.stage_dir(stage.name) / MARKER).exists():
            lines += [f"{recipe_file}: {line}" for line in stages[stage.kind].preflight(stage, ctx)]
    if lines:
        raise RecipeError(lines)


def _run_stages(recipe: Recipe, recipe_file: Path, ctx, stages: dict) -> dict:
    accelerator = ctx.accelerator
    try:
        _preflight(recipe, recipe_file, ctx, stages)
    except RecipeError:
        raise
    except LongctxError as err:  # the data itself failed to load or tokenise
        raise RecipeError([f"{recipe_file}: data: {err}"]) from err
    results = {}
    for stage in recipe.stages:
        module = stages[stage.kind]
        stage_dir = ctx.stage_dir(stage.name)
        if (stage_dir / MARKER).exists():
            _check_same_config(stage, stage_dir, recipe_file)
            ctx.log(f"[{stage.name}] complete, skipped")
            results[stage.name] = json.loads((stage_dir / "result.json").read_text())
            continue
        if module.RESUMES_SCORES and (stage_dir / "config.json").exists():
            _check_same_config(stage, stage_dir, recipe_file, complete=False)
        ctx.log(f"[{stage.name}] {stage.kind} …")
        if accelerator.is_main_process:
            write_json(stage_dir / "config.json", stage.model_dump(mode="json"))
        started = time.perf_counter()
        try:
            result = module.run(stage, ctx)
        except RecipeError:
            raise
        except LongctxError as err:  # every user error of our layers: one line, the run stops
            raise RecipeError([f"{recipe_file}: stages.{stage.name} ({stage.kind}): {err}"]) from err
        finally:
            # nothing a stage prepared outlives it, also when it failed: its locals are gone here,
            # so this collect frees its model; the one place a stage's resources are released
            ctx.release()
        result["wall_seconds"] = round(time.perf_counter() - started, 2)
        if accelerator.is_main_process:
            write_json(stage_dir / "result.json", result)
            write_text_atomic(stage_dir / MARKER, "ok\n")
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
        # a plan is made anywhere (a laptop plans a GPU run): only running checks this machine
        recipe = load_recipe(args.recipe, args.overrides, check_environment=not args.dry_run)
    except RecipeError as err:
        for line in err.lines:
            print(line, file=sys.stderr)
        return 2
    if args.dry_run:
        print(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
        from longctx.train.planner import describe_memory
        from longctx.train.schema import describe_batch

        print("plan:")
        print("\n".join(describe_plan(recipe)))
        print("\n".join(describe_batch(recipe, gpus=args.gpus)))
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
