"""Search efficiency: evaluations each algorithm needs to reach within 1% of the best perplexity.

    python benchmarks/search_efficiency.py --model outputs/tiny_v2/base/model \
        --tokenizer outputs/tiny_v2/tokenizer [--scales 8,16] [--docs 4] \
        [--algorithms evolution,longrope2,dcis,...] [--max-evals N] [--out outputs/bench_search]

The model is a small RoPE model trained at a short length L: ``--model DIR`` (the tiny
recipe's base, ``python train/run.py recipes/tiny.yaml``) with ``--tokenizer DIR``; without
``--model`` a 4-layer 128-dim Llama is trained here for ``--steps`` steps at L = 128 on the
King James Bible (the old fallback; cached under ``--out/model``). For every scale s in
``--scales`` every algorithm searches long factors for L' = s·L with the same objective —
plain perplexity on ``--docs`` KJV books that hold ``max(scales)·L`` tokens (below),
truncated to L' tokens (BOS first; LongRoPE's protocol; the same books at every scale) — at its paper defaults, from a fresh cache. Per scale the table gives: distinct
evaluations, evaluations until its best-so-far is within 1% of the best perplexity ANY
algorithm found, that best, the document forwards actually run (early abandonment lowers
them), the wall time, and the ratios of the evaluation count and the wall time to LongRoPE
evolution's. PI, NTK and YaRN perplexities at s× (no fine-tuning) are printed beside.
Targets (issue 5): DCIS ≤ 0.5× evolution's evaluations (the DCIS paper's claim), our best
≤ 0.33×; searched factors beat PI/NTK/YaRN at 8×.

Documents: with ``--model``, the ``kjv_validation`` books (1 Corinthians–Colossians) that hold
the longest target — the tiny recipe's base trains on ``kjv_train`` only, so it never saw them;
the fallback model is trained without the books it is scored on.

All algorithms use plain perplexity (LongRoPE2's default is needle perplexity; the tiny base
cannot retrieve needles, and one objective makes the counts comparable).

``run_benchmark(...)`` is the importable core (``benchmarks/reproduce.py``): it returns the
results dict that the CLI prints as tables and writes to ``--out/results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from longctx.checkout import checkout_root

ROOT = checkout_root(purpose="benchmarks")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

L_FALLBACK, SEQ_TRAIN, BATCH = 128, 128, 16
VARIANTS: dict[str, tuple[str, dict]] = {
    "evolution": ("evolution", {}),
    "longrope2": ("longrope2", {}),
    "dcis": ("dcis", {}),
    "dcis-noprune": ("dcis", {"prune": False}),
}
"""Benchmark name → (``SEARCH_ALGORITHMS`` key, settings); every entry at its defaults."""
DEFAULT_ALGORITHMS = tuple(VARIANTS)
WITHIN = 0.01
""""Reached" = best-so-far within 1% of the best perplexity any algorithm found at that scale."""


# ----- model and documents -----------------------------------------------------------------
def _fallback_tokenizer_and_books(out: Path):
    from longctx.data.corpus import load_demo_corpus
    from longctx.data.tokenizer import train_demo_tokenizer

    tok = train_demo_tokenizer(out / "tokenizer", vocab_size=4096)
    return tok, [tok.encode(b, add_special_tokens=False) for b in load_demo_corpus("kjv")]


def train_model(out: Path, books: list[list[int]], held_out: set[int], steps: int):
    """Fallback: a 4-layer 128-dim Llama trained at length 128 (cached: reused when present)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    path = out / "model"
    if (path / "config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=4096, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=L_FALLBACK,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0}, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, attn_implementation="sdpa",
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg)
    stream = torch.tensor([t for i, b in enumerate(books) if i not in held_out for t in [1, *b]])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        starts = torch.randint(0, stream.numel() - SEQ_TRAIN - 1, (BATCH,), generator=g)
        ids = torch.stack([stream[s : s + SEQ_TRAIN] for s in starts.tolist()])
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad()
        if step % 100 == 0 or step == steps - 1:
            print(f"train step {step}: loss {loss.item():.3f}", flush=True)
    model.eval()
    model.save_pretrained(path)
    return model


