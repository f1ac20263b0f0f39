"""Rehearse a recipe before the GPUs are paid for: the same chain, shrunk to a CPU.

:func:`shrink` derives from a recipe file — with no per-recipe code — a recipe that keeps what
decides whether the run trains right: its stages and their kinds, window shares and RoPE kinds,
``grad_accum`` and ``micro_batch_size``, LoRA, gradient checkpointing, ``sequence_parallel``
(as 2), the launch config its header names, and the model family's structure (tied or untied
head, grouped-query attention, a sliding window, ``max_position_embeddings`` beyond the
pretrained length); and shrinks what only costs time: the geometry (a 2-layer model of the
family, built locally), every length by one power of two (longest ≤ 1024, L ≥ 32), steps,
search budgets and eval samples. Precision is float32 so a launched run can be compared with
one process to 1e-5; the learning rate is 1e-3 so a dropped or overwritten micro-batch moves
weights by far more than that.

The family comes from the checkpoint's own ``config.json`` when ``model.path`` holds one, else
from :data:`FAMILIES` by the path's name (the published configs' structure). The 1-process
reference (:func:`reference`) is the same shrunk recipe up to its last training stage, with the
data-parallel groups folded into ``grad_accum`` (rank r takes micro-batches j ≡ r, so one
process accumulating ``dp ×`` as many sees the same rows) and no sequence parallelism.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

MAX_LENGTH = 1024
"""The longest length a rehearsal trains, searches or evaluates at (longer ones are clamped)."""
MIN_ORIGINAL = 32
"""The shortest pretrained length L a rehearsal shrinks to."""
LOGITS_PER_SHARD = 1 << 18
"""The tiled loss's slice budget in a rehearsal (``LONGCTX_LOGITS_PER_SHARD``): 1024 tokens ×
a 2048-token vocabulary take 8 slices, as a 128k row × 128k vocabulary does on a GPU."""
VOCAB = 2048
LR = 1e-3
MAX_STEPS = 3

FAMILIES = (
    # (part of model.path, lowercased) → the structure of the family's published config.json
    ("llama-3", dict(model_type="llama", gqa=True, tied=False, rope_theta=500_000.0, max_pos=8192, window=None)),
    ("llama-2", dict(model_type="llama", gqa=False, tied=False, rope_theta=10_000.0, max_pos=4096, window=None)),
    ("mistral", dict(model_type="mistral", gqa=True, tied=False, rope_theta=10_000.0, max_pos=32768, window=4096)),
    ("phi-3", dict(model_type="phi3", gqa=False, tied=False, rope_theta=10_000.0, max_pos=4096, window=2047)),
    ("smollm2", dict(model_type="llama", gqa=True, tied=True, rope_theta=100_000.0, max_pos=8192, window=None)),
)  # fmt: skip

_EVOLUTION = {"population": 4, "generations": 1, "parents": 2, "mutants": 1, "crossovers": 1}
SEARCH_BUDGET = {"evolution": _EVOLUTION, "longrope2": _EVOLUTION, "dcis": {"rounds": 1, "increments": 2}}
"""Per algorithm, the settings a rehearsal caps (an algorithm's other settings are kept)."""

LAUNCH_LINE = re.compile(r"accelerate launch --config_file accelerate_configs/(\S+\.yaml)")
ONE_PROCESS = {"cpu.yaml", "single_gpu.yaml"}
TRAINING = ("pretrain", "finetune")


@dataclass
class Rehearsal:
    recipe: dict
    """The shrunk recipe (a YAML mapping)."""
    launch: str | None
    """The accelerate config the recipe's header names (None: ``python train/run.py``)."""
    processes: int
    family: dict
    """The model family's structure, as built (``model_type``, ``gqa``, ``tied``, ...)."""
    original_length: int
    scale: float


def family_of(model_path: str | None) -> dict:
    """The structure of the checkpoint's family: its own config.json if present, else the row of
    :data:`FAMILIES` its name matches (one line naming the path when none does)."""
    if model_path and (Path(model_path) / "config.json").is_file():
        import json

        c = json.loads((Path(model_path) / "config.json").read_text())
        theta = (c.get("rope_parameters") or {}).get("rope_theta") or c.get("rope_theta", 10_000.0)
        heads = c["num_attention_heads"]
        return dict(
            model_type=c["model_type"], gqa=c.get("num_key_value_heads", heads) < heads,
            tied=bool(c.get("tie_word_embeddings", False)), rope_theta=float(theta),
            max_pos=c["max_position_embeddings"], window=c.get("sliding_window"),
        )  # fmt: skip
    name = (model_path or "").lower()
    for key, family in FAMILIES:
        if key in name:
            return dict(family)
    raise ValueError(
        f"model.path {model_path!r}: no config.json there and no known family in the name; "
        f"expected one of {[k for k, _ in FAMILIES]} (train/rehearse.py FAMILIES)"
    )


def _scale(original: int, longest: int, min_original: int = MIN_ORIGINAL) -> float:
    """One power of two for every length: the longest ≤ MAX_LENGTH unless L would go under
    ``min_original`` (then longer lengths are clamped)."""
    k = max(0, math.ceil(math.log2(max(longest, 1) / MAX_LENGTH)))
    k = min(k, max(0, int(math.log2(original / min_original))))
    return 2.0**-k


def launch_config(text: str) -> str | None:
    m = LAUNCH_LINE.search(text)
    return m.group(1) if m else None


def shrink(recipe_file: Path, workdir: Path, model_dir: Path | None = None) -> Rehearsal:
    """The rehearsal of ``recipe_file`` (see the module docstring). ``model_dir``: where the
    family's tiny model is (or will be) saved, by :func:`build_model`."""
    from longctx.train.load import load_recipe
    from longctx.train.schema import declared_length, longest_length

    text = Path(recipe_file).read_text()
    valid = load_recipe(recipe_file, check_files=False)  # the recipe's defaults, resolved once
    r = copy.deepcopy(yaml.safe_load(text))
    model = r["model"]
    init = model.get("init")
    if init is not None:
        i = valid.model.init
        family = {"model_type": i.architecture, "tied": i.tie_embeddings, "gqa": i.num_kv_heads < i.num_heads,
                  "window": i.sliding_window}  # fmt: skip
    else:
        family = family_of(model.get("path"))
    L = declared_length(valid) or family["max_pos"]
    # synthetic passkey documents (training mix, readjust's retrieval score) need ~114 tokens
    passkeys = valid.data.retrieval_mix() or any(st.kind == "readjust" for st in valid.stages)
    s = _scale(L, longest_length(valid) or L, 128 if passkeys else MIN_ORIGINAL)

    def scaled(n: int) -> int:
        if n == L:
            return int(L * s)
        return min(MAX_LENGTH, max(16, round(n * s / 16) * 16))

    small_L = int(L * s)
    if init is not None:
        init["original_length"] = small_L
        if init.get("sliding_window"):
            init["sliding_window"] = max(8, round(init["sliding_window"] * s))
    else:
        family["max_pos"] = max(small_L, round(family["max_pos"] * s))
        if family.get("window"):
            family["window"] = max(8, round(family["window"] * s))
        model_dir = Path(model_dir or workdir / "model")
        model["path"] = str(model_dir)
        model.pop("gguf_file", None)
        if model.get("original_length"):
            model["original_length"] = small_L
        r["tokenizer"] = {"path": str(model_dir)}
    model["dtype"] = "float32"
    if model.get("attention") == "flash":
        model["attention"] = "sdpa"
    launch = launch_config(text)
    sp = 2 if r.get("sequence_parallel", 1) > 1 else 1
    if sp > 1:
        r["sequence_parallel"] = sp
    processes = 1 if launch is None or launch in ONE_PROCESS else 2
    docs = str(workdir / "docs")
    data = r["data"]
    data["sources"] = [{"kind": "local", "path": docs}]
    if data.get("validation"):
        data["validation"] = [{"kind": "local", "path": docs}]
    data.pop("num_proc", None)
    data["cache_dir"] = str(workdir / "cache")
    r["output_dir"] = str(workdir / "out")
    r["stages"] = [_shrink_stage(stage, scaled, s, docs) for stage in r["stages"]]
    return Rehearsal(r, launch, processes, family, small_L, s)


def _shrink_stage(stage: dict, scaled, s: float, docs: str) -> dict:
    stage = dict(stage)
    kind = stage["kind"]
    if stage.get("target_length"):
        stage["target_length"] = scaled(stage["target_length"])
    if kind in TRAINING:
        stage["windows"] = [{**w, "length": scaled(w["length"])} for w in stage["windows"]]
        stage["steps"] = min(stage["steps"], MAX_STEPS)
        stage["warmup_steps"] = min(stage.get("warmup_steps", 0), 1)
        stage["lr"], stage["log_every"], stage["checkpoint_every"] = LR, 1, 2
    elif kind in ("search", "readjust"):
        stage["num_samples"] = 1
        stage["max_evaluations"] = min(stage.get("max_evaluations") or 4, 4)
        if stage.get("needle_depths"):
            stage["needle_depths"] = stage["needle_depths"][:1]
        settings = dict(stage.get("settings") or {})
        for key, cap in SEARCH_BUDGET.get(stage.get("algorithm", ""), {}).items():
            settings[key] = min(settings.get(key, cap), cap)
        if "groups" in settings:
            settings["groups"] = min(settings["groups"], 2)
        if "local_window" in settings:
            settings["local_window"] = max(8, round(settings["local_window"] * s))
        stage["settings"] = settings
    elif kind == "eval":
        lengths = sorted({scaled(n) for n in stage["lengths"]})
        stage["lengths"] = [n for n in lengths if n >= 512] or [512]  # RULER prompts need up to ~310
        stage["samples"], stage["ppl_docs"], stage["ppl_data"], stage["depths"] = 1, 1, docs, [0.5]
        if "ruler" in stage.get("tasks", []):
            stage["ruler_tasks"] = ["niah_single_1", "vt"]  # a needle and a multi-hop task
        stage.pop("qa_data", None)
    return stage


def reference(rehearsal: Rehearsal, workdir: Path) -> dict:
    """The 1-process run the launched rehearsal must equal: up to the last training stage, one
    process accumulating the data-parallel groups' micro-batches, no sequence parallelism."""
    r = copy.deepcopy(rehearsal.recipe)
    sp = r.pop("sequence_parallel", 1)
    dp = rehearsal.processes // sp
    last = max((i for i, s in enumerate(r["stages"]) if s["kind"] in TRAINING), default=-1)
    r["stages"] = r["stages"][: last + 1]
    for stage in r["stages"]:
        if stage["kind"] in TRAINING:
            stage["grad_accum"] = stage.get("grad_accum", 1) * dp
    r["output_dir"] = str(workdir / "reference")
    return r


def build_model(rehearsal: Rehearsal, model_dir: Path, tokenizer) -> Path:
    """A 2-layer model of the rehearsal's family (random weights, the family's head tying, GQA,
    sliding window and ``max_position_embeddings``), saved with ``tokenizer`` to ``model_dir``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    f = rehearsal.family
    config = AutoConfig.for_model(
        f["model_type"], vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2 if f["gqa"] else 4, head_dim=32,
        max_position_embeddings=f["max_pos"], tie_word_embeddings=f["tied"],
        rope_parameters={"rope_type": "default", "rope_theta": f["rope_theta"]},
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    if f["model_type"] in ("mistral", "phi3"):
        config.sliding_window = f.get("window")
    if f["model_type"] == "phi3":
        config.original_max_position_embeddings = f["max_pos"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir
