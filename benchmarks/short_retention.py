"""Where the main job's short-context quality goes, and what keeps it: the fine-tune's learning
rate, the attention factor, the finetune stage's KL ``retention`` and LoRA, on the main job's own
base and 8× search, over seeds.

    python -m benchmarks.short_retention [--variants plain,kl1,lora16] [--seeds 0,1,2] [--steps 400]
    python -m benchmarks.short_retention --lrs 5e-4,2e-4,1e-4        # the learning-rate ablation

Each variant is ``recipes/tiny.yaml``'s ``ft_8x`` stage with overrides — ``plain`` (as the recipe),
``kl<w>`` (``retention: {kl_weight: w}``), ``lora<r>`` (``lora: {r: r}`` at lr 1e-3, LoRA's usual
rate), ``lr<x>`` — at the same steps and so the same tokens, rerun by the real runner in
``<out>/<variant>_s<seed>`` from copies of the finished ``outputs/tiny/{base,tokenizer,search_8x}``
(the runner skips those stages), and stopped after it; its wall time (the stage's
``result.json``) and the process's peak RSS are recorded; then the fine-tuned model is measured on the
held-out books (``kjv_heldout``, never trained on) under the 8× spec with short inputs at
attention factor 1.0 (``short_original``) and at transformers' default (``hf``), next to the
base: ppl@128 and its ratio to the base's, ppl@1024 and passkey @1024 (4 samples × 3 depths).
Prints a markdown table and writes ``<out>/results.json`` (each row as it finishes, so a rerun
skips finished rows).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from longctx.checkout import checkout_root
from longctx.rope.files import write_text_atomic

ROOT = checkout_root(purpose="benchmarks")
TINY = ROOT / "outputs" / "tiny"
L, LONG = 128, 1024


def measure(model_dir: Path, spec_path: Path) -> dict:
    from longctx.eval.models import load_model_for_eval
    from longctx.eval.passkey import passkey_eval, passkey_samples
    from longctx.eval.perplexity import perplexity, truncated_rows
    from longctx.eval.tasks import read_documents
    from longctx.rope import RopeSpec, apply_rope
    from longctx.rope.attention_policy import with_attention_policy

    model, tok = load_model_for_eval(model_dir, dtype="float32", device="cpu")
    spec = RopeSpec.from_json(spec_path)
    held = [tok.encode(t, add_special_tokens=False) for t in read_documents("kjv_heldout")][:3]
    row = {}
    for policy in ("short_original", "hf"):
        apply_rope(model, with_attention_policy(spec, policy))
        row[f"ppl{L}_{policy}"] = perplexity(model, truncated_rows(held, L, bos_id=tok.bos_token_id))
    row[f"ppl{LONG}"] = perplexity(model, truncated_rows(held, LONG, bos_id=tok.bos_token_id))
    samples = passkey_samples(tok, [LONG], [0.1, 0.5, 0.9], per_cell=4, seed=0)
    row[f"passkey{LONG}"] = passkey_eval(model, tok, samples, progress=False)["accuracy"]
    return row


def overrides(variant: str) -> list[str]:
    """The ft_8x overrides of a variant name (see the module docstring)."""
    if variant == "plain":
        return []
    if variant.startswith("kl"):
        return [f"stages.ft_8x.retention={{kl_weight: {float(variant[2:])}}}"]
    if variant.startswith("lora"):
        return [f"stages.ft_8x.lora={{r: {int(variant[4:])}}}", "stages.ft_8x.lr=1e-3"]
    if variant.startswith("lr"):
        return [f"stages.ft_8x.lr={variant[2:]}"]
    raise SystemExit(f"short_retention: variant {variant!r}: expected plain, kl<w>, lora<r> or lr<x>")


def fine_tune(run_dir: Path, extra: list[str]) -> dict:
    """ft_8x with ``extra`` overrides in ``run_dir`` (stopped once it finished): its seconds and the
    process's peak RSS (GiB, sampled every 0.2 s)."""
    import psutil

    stats = run_dir / "cost.json"
    if (run_dir / "ft_8x" / "COMPLETE").exists() and stats.exists():
        return json.loads(stats.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("base", "tokenizer", "search_8x"):
        if not (run_dir / name).exists():
            shutil.copytree(TINY / name, run_dir / name)
    # the whole recipe, stopped once ft_8x has finished (later stages are not needed here)
    cmd = [sys.executable, "train/run.py", "recipes/tiny.yaml", f"output_dir={run_dir}", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    peak, watch = 0, psutil.Process(proc.pid)
    while proc.poll() is None and not (run_dir / "ft_8x" / "COMPLETE").exists():
        with contextlib.suppress(psutil.Error):
            peak = max(peak, watch.memory_info().rss)
        time.sleep(0.2)
    proc.terminate()
    proc.wait()
    if not (run_dir / "ft_8x" / "COMPLETE").exists():
        raise SystemExit(f"short_retention: ft_8x {extra} did not finish (see {run_dir})")
    seconds = json.loads((run_dir / "ft_8x" / "result.json").read_text())["seconds"]
    cost = {"seconds": seconds, "peak_rss_gib": peak / 2**30}
    write_text_atomic(stats, json.dumps(cost))
    return cost


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="plain,kl1,lora16")
    p.add_argument("--lrs", default="", help="comma list: adds the variants lr<x>")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=400, help="ft_8x steps of every variant (same tokens)")
    p.add_argument("--out", default=str(ROOT / "outputs" / "short_retention"))
    args = p.parse_args(argv)
    if not (TINY / "search_8x" / "COMPLETE").exists():
        raise SystemExit("short_retention: run the main job first (outputs/tiny/search_8x is not complete)")
    out = Path(args.out)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    spec = TINY / "search_8x" / "spec.json"
    if "base" not in results:
        results["base"] = measure(TINY / "base" / "model", spec)
    variants = [v for v in args.variants.split(",") if v] + [f"lr{x}" for x in args.lrs.split(",") if x]
    for variant in variants:
        for seed in [int(x) for x in args.seeds.split(",")]:
            key = f"{variant} s{seed}"
            if key not in results:
                run_dir = out / f"{variant}_s{seed}"
                extra = [*overrides(variant), f"seed={seed}", f"stages.ft_8x.steps={args.steps}"]
                cost = fine_tune(run_dir, extra)
                results[key] = {**measure(run_dir / "ft_8x" / "model", spec), **cost}
            write_text_atomic(path, json.dumps(results, indent=1))  # each row as it finishes
    print("\n".join(table(results, variants)))
    return 0


