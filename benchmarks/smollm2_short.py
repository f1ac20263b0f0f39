"""SmolLM2-135M short-context table: what each extension does to inputs at and below L = 8192.

    python benchmarks/smollm2_short.py --out outputs/repro/smollm2_short \\
        [--scales 8,4] [--budget 12] [--only-rows original,yarn-8x,ours-8x] \\
        [--spec DCIS=path/spec.json ...] [--search-dtype bfloat16|float32] [--check-bf16]

Rows: the original RoPE; PI (``linear``), NTK and YaRN built for L' = 8192·s at each scale s;
and the longrope-form specs — our LongRoPE2 search at s (below) and any ``--spec NAME=PATH``
(DCIS / DPE / LongRoPE2 spec.json files; without one their rows say "pending", with the cost
of the search that would make them) — each under the three attention policies of
``rope.attention_policy``: ``hf`` (stock transformers: ONE factor sqrt(1 + ln s / ln L) for both
factor sets, so short inputs pay for it even with all-one short factors), ``balanced`` (one
stock-expressible factor from ``balance_attention_factor``, :data:`BALANCE_POINTS` factors in
[1, f_hf], short = ppl at 4096 and long = ppl at 16384, both on the SEARCH documents, never the
evaluation one) and ``short_original`` (short inputs exactly the pretrained RoPE; not stock-HF
expressible). A spec with one factor set (DPE) gets one row.

Measures, every row, final evals in float32: perplexity at 2048 / 4096 / 8192 and 16384 on KJV
Genesis (the first KJV book, the document the other SmolLM2 tables use; first N tokens, BOS
first) and passkey accuracy at 4096 / 8192 (``eval.passkey``: 5 samples per length, depths 0.1,
0.3, 0.5, 0.7, 0.9, seed 0, greedy). The factor set is forced by the evaluated length — short
at ≤ L, long above — so a passkey prompt of exactly L tokens is decoded with the short set
throughout (its answer sits inside L; only the continuation after it would cross L).

Our searched spec (issue 17 part 6): ``rope.search.run_search("longrope2", …)`` on the 8× (and
4×) template — L' = 65536 / 32768, so the 8× / 4× critical-dimension search space and bounds —
with candidates scored by ``eval.scorer.build_scorer`` perplexity at 16384 tokens on KJV Exodus
(not the evaluation document): a PROXY for the full-length objective, which costs ~35 min (8×,
65k tokens) or ~8.5 min (4×, 32k) per candidate on this CPU. Budget ``--budget`` candidates
(population 6, then 3 children per generation). Candidates are scored in bfloat16 by default;
``--check-bf16`` scores the search's first K candidates in float32 and bfloat16 and writes their
Spearman rank agreement (``bf16_check.json``, shown in the table's notes).

Cost control: every measurement is memoized in the append-only ``measurements.jsonl`` under
``--out``, keyed by (model, dtype, measure, length, a hash of the exact input tokens, and the
RoPE actually applied at that length: the inverse frequencies and attention factor of the
short set at ≤ L, of the long set above it, n̂ there, DPE's parameters). Identical computations
are shared — every longrope spec with all-one short factors under the same short attention
factor has the same short numbers, ``short_original``'s short numbers are the original
model's, ``hf`` and ``short_original`` share their long set — and a killed run resumes without
recomputing (the search also resumes from its own ``search_<s>x/`` state). Work is ordered so the
most important rows finish first: original, YaRN 8×, our 8× search under each policy, PI / NTK
8×, then 4×. ``results.json`` and ``table.md`` are rewritten (atomically) after every measurement.

Forward costs here (2 cores, fp32): 4k ~15 s, 8k ~37 s, 16k ~2.5 min; bfloat16 1.4–1.7× faster.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longctx.checkout import checkout_root
from longctx.eval.measure import MeasurementCache, digest, rope_fingerprint
from longctx.eval.passkey import passkey_eval, passkey_samples
from longctx.eval.perplexity import perplexity_at_lengths, truncated_rows
from longctx.eval.scorer import build_scorer
from longctx.rope import RopeSpec, apply_rope, factor_set, to_hf_config
from longctx.rope.attention_policy import METHODS as POLICY_METHODS
from longctx.rope.attention_policy import balance_attention_factor, with_attention_policy
from longctx.rope.errors import RopeExportError, RopeSpecError
from longctx.rope.files import write_text_atomic
from longctx.rope.search import LongRoPE2Config, run_search, to_spec

ROOT = checkout_root(purpose="benchmarks")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RECIPE = ROOT / "recipes" / "smollm2_135m_32k.yaml"
"""The committed recipe whose ``model`` block (GGUF package, dtype, attention) is loaded."""
OUT = ROOT / "outputs" / "repro" / "smollm2_short"
PPL_LENGTHS = (2048, 4096, 8192)
PASSKEY_LENGTHS = (4096, 8192)
LONG_LENGTH = 16384
RATIO_LENGTH = 4096
"""The short length of the ratio column and of the part-6 target."""
SCALES = (8, 4)
VERDICT_SCALE = 8
SHORT_TOLERANCE = 1.02
"""Part-6 target: ppl@4k of the searched 8× spec ≤ this × the original's."""
POLICIES = ("hf", "balanced", "short_original")
FIXED = "fixed"
"""The row policy of a search scored under a fixed attention factor: its spec as searched (one
explicit factor for both sets, stock-HF expressible)."""
SEARCHES = (("longrope2", None), ("longrope2", 1.0), ("evolution", 1.0))
"""Our searches at each scale, (algorithm, attention factor while scoring): LongRoPE2 under
transformers' default factor (then shown under each policy), and LongRoPE2 and LongRoPE's
evolution under factor 1.0 for both sets — short inputs exactly the pretrained model's under
stock HF (short factors all 1), the long factors searched knowing that. LongRoPE2's space keeps
λ ≥ s above its critical dimension; LongRoPE's starts from PI, NTK and YaRN and spans [1, 1.25 s]."""
ALGORITHM_NAMES = {"longrope2": "LongRoPE2", "evolution": "LongRoPE evolution"}
BASELINE_NAMES = {"linear": "PI", "ntk": "NTK", "yarn": "YaRN"}
EXTERNAL = ("DCIS", "DPE", "LongRoPE2")
"""Specs from other searches, given as ``--spec NAME=PATH``; "pending" rows without one."""
FULL_FORWARD_MINUTES = {4: 8.5, 8: 35}
"""A full-length (L' = 32k / 64k) forward on this CPU: what a search at 4× / 8× pays per candidate."""
SEARCH_SETTINGS = {"population": 6, "generations": 40, "parents": 3, "mutants": 2, "crossovers": 1}
"""LongRoPE2 evolution sized for a small budget: 6 seeds, then 3 children per generation; the
budget (``max_evaluations``) stops it, so ``generations`` is only an upper bound."""
EVOLUTION_SETTINGS = {**SEARCH_SETTINGS, "n_hat_choices": [0]}
"""LongRoPE's evolution at the same size; n̂ = 0 because stock transformers' ``longrope`` has no
start positions (an n̂ > 0 spec would not export)."""
DEFAULT_BUDGET = 12
BALANCE_POINTS = 4
"""Factors tried by ``balance_attention_factor``: 1, f_hf and two between."""
PASSKEY_DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
"""One passkey sample per depth: 5 samples per length."""
CHECK_K = 6
"""Candidates of the bf16 check: the search's first K (its initial seeds, K ≤ population)."""
BF16_MIN_SPEARMAN = 0.8
"""Below this rank agreement the notes (and a warning) say to search in float32 instead."""
MEMO_FILE = "measurements.jsonl"
RESULTS_FILE = "results.json"
TABLE_FILE = "table.md"
CHECK_FILE = "bf16_check.json"
SEARCH_RESULT = "result.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def log(message: str) -> None:
    print(f"[smollm2_short] {message}", file=sys.stderr, flush=True)


