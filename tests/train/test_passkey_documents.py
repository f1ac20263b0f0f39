"""data.passkey_share: synthetic passkey documents for short rows (≤ L) and for each long window."""

from __future__ import annotations

import re

from longctx.train.context import RunContext
from longctx.train.load import load_recipe
from longctx.train.recipe import WindowCfg
from longctx.train.run import make_accelerator

from .conftest import write_recipe


def _keys(tok, docs) -> list[str]:
    keys = []
    for doc in docs:
        m = re.search(r"The pass key is (\d{5})\.", tok.decode(doc))
        if m:
            keys.append(m.group(1))
    return keys


def test_long_windows_get_passkey_documents_of_their_own_length(tmp_path, tiny_corpus):
    path = write_recipe(
        tmp_path / "r.yaml", tiny_corpus, tmp_path / "out",
        data={"sources": [{"kind": "local", "path": str(tiny_corpus)}], "cache_dir": str(tmp_path / "cache"),
              "passkey_share": 0.5},
    )  # fmt: skip
    recipe = load_recipe(path, ["model.init.original_length=128", "tokenizer.demo_vocab_size=2048"])
    ctx = RunContext(recipe, path, make_accelerator())
    tok, books = ctx.tokenizer(), ctx.documents()
    short_only = ctx.training_documents([WindowCfg(length=128, share=1.0, rope="original")])
    mixed = ctx.training_documents(
        [WindowCfg(length=128, share=0.3, rope="original"), WindowCfg(length=512, share=0.7, rope="rescaled")]
    )
    # the short documents (and so a base's pretraining data) do not change when long windows join
    assert mixed[: len(short_only)] == short_only
    long_passkeys = mixed[len(short_only) :]
    # share 0.5 of the long rows' tokens: as many passkey tokens as long-document tokens (±10 %)
    long_text = sum(len(b) for b in books if len(b) > 128)
    assert 0.9 < sum(map(len, long_passkeys)) / long_text < 1.1, (sum(map(len, long_passkeys)), long_text)
    assert all(256 < len(d) <= 512 for d in long_passkeys)  # > L, so the sampler puts them in long rows
    long_keys, short_keys = _keys(tok, long_passkeys), _keys(tok, short_only)
    assert len(long_keys) == len(long_passkeys) and len(short_keys) > 0
    # their own key seeds: not the short documents' keys replayed in order
    assert long_keys != short_keys[: len(long_keys)]
