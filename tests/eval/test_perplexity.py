"""Chunked perplexity equals the naive ``model(labels=...)`` loss, without full logits."""

from __future__ import annotations

import math

import pytest
import torch

from longctx.data.samples import IGNORE_INDEX, SyntheticSample
from longctx.eval import perplexity as eval_perplexity
from longctx.eval.perplexity import (
    iter_nll,
    nll_per_sample,
    perplexity,
    perplexity_at_lengths,
    sliding_windows,
    truncated_rows,
)
from tests.tiny import tiny_config, tiny_model

L = 64


@pytest.fixture(scope="module")
def model():
    return tiny_model(tiny_config("llama", vocab_size=128, max_position_embeddings=L))


def _rows(lengths, seed=0, vocab=128):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g) for n in lengths]


def _naive_ppl(model, rows, labels=None):
    """exp of the token-weighted mean of HF's own loss over the rows."""
    total = count = 0.0
    with torch.inference_mode():
        for i, ids in enumerate(rows):
            lab = ids if labels is None else labels[i]
            n = int((lab[1:] != IGNORE_INDEX).sum())
            total += model(ids[None], labels=lab[None]).loss.item() * n
            count += n
    return math.exp(total / count)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 4096])
def test_chunked_matches_naive_at_several_lengths(model, chunk_size):
    rows = _rows([16, 64, 200])  # 200 > L: past the pretrained length too
    ours = perplexity(model, rows, chunk_size=chunk_size)
    assert ours == pytest.approx(_naive_ppl(model, rows), rel=1e-4)