def table(results: dict, variants: list[str]) -> list[str]:
    """Markdown: per variant, mean ± half the range over its seeds."""
    base = results["base"][f"ppl{L}_short_original"]
    lines = [
        f"| model | seeds | ppl@{L} (a=1.0) ÷ base | ppl@{L} (HF factor) ÷ base | ppl@{LONG} | passkey % @{LONG} | ft s | peak RSS GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| base (8× spec, no fine-tune) | – | 1.000 | {results['base'][f'ppl{L}_hf'] / base:.3f} | "
        f"{results['base'][f'ppl{LONG}']:.2f} | {results['base'][f'passkey{LONG}']:.0f} | – | – |",
    ]

    def spread(rows, key, scale=1.0, digits=3):
        values = [r[key] / scale for r in rows]
        return f"{sum(values) / len(values):.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"

    for variant in variants:
        rows = [r for k, r in results.items() if k.rsplit(" s", 1)[0] == variant]
        if rows:
            lines.append(
                f"| ft_8x {variant} | {len(rows)} | {spread(rows, f'ppl{L}_short_original', base)} | "
                f"{spread(rows, f'ppl{L}_hf', base)} | {spread(rows, f'ppl{LONG}', digits=2)} | "
                f"{spread(rows, f'passkey{LONG}', digits=0)} | {spread(rows, 'seconds', digits=0)} | "
                f"{spread(rows, 'peak_rss_gib', digits=2)} |"
            )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
