"""``eval``: perplexity / passkey / NIAH / RULER for named runs (a stage's model under its spec,
the base RoPE, or PI / NTK / YaRN baselines built for L'), with report.md and plots.

Runs through the one eval driver (``eval.driver.evaluate``, also behind ``longctx eval``), on
the main process while the other ranks wait at a barrier (generation tasks are
sequential per sample and an eval is minutes against a training stage's hours; the process
group's timeout is long enough for it, see ``train.run.make_accelerator``). One model in
memory at a time, on the accelerator's device, in the recipe's compute dtype.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from longctx.eval.settings import default
from longctx.train.schema import Strict

PRODUCES = frozenset()
RESUMES_SCORES = False
TRAINS = False


class EvalRun(Strict):
    """One line of the comparison: a model (stage output) under a RoPE."""

    name: str
    model_from: str | None = None
    """Stage whose model to evaluate; default: the eval stage's own model."""
    spec_from: str | None = None
    """Stage whose spec to install (rope: spec); default: the eval stage's own spec."""
    rope: Literal["spec", "original", "linear", "ntk", "yarn"] = "spec"
    """spec: the stage's spec; original: the base RoPE unchanged; linear (PI) / ntk / yarn:
    baselines built for the eval stage's ``target_length`` with no search."""
    attention: Literal["hf", "short_original"] | float | None = None
    """The attention factor policy this run serves a ``longrope`` spec under
    (``rope.attention_policy``): ``hf`` (transformers' one default factor for both sets),
    ``short_original`` (1.0 on short inputs, the long set's on long ones) or a number (that one
    factor for both sets, e.g. a readjustment's balanced factor); None: the spec as saved."""


class Settings(Strict):
    """Every setting of ``longctx eval`` (``eval.settings.EvalSettings``), reachable from a recipe,
    with its defaults."""

    kind: Literal["eval"]
    name: str
    model_from: str | None = None
    spec_from: str | None = None
    tasks: list[Literal["ppl", "passkey", "niah", "ruler", "short", "long", "serving"]] = ["ppl", "passkey"]
    lengths: list[int] = Field(min_length=1)
    runs: list[EvalRun] = []
    """The lines of the comparison; empty: one run of this stage's model and spec."""
    target_length: int | None = Field(None, gt=0)
    """L' the baselines are built for; default: the longest evaluated length."""
    samples: int = Field(default("samples"), gt=0)
    """Samples per (length, depth) cell for passkey / NIAH, per (task, length) for RULER."""
    depths: list[float] = Field(default_factory=lambda: default("depths"))
    seed: int | None = Field(None, ge=0, lt=10**9)
    """Seed of the synthetic samples (passkey, NIAH, RULER; default: the recipe's): another seed
    draws other keys, needles and depths; training documents never use these seeds
    (``data.training_mix.TRAIN_SEED_BASE``)."""
    ppl_data: str = default("ppl_data")
    """Perplexity documents: a demo corpus name, a .txt/.jsonl file or a folder of .txt."""
    ppl_docs: int = Field(default("ppl_docs"), gt=0)
    ppl_mode: Literal["truncate", "sliding"] = default("ppl_mode")
    """truncate: the first N tokens of each document; sliding: windows of N with ``ppl_stride``."""
    ppl_stride: int = Field(default("ppl_stride"), gt=0)
    chunk_size: int | None = Field(None, gt=0)
    """LM-head positions per chunk of the perplexity loss (default: the module's)."""
    ruler_tasks: list[str] | None = None
    """RULER tasks (default: all of ``data.synthetic.RULER_TASKS``)."""
    qa_data: str | None = None
    """RULER QA data: a QA .jsonl (question, answers, context), a save_to_disk folder (PATH[:SPLIT]) or
    a HF dataset id (NAME[:CONFIG][:SPLIT]) in SQuAD or HotpotQA layout (``eval.tasks.read_qa_records``)."""
    max_new_tokens: int | None = Field(None, gt=0)
    short_tasks: list[str] = []
    """lm-eval task names or task YAML paths (task ``short``)."""
    num_fewshot: int | None = Field(None, ge=0)
    short_limit: float | None = Field(None, gt=0)
    long_tasks: list[str] = []
    """lm-eval long-context task names or local task YAML paths (task ``long``), run at each length."""
    long_limit: float | None = Field(None, gt=0)


SETTINGS_FIELDS = (
    "lengths", "depths", "samples", "ppl_data", "ppl_docs", "ppl_mode", "ppl_stride", "chunk_size", "ruler_tasks",
    "qa_data", "max_new_tokens", "short_tasks", "num_fewshot", "short_limit", "long_tasks", "long_limit",
)  # fmt: skip
"""The stage keys that are ``eval.tasks.EvalSettings`` fields of the same name."""


