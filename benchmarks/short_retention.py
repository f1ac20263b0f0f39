"""Where the main job's short-context quality goes: an ablation of the fine-tune's learning rate
and of the attention factor, on the main job's own base and 8× search (issue 17 part 5).

    python benchmarks/short_retention.py [--lrs 5e-4,2e-4,1e-4] [--out outputs/short_retention]

For each learning rate, ``recipes/tiny.yaml``'s ``ft_8x`` stage is rerun by the real runner in
``<out>/lr<lr>`` from copies of the finished ``outputs/tiny/{base,tokenizer,search_8x}`` (the
runner skips those stages), and stopped after it; then the fine-tuned model is measured on the
held-out books (``kjv_heldout``, never trained on) under the 8× spec with short inputs at
attention factor 1.0 (``short_original``) and at transformers' default (``hf``), next to the
base: ppl@128 and its ratio to the base's, ppl@1024 and passkey @1024 (4 samples × 3 depths).
Prints a markdown table and writes ``<out>/results.json`` (each row as it finishes, so a rerun
skips finished rows).
"""

from __future__ import annotations

import argparse
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


def fine_tune(out: Path, lr: str) -> Path:
    run_dir = out / f"lr{lr}"
    if not (run_dir / "ft_8x" / "COMPLETE").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in ("base", "tokenizer", "search_8x"):
            if not (run_dir / name).exists():
                shutil.copytree(TINY / name, run_dir / name)
        # the whole recipe, stopped once ft_8x has finished (later stages are not needed here)
        proc = subprocess.Popen(
            [
                sys.executable,
                "train/run.py",
                "recipes/tiny.yaml",
                f"output_dir={run_dir}",
                f"stages.ft_8x.lr={lr}",
            ],
            cwd=ROOT,
        )
        while proc.poll() is None and not (run_dir / "ft_8x" / "COMPLETE").exists():
            time.sleep(2)
        proc.terminate()
        proc.wait()
        if not (run_dir / "ft_8x" / "COMPLETE").exists():
            raise SystemExit(f"short_retention: ft_8x at lr {lr} did not finish (see {run_dir})")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lrs", default="5e-4,2e-4,1e-4")
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
    for lr in args.lrs.split(","):
        if f"lr {lr}" not in results:
            results[f"lr {lr}"] = measure(fine_tune(out, lr) / "ft_8x" / "model", spec)
        write_text_atomic(path, json.dumps(results, indent=1))  # each row as it finishes
    base = results["base"][f"ppl{L}_short_original"]
    print(
        f"| model | ppl@{L} (a=1.0) | ÷ base | ppl@{L} (HF factor) | ÷ base | ppl@{LONG} | passkey % @{LONG} |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        a1, hf = r[f"ppl{L}_short_original"], r[f"ppl{L}_hf"]
        print(
            f"| {'base (8× spec, no fine-tune)' if name == 'base' else 'ft_8x, ' + name} | {a1:.2f} | "
            f"{a1 / base:.3f} | {hf:.2f} | {hf / base:.3f} | {r[f'ppl{LONG}']:.2f} | {r[f'passkey{LONG}']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
