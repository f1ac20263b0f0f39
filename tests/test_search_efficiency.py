"""benchmarks/search_efficiency.py with ``--model`` scores the kjv_validation books, which the tiny
recipe's base never trains on (it trains on kjv_train) — not the last books of the Bible."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from benchmarks import search_efficiency
from longctx.data.corpus import KJV_VALIDATION_BOOKS, load_demo_corpus
from longctx.data.tokenizer import train_demo_tokenizer


def test_model_run_scores_validation_books(tmp_path):
    tok = train_demo_tokenizer(tmp_path / "tok", vocab_size=512)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
        num_hidden_layers=1, head_dim=16, max_position_embeddings=32, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "model")
    bench = search_efficiency.run_benchmark(
        model_dir=tmp_path / "model", tokenizer_dir=tmp_path / "tok", out=tmp_path / "out", scales=(8,),
        algorithms=("dcis",), docs=2, max_evals=2, progress=False, log=lambda _: None,
    )  # fmt: skip
    titles = [load_demo_corpus("kjv")[i].split("\n", 1)[0].strip() for i in KJV_VALIDATION_BOOKS]
    picked = bench["setup_details"]["documents"]
    assert len(picked) == 2 and set(picked) <= set(titles), picked
    assert "kjv_validation" in bench["setup"]
    assert bench["scales"]["8"]["algorithms"]["dcis"]["evaluations"] == 2