def load_model(model_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None):
    """A saved model (and its tokenizer: ``tokenizer_dir``, else the model's own directory)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir or model_dir))
    return model, tok


def original_length(model) -> int:
    cfg = model.config
    return int(getattr(cfg, "original_max_position_embeddings", None) or cfg.max_position_embeddings)


def template(model, scale: int):
    """An all-ones ``longrope`` spec with the model's rotary geometry, for L' = scale·L."""
    from longctx.rope import RopeSpec

    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    params = getattr(cfg, "rope_parameters", None) or {}
    base = float(params.get("rope_theta", getattr(cfg, "rope_theta", 10_000.0)))
    partial = float(params.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", 1.0)))
    n_pairs = int(head_dim * partial) // 2
    L = original_length(model)
    return RopeSpec("longrope", base=base, head_dim=head_dim, partial_rotary_factor=partial,
                    original_length=L, target_length=scale * L, long_factor=[1.0] * n_pairs)  # fmt: skip


# ----- measuring ---------------------------------------------------------------------------
def baselines(model, rows, scale: int) -> dict[str, float]:
    """PI / NTK / YaRN / plain extrapolation perplexity at L' = scale·L, no fine-tuning."""
    from longctx.eval.scorer import build_scorer
    from longctx.rope import RopeSpec

    t = template(model, scale)
    common = dict(base=t.base, head_dim=t.head_dim, partial_rotary_factor=t.partial_rotary_factor,
                  original_length=t.original_length, target_length=t.target_length)  # fmt: skip
    specs = [RopeSpec(m, **common) for m in ("linear", "ntk", "yarn")] + [t]
    scores = build_scorer(model, rows)(specs)
    return dict(zip(("PI", "NTK", "YaRN", "none (extrapolation)"), scores))


def run_variant(name: str, model, rows, scale: int, out: Path, max_evals: int | None, seed: int,
                progress: bool, batch_size: int = 1) -> dict:  # fmt: skip
    from longctx.eval.scorer import build_scorer
    from longctx.rope.search import run_search

    alg, cfg = VARIANTS[name]
    run_dir = out / "runs" / f"{scale}x" / name
    shutil.rmtree(run_dir, ignore_errors=True)  # fresh cache: wall time is measured, not replayed
    scorer = build_scorer(model, rows, batch_size=batch_size)
    start = time.perf_counter()
    result = run_search(alg, template(model, scale), scorer, dict(cfg) or None, out_dir=run_dir, seed=seed,
                        max_evaluations=max_evals, progress=progress)  # fmt: skip
    wall = time.perf_counter() - start
    return {"algorithm": alg, "settings": cfg, "evaluations": result.evaluations, "best_ppl": result.score,
            "wall": wall, "forwards": scorer.forwards, "abandoned": scorer.abandoned,
            "scores": result.scores, "factors": list(result.spec.long_factor), "n_hat": result.spec.n_hat,
            "log": str(run_dir / "evaluations.jsonl")}  # fmt: skip


def evals_to_reach(scores: Sequence[float], threshold: float) -> int | None:
    best = math.inf
    for i, s in enumerate(scores, 1):
        best = min(best, s)
        if best <= threshold:
            return i
    return None


def summarize(results: dict[str, dict]) -> dict:
    """Add ``evals_to_reach`` (evaluations to ≤1% of the best any algorithm found) and ratios to evolution."""
    best = min(r["best_ppl"] for r in results.values())
    threshold = best * (1 + WITHIN)
    for r in results.values():
        r["evals_to_reach"] = evals_to_reach(r["scores"], threshold)
    ref = results.get("evolution")
    for r in results.values():
        ok = ref is not None and r["evals_to_reach"] and ref["evals_to_reach"]
        r["reach_ratio"] = r["evals_to_reach"] / ref["evals_to_reach"] if ok else None
        r["wall_ratio"] = r["wall"] / ref["wall"] if ref is not None and ref["wall"] > 0 else None
    return {"best": best, "threshold": threshold}