@pytest.mark.parametrize("chunk_size", [3, 50])
def test_loss_mask_matches_naive_labels(model, chunk_size):
    rows = _rows([64, 150], seed=1)
    masks = []
    for ids in rows:
        m = torch.zeros(ids.numel(), dtype=torch.bool)
        m[ids.numel() // 3 : ids.numel() // 3 + 5] = True
        m[-4:] = True
        masks.append(m)
    labels = [torch.where(m, ids, IGNORE_INDEX) for ids, m in zip(rows, masks)]
    ours = perplexity(model, rows, loss_mask=masks, chunk_size=chunk_size)
    assert ours == pytest.approx(_naive_ppl(model, rows, labels), rel=1e-4)
    assert [n for _, n in nll_per_sample(model, rows, loss_mask=masks)] == [9, 9]


def test_synthetic_sample_counts_only_answer_tokens(model):
    ids = _rows([120], seed=2)[0]
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[-6:] = ids[-6:]
    sample = SyntheticSample(ids.tolist(), labels.tolist(), 114, ("x",), "needle_ppl", 120)
    ((nll, n),) = nll_per_sample(model, [sample])
    assert n == 6
    assert math.exp(nll / n) == pytest.approx(_naive_ppl(model, [ids], [labels]), rel=1e-4)


def test_head_sees_only_chunks_and_counted_positions(model, monkeypatch):
    seen = []
    real = eval_perplexity._chunk_logits

    def spy(head, hidden, buf):
        seen.append(tuple(hidden.shape))
        return real(head, hidden, buf)

    monkeypatch.setattr(eval_perplexity, "_chunk_logits", spy)
    rows = _rows([100], seed=3)
    perplexity(model, rows, chunk_size=32)
    assert seen == [(32, 64), (32, 64), (32, 64), (3, 64)]  # 99 predicted positions
    seen.clear()
    mask = torch.zeros(100, dtype=torch.bool)
    mask[[10, 50, 99]] = True
    perplexity(model, rows, loss_mask=[mask], chunk_size=32)
    assert seen == [(3, 64)]


def test_head_module_path_with_bias():
    """A head that is not a bias-free float32 Linear is called as a module, same result."""
    m = tiny_model(tiny_config("llama", vocab_size=128, max_position_embeddings=L))
    head = torch.nn.Linear(64, 128, bias=True)
    with torch.no_grad():
        head.weight.copy_(m.lm_head.weight)
        head.bias.normal_()
    m.lm_head = head
    rows = _rows([40, 70], seed=6)
    assert perplexity(m, rows, chunk_size=16) == pytest.approx(_naive_ppl(m, rows), rel=1e-4)


@pytest.mark.parametrize("arch", ["phi3", "qwen3"])
def test_other_architectures_and_batching(arch):
    m = tiny_model(tiny_config(arch, vocab_size=96, max_position_embeddings=L))
    rows = _rows([48, 48, 48, 80], seed=4, vocab=96)
    batched = nll_per_sample(m, rows, batch_size=3, chunk_size=10)
    single = nll_per_sample(m, rows, batch_size=1)
    assert [n for _, n in batched] == [47, 47, 47, 79]
    assert [s for s, _ in batched] == pytest.approx([s for s, _ in single], rel=1e-4)
    assert ours_ppl(batched) == pytest.approx(_naive_ppl(m, rows), rel=1e-4)


def ours_ppl(pairs):
    return math.exp(sum(p[0] for p in pairs) / sum(p[1] for p in pairs))


def test_iter_nll_is_lazy(model):
    calls = []
    hook = model.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        it = iter_nll(model, _rows([32, 32, 32]))
        next(it)
        assert len(calls) == 1
        # between two samples the caller is not left in inference mode (it may build a spec)
        assert not torch.is_inference_mode_enabled()
        assert torch.ones(2, requires_grad=True).sum().requires_grad
    finally:
        hook.remove()


def test_truncated_rows_protocol():
    docs = [[5] * 10, [6] * 3, [1, 7, 7, 7, 7, 7], [8] * 4]
    assert truncated_rows(docs, 4, bos_id=1) == [[1, 5, 5, 5], [1, 7, 7, 7], [1, 8, 8, 8]]
    assert truncated_rows(docs, 4, bos_id=None, max_docs=1) == [[5, 5, 5, 5]]


def test_sliding_windows_count_each_token_once():
    tokens = list(range(100))
    windows, masks = sliding_windows(tokens, window=32, stride=8)
    counted = [w[t] for w, m in zip(windows, masks) for t in range(1, len(w)) if m[t]]
    assert counted == tokens[1:]
    assert all(len(w) <= 32 for w in windows)
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(tokens, window=8, stride=9)


def test_perplexity_at_lengths_modes(model):
    docs = [r.tolist() for r in _rows([130, 90, 40], seed=5)]
    res = perplexity_at_lengths(model, docs, [32, 100, 500], bos_id=1, progress=False)
    assert res[32]["docs"] == 3 and res[32]["tokens"] == 3 * 31
    assert res[100]["docs"] == 1 and res[500] == {"ppl": None, "nll": None, "tokens": 0, "docs": 0}
    slid = perplexity_at_lengths(model, docs, [32], bos_id=1, mode="sliding", stride=16, progress=False)
    assert slid[32]["tokens"] == (131 - 1) + (91 - 1) + (41 - 1)
    assert 1.0 < slid[32]["ppl"] < 1000


def test_bad_mask_length_is_a_clear_error(model):
    with pytest.raises(ValueError, match="loss_mask"):
        perplexity(model, _rows([10]), loss_mask=[[True] * 9])


def test_bfloat16_model_upcasts_like_hf():
    """bf16 logits are upcast to float32 before the loss, as transformers does."""
    m = tiny_model(tiny_config("llama", vocab_size=128, max_position_embeddings=L)).to(torch.bfloat16)
    rows = _rows([90], seed=7)
    assert perplexity(m, rows, chunk_size=20) == pytest.approx(_naive_ppl(m, rows), rel=1e-4)


def test_truncate_and_sliding_measure_the_same_documents():
    """A document one token short of the length (its BOS would make it long enough) qualifies in
    neither mode; before, sliding mode counted it and dropped a later qualifying one."""
    from longctx.eval.perplexity import qualifying_documents, sliding_windows, truncated_rows

    short_by_one, a, b = list(range(3, 10)), list(range(10, 30)), list(range(30, 50))
    docs = qualifying_documents([short_by_one, a, b], 8, bos_id=1, max_docs=2)
    assert docs == [[1, *a], [1, *b]]
    assert truncated_rows([short_by_one, a, b], 8, bos_id=1, max_docs=2) == [d[:8] for d in docs]
    assert sliding_windows(docs[0], 8, 4)[0][0] == docs[0][:8]
