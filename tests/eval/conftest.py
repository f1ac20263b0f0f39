"""Fixtures for eval tests: a character-level tokenizer built in memory (no hub), a tiny saved
checkpoint, a PNG validity check."""

from __future__ import annotations

import string

import matplotlib.image
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from longctx.data.samples import IGNORE_INDEX, SyntheticSample
from tests.tiny import tiny_config, tiny_model

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3 match tests.tiny (pad 0, bos 1, eos 2)


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character: 100 ids, fits a tiny model's 128 vocab."""
    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIALS + chars)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(".|\n"), "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="session")
def tokenizer():
    return char_tokenizer()


def make_sample(
    tok, prompt: str, answer: str, *, task: str, length: int, depth=0.5, **meta
) -> SyntheticSample:
    """A SyntheticSample built by hand: BOS + prompt, then the answer tokens as labels."""
    p = [tok.bos_token_id, *tok.encode(prompt, add_special_tokens=False)]
    a = tok.encode(answer, add_special_tokens=False)
    labels = [IGNORE_INDEX] * len(p) + a
    return SyntheticSample(p + a, labels, len(p), (answer.strip(),), task, length, depth, meta)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A saved tiny Llama (L = 128) with the char tokenizer: a local checkpoint directory."""
    out = tmp_path_factory.mktemp("ckpt")
    tiny_model(tiny_config("llama", vocab_size=128, max_position_embeddings=128)).save_pretrained(out)
    char_tokenizer().save_pretrained(out)
    return out


def assert_png(path) -> None:
    """A complete, decodable PNG of a plausible plot size."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)  # decodes the whole file: a truncated PNG fails here
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