def scale_tag(scale: float) -> str:
    return f"{scale:g}x"


def scale_label(scale: float) -> str:
    return f"{scale:g}×"


def search_settings(algorithm: str) -> dict:
    return EVOLUTION_SETTINGS if algorithm == "evolution" else SEARCH_SETTINGS


def search_tag(scale: float, attention: float | None = None, algorithm: str = "longrope2") -> str:
    """One search's name: "8x" (LongRoPE2 under transformers' default factor), "8x_a1" (scored at
    factor 1.0), "8x_evolution_a1" — its folder ``search_<tag>``, its key in the results and, with
    dashes, its row id ``ours-<tag>``."""
    algo = "" if algorithm == "longrope2" else f"_{algorithm}"
    return scale_tag(scale) + algo + ("" if attention is None else f"_a{attention:g}")


def search_id(scale: float, attention: float | None = None, algorithm: str = "longrope2") -> str:
    """ours-8x, ours-8x-a1, ours-8x-evolution-a1."""
    return "ours-" + search_tag(scale, attention, algorithm).replace("_", "-")


class Missing(Exception):
    """A lookup-only measurement that the memo does not hold yet."""


# ----- the model and documents -------------------------------------------------------------------
@dataclass
class Setup:
    """The model under test and everything the measurements depend on (injectable for tests)."""

    model: torch.nn.Module
    """The float32 model (final evals); bfloat16 scoring uses a cast copy."""
    tokenizer: object
    base: RopeSpec
    """The pretrained RoPE (method ``default``, L = ``base.original_length``)."""
    eval_doc: list[int]
    """Perplexity document's tokens (no BOS)."""
    search_docs: list[list[int]]
    """Documents the search and the balanced factor score on (never the evaluation document)."""
    label: str
    """Model identity in memo keys."""
    eval_doc_name: str = "KJV Genesis"
    search_doc_names: str = "KJV Exodus"
    ppl_lengths: tuple[int, ...] = PPL_LENGTHS
    passkey_lengths: tuple[int, ...] = PASSKEY_LENGTHS
    long_length: int = LONG_LENGTH
    ratio_length: int = RATIO_LENGTH
    search_length: int = LONG_LENGTH
    balance_lengths: tuple[int, int] = (RATIO_LENGTH, LONG_LENGTH)
    """(short, long) lengths of the balanced factor's two scores."""
    passkey_depths: tuple[float, ...] = PASSKEY_DEPTHS
    passkey_per_depth: int = 1
    max_new_tokens: int = 10
    seed: int = 0
    _models: dict = field(default_factory=dict, repr=False)
    _inputs: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        L = self.base.original_length
        need = max(*self.ppl_lengths, self.long_length)
        if len(self.eval_doc) < need:
            raise ValueError(f"eval document: {len(self.eval_doc)} tokens; the measures need {need}")
        short, long = self.balance_lengths
        if not (short <= L < long and self.search_length > L and self.long_length > L):
            raise ValueError(f"lengths: balance short ≤ L={L} < balance long, search and long lengths")
        if self.ratio_length not in self.ppl_lengths:
            raise ValueError(f"ratio_length {self.ratio_length}: expected one of {self.ppl_lengths}")
        need = max(self.search_length, *self.balance_lengths)
        if not self.search_docs or any(len(d) < need for d in self.search_docs):
            raise ValueError(f"search documents: each needs ≥ {need} tokens")
        if any(d == self.eval_doc for d in self.search_docs):
            raise ValueError("search documents: the evaluation document must not be among them")

    @property
    def L(self) -> int:
        return self.base.original_length

    @property
    def bos(self) -> int | None:
        return getattr(self.tokenizer, "bos_token_id", None)

    def model_in(self, dtype: str) -> torch.nn.Module:
        if dtype not in self._models:
            want = DTYPES[dtype]
            model = self.model if self.model.dtype == want else copy.deepcopy(self.model).to(want)
            self._models[dtype] = model.eval()
        return self._models[dtype]

    def rows(self, length: int, docs: str) -> list[list[int]]:
        """Perplexity rows at ``length``: the evaluation document or the search documents."""
        key = ("rows", length, docs)
        if key not in self._inputs:
            source = [self.eval_doc] if docs == "eval" else self.search_docs
            self._inputs[key] = truncated_rows(source, length, bos_id=self.bos, max_docs=len(source))
        return self._inputs[key]

    def passkey(self, length: int) -> list:
        key = ("passkey", length)
        if key not in self._inputs:
            self._inputs[key] = passkey_samples(
                self.tokenizer,
                [length],
                list(self.passkey_depths),
                per_cell=self.passkey_per_depth,
                seed=self.seed,
            )
        return self._inputs[key]

    def inputdigest(self, measure: str, length: int, docs: str) -> str:
        key = ("sha", measure, length, docs)
        if key not in self._inputs:
            if measure == "ppl":
                data = self.rows(length, docs)
            else:
                data = [[s.input_ids, s.prompt_len, list(s.answers)] for s in self.passkey(length)]
                data.append(self.max_new_tokens)
            self._inputs[key] = digest(data)
        return self._inputs[key]


