"""The demo tokenizer: the specials the tiny configs expect, lossless, reused not retrained."""

from __future__ import annotations

import pytest

import longctx.data.tokenizer as demo
from longctx.data.errors import DataError


def test_specials_and_round_trip(demo_tokenizer):
    tok = demo_tokenizer
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert len(tok) == 512
    text = "And God said, Let there be light: and there was light.\n\tdef f(x): return x  # ünïcödé"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids[1:]) == text  # byte-level: nothing is lost
    assert len(ids) < len(text.encode()) * 0.8  # merges learned, not bytes


def test_reused_from_disk_and_mismatch_is_an_error(tmp_path, monkeypatch):
    first = demo.train_demo_tokenizer(tmp_path / "tok", vocab_size=300)
    monkeypatch.setattr(demo, "_train", lambda *a: pytest.fail("retrained an existing tokenizer"))
    again = demo.train_demo_tokenizer(tmp_path / "tok", vocab_size=300)
    assert again.get_vocab() == first.get_vocab()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    with pytest.raises(DataError, match=r"tok: holds a demo tokenizer trained with .*vocab_size': 300"):
        demo.train_demo_tokenizer(tmp_path / "tok", vocab_size=400)