def check(recipe, index: int, where: str) -> list[str]:
    stage = recipe.stages[index]
    lines = []
    if "short" in stage.tasks and not stage.short_tasks:
        lines.append(f"{where}.short_tasks: task 'short' needs lm-eval task names or YAML paths")
    if "long" in stage.tasks and not stage.long_tasks:
        lines.append(f"{where}.long_tasks: task 'long' needs lm-eval task names or YAML paths")
    if stage.ruler_tasks is not None:
        from longctx.data.synthetic import RULER_TASKS

        unknown = [t for t in stage.ruler_tasks if t not in RULER_TASKS]
        if unknown:
            lines.append(f"{where}.ruler_tasks: unknown {unknown}; expected some of {list(RULER_TASKS)}")
    if any(not 0 <= d <= 1 for d in stage.depths):
        lines.append(f"{where}.depths: {stage.depths}; expected values in [0, 1]")
    for i, run in enumerate(stage.runs):
        if run.attention is not None and run.rope != "spec":
            lines.append(
                f"{where}.runs[{i}].attention: a policy applies to a searched spec (rope: spec); got rope: {run.rope}"
            )
        elif isinstance(run.attention, float) and run.attention < 1.0:
            lines.append(f"{where}.runs[{i}].attention: {run.attention}; expected a factor >= 1.0")
    return lines


def preflight(stage, ctx) -> list[str]:
    """Every perplexity length against its data, before any model loads: a length no
    ``ppl_data`` document reaches would report ``ppl None`` (``docs: 0``) after the whole run.
    ``qa_data`` (a QA .jsonl, a ``save_to_disk`` folder or a dataset id) is read and its layout
    checked here too (``eval.tasks.read_qa_records``): a missing path / id or a misshapen dataset
    is a line here, not an error once the models have loaded and the ruler task starts."""
    from longctx.data.errors import DataError
    from longctx.eval.tasks import ppl_documents, read_qa_records

    where = f"stages.{stage.name}"
    lines = []
    if stage.qa_data:
        try:
            read_qa_records(stage.qa_data, f"{where}.qa_data")
        except DataError as err:
            lines.append(str(err))
    if "ppl" not in stage.tasks:
        return lines
    try:
        sizes = [len(ids) for ids in ppl_documents(ctx.tokenizer(), stage.ppl_data)]
    except FileNotFoundError as err:
        return [*lines, f"{where}.ppl_data: {err}"]
    longest = max(sizes, default=0)
    short = [n for n in stage.lengths if n > longest]
    if short:
        lines.append(
            f"{where}.lengths: ppl at {short[0]:,} tokens needs a document of >= {short[0]:,} tokens; "
            f"ppl_data {stage.ppl_data!r} has {len(sizes)} documents, the longest {longest:,} tokens "
            f"(lengths {short} unreachable); name a long-document source in {where}.ppl_data"
        )
    return lines


def plan(recipe, stage) -> str:
    return f"eval {stage.tasks} at {stage.lengths} for {[r.name for r in stage.runs] or [stage.name]}"


def _run_spec(ctx, stage, run, model):
    """The RoPE of one eval run: a stage's spec, the base RoPE, or a baseline built for L'."""
    from longctx.rope import RopeSpec

    base = ctx.base_spec(model)
    if run.rope == "original":
        return base
    if run.rope == "spec":
        source = ctx.spec_source(run) if run.spec_from else ctx.spec_source(stage)
        spec = RopeSpec.from_json(ctx.stage_dir(source) / "spec.json") if source else base
        if run.attention is None:
            return spec
        from longctx.rope.attention_policy import with_attention_policy

        if isinstance(run.attention, str):
            return with_attention_policy(spec, run.attention)
        return with_attention_policy(spec, "balanced", run.attention)
    # run.rope is validated to one of linear / ntk / yarn here: the method of the same name
    return ctx.baseline_spec(model, run.rope, stage.target_length or max(stage.lengths))


def run(stage, ctx) -> dict:
    import json

    from longctx.eval.driver import Run, evaluate
    from longctx.eval.tasks import EvalSettings

    out = ctx.stage_dir(stage.name)
    if ctx.accelerator.is_main_process:
        values = {key: getattr(stage, key) for key in SETTINGS_FIELDS}
        seed = ctx.recipe.seed if stage.seed is None else stage.seed
        settings = EvalSettings(**values, seed=seed, progress=True)
        lines = stage.runs or [
            EvalRun(name=stage.name, model_from=stage.model_from, spec_from=stage.spec_from)
        ]
        runs = []
        for line in lines:
            source = ctx.model_source(line) if line.model_from else ctx.model_source(stage)
            runs.append(
                Run(
                    name=line.name,
                    model=source or "recipe model",
                    load=lambda source=source: ctx.load_model_from(source),
                    spec=lambda model, line=line: _run_spec(ctx, stage, line, model),
                )
            )
        evaluate(runs, ctx.tokenizer(), stage.tasks, settings, out, release=ctx.release, log=ctx.log)
    ctx.accelerator.wait_for_everyone()
    results = json.loads((out / "results.json").read_text())
    return {
        "results": str(out / "results.json"),
        "report": str(out / "report.md"),
        "summary": summary(results),
    }


def summary(results: dict) -> dict:
    """Per run: perplexity and passkey accuracy by length (the headline numbers)."""
    out = {}
    for run in results["runs"]:
        tasks = run["tasks"]
        line = {}
        if "ppl" in tasks:
            line["ppl"] = {str(k): v["ppl"] for k, v in tasks["ppl"]["by_length"].items()}
        if "passkey" in tasks:
            line["passkey"] = tasks["passkey"]["by_length"]
        out[run["name"]] = line
    return out