def load_smollm2(recipe: str | os.PathLike = RECIPE, *, search_docs: int = 1) -> Setup:
    """SmolLM2-135M through the project's loaders (``train.context.RunContext``, as the runner
    does), KJV Genesis for evaluation and the next ``search_docs`` long-enough books for the search."""
    from longctx.eval.tasks import read_documents
    from longctx.train.context import RunContext
    from longctx.train.load import load_recipe
    from longctx.train.run import make_accelerator

    path = Path(recipe)
    rec = load_recipe(path)
    ctx = RunContext(rec, path, make_accelerator(attention=rec.model.attention, precision=rec.model.dtype))
    tokenizer = ctx.tokenizer()
    model = ctx.load_model_from(None)
    base = ctx.base_spec(model)
    texts = read_documents("kjv")  # the eval tasks' reader: KJV books in canonical order

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    eval_doc, found, names = encode(texts[0]), [], []
    need = max(LONG_LENGTH, RATIO_LENGTH)
    for text in texts[1:]:
        if len(found) == search_docs:
            break
        ids = encode(text)
        if len(ids) >= need:
            found.append(ids)
            names.append(book_name(text))
    label = f"{rec.model.gguf_file or rec.model.path} ({model.config._attn_implementation})"
    return Setup(
        model=model, tokenizer=tokenizer, base=base, eval_doc=eval_doc, search_docs=found, label=label,
        eval_doc_name=f"KJV {book_name(texts[0])}",
        search_doc_names=", ".join(f"KJV {n}" for n in names),
    )  # fmt: skip


def book_name(text: str) -> str:
    """ "Genesis" from a KJV book's title line ("The First Book of Moses, called Genesis")."""
    return text.split("\n", 1)[0].strip().rsplit("called ", 1)[-1]


# ----- rows ----------------------------------------------------------------------------------------
@dataclass
class Group:
    """Rows that share one spec before policies: the original, a baseline, a searched spec."""

    id: str
    kind: str
    """"original", "baseline", "ours" or "external"."""
    scale: float | None = None
    method: str | None = None
    """Baselines: linear / ntk / yarn. External: the NAME given (DCIS, DPE, LongRoPE2, …)."""
    spec: RopeSpec | None = None
    """External: the spec file's spec (None: not given, a pending row)."""
    search_attention: float | None = None
    """Ours: the attention factor both factor sets get while the search scores candidates (and in
    its result); None: transformers' default for the target (the ``hf`` policy)."""
    algorithm: str = "longrope2"
    """Ours: the search algorithm (``rope.search``)."""

    @property
    def name(self) -> str:
        if self.kind == "original":
            return "original (no scaling)"
        if self.kind == "baseline":
            return f"{BASELINE_NAMES[self.method]} {scale_label(self.scale)}"
        if self.kind == "ours" and self.search_attention is not None:
            return (
                f"{ALGORITHM_NAMES[self.algorithm]} search {scale_label(self.scale)} at attention factor "
                f"{self.search_attention:g} (ours, 16k proxy)"
            )
        if self.kind == "ours":
            return f"LongRoPE2 search {scale_label(self.scale)} (ours, 16k proxy)"
        return f"{self.method} {scale_label(self.scale)}" + (" (spec file)" if self.spec else "")

    @property
    def policies(self) -> tuple[str | None, ...]:
        if self.kind == "ours" and self.search_attention is not None:
            return (FIXED,)
        if self.kind == "ours" or (
            self.kind == "external" and self.spec and self.spec.method in POLICY_METHODS
        ):
            return POLICIES
        return (None,)

    def row_ids(self) -> list[str]:
        return [self.id if p is None else f"{self.id}/{p}" for p in self.policies]


@dataclass
class Row:
    id: str
    group: Group
    policy: str | None
    spec: RopeSpec | None
    pending: str | None = None


def stock_hf(spec: RopeSpec) -> bool:
    try:
        to_hf_config(spec)
    except (RopeExportError, RopeSpecError):
        return False
    return True


def parse_external(items: list[str]) -> list[tuple[str, RopeSpec]]:
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--spec {item!r}: expected NAME=PATH (e.g. DCIS=outputs/x/search/spec.json)")
        out.append((name, RopeSpec.from_json(path)))
    return out