def _model_and_books(model_dir, tokenizer_dir, out: Path, scales, docs: int, steps: int):
    """(model, tokenizer, KJV books tokenised, held-out book indices, description): a given
    checkpoint, or the fallback trained here with ``docs`` long books held out."""
    from longctx.data.corpus import load_demo_corpus

    if model_dir is not None:
        model, tok = load_model(model_dir, tokenizer_dir)
        books = [tok.encode(b, add_special_tokens=False) for b in load_demo_corpus("kjv")]
        return model, tok, books, [], f"{model_dir} (tokenizer {tokenizer_dir or model_dir})"
    tok, books = _fallback_tokenizer_and_books(out)
    held = [i for i, b in enumerate(books) if len(b) >= max(scales) * L_FALLBACK][-docs:]
    model = train_model(out, books, set(held), steps)
    return model, tok, books, held, f"fallback: trained here for {steps} steps ({out / 'model'})"


def run_benchmark(
    *,
    model_dir: str | os.PathLike | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    out: str | os.PathLike = "outputs/bench_search",
    scales: Sequence[int] = (8, 16),
    algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
    docs: int = 4,
    max_evals: int | None = None,
    batch_size: int | None = None,
    steps: int = 400,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Run every algorithm at every scale; returns ``{"setup": ..., "scales": {"8": ...}}``.

    ``setup`` is a one-line description, ``setup_details`` its fields. Each ``scales[str(s)]``
    holds ``target_length``, ``algorithms`` (per algorithm: evaluations, evals_to_reach,
    best_ppl, wall, forwards, reach_ratio, wall_ratio, scores, factors, log path),
    ``baselines`` (PI / NTK / YaRN / extrapolation perplexity), ``best`` and ``threshold``. Nothing is printed but
    progress lines through ``log``; :func:`report` formats the tables.
    """
    import torch

    from longctx.eval.perplexity import perplexity, truncated_rows

    unknown = [a for a in algorithms if a not in VARIANTS]
    if unknown:
        raise ValueError(f"algorithms: unknown {unknown}; expected names from {list(VARIANTS)}")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from longctx.data.corpus import load_demo_corpus

    model, tok, books, held, source = _model_and_books(model_dir, tokenizer_dir, out, scales, docs, steps)
    L = original_length(model)
    longest = max(scales) * L
    # books that hold the longest target; the same documents at every scale. With --model: the
    # kjv_validation books, which the tiny recipe's base never trains on (it trains on kjv_train)
    from longctx.data.corpus import KJV_VALIDATION_BOOKS

    pool = held or [i for i in KJV_VALIDATION_BOOKS if len(books[i]) >= longest]
    picked = pool[-docs:]
    if len(picked) < docs:
        raise ValueError(f"docs: {docs} KJV books of >= {longest} tokens wanted, found {len(picked)}")
    setup = {
        "model": source,
        "original_length": L,
        "documents": [load_demo_corpus("kjv")[i].split("\n", 1)[0].strip() for i in picked],
        "documents_source": "kjv_validation"
        if model_dir is not None
        else "held out of the fallback's training",
        "ppl_at_L": perplexity(model, truncated_rows([books[i] for i in picked], L, bos_id=tok.bos_token_id)),
        "seed": seed,
        "max_evals": max_evals,
        "batch_size": batch_size or docs,
        "torch_threads": torch.get_num_threads(),
        "load_avg_start": os.getloadavg()[0],
    }
    log(f"model {source}: L={L}, ppl at L {setup['ppl_at_L']:.4f}; documents {setup['documents']}")
    by_scale = {}
    for scale in scales:
        rows = truncated_rows([books[i] for i in picked], scale * L, bos_id=tok.bos_token_id)
        base = baselines(model, rows, scale)
        log(f"{scale}x baselines: " + ", ".join(f"{k} {v:.4f}" for k, v in base.items()))
        results = {}
        for name in algorithms:
            results[name] = r = run_variant(name, model, rows, scale, out, max_evals, seed, progress,
                                            batch_size or len(rows))  # fmt: skip
            log(
                f"{scale}x {name}: best {r['best_ppl']:.4f} after {r['evaluations']} evals, {r['wall']:.1f} s"
            )
        by_scale[str(scale)] = {"target_length": scale * L, "algorithms": results, "baselines": base,
                                **summarize(results)}  # fmt: skip
    setup["load_avg_end"] = os.getloadavg()[0]
    return {"setup": describe(setup, docs), "setup_details": setup, "scales": by_scale}


def describe(setup: dict, docs: int) -> str:
    """One line: the model, documents and protocol (what ``reproduce.py`` prints above the tables)."""
    cap = setup["max_evals"] or "none"
    return (f"model {setup['model']}, L = {setup['original_length']} (perplexity {setup['ppl_at_L']:.2f} at L); "
            f"objective plain perplexity on {docs} KJV books truncated to L' ({', '.join(setup['documents'])}"
            f"; {setup['documents_source']}); "
            f"every algorithm at its defaults, seed {setup['seed']}, evaluation cap {cap}")  # fmt: skip


# ----- reporting ---------------------------------------------------------------------------
def report(bench: dict) -> str:
    """Markdown tables of a :func:`run_benchmark` result, one block per scale."""
    lines = []
    for scale, s in bench["scales"].items():
        lines += [f"### {scale}x (L' = {s['target_length']})", "",
                  f"best perplexity found by any algorithm: {s['best']:.4f} (1% threshold {s['threshold']:.4f})",
                  "",
                  "| algorithm | evals | evals to ≤1% of best | best ppl | doc forwards | wall s "
                  "| evals-to-1% ratio vs evolution | wall ratio |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for name, r in s["algorithms"].items():
            ratio = f"{r['reach_ratio']:.3f}" if r["reach_ratio"] is not None else "–"
            wall = f"{r['wall_ratio']:.3f}" if r["wall_ratio"] is not None else "–"
            lines.append(f"| {name} | {r['evaluations']} | {r['evals_to_reach'] or 'not reached'} | {r['best_ppl']:.4f} "
                         f"| {r['forwards']} | {r['wall']:.1f} | {ratio} | {wall} |")  # fmt: skip
        lines += ["", f"| baseline at {scale}x, no fine-tuning | ppl |", "|---|---:|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in s["baselines"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="saved model dir (default: train a fallback here)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer dir (default: the model's dir)")
    ap.add_argument("--out", default="outputs/bench_search")
    ap.add_argument("--scales", default="8,16", help="comma-separated L'/L, e.g. 8,16")
    ap.add_argument("--steps", type=int, default=400, help="fallback model's training steps")
    ap.add_argument("--docs", type=int, default=4)
    ap.add_argument("--algorithms", default=",".join(DEFAULT_ALGORITHMS))
    ap.add_argument("--max-evals", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="documents per forward (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    bench = run_benchmark(
        model_dir=args.model, tokenizer_dir=args.tokenizer, out=args.out,
        scales=[int(s) for s in args.scales.split(",")], algorithms=args.algorithms.split(","),
        docs=args.docs, max_evals=args.max_evals, batch_size=args.batch_size, steps=args.steps, seed=args.seed,
        progress=not args.no_progress, log=lambda m: print(m, flush=True),
    )  # fmt: skip
    text = report(bench)
    print(text)
    out = Path(args.out)
    (out / "report.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(bench, indent=1))
    from longctx.rope.search.state import plot_progress

    for scale, s in bench["scales"].items():
        plot_progress({k: r["scores"] for k, r in s["algorithms"].items()}, out / f"search_efficiency_{scale}x.png",
                      title=f"factor search, {scale}x (L' = {s['target_length']})")  # fmt: skip
    return bench


if __name__ == "__main__":
    main()
