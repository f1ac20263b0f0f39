"""Greedy decoding of synthetic prompts, shared by the passkey, NIAH and RULER scorers.

Every generation task follows the same contract (``data.samples.SyntheticSample``): feed
``input_ids[:prompt_len]``, decode greedily (LongRoPE arXiv 2402.13753 §4.2 passkey; RULER
arXiv 2404.06654 §3 uses greedy decoding for every task), and compare the decoded text with
``answers``. Generation goes through ``model.generate`` so the KV cache and the RoPE factor
choice are the model's own (the installed rotary picks the factor set from the positions).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from longctx.data.samples import SyntheticSample

_CONTROL = re.compile(r"[\x00-\x1f]")


def clean_prediction(text: str) -> str:
    """RULER's ``postprocess_pred``: control characters become newlines, then strip."""
    return _CONTROL.sub("\n", text.strip()).strip()


def _pad_id(model, tokenizer) -> int | None:
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if value is not None:
            return value
    return getattr(model.config, "eos_token_id", None)


def greedy_generate(model, prompt: Sequence[int], *, max_new_tokens: int, pad_token_id: int | None = None):
    """New token ids (list) of a greedy continuation of one prompt; stops at EOS."""
    device = model.get_input_embeddings().weight.device
    ids = torch.as_tensor(list(prompt), dtype=torch.long, device=device)[None]  # [1, prompt]
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad_token_id,
            # one process generates (the eval stage runs on the main process while the others
            # wait at a barrier): transformers turns synced_gpus on under ZeRO-3 with more than
            # one process, and its per-token all_reduce then waits forever for the waiting ranks
            synced_gpus=False,
        )  # [1, prompt + new]
    return out[0, ids.shape[1] :].tolist()


def greedy_outputs(
    model,
    tokenizer,
    samples: Sequence[SyntheticSample],
    *,
    max_new_tokens: int | Sequence[int] = 16,
    progress: bool = True,
    desc: str = "generate",
) -> list[str]:
    """Decoded greedy continuation of each sample's prompt (special tokens dropped).

    ``max_new_tokens``: one budget for all samples or one per sample.
    """
    budgets = [max_new_tokens] * len(samples) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != len(samples):
        raise ValueError(f"max_new_tokens: {len(budgets)} budgets for {len(samples)} samples")
    pad = _pad_id(model, tokenizer)
    outputs = []
    for sample, budget in tqdm(list(zip(samples, budgets)), desc=desc, disable=not progress, leave=False):
        new = greedy_generate(
            model, sample.input_ids[: sample.prompt_len], max_new_tokens=budget, pad_token_id=pad
        )
        outputs.append(clean_prediction(tokenizer.decode(new, skip_special_tokens=True)))
    return outputs


def mean_by(records: Sequence[dict], keys: Sequence[str], value: str = "score") -> dict:
    """Nested ``{k1: {k2: mean(value)}}`` over records grouped by ``keys`` (one level per key)."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(float(r[value]))
    out: dict = {}
    for group, vals in sorted(groups.items()):
        node = out
        for k in group[:-1]:
            node = node.setdefault(k, {})
        node[group[-1]] = sum(vals) / len(vals)
    return out
