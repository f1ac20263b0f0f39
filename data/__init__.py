"""Data for long-context extension: sources → tokens → packed rows / mixed windows, and synthetic inputs.

- :mod:`data.sources` — ``load_documents(cfg)``: HF datasets, local txt/jsonl/parquet, demo corpora;
- :mod:`data.corpus` — offline demo corpora (``kjv``, ``python_stdlib``);
- :mod:`data.tokenizer` — ``train_demo_tokenizer``: a small byte-level BPE for tests and the tiny recipe;
- :mod:`data.tokenize` — ``tokenize_documents`` (cached), ``select_long_documents``;
- :mod:`data.packing` — ``pack_documents``, ``collate_rows``, ``attention_mask_4d``, ``flex_block_mask``;
- :mod:`data.mixed` — ``Window``, ``MixedWindowSampler`` (LongRoPE2 mixed context windows);
- :mod:`data.synthetic` — ``passkey_sample``, ``needle_ppl_sample``, ``RULER_TASKS``, ``ruler_sample``.

Layering: this package imports neither ``rope``, ``eval`` nor ``train``. Submodules are
imported explicitly (``from data.packing import pack_documents``) so that importing one
part does not load ``datasets`` or ``torch`` for another.
"""
