"""Serving parity: what each way of choosing a ``longrope`` factor set costs when a generation crosses L.

A ``longrope`` model has two factor sets: the short one for inputs of at most L tokens
(``original_max_position_embeddings``) and the long one beyond. Who chooses, and when, differs:

- **transformers** (``switching``): the rotary picks per forward call, long iff
  ``max(position_ids) + 1 > L``. With a KV cache, a generation that starts at most L tokens long
  keeps the keys of its first tokens rotated with the short set after it passes L, while a full
  forward of the same prefix rotates every key with the long set: the cached logits drift away
  from what the model computes from scratch, and greedy tokens can diverge a few steps after L.
- **serving engines** (``forced_long``): one set per server. vLLM uses the long set for every
  request when ``max_model_len > L``, so the cache is consistent but short prompts pay the long
  factors (their perplexity at lengths ≤ L rises).
- **re-prefill at the switch** (``reprefill``): decode with the cache while the sequence is at
  most L tokens; when it first exceeds L, recompute the cache with one extra prefill of the whole
  sequence (long set), then continue. Consistent, at the cost of one prefill per crossing.

:func:`serving_parity` measures the three on the model as given, for a few prompts of
``L - 8`` tokens (the first tokens of the ``settings.ppl_data`` documents, BOS first) extended by
greedy decoding to ``L + 24`` (``settings.max_new_tokens`` new tokens when set). The
**reference** is "re-forward the whole prefix at every step" under transformers' rule, i.e.
always the right set for the current length. Per choice it reports the largest |logit| gap
between the choice's cached decoding and the reference forward of the same prefix (teacher-forced
along the choice's own tokens; split at L), the same gap against a full forward under the choice's
own factor-set policy (``self_gap``: is the cache consistent?), and greedy-token agreement with
the reference generation. ``forced_long`` adds the perplexity at lengths ≤ L with the long set
forced vs the switching model (``settings.lengths`` ≤ L, else L; truncation protocol).

Forcing a set needs the rotary that ``rope.apply_rope`` installs (``rope.factor_set``). A model
reloaded by stock transformers cannot be forced: ``forced_long`` then reports
``available: false``; re-install the export's spec first
(``rope.apply_rope(model, rope.RopeSpec.from_json(<export>/longctx_rope_spec.json))``, what
``eval.models.install_spec`` does) to measure it. ``switching`` and ``reprefill`` run on both.

Every function runs under ``torch.inference_mode`` with batch 1 and no padding; the gaps are
float32 logits differences.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from longctx.eval.perplexity import perplexity_at_lengths
from longctx.eval.tasks import EvalSettings, read_documents

CHOICES = ("switching", "forced_long", "reprefill", "long_neighbour", "stitched")
"""The factor-set policies compared, in report order: ``long_neighbour`` — the prompt prefilled
alone (short set), every decoding step in a batch with a request past L (long set);
``stitched`` — per token position, short below L and long from L on."""
ENGINE_RULES = {
    "transformers (generic)": "switching",  # per forward: max(position_ids) + 1 > L
    "transformers (Phi-3)": "reprefill",  # drops the cache and re-prefills once at L + 1
    "vLLM": "forced_long",  # per server: max_model_len > L, fixed at start
    "SGLang (a long request in the batch)": "long_neighbour",  # per batch step: any position > L
    "TGI": "stitched",  # per token position: < L short, >= L long
    "llama.cpp (context > L)": "forced_long",  # per allocated context
}
"""How each engine chooses a ``longrope`` factor set (read from their sources), as the choice
that emulates it."""
PROMPT_OFFSET = 8
"""Prompts are ``L - PROMPT_OFFSET`` tokens long."""
DEFAULT_NEW_TOKENS = 32
"""Greedy tokens per prompt when ``settings.max_new_tokens`` is unset: prompts end at L + 24."""
RESULT_KEYS = (
    "original_length",
    "prompt_length",
    "new_tokens",
    "final_length",
    "prompts",
    "rotary",
    "rope_type",
    "max_abs_logit",
    "choices",
    "engines",
)
"""Top-level keys of :func:`serving_parity`'s result."""
CHOICE_KEYS = (
    "available",
    "note",
    "max_logit_gap",
    "gap_at_or_below_L",
    "gap_above_L",
    "self_gap",
    "token_agreement_pct",
    "first_divergence",
    "gap_by_length",
)
"""Keys of every ``result["choices"][choice]``; ``forced_long`` adds ``short_ppl``, ``reprefill``
adds ``extra_prefills``."""
_CHAR_WINDOW = 32
"""Characters encoded per wanted token when taking a document's first tokens (then doubled)."""