def plan_groups(scales, external: list[tuple[str, RopeSpec]] = ()) -> list[Group]:
    """Groups in work order: original, then per scale (8× first) YaRN, ours, PI, NTK and the
    other searches' specs (given ones, then pending ones)."""
    ordered = sorted(dict.fromkeys(scales), key=lambda s: (s != VERDICT_SCALE, -s))
    groups = [Group("original", "original")]
    for s in ordered:
        t = scale_tag(s)
        groups += [Group(f"yarn-{t}", "baseline", s, "yarn")]
        groups += [
            Group(search_id(s, a, algo), "ours", s, search_attention=a, algorithm=algo)
            for algo, a in SEARCHES
        ]
        groups += [Group(f"pi-{t}", "baseline", s, "linear"), Group(f"ntk-{t}", "baseline", s, "ntk")]
        given = [(n, spec) for n, spec in external if spec.scale == s]
        groups += [Group(f"{n.lower()}-{t}", "external", s, n, spec) for n, spec in given]
        names = {n.lower() for n, _ in given}
        groups += [Group(f"{n.lower()}-{t}", "external", s, n) for n in EXTERNAL if n.lower() not in names]
    for name, spec in external:
        if spec.scale not in ordered:
            groups.append(
                Group(f"{name.lower()}-{scale_tag(spec.scale)}", "external", spec.scale, name, spec)
            )
    return groups


def selector(only: list[str] | None, groups: list[Group]) -> Callable[[str], bool]:
    """``only``: row ids, or group ids (all of that group's policies)."""
    if not only:
        return lambda _: True
    known = [i for g in groups for i in [g.id, *g.row_ids()]]
    unknown = [o for o in only if o not in known]
    if unknown:
        raise SystemExit(f"--only-rows: unknown {unknown[0]!r}; known: {', '.join(dict.fromkeys(known))}")
    return lambda row_id: any(row_id == o or row_id.startswith(o + "/") for o in only)


