"""``export``: a checkpoint stock ``transformers`` loads with identical logits
(``rope.save_extended``): the model's weights with the spec written into its config."""

from __future__ import annotations

from typing import Literal

from longctx.train.schema import Strict

PRODUCES = frozenset()
RESUMES_SCORES = False
TRAINS = False


class Settings(Strict):
    kind: Literal["export"]
    name: str
    model_from: str | None = None
    spec_from: str | None = None


def check(recipe, index: int, where: str) -> list[str]:
    return []


def plan(recipe, stage) -> str:
    return "export (stock transformers config)"


def preflight(stage, ctx) -> list[str]:
    return []


def run(stage, ctx) -> dict:
    from longctx.rope import apply_rope, save_extended

    out = ctx.stage_dir(stage.name) / "model"
    spec = None
    if ctx.accelerator.is_main_process:  # one writer; the model stays on the CPU, nothing to compute
        model = ctx.load_model(stage, device="cpu")
        spec = ctx.spec_for(stage, model)
        save_extended(apply_rope(model, spec), spec, out, tokenizer=ctx.tokenizer())
        spec.to_json(ctx.stage_dir(stage.name) / "spec.json")
    ctx.accelerator.wait_for_everyone()
    from longctx.rope import RopeSpec

    spec = RopeSpec.from_json(ctx.stage_dir(stage.name) / "spec.json")
    return {"path": str(out), "spec": spec.to_dict()}