# ----- the model's switch ------------------------------------------------------------------------
def _installed_spec(model):
    from longctx.rope import installed_spec

    return installed_spec(model)


def _rope_dict(config) -> dict:
    rp = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return rp if isinstance(rp, dict) else {}


def switch_length(model) -> int:
    """L: the longest sequence the short set serves (the installed spec's, else the config's)."""
    spec = _installed_spec(model)
    if spec is not None:
        return int(spec.original_length)
    config = getattr(model, "config", None)
    # Phi-3 keeps L at top level and transformers gives it priority
    length = getattr(config, "original_max_position_embeddings", None) or _rope_dict(config).get(
        "original_max_position_embeddings"
    )
    if not length:
        raise ValueError(
            "serving parity: the model has no factor-set switch: no RoPE installed by rope.apply_rope and "
            "no original_max_position_embeddings in its config (expected a longrope model)"
        )
    return int(length)


def _rope_type(model) -> str:
    spec = _installed_spec(model)
    if spec is not None:
        return spec.method
    rp = _rope_dict(getattr(model, "config", None))
    return str(rp.get("rope_type", rp.get("type", "default")))


def _policy(model, kind: str | None):
    """``rope.factor_set(model, kind)`` on an installed rotary; on a stock one only None (its own rule)."""
    if _installed_spec(model) is None:
        if kind is not None:
            raise ValueError(f"serving parity: cannot force the {kind!r} set on a stock rotary")
        return contextlib.nullcontext(model)
    from longctx.rope import factor_set

    return factor_set(model, kind)


# ----- decoding -------------------------------------------------------------------------------------
def _device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


def _forward(model, ids: Sequence[int], **kwargs):
    tensor = torch.as_tensor(list(ids), dtype=torch.long, device=_device(model))[None]  # [1, seq]
    return model(input_ids=tensor, logits_to_keep=1, **kwargs)


def _cache_kwargs(model, out) -> dict:
    """The previous step's KV cache as the next forward's keyword: ``cache`` (transformers ≥ 5.24)
    or ``past_key_values`` (earlier 5.x), read without touching the deprecated alias."""
    if "cache" in inspect.signature(model.forward).parameters:
        return {"cache": out["cache"]}
    return {"past_key_values": out["past_key_values"]}


def last_logits(model, prefix: Sequence[int]) -> torch.Tensor:
    """float32 logits [vocab] of the token after ``prefix``, from a full forward (no cache)."""
    with torch.inference_mode():
        return _forward(model, prefix, use_cache=False).logits[0, -1].float()


def reference_greedy(model, prompt: Sequence[int], new_tokens: int) -> list[int]:
    """Greedy tokens when the whole prefix is re-forwarded at every step (no cache)."""
    seq = list(prompt)
    for _ in range(new_tokens):
        seq.append(int(last_logits(model, seq).argmax()))
    return seq[len(prompt) :]