# ----- the bench -------------------------------------------------------------------------------
class Bench:
    def __init__(
        self,
        setup: Setup,
        out: str | os.PathLike,
        *,
        search_dtype: str = "bfloat16",
        budget: int = DEFAULT_BUDGET,
        progress: bool = True,
    ) -> None:
        if search_dtype not in DTYPES:
            raise SystemExit(f"--search-dtype {search_dtype!r}: expected one of {', '.join(DTYPES)}")
        self.setup = setup
        self.out = Path(out)
        self.memo = MeasurementCache(self.out / MEMO_FILE)
        self.search_dtype = search_dtype
        self.budget = budget
        self.progress = progress

    # ----- one measurement ---------------------------------------------------------------------
    def key(self, spec: RopeSpec, measure: str, length: int, docs: str, dtype: str) -> tuple[str, dict]:
        material = {
            "model": self.setup.label,
            "dtype": dtype,
            "measure": measure,
            "length": length,
            "inputs": self.setup.inputdigest(measure, length, docs),
            "rope": rope_fingerprint(spec, length),
        }
        return digest(material), material

    def measure(
        self, spec: RopeSpec, measure: str, length: int, *, docs: str = "eval", dtype: str = "float32",
        compute: bool = True, name: str = "",
    ) -> float | None:  # fmt: skip
        """ppl or passkey accuracy (%) of ``spec`` at ``length``, from the memo when it has it."""
        key, material = self.key(spec, measure, length, docs, dtype)
        rec = self.memo.get(key)
        if rec is None:
            if not compute:
                return None
            rec = self._compute(spec, measure, length, docs, dtype, key, material)
            log(f"{name or spec.method} {measure}@{length} = {rec['value']:.4f} ({rec['seconds']:.1f} s)")
        return rec["value"]

    def _compute(self, spec, measure, length, docs, dtype, key, material) -> dict:
        s = self.setup
        model = s.model_in(dtype)
        apply_rope(model, spec)
        kind = material["rope"]["set"]
        start = time.perf_counter()
        extra = {}
        with factor_set(model, kind):
            if measure == "ppl":
                source = [s.eval_doc] if docs == "eval" else s.search_docs
                res = perplexity_at_lengths(
                    model, source, [length], bos_id=s.bos, max_docs=len(source), progress=False
                )[length]
                value = res["ppl"]
            else:
                res = passkey_eval(model, s.tokenizer, s.passkey(length), max_new_tokens=s.max_new_tokens,
                                   progress=self.progress)  # fmt: skip
                value, extra = res["accuracy"], {"samples": res["samples"]}
        record = {
            "key": key, **material, "docs": docs, "value": value, "seconds": round(time.perf_counter() - start, 3),
            "spec": spec.to_dict(), **extra,
        }  # fmt: skip
        self.memo.put(key, record)
        return record

    def scorer(self, length: int, dtype: str, *, compute: bool = True) -> Callable:
        """``score(specs) -> ppl`` on the search documents through ``eval.scorer.build_scorer``
        (the search's objective), memoized like every other measurement; lookup-only raises
        :class:`Missing` for a spec the memo lacks."""
        s, inner = self.setup, {}

        def score(specs) -> list[float]:
            values = []
            for spec in specs:
                key, material = self.key(spec, "ppl", length, "search", dtype)
                rec = self.memo.get(key)
                if rec is None:
                    if not compute:
                        raise Missing(key)
                    if "scorer" not in inner:
                        kind = "long" if length > s.L else "short"
                        inner["scorer"] = build_scorer(
                            s.model_in(dtype), s.rows(length, "search"), "ppl", factor_set=kind
                        )
                    start = time.perf_counter()
                    value = inner["scorer"]([spec])[0]
                    rec = {
                        "key": key, **material, "docs": "search", "value": value,
                        "seconds": round(time.perf_counter() - start, 3), "spec": spec.to_dict(),
                    }  # fmt: skip
                    self.memo.put(key, rec)
                    log(f"score {dtype} ppl@{length} (search docs) = {value:.4f} ({rec['seconds']:.1f} s)")
                values.append(rec["value"])
            return values

        return score

    # ----- specs -----------------------------------------------------------------------------------
    def baseline(self, method: str, scale: float) -> RopeSpec:
        b = self.setup.base
        return RopeSpec(method, b.base, b.head_dim, b.original_length, round(b.original_length * scale),
                        b.partial_rotary_factor)  # fmt: skip

    def search_template(self, scale: float, attention: float | None = None) -> RopeSpec:
        """The 8× / 4× search space: a longrope template at L' = L·s, scored under transformers'
        default attention factor (``attention`` None) or under ``attention`` for both sets."""
        b = self.setup.base
        template = RopeSpec(
            "longrope", b.base, b.head_dim, b.original_length, round(b.original_length * scale),
            b.partial_rotary_factor, long_factor=(1.0,) * b.geometry.n_pairs,
        )  # fmt: skip
        return template if attention is None else with_attention_policy(template, "balanced", attention)

    def search_dir(self, scale: float, attention: float | None = None, algorithm: str = "longrope2") -> Path:
        return self.out / f"search_{search_tag(scale, attention, algorithm)}"

    def searched(
        self, scale: float, *, compute: bool, attention: float | None = None, algorithm: str = "longrope2"
    ) -> dict | None:
        """Our search at ``scale`` (run or resumed when ``compute``), from its result file."""
        d = self.search_dir(scale, attention, algorithm)
        settings = search_settings(algorithm)
        if compute:
            s = self.setup
            at = "transformers' default" if attention is None else f"{attention:g}"
            log(
                f"search {scale_label(scale)}: budget {self.budget}, {self.search_dtype}, ppl@{s.search_length}, "
                f"attention factor {at}"
            )
            result = run_search(
                algorithm, self.search_template(scale, attention),
                self.scorer(s.search_length, self.search_dtype),
                dict(settings), out_dir=d, seed=s.seed, max_evaluations=self.budget, progress=self.progress,
            )  # fmt: skip
            spec = result.spec
            write_text_atomic(d / SEARCH_RESULT, json.dumps({
                "spec": spec.to_dict(), "score": result.score, "evaluations": result.evaluations,
                "rejected": result.rejected, "scores": result.scores, "budget": self.budget,
                "dtype": self.search_dtype, "length": s.search_length, "documents": s.search_doc_names,
                "critical_dim": spec.params.get("critical_dim"), "settings": settings, "algorithm": algorithm,
                "attention_factor": attention,
            }, indent=2) + "\n")  # fmt: skip
        path = d / SEARCH_RESULT
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        data["spec"] = RopeSpec.from_dict(data["spec"], source=str(path))
        return data

    def balanced(
        self, spec: RopeSpec, *, compute: bool, dtype: str | None = None
    ) -> tuple[RopeSpec, list[dict]] | None:
        """The balanced factor, scored in ``dtype`` — the dtype its search scored in, so a rerun
        with another ``--search-dtype`` keeps a finished search's balance (None: this run's)."""
        short, long = self.setup.balance_lengths
        dtype = dtype or self.search_dtype
        try:
            return balance_attention_factor(
                spec,
                self.scorer(short, dtype, compute=compute),
                self.scorer(long, dtype, compute=compute),
                points=BALANCE_POINTS,
            )
        except Missing:
            return None

    def rows(self, group: Group, *, compute: bool = False, wanted=lambda _: True) -> list[Row]:
        """The group's rows with their specs (pending rows say why); ``compute`` runs the search and
        the balanced factor where a wanted row needs them."""
        if group.kind == "original":
            return [Row(group.id, group, None, self.setup.base)]
        if group.kind == "baseline":
            return [Row(group.id, group, None, self.baseline(group.method, group.scale))]
        ids = group.row_ids()
        if group.kind == "external" and group.spec is None:
            minutes = FULL_FORWARD_MINUTES.get(group.scale)
            each = f" (~{minutes:g} min each on this CPU)" if minutes else ""
            why = (
                f"no --spec {group.method}=PATH given; its search at {scale_label(group.scale)} scores every "
                f"candidate with full {round(self.setup.L * group.scale):,}-token forwards{each}"
            )
            return [Row(ids[0], group, None, None, pending=why)]
        dtype = None
        if group.kind == "external":
            base = group.spec
            if group.policies == (None,):
                return [Row(ids[0], group, None, base)]
        else:
            need = compute and any(wanted(i) for i in ids)
            found = self.searched(
                group.scale, compute=need, attention=group.search_attention, algorithm=group.algorithm
            )
            if found is None:
                return [
                    Row(i, group, p, None, pending="search not run yet") for i, p in zip(ids, group.policies)
                ]
            base, dtype = found["spec"], found.get("dtype")
            if group.search_attention is not None:
                return [Row(ids[0], group, FIXED, base)]
        rows = []
        for row_id, policy in zip(ids, POLICIES):
            if policy == "balanced":
                bal = self.balanced(base, compute=compute and wanted(row_id), dtype=dtype)
                spec = None if bal is None else bal[0]
                rows.append(
                    Row(row_id, group, policy, spec, None if bal else "balanced factor not computed yet")
                )
            else:
                rows.append(Row(row_id, group, policy, with_attention_policy(base, policy)))
        return rows

    def cells(self, spec: RopeSpec | None, *, compute: bool, name: str = "") -> dict[str, float | None]:
        """Every measure of a row, the part-6 ones first (ppl at the ratio length and the long one)."""
        s = self.setup
        order = [("ppl", s.ratio_length), ("ppl", s.long_length)]
        order += [("ppl", n) for n in s.ppl_lengths if n != s.ratio_length]
        order += [("passkey", n) for n in s.passkey_lengths]
        out = {}
        for measure, n in order:
            value = None if spec is None else self.measure(spec, measure, n, compute=compute, name=name)
            out[f"{measure}@{n}"] = value
        return out

    # ----- runs --------------------------------------------------------------------------------
    def run(self, groups: list[Group], only: list[str] | None = None) -> dict:
        wanted = selector(only, groups)
        for group in groups:
            if not any(wanted(i) for i in [group.id, *group.row_ids()]):
                continue
            for row in self.rows(group, compute=True, wanted=wanted):
                if row.spec is not None and wanted(row.id):
                    self.cells(row.spec, compute=True, name=row.id)
                    self.write(groups)
        return self.write(groups)

    def check_bf16(self, scale: float, k: int = CHECK_K) -> dict:
        """The search's first ``k`` candidates scored in float32 and bfloat16: Spearman ρ of the two
        rankings (the bf16 scores are the search's own, shared through the memo)."""
        from longctx.rope.search.longrope2 import initial_seeds
        from longctx.rope.search.runner import SearchContext

        template = self.search_template(scale)
        cfg = LongRoPE2Config(**SEARCH_SETTINGS)
        ctx = SearchContext(template, "long_factor", None, self.setup.seed, None)
        seeds = initial_seeds(ctx, cfg, cfg.space(template))[:k]
        specs = [to_spec(template, "long_factor", c) for c in seeds]
        n = self.setup.search_length
        scores = {dt: self.scorer(n, dt)(specs) for dt in ("bfloat16", "float32")}
        result = {
            "scale": scale, "k": len(specs), "length": n, "documents": self.setup.search_doc_names,
            "float32": scores["float32"], "bfloat16": scores["bfloat16"],
            "spearman": spearman(scores["float32"], scores["bfloat16"]),
            "max_relative_difference": max(abs(b / a - 1) for a, b in zip(scores["float32"], scores["bfloat16"])),
            "critical_dims": [c.critical_dim for c in seeds],
        }  # fmt: skip
        write_text_atomic(self.out / CHECK_FILE, json.dumps(result, indent=2) + "\n")
        log(f"bf16 check: Spearman ρ = {fmt(result['spearman'], 3)} over {len(specs)} candidates")
        return result

    # ----- results -------------------------------------------------------------------------------
    def results(self, groups: list[Group]) -> dict:
        s = self.setup
        rows = []
        for group in groups:
            for row in self.rows(group, compute=False):
                spec = row.spec
                att = None
                if spec is not None:
                    f = spec.frequencies()
                    att = [f.short_attention_factor, f.long_attention_factor]
                rows.append({
                    "id": row.id, "group": group.id, "name": group.name, "kind": group.kind, "scale": group.scale,
                    "policy": row.policy, "searched": group.kind in ("ours", "external"),
                    "stock_hf": None if spec is None else stock_hf(spec), "attention_factors": att,
                    "spec": None if spec is None else spec.to_dict(), "pending": row.pending,
                    "cells": self.cells(spec, compute=False),
                })  # fmt: skip
        searches = {}
        for group in groups:
            if group.kind == "ours":
                a = group.search_attention
                found = self.searched(group.scale, compute=False, attention=a, algorithm=group.algorithm)
                if found is not None:
                    tag = search_tag(group.scale, a, group.algorithm)
                    searches[tag] = {**found, "spec": found["spec"].to_dict()}
                    bal = (
                        None
                        if a is not None
                        else self.balanced(found["spec"], compute=False, dtype=found.get("dtype"))
                    )
                    if bal is not None:
                        searches[tag]["balance"] = bal[1]
        check_path = self.out / CHECK_FILE
        setup = {
            "model": s.label, "L": s.L, "eval_document": s.eval_doc_name, "search_documents": s.search_doc_names,
            "ppl_lengths": list(s.ppl_lengths), "passkey_lengths": list(s.passkey_lengths),
            "long_length": s.long_length, "ratio_length": s.ratio_length, "search_length": s.search_length,
            "balance_lengths": list(s.balance_lengths), "balance_points": BALANCE_POINTS,
            "passkey_depths": list(s.passkey_depths), "passkey_per_depth": s.passkey_per_depth,
            "search_dtype": self.search_dtype, "budget": self.budget, "search_settings": SEARCH_SETTINGS,
            "verdict_scale": VERDICT_SCALE, "short_tolerance": SHORT_TOLERANCE,
        }  # fmt: skip
        results = {
            "setup": setup,
            "rows": rows,
            "searches": searches,
            "bf16_check": json.loads(check_path.read_text()) if check_path.exists() else None,
            "measurements": {"count": len(self.memo.records), "seconds": round(self.memo.seconds(), 1)},
        }
        results["verdict"] = target_verdict(results)
        return results

    def write(self, groups: list[Group]) -> dict:
        results = self.results(groups)
        write_text_atomic(self.out / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
        text = ["# SmolLM2-135M: short-context quality of extended RoPE specs", "", *report_lines(results)]
        write_text_atomic(self.out / TABLE_FILE, "\n".join(text) + "\n")
        return results


# ----- pure functions of the results --------------------------------------------------------------
def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's ρ (average ranks for ties); None when either side is constant or < 2 values."""

    def ranks(x: list[float]) -> list[float]:
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return r

    if len(a) != len(b) or len(a) < 2:
        return None
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return None if va == 0 or vb == 0 else cov / math.sqrt(va * vb)


def fmt(x: float | None, digits: int = 2) -> str:
    return "pending" if x is None else f"{x:.{digits}f}"


def _row(results: dict, row_id: str) -> dict | None:
    return next((r for r in results["rows"] if r["id"] == row_id), None)


def target_verdict(results: dict) -> dict:
    """Part 6: an 8× searched spec, stock-HF expressible (policy hf, balanced or fixed), with
    ppl@4k ≤ 1.02 × the original's and ppl@16k ≤ YaRN 8×'s. "met" as soon as one row meets it,
    "not met" only when every candidate row is measured, "pending" otherwise."""
    s = results["setup"]
    short, long = f"ppl@{s['ratio_length']}", f"ppl@{s['long_length']}"
    scale, tol = s["verdict_scale"], s["short_tolerance"]
    original, yarn = _row(results, "original"), _row(results, f"yarn-{scale_tag(scale)}")
    ref_short = original and original["cells"].get(short)
    ref_long = yarn and yarn["cells"].get(long)
    candidates = [
        r for r in results["rows"]
        if r["searched"] and r["scale"] == scale and r["policy"] in ("hf", "balanced", FIXED)
        and (r["spec"] is not None or r["kind"] == "ours")
    ]  # fmt: skip
    if ref_short is None or ref_long is None:
        return {
            "status": "pending",
            "detail": f"needs the original's {short} and YaRN {scale_label(scale)}'s {long}",
        }
    if not candidates:
        return {"status": "pending", "detail": f"no {scale_label(scale)} searched row"}
    bound = tol * ref_short
    lines, waiting = [], False
    for r in candidates:
        a, b = r["cells"].get(short), r["cells"].get(long)
        if a is None or b is None or not r["stock_hf"]:
            waiting = waiting or a is None or b is None
            continue
        ok = a <= bound and b <= ref_long
        lines.append((ok, f"{r['name']}, {r['policy']}: {short} {a:.3f} vs ≤ {bound:.3f} ({tol:g} × {ref_short:.3f}), "
                          f"{long} {b:.3f} vs ≤ {ref_long:.3f}"))  # fmt: skip
    met = [text for ok, text in lines if ok]
    if met:
        return {"status": "met", "detail": "; ".join(met)}
    if waiting:
        return {
            "status": "pending",
            "detail": "; ".join(t for _, t in lines) or "candidate rows not measured yet",
        }
    return {"status": "not met", "detail": "; ".join(t for _, t in lines)}


def _policy_table(results: dict) -> list[str]:
    """The markdown table: one row per method and attention policy."""
    s = results["setup"]
    ppl_n, pk_n, long_n, ratio_n = s["ppl_lengths"], s["passkey_lengths"], s["long_length"], s["ratio_length"]
    original = _row(results, "original")
    ref = original["cells"].get(f"ppl@{ratio_n}") if original else None
    header = (
        ["row", "policy"] + [f"ppl {n}" for n in ppl_n] + [f"ppl {ratio_n} / original"]
        + [f"passkey % {n}" for n in pk_n] + [f"ppl {long_n}", "attention factor short / long", "stock HF"]
    )  # fmt: skip
    table = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|",
    ]
    for r in results["rows"]:
        c = r["cells"]
        v = c.get(f"ppl@{ratio_n}")
        ratio = None if v is None or ref is None else v / ref
        att = r["attention_factors"]
        cells = (
            [r["name"], r["policy"] or "—"] + [fmt(c.get(f"ppl@{n}")) for n in ppl_n] + [fmt(ratio, 3)]
            + [fmt(c.get(f"passkey@{n}"), 0) for n in pk_n] + [fmt(c.get(f"ppl@{long_n}"))]
            + ["pending" if att is None else f"{att[0]:.3f} / {att[1]:.3f}"]
            + ["pending" if r["stock_hf"] is None else ("yes" if r["stock_hf"] else "no")]
        )  # fmt: skip
        table.append("| " + " | ".join(cells) + " |")
    return table


