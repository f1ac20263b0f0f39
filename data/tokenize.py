"""Tokenisation of a document dataset with an on-disk cache, and selection by length.

LongRoPE fine-tunes on documents "with BOS/EOS per document" (arXiv 2402.13753 §4.1) and
LongRoPE2 wraps every document BOS…EOS before packing (arXiv 2502.20082 §3.3), so each
document is tokenised on its own (``datasets.map``, batched, ``num_proc`` workers) and
wrapped in the model tokenizer's own BOS/EOS — none added where the tokenizer defines
none (Qwen has no BOS). Per-document token counts are kept (``num_tokens``) because every
later step (length selection, short/long split, packing plans) works from lengths.

Caching: tokenising a 10B-token corpus costs hours, so the result is saved under
``cache_dir/tokenized-<key>`` where the key hashes the tokenizer (its full serialised
form and special ids), the dataset's ``datasets`` fingerprint and the BOS/EOS choice. A
rerun with the same tokenizer and data loads it memory-mapped instead of re-tokenising.
The save is atomic (temp dir + rename).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import datasets
from datasets.fingerprint import Hasher

from longctx.data.errors import DataError

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bumped whenever the cached columns change, so old caches are not reused."""

FEATURES = datasets.Features(
    {"input_ids": datasets.Sequence(datasets.Value("int32")), "num_tokens": datasets.Value("int32")}
)


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash that changes whenever the tokenizer would produce different ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else Hasher.hash(tokenizer)
    specials = [type(tokenizer).__name__, tokenizer.bos_token_id, tokenizer.eos_token_id]
    return hashlib.sha256((body + json.dumps(specials)).encode()).hexdigest()[:16]


def _encode_batch(batch: dict, tokenizer, bos: int | None, eos: int | None) -> dict:
    ids = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
    ids = [([bos] if bos is not None else []) + doc + ([eos] if eos is not None else []) for doc in ids]
    return {"input_ids": ids, "num_tokens": [len(doc) for doc in ids]}


def _special(tokenizer, add: bool | None, attr: str) -> int | None:
    token_id = getattr(tokenizer, attr)
    if add and token_id is None:
        raise DataError(f"tokenize: add_{attr[:3]}=True but the tokenizer defines no {attr}")
    return token_id if add or add is None else None


def tokenize_documents(
    dataset: datasets.Dataset,
    tokenizer,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    add_bos: bool | None = None,
    add_eos: bool | None = None,
    batch_size: int = 16,
) -> datasets.Dataset:
    """Tokenise the ``text`` column into ``input_ids`` (BOS + text + EOS) and ``num_tokens``.

    ``add_bos``/``add_eos``: ``None`` = whenever the tokenizer defines the token.
    ``cache_dir``: defaults to ``<HF datasets cache>/longctx_tokenized``.
    """
    if "text" not in dataset.column_names:
        raise DataError(f"tokenize: dataset has no 'text' column (found: {dataset.column_names})")
    bos, eos = _special(tokenizer, add_bos, "bos_token_id"), _special(tokenizer, add_eos, "eos_token_id")
    key_src = [CACHE_FORMAT, tokenizer_fingerprint(tokenizer), dataset._fingerprint, bos, eos]
    key = hashlib.sha256(json.dumps(key_src).encode()).hexdigest()[:20]
    root = (
        Path(cache_dir)
        if cache_dir is not None
        else Path(datasets.config.HF_DATASETS_CACHE) / "longctx_tokenized"
    )
    target = root / f"tokenized-{key}"
    if (target / "dataset_info.json").is_file():
        logger.info("tokenize: reusing %s", target)
        return datasets.load_from_disk(str(target))
    mapped = dataset.map(
        _encode_batch,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc if num_proc and num_proc > 1 and len(dataset) > 1 else None,
        remove_columns=dataset.column_names,
        fn_kwargs={"tokenizer": tokenizer, "bos": bos, "eos": eos},
        features=FEATURES,
        load_from_cache_file=False,
        desc="tokenize",
    )
    _save_atomic(mapped, root, target)
    return datasets.load_from_disk(str(target))


def _save_atomic(ds: datasets.Dataset, root: Path, target: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        ds.save_to_disk(str(tmp))
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "dataset_info.json").is_file():
            raise  # not the benign race where another process saved the same key first


def select_long_documents(ds: datasets.Dataset, min_tokens: int, n: int) -> datasets.Dataset:
    """The first ``n`` documents (dataset order) with at least ``min_tokens`` tokens.

    Perplexity at length N (LongRoPE's search fitness, arXiv 2402.13753 §3.2) needs
    documents of ≥ N tokens truncated to N; shorter ones would measure a shorter context.
    Too few → one error saying how many qualify and the longest lengths found.
    """
    if "num_tokens" not in ds.column_names:
        raise DataError(
            "select_long_documents: dataset has no 'num_tokens' column; run tokenize_documents first"
        )
    lengths = ds["num_tokens"]
    qualifying = [i for i, count in enumerate(lengths) if count >= min_tokens]
    if len(qualifying) < n:
        longest = ", ".join(str(c) for c in sorted(lengths, reverse=True)[:5])
        raise DataError(
            f"need {n} documents of ≥ {min_tokens} tokens, found {len(qualifying)} among {len(lengths)} "
            f"(longest: {longest}); use a source with longer documents or a shorter length"
        )
    return ds.select(qualifying[:n])