def cached_greedy(
    model,
    prompt: Sequence[int],
    new_tokens: int,
    *,
    reprefill_after: int | None = None,
    decode_set: str | None = None,
) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy decoding with a KV cache, as ``generate`` does it: (new tokens, float32 logits per step).

    ``logits[i]`` predicts new token i from the prefix of ``len(prompt) + i`` tokens. Never stops
    at EOS (every run has the same length). ``reprefill_after=L``: the first time the prefix
    exceeds L tokens while the cache was built from at most L, the cache is dropped and rebuilt
    by one forward of the whole prefix (the set the model picks for that length). ``decode_set``:
    the prompt is prefilled under the current choice, every decoding step under this set (a
    batch whose other request forces it).
    """
    seq = list(prompt)
    logits: list[torch.Tensor] = []
    with torch.inference_mode():
        out = _forward(model, seq, use_cache=True)
        cache_from_short = reprefill_after is not None and len(seq) <= reprefill_after
        for step in range(new_tokens):
            logits.append(out.logits[0, -1].float())
            seq.append(int(logits[-1].argmax()))
            if step == new_tokens - 1:
                break
            if cache_from_short and len(seq) > reprefill_after:
                out = _forward(model, seq, use_cache=True)  # fresh cache for the whole prefix
                cache_from_short = False
            else:
                with _policy(model, decode_set) if decode_set else contextlib.nullcontext():
                    out = _forward(model, seq[-1:], use_cache=True, **_cache_kwargs(model, out))
    return seq[len(prompt) :], logits


FORCED = {
    "forced_long": ("long", None, "long"),
    "long_neighbour": (None, "long", "long"),  # prefilled alone, each decode step batched with a long request
    "stitched": ("stitched", None, "stitched"),
}
"""The choices that need the installed rotary: (set the decoding runs under, set of its decode
steps if different, set a full forward is judged under for its self gap)."""


def _forced_run(model, prompt, new_tokens, reference, run_set, decode_set, own_set) -> dict:
    """One prompt decoded under a forced factor-set choice: its gaps to the reference (the
    model's own rule) and to a full forward under ``own_set`` (is its cache consistent?)."""
    with _policy(model, run_set):
        tokens, logits = cached_greedy(model, prompt, new_tokens, decode_set=decode_set)
    with _policy(model, own_set):
        self_gap = _gaps(model, prompt, tokens, logits)
    with _policy(model, None):
        gap = _gaps(model, prompt, tokens, logits)
    return {"tokens": tokens, "reference": reference, "gap": gap, "self_gap": self_gap}


def _gaps(model, prompt: list[int], tokens: list[int], logits: list[torch.Tensor]) -> list[float]:
    """max |cached − full forward| per step, along the run's own tokens."""
    seq = prompt + tokens
    return [
        float((step - last_logits(model, seq[: len(prompt) + i])).abs().max())
        for i, step in enumerate(logits)
    ]


# ----- inputs -----------------------------------------------------------------------------------
def _head_tokens(tokenizer, text: str, n: int) -> list[int]:
    """The first ``n`` tokens of ``text`` (fewer when it is shorter), encoding only a prefix of it."""
    chars = max(64, n * _CHAR_WINDOW)
    while True:
        ids = tokenizer.encode(text[:chars], add_special_tokens=False)
        if len(ids) > n or chars >= len(text):
            return ids[:n]
        chars *= 2


def document_heads(tokenizer, source: str, n_tokens: int, n_docs: int) -> list[list[int]]:
    """First ``n_tokens`` tokens (no BOS) of the first ``n_docs`` documents of ``source`` that have them."""
    docs = []
    for text in read_documents(source):
        ids = _head_tokens(tokenizer, text, n_tokens)
        if len(ids) == n_tokens:
            docs.append(ids)
        if len(docs) == n_docs:
            break
    return docs


# ----- the task --------------------------------------------------------------------------------
def _empty_choice(note: str) -> dict:
    out = {key: None for key in CHOICE_KEYS}
    out.update(available=False, note=note)
    return out


def _summary(L: int, prefix_lengths: list[int], runs: list[dict]) -> dict:
    """Pool the per-prompt runs of one choice: gaps split at L, agreement, first divergence."""
    gap, self_gap = [], []
    by_length: dict[int, float] = {}
    agree = total = 0
    divergence = []
    for run in runs:
        for n, g, s in zip(prefix_lengths, run["gap"], run["self_gap"]):
            gap.append((n, g))
            self_gap.append(s)
            by_length[n] = max(by_length.get(n, 0.0), g)
        same = [a == b for a, b in zip(run["tokens"], run["reference"])]
        agree += sum(same)
        total += len(same)
        first = next((i for i, ok in enumerate(same) if not ok), None)
        # the prefix that chose the first differing token had prefix_lengths[first] tokens
        divergence.append(None if first is None else prefix_lengths[first] - L)
    below = [g for n, g in gap if n <= L]
    above = [g for n, g in gap if n > L]
    return {
        "available": True,
        "note": None,
        "max_logit_gap": max(g for _, g in gap),
        "gap_at_or_below_L": max(below) if below else None,
        "gap_above_L": max(above) if above else None,
        "self_gap": max(self_gap),
        "token_agreement_pct": 100.0 * agree / total,
        "first_divergence": divergence,
        "gap_by_length": by_length,
    }


def _short_ppl(model, tokenizer, docs: list[list[int]], lengths: list[int], progress: bool) -> dict:
    bos = getattr(tokenizer, "bos_token_id", None)
    kwargs = dict(bos_id=bos, mode="truncate", progress=progress)
    with _policy(model, None):
        switching = perplexity_at_lengths(model, docs, lengths, **kwargs)
    with _policy(model, "long"):
        forced = perplexity_at_lengths(model, docs, lengths, **kwargs)
    out = {}
    for length in lengths:
        a, b = switching[length]["ppl"], forced[length]["ppl"]
        increase = None if a is None or b is None else 100.0 * (b / a - 1.0)
        out[length] = {
            "switching": a,
            "forced_long": b,
            "increase_pct": increase,
            "docs": forced[length]["docs"],
        }
    return out


def _prompts(tokenizer, settings: EvalSettings, prompt_len: int, ppl_need: int, can_force: bool):
    """(documents for the short-ppl cost, ``samples`` prompts of ``prompt_len`` tokens, BOS first)."""
    n_prompts = max(1, int(settings.samples))
    bos = getattr(tokenizer, "bos_token_id", None)
    n_docs = max(n_prompts, settings.ppl_docs if can_force else 0)
    docs = document_heads(tokenizer, settings.ppl_data, max(prompt_len, ppl_need), n_docs)
    prompts = [(([bos] if bos is not None else []) + d)[:prompt_len] for d in docs][:n_prompts]
    if not prompts:
        raise ValueError(
            f"serving parity: no document of {settings.ppl_data!r} has {prompt_len} tokens for a prompt"
        )
    return docs, prompts


def serving_parity(model, tokenizer, settings: EvalSettings) -> dict:
    """Cost of each factor-set choice across L (see the module docstring); plain JSON-ready dict.

    ``settings``: ``samples`` prompts (first tokens of ``ppl_data`` documents), ``max_new_tokens``
    greedy tokens per prompt (default 32: L - 8 → L + 24), ``lengths`` ≤ L for the short-context
    perplexity (default [L]) over ``ppl_docs`` documents, ``progress``.

    Result: ``{"original_length": L, "prompt_length", "new_tokens", "final_length", "prompts",
    "rotary": "longctx" | "stock", "rope_type", "max_abs_logit" (scale of the gaps), "choices":
    {choice: {"available", "note", "max_logit_gap", "gap_at_or_below_L", "gap_above_L",
    "self_gap", "token_agreement_pct", "first_divergence" (per prompt: prefix length − L when
    the first token differing from the reference was chosen, None if none), "gap_by_length"
    ({prefix length: max gap})}}``; ``forced_long`` adds ``short_ppl`` ({length: {"switching",
    "forced_long", "increase_pct", "docs"}}), ``reprefill`` adds ``extra_prefills``.
    """
    L = switch_length(model)
    prompt_len = max(2, L - PROMPT_OFFSET)
    new_tokens = int(settings.max_new_tokens or DEFAULT_NEW_TOKENS)
    if prompt_len + new_tokens - 1 <= L:
        raise ValueError(
            f"serving parity: {prompt_len}-token prompts + {new_tokens} new tokens never decode from a "
            f"prefix longer than L={L}; expected max_new_tokens > {L - prompt_len + 1}"
        )
    ppl_lengths = sorted({int(n) for n in settings.lengths if 2 <= int(n) <= L}) or [L]
    can_force = _installed_spec(model) is not None
    docs, prompts = _prompts(tokenizer, settings, prompt_len, max(ppl_lengths) if can_force else 0, can_force)
    prefix_lengths = [prompt_len + i for i in range(new_tokens)]

    runs: dict[str, list[dict]] = {c: [] for c in CHOICES}
    scale = 0.0
    for prompt in tqdm(prompts, desc="serving parity", disable=not settings.progress, leave=False):
        with _policy(model, None):
            reference = reference_greedy(model, prompt, new_tokens)
            for choice, reprefill in (("switching", None), ("reprefill", L)):
                tokens, logits = cached_greedy(model, prompt, new_tokens, reprefill_after=reprefill)
                gap = _gaps(model, prompt, tokens, logits)
                runs[choice].append({"tokens": tokens, "reference": reference, "gap": gap, "self_gap": gap})
                scale = max(scale, max(float(x.abs().max()) for x in logits))
        if can_force:
            for choice, (run_set, decode_set, own_set) in FORCED.items():
                runs[choice].append(
                    _forced_run(model, prompt, new_tokens, reference, run_set, decode_set, own_set)
                )

    choices = {}
    for choice in CHOICES:
        if runs[choice]:
            choices[choice] = _summary(L, prefix_lengths, runs[choice])
        else:
            choices[choice] = _empty_choice(
                "needs the rotary installed by rope.apply_rope to force the long set; a stock "
                "transformers model always switches per forward (re-install the export's "
                "longctx_rope_spec.json with rope.apply_rope, as eval.models.install_spec does)"
            )
    if can_force:
        choices["forced_long"]["short_ppl"] = _short_ppl(
            model, tokenizer, docs[: settings.ppl_docs], ppl_lengths, settings.progress
        )
    else:
        choices["forced_long"]["short_ppl"] = None
    choices["reprefill"]["extra_prefills"] = len(prompts)  # one per prompt: each starts ≤ L and passes it
    return {
        "original_length": L,
        "prompt_length": prompt_len,
        "new_tokens": new_tokens,
        "final_length": prompt_len + new_tokens,
        "prompts": len(prompts),
        "rotary": "longctx" if can_force else "stock",
        "rope_type": _rope_type(model),
        "max_abs_logit": scale,
        "choices": choices,
        "engines": dict(ENGINE_RULES),
    }