def report_lines(results: dict) -> list[str]:
    """The table, the part-6 verdict and the notes (markdown lines), from a results dict."""
    s = results["setup"]
    long_n, ratio_n = s["long_length"], s["ratio_length"]
    table = _policy_table(results)
    v = results["verdict"]
    status = v["status"] if v["status"] == "pending" else f"**{v['status']}**"
    scale = scale_label(s["verdict_scale"])
    lines = [
        f"SmolLM2-135M-Instruct, L = {s['L']:,}; model {s['model']}, float32. Perplexity on {s['eval_document']} "
        f"truncated to each length (BOS first, 1 document); passkey: {len(s['passkey_depths']) * s['passkey_per_depth']} "
        f"samples per length (depths {', '.join(f'{d:g}' for d in s['passkey_depths'])}, seed 0, greedy), short "
        f'factor set at ≤ L. Every row\'s numbers are float32; "pending" = not measured yet (cost), never a guess.',
        "",
        *table,
        "",
        f"Part-6 target (an {scale} searched spec, stock-HF expressible — policy hf, balanced or fixed — with ppl "
        f"{ratio_n} ≤ {s['short_tolerance']:g} × the original's and ppl {long_n} ≤ YaRN {scale}'s): "
        f"{status} — {v['detail']}.",
        "",
        "Notes:",
        "",
        f"- Our searches: `rope.search.run_search` (LongRoPE2; LongRoPE's evolution where the row says so) on "
        f"the {scale} template (L' = "
        f"{s['L'] * s['verdict_scale']:,}: its critical-dimension space and bounds; 4× likewise), candidates scored "
        f"by `eval.scorer.build_scorer` perplexity at {s['search_length']:,} tokens on {s['search_documents']} — a "
        f"PROXY for the full-length objective (a {s['L'] * s['verdict_scale']:,}-token forward is "
        f"~{FULL_FORWARD_MINUTES[8]:g} min here), population "
        f"{SEARCH_SETTINGS['population']}, {SEARCH_SETTINGS['mutants'] + SEARCH_SETTINGS['crossovers']} children per "
        "generation; each search's budget (candidates scored) and dtype below.",
        f"- balanced: `balance_attention_factor` over {s['balance_points']} factors in [1, f_hf]; short = ppl "
        f"{s['balance_lengths'][0]:,}, long = ppl {s['balance_lengths'][1]:,}, both on {s['search_documents']} "
        "in the dtype its search scored in (not the evaluation document).",
        "- hf: stock transformers' one attention factor sqrt(1 + ln s / ln L) on both factor sets; "
        "short_original: 1.0 on short inputs (exactly the pretrained RoPE), which stock HF cannot express "
        "(vLLM can: short_mscale / long_mscale).",
        "- fixed: a search scored with the attention factor fixed (1.0 for both sets: `search` stage key "
        "`attention_factor`), its spec exported as searched — stock HF, and with all-one short factors "
        "short inputs are exactly the pretrained model's; the long factors are chosen knowing the factor "
        "instead of having it imposed afterwards.",
    ]
    return lines + _search_notes(results)


