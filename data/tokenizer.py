"""A small byte-level BPE tokenizer trained on a demo corpus, for the tiny recipe and tests.

Tests and the CPU demo cannot download a model's tokenizer (``HF_HUB_OFFLINE=1``), and a
character-level stand-in would make token lengths unrealistic. A byte-level BPE (GPT-2
style, as in Llama 3 / Qwen / SmolLM2) trained by ``tokenizers`` on the King James Bible
takes about a second and gives English text ~4 characters per token at vocab 4096.

Special tokens follow the tiny test configs (``tests/tiny.py``): ``<pad>`` = 0,
``<s>`` (BOS) = 1, ``</s>`` (EOS) = 2. Like Llama's tokenizer it prepends BOS when called
with ``add_special_tokens=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from longctx.data.corpus import load_demo_corpus
from longctx.data.errors import DataError

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")
"""In id order: pad 0, BOS 1, EOS 2."""

META_FILE = "longctx_tokenizer.json"
"""Written beside the tokenizer files: what it was trained on, checked on reuse."""


def _train(docs: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token=None
    )


def _load_existing(out_dir: Path, meta: dict) -> PreTrainedTokenizerFast:
    found = json.loads((out_dir / META_FILE).read_text())
    if found != meta:
        raise DataError(
            f"{out_dir}: holds a demo tokenizer trained with {found}, asked for {meta}; "
            "use another out_dir or delete it"
        )
    return PreTrainedTokenizerFast.from_pretrained(str(out_dir))


def train_demo_tokenizer(
    out_dir: str | os.PathLike, vocab_size: int = 4096, corpus: str = "kjv"
) -> PreTrainedTokenizerFast:
    """Train (or reuse) a byte-level BPE on the demo ``corpus`` and save it to ``out_dir``.

    Reuse: if ``out_dir`` already holds a tokenizer trained with the same settings it is
    loaded, not retrained. The write is atomic (temp dir beside ``out_dir``, then rename),
    so concurrent test workers or an interrupted run never leave a half-written tokenizer.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise DataError(
            f"train_demo_tokenizer: vocab_size={vocab_size}; expected ≥ 259 (256 bytes + 3 specials)"
        )
    out = Path(out_dir)
    meta = {"vocab_size": vocab_size, "corpus": corpus}
    if (out / META_FILE).is_file():
        return _load_existing(out, meta)
    tokenizer = _wrap(_train(load_demo_corpus(corpus), vocab_size))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tokenizer.save_pretrained(str(tmp))
        (tmp / META_FILE).write_text(json.dumps(meta))
        os.rename(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / META_FILE).is_file():
            raise
        return _load_existing(out, meta)  # another process won the race
    return PreTrainedTokenizerFast.from_pretrained(str(out))
