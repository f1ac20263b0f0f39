"""Tokenisation + packing throughput on the offline demo corpus: cold vs cached.

Usage: ``python benchmarks/data_throughput.py [--corpus kjv] [--num-proc 2] [--row-length 4096]``

Cold = a fresh tokenisation cache (documents are tokenised with ``datasets.map``);
cached = the same call again, which must load the saved result instead of re-tokenising.
Both include loading the source and packing every document into rows, i.e. what a
training run pays before its first step. Prints a markdown table with the ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets

from longctx.data.corpus import forget_loaded_corpora
from longctx.data.packing import PackingStats, pack_documents
from longctx.data.sources import load_documents
from longctx.data.tokenize import tokenize_documents
from longctx.data.tokenizer import train_demo_tokenizer


def run_once(corpus: str, tokenizer, cache_dir: Path, num_proc: int, row_length: int) -> dict:
    """One pass: load → tokenise (or load the cache) → pack; seconds per phase and token count."""
    forget_loaded_corpora()  # both runs read the corpus from its package, as a fresh process does
    t0 = time.perf_counter()
    docs = load_documents({"kind": "demo", "name": corpus})
    t1 = time.perf_counter()
    tokens = tokenize_documents(docs, tokenizer, num_proc=num_proc, cache_dir=cache_dir)
    t2 = time.perf_counter()
    stats = PackingStats()
    n_rows = sum(1 for _ in pack_documents(tokens["input_ids"], row_length, stats=stats))
    t3 = time.perf_counter()
    return {"load": t1 - t0, "tokenize": t2 - t1, "pack": t3 - t2, "total": t3 - t0,
            "tokens": stats.tokens, "rows": n_rows}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="kjv")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--row-length", type=int, default=4096)
    args = parser.parse_args()
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_demo_tokenizer(Path(tmp) / "tokenizer", args.vocab_size, args.corpus)
        cold = run_once(args.corpus, tokenizer, Path(tmp) / "cache", args.num_proc, args.row_length)
        cached = run_once(args.corpus, tokenizer, Path(tmp) / "cache", args.num_proc, args.row_length)
    print(f"corpus={args.corpus} vocab={args.vocab_size} num_proc={args.num_proc} row_length={args.row_length} "
          f"tokens={cold['tokens']:,} rows={cold['rows']}\n")  # fmt: skip
    print("| run | load s | tokenize s | pack s | total s | tokens/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in (("cold", cold), ("cached", cached)):
        print(f"| {name} | {r['load']:.2f} | {r['tokenize']:.2f} | {r['pack']:.2f} | {r['total']:.2f} "
              f"| {r['tokens'] / r['total']:,.0f} |")  # fmt: skip
    print(f"\ncached/cold throughput ratio: {cold['total'] / cached['total']:.1f}x "
          f"(tokenize phase alone: {cold['tokenize'] / cached['tokenize']:.0f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