def _search_notes(results: dict) -> list[str]:
    """Notes on each search, the bf16 check, what is pending and the memo's size."""
    s, lines = results["setup"], []
    for tag, found in sorted(results.get("searches", {}).items()):
        factors = found["spec"].get("long_factor") or [1.0]
        a = found.get("attention_factor")
        att = "transformers' default while scoring" if a is None else f"{a:g} for both sets"
        lines.append(
            f"- Search {tag} ({ALGORITHM_NAMES[found.get('algorithm', 'longrope2')]}): best proxy ppl "
            f"{found['score']:.3f} after {found['evaluations']} candidates "
            f"(budget {found.get('budget')}, {found.get('dtype')}; attention factor {att}; "
            f"critical dim {found.get('critical_dim')}, "
            f"long factors {min(factors):.2f}–{max(factors):.2f})."
        )
        for b in found.get("balance", []):
            lines.append(
                f"  - factor {b['factor']:.4f}: short {b['short']:.3f}, long {b['long']:.3f}, worse ratio {b['worse']:.4f}"
            )
    chk = results.get("bf16_check")
    if chk:
        rho = chk.get("spearman")
        warn = (
            ""
            if rho is not None and rho >= BF16_MIN_SPEARMAN
            else " — bf16 ranks disagree: rerun with --search-dtype float32"
        )
        lines.append(
            f"- bf16 check: the search's first {chk['k']} candidates at {chk['scale']:g}× scored in float32 and "
            f"bfloat16 (ppl {chk['length']:,} on {chk['documents']}): Spearman ρ = {fmt(rho, 3)}, largest relative "
            f"difference {100 * chk['max_relative_difference']:.2f} %{warn}."
        )
    else:
        lines.append(
            "- bf16 check: not run (`python benchmarks/smollm2_short.py --check-bf16`); "
            f"the search scores in {s['search_dtype']}."
        )
    pending: dict[tuple[str, str], list[str]] = {}
    for r in results["rows"]:
        if r.get("pending"):
            pending.setdefault((r["name"], r["pending"]), []).extend([r["policy"]] if r["policy"] else [])
    for (name, why), policies in pending.items():
        which = f" ({', '.join(policies)})" if policies else ""
        lines.append(f"- {name}{which}: pending — {why}.")
    m = results.get("measurements", {})
    lines.append(
        f"- Measurements in the memo: {m.get('count', 0)}, {m.get('seconds', 0) / 60:.1f} min of compute."
    )
    return lines


# ----- command line ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(OUT), help="output folder (memo, search state, results)")
    p.add_argument("--scales", default=",".join(map(str, SCALES)), help="comma list of s (L' = 8192·s)")
    p.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="search candidates per scale")
    p.add_argument("--only-rows", default="", help="comma list of row or group ids (default: all)")
    p.add_argument(
        "--spec", action="append", default=[], metavar="NAME=PATH", help="another search's spec.json"
    )
    p.add_argument(
        "--search-dtype", default="bfloat16", choices=sorted(DTYPES), help="search / balance scoring"
    )
    p.add_argument("--search-docs", type=int, default=1, help="KJV books after Genesis the search scores on")
    p.add_argument("--check-bf16", action="store_true", help="only the bf16-vs-fp32 ranking check, then exit")
    p.add_argument("--check-k", type=int, default=CHECK_K, help="candidates of the bf16 check")
    p.add_argument("--recipe", default=str(RECIPE), help="recipe whose model block is loaded")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    scales = [float(x) if "." in x else int(x) for x in args.scales.split(",") if x]
    external = parse_external(args.spec)
    groups = plan_groups(scales, external)
    only = [x for x in args.only_rows.split(",") if x]
    selector(only, groups)  # unknown ids fail before the model loads
    setup = load_smollm2(args.recipe, search_docs=args.search_docs)
    bench = Bench(
        setup, args.out, search_dtype=args.search_dtype, budget=args.budget, progress=not args.no_progress
    )
    if args.check_bf16:
        bench.check_bf16(sorted(scales, key=lambda s: (s != VERDICT_SCALE, -s))[0], args.check_k)
        bench.write(groups)
        return 0
    check = Path(args.out) / CHECK_FILE
    rho = json.loads(check.read_text()).get("spearman") if check.exists() else None
    if args.search_dtype == "bfloat16" and (rho is None or rho < BF16_MIN_SPEARMAN):
        found = f"Spearman ρ = {rho}" if check.exists() else "not run (--check-bf16)"
        log(f"warning: the search scores in bfloat16; bf16 check: {found}")
    results = bench.run(groups, only)
    log(f"part-6 target: {results['verdict']['status']}; wrote {Path(args.out) / TABLE_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
