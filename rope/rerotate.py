"""Cache-consistent generation across L: what re-rotating the cached keys repairs, and what it cannot.

A ``longrope`` model has two factor sets: the short one serves forwards whose positions stay
within L (``max(position_ids) + 1 <= L``), the long one forwards beyond. transformers decides
PER FORWARD, so during cached generation the keys cached before the sequence passed L keep the
short rotation while every later key and query uses the long one, and the logits drift from a
fresh forward over the same tokens (the serving-parity report: 7.47 logits past L, 43.8 %
greedy agreement). Phi-3's modeling drops the cache once at L + 1 and re-prefills.

Re-rotation. A RoPE key is ``a · R(p·θ) k`` per rotary pair (rotation by angle p·θ_i,
attention factor ``a``); rotations of one pair compose, so

    k_long = R(p·θ_long) R(−p·θ_short) k_short × (a_long / a_short)

turns a short-rotated key into the long-rotated one up to float error. With the tables
``c = a·cos φ``, ``s = a·sin φ`` the model itself computes this is the complex product
``z_long = z_short · (c_l + i s_l)(c_s − i s_s) / (c_s² + s_s²)``, per pair ``(i, i + d/2)``
(Llama's ``rotate_half``), on the first ``rotary_dim`` dims only (Phi-3 / partial rotary).
The tables come from the model's OWN rotary embedding (our :class:`ScaledRotaryEmbedding`
with its set forced, or transformers' stock ``longrope`` buffers and float32 operations), so
n̂ start positions and a short/long attention-factor ratio (``mscale_short=False``) are
honoured.

What it cannot repair. Only the FIRST layer's cached keys are a rotation of a
position-independent vector (the token embedding's projection). Layer l > 0 caches
``W_k h_l(p)``, and ``h_l(p)`` at a position p < L was computed by attention under the short
set; a fresh forward over a sequence longer than L computes it under the long set. No
rotation maps one to the other (values differ as well), so re-rotation is exact for a
one-layer model and for the first layer's keys, and only reduces the drift of a deeper model
(tiny 2-layer Llama, prompt 60 → 100, L = 64: max logit gap 5.5e-3 plain, 6.6e-4 re-rotated,
1.5e-7 re-prefilled; 4 layers: 2.6e-3 re-rotated). Matching a fresh forward needs the hidden
states recomputed, i.e. one re-prefill when the sequence first passes L.

The API:

- :func:`generate_across_length` — greedy decoding that is exact across L on every supported
  architecture: ``mode="reprefill"`` (default) rebuilds the cache with one forward over the
  whole sequence the first time a step would use the other factor set (what Phi-3's modeling
  does, here for Llama / Mistral / Qwen too, whose stock ``generate`` drifts);
  ``mode="rerotate"`` uses :class:`RerotatingCache` instead (no full forward; approximate
  beyond the first layer, see above). Returns what ``generate`` returns.
- :class:`RerotatingCache` — the drop-in for ``model.generate(ids, cache=RerotatingCache(model))``
  (``past_key_values=`` before transformers 5.24), any decoding strategy. A ``DynamicCache``
  that records the positions it caches and, in each layer's first update of a forward that
  uses another factor set than its keys carry, re-rotates that layer's keys before appending
  the new ones: once, when the sequence first passes L. A cache is the only drop-in place
  for this (the switch happens between the rotary and the attention of the crossing forward,
  which only ``Cache.update`` sees), and it cannot re-prefill. On Phi-3, transformers'
  ``prepare_inputs_for_generation`` drops the cache at L + 1 and re-prefills anyway (exact).
- :func:`rerotate_keys` — the primitive, for a cache filled by other means.

Limits: dynamic NTK (``dynamic`` specs, stock rope_type "dynamic") changes its frequencies at
every length and is refused; only DynamicCache layers (full or sliding window) are
re-rotated; in bf16/fp16 the re-rotated keys carry one extra rounding of the cache dtype (the
composition runs in float32).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from longctx.rope.install import ScaledRotaryEmbedding
from longctx.rope.spec import RopeSpec

_ALIASES = {"short": "short", "original": "short", "long": "long", "rescaled": "long"}


# ----- the model's own rotation tables ---------------------------------------------------------
class RotaryTables:
    """cos/sin tables of one rotary embedding per factor set, as the model's forward computes them.

    ``tables(positions, kind)`` -> float32 ``(cos, sin)`` [batch, n, rotary_dim] (attention
    factor included); ``kind_of(position_ids)`` -> the set a forward over those positions uses.
    """

    def __init__(self, source: nn.Module | RopeSpec, device: torch.device | None = None) -> None:
        if isinstance(source, RopeSpec):
            source = ScaledRotaryEmbedding(source, device=device)
        elif not isinstance(source, ScaledRotaryEmbedding) and not hasattr(source, "rope_type"):
            source = _rotary_of(source)
        self.rotary = source
        if isinstance(source, ScaledRotaryEmbedding):
            self._init_installed(source)
        else:
            self._init_stock(source)

    # our installed rotary: force the set and call it, so n̂ / fp64 angles / scales are its own
    def _init_installed(self, rotary: ScaledRotaryEmbedding) -> None:
        spec = rotary.spec
        if spec.method == "dynamic":
            raise ValueError(
                "re-rotation: dynamic NTK changes its frequencies at every length, not once at L; "
                "re-prefill instead"
            )
        self.original_length = spec.original_length
        self.rotary_dim = spec.rotary_dim
        self.two_sets = bool(
            spec.n_hat
            or rotary.short_scale != rotary.long_scale
            or not torch.equal(rotary.short_inv_freq, rotary.long_inv_freq)
        )
        self.kind_of = lambda position_ids: "long" if bool(rotary.use_long(position_ids)) else "short"

        def tables(positions: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
            previous = rotary.factor_set
            rotary.factor_set = kind
            try:
                probe = torch.empty(0, dtype=torch.float32, device=positions.device)
                return rotary(probe, positions)
            finally:
                rotary.factor_set = previous

        self._tables = tables

    # transformers' rotary: its longrope rule and buffers, with its float32 operations
    def _init_stock(self, rotary: nn.Module) -> None:
        rope_type = str(getattr(rotary, "rope_type", "default"))
        if "dynamic" in rope_type:
            raise ValueError(
                f"re-rotation: rope_type {rope_type!r} changes its frequencies at every length, "
                "not once at L; re-prefill instead"
            )
        self.rotary_dim = 2 * rotary.inv_freq.numel()
        scale = float(getattr(rotary, "attention_scaling", 1.0))
        if rope_type != "longrope":  # one set for every length: nothing ever needs re-rotating
            self.original_length = None
            self.two_sets = False
            self.kind_of = lambda position_ids: "long"
            inv = {"short": rotary.original_inv_freq, "long": rotary.original_inv_freq}
        else:
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            config = rotary.config
            L = int(config.rope_parameters["original_max_position_embeddings"])
            long = getattr(rotary, "long_inv_freq", None)
            if long is None:  # what longrope_frequency_update computes on its first long forward
                long, _ = ROPE_INIT_FUNCTIONS["longrope"](config, rotary.inv_freq.device, seq_len=L + 1)
            self.original_length = L
            inv = {"short": rotary.original_inv_freq, "long": long}
            self.two_sets = not torch.equal(inv["short"].to(long.device), long)
            self.kind_of = lambda position_ids: "long" if int(position_ids.max()) + 1 > L else "short"

        def tables(positions: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
            inv_freq = inv[kind].to(device=positions.device, dtype=torch.float)
            freqs = positions[..., None].float() * inv_freq  # [batch, n, d/2], as the rotary does
            emb = torch.cat((freqs, freqs), dim=-1)
            return emb.cos() * scale, emb.sin() * scale

        self._tables = tables

    def tables(self, positions: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self._tables(_as_rows(positions), _set_name(kind))
        return cos.float(), sin.float()

    def composed(
        self, positions: torch.Tensor, from_set: str, to_set: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C, S)`` float32 [batch, 1, n, rotary_dim] with ``k_to = k_from·C + rotate_half(k_from)·S``."""
        c1, s1 = self.tables(positions, from_set)
        c2, s2 = self.tables(positions, to_set)
        norm = c1 * c1 + s1 * s1  # a_from², exact for the float tables the keys were built with
        return ((c2 * c1 + s2 * s1) / norm)[:, None], ((s2 * c1 - c2 * s1) / norm)[:, None]


def _rotary_of(model: nn.Module) -> nn.Module:
    found: list[nn.Module] = []
    for name, module in model.named_modules():
        if name.split(".")[-1] == "rotary_emb" and all(module is not m for m in found):
            found.append(module)
    if len(found) != 1:
        raise ValueError(
            f"re-rotation: expected one rotary_emb module in {type(model).__name__}, found {len(found)}"
        )
    return found[0]


def _set_name(kind: str) -> str:
    if kind not in _ALIASES:
        raise ValueError(f"factor set: expected short / long (or original / rescaled), got {kind!r}")
    return _ALIASES[kind]


def _as_rows(positions: torch.Tensor) -> torch.Tensor:
    positions = torch.as_tensor(positions)
    return positions[None] if positions.dim() == 1 else positions  # [batch or 1, n]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rerotate_layer(layer, composed: tuple[torch.Tensor, torch.Tensor], rotary_dim: int) -> None:
    keys = layer.keys  # [batch, kv_heads, n, head_dim]
    C, S = composed
    rot = keys[..., :rotary_dim].float()
    new = (rot * C + _rotate_half(rot) * S).to(keys.dtype)
    layer.keys = new if rotary_dim == keys.shape[-1] else torch.cat((new, keys[..., rotary_dim:]), dim=-1)


def _check_layer(layer) -> None:
    if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
        raise TypeError(
            f"re-rotation: cache layer {type(layer).__name__} is not supported (DynamicCache layers only)"
        )


def _cached(layer) -> int:
    return layer.keys.shape[-2] if getattr(layer, "is_initialized", False) and layer.keys.numel() else 0


# ----- the primitive -----------------------------------------------------------------------------
@torch.no_grad()
def rerotate_keys(
    cache,
    model_or_spec: nn.Module | RopeSpec | RotaryTables,
    positions: torch.Tensor | None = None,
    from_set: str = "short",
    to_set: str = "long",
):
    """Re-rotate every layer's cached keys in place from ``from_set`` to ``to_set``; returns ``cache``.

    ``model_or_spec``: the model (its rotary embedding), a rotary module, a :class:`RopeSpec`
    (its installed rotary is built) or :class:`RotaryTables`. ``positions``: the cached keys'
    positions, [n] or [batch, n], covering at least the longest layer (a sliding-window layer
    holding m keys takes the last m); None: ``0 … n-1`` (a :class:`RerotatingCache`: its recorded
    positions, and its layers then carry ``to_set``). A ``DynamicCache`` (``cache.layers[i].keys``
    [batch, kv_heads, seq, head_dim]); values are untouched.
    """
    rot = model_or_spec if isinstance(model_or_spec, RotaryTables) else RotaryTables(model_or_spec)
    from_set, to_set = _set_name(from_set), _set_name(to_set)
    layers = [layer for layer in cache.layers if _cached(layer)]
    for layer in layers:
        _check_layer(layer)
    if from_set == to_set or not layers:
        return cache
    longest = max(_cached(layer) for layer in layers)
    device = layers[0].keys.device
    own = isinstance(cache, RerotatingCache)
    if positions is None:
        positions = cache.positions if own else torch.arange(longest, device=device)
    positions = _as_rows(positions).to(device)
    if positions.shape[-1] < longest:
        raise ValueError(f"re-rotation: {positions.shape[-1]} positions for {longest} cached keys")
    tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for layer in layers:
        n = _cached(layer)
        if n not in tables:
            tables[n] = rot.composed(positions[..., -n:], from_set, to_set)
        _rerotate_layer(layer, tables[n], rot.rotary_dim)
    if own:
        cache._layer_set = {i: to_set for i in cache._layer_set}
    return cache


# ----- the drop-in cache -------------------------------------------------------------------------
class RerotatingCache(DynamicCache):
    """A ``DynamicCache`` whose keys are always rotated with the factor set of the current forward.

    ``model.generate(input_ids, cache=RerotatingCache(model), max_new_tokens=...)``. The cache
    records the position ids of each forward (from the attention's keyword arguments, else
    ``past_len … past_len + new - 1``, the model's default) and the set each layer's keys carry;
    when a forward uses the other set (for longrope: the first forward past L), each layer
    re-rotates its cached keys once, before the new ones are appended.
    ``rerotations``: (from, to, cached tokens) per re-rotation (one entry per forward, not per layer).

    Exact for the first layer's keys; deeper layers keep keys/values of hidden states computed
    under the old set, so logits past L approach a fresh forward's without matching it (module
    docstring). For exact greedy decoding use :func:`generate_across_length` (re-prefill).
    """

    def __init__(self, model: nn.Module, **dynamic_cache_kwargs) -> None:
        self.rotation = RotaryTables(model)
        dynamic_cache_kwargs.setdefault("config", getattr(model, "config", None))
        super().__init__(**dynamic_cache_kwargs)
        self._positions: torch.Tensor | None = None  # [batch or 1, n] before the forward in flight
        self.rerotations: list[tuple[str, str, int]] = []
        self._layer_set: dict[int, str] = {}
        self._last_layer = None
        self._new: torch.Tensor | None = None  # positions of the forward in flight
        self._kind = "short"
        self._tables: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def positions(self) -> torch.Tensor | None:
        """Position ids [batch or 1, n] of every token the cache has seen (sliding layers keep the tail)."""
        if self._new is None:
            return self._positions
        return self._new if self._positions is None else _cat_rows(self._positions, self._new)

    # one forward = one pass over the layers in order: a layer index not above the last one seen starts the next
    def _begin_forward(self, key_states: torch.Tensor, position_ids: torch.Tensor | None) -> None:
        self._commit()
        past = 0 if self._positions is None else self._positions.shape[-1]
        if position_ids is None:
            position_ids = torch.arange(past, past + key_states.shape[-2], device=key_states.device)
        self._new = _as_rows(position_ids).to(key_states.device)
        self._kind = self.rotation.kind_of(self._new) if self.rotation.two_sets else "short"
        self._tables = {}

    def _commit(self) -> None:
        if self._new is None:
            return
        self._positions = self._new if self._positions is None else _cat_rows(self._positions, self._new)
        self._new = None

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        if self._last_layer is None or layer_idx <= self._last_layer:
            self._begin_forward(key_states, _position_ids(args, kwargs))
        self._last_layer = layer_idx
        if layer_idx < len(self.layers):
            layer = self.layers[layer_idx]
            n = _cached(layer)
            held = self._layer_set.get(layer_idx, self._kind)
            if n and held != self._kind:
                _check_layer(layer)
                if not self._tables:
                    self.rerotations.append((held, self._kind, n))
                key = (held, n)
                if key not in self._tables:
                    self._tables[key] = self.rotation.composed(self._positions[..., -n:], held, self._kind)
                _rerotate_layer(layer, self._tables[key], self.rotation.rotary_dim)
        self._layer_set[layer_idx] = self._kind
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    # the position timeline follows every change to the cached tokens
    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        self._commit()
        if self._positions is not None and tokens_to_remove < 0:
            self._positions = self._positions[..., :tokens_to_remove]
        self._last_layer = None

    def reset(self) -> None:
        super().reset()
        self._positions, self._new, self._last_layer = None, None, None
        self._layer_set.clear()

    def _rows(self, op: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self._commit()
        if self._positions is not None and self._positions.shape[0] > 1:
            self._positions = op(self._positions)
        self._last_layer = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._rows(lambda p: p.index_select(0, beam_idx.to(p.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._rows(lambda p: p.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._rows(lambda p: p[indices])


def _position_ids(args, kwargs) -> torch.Tensor | None:
    """The forward's position ids, as Llama-family attentions pass them to ``cache.update``."""
    for bag in (
        kwargs.get("kwargs"),
        kwargs.get("cache_kwargs"),
        kwargs,
        *(a for a in args if isinstance(a, dict)),
    ):
        if isinstance(bag, dict) and isinstance(bag.get("position_ids"), torch.Tensor):
            return bag["position_ids"]
    return None


def _cat_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    rows = max(a.shape[0], b.shape[0])
    return torch.cat((a.expand(rows, -1), b.expand(rows, -1)), dim=-1)


# ----- the greedy helper -------------------------------------------------------------------------
def _cache_keyword(model) -> str:
    """``cache`` (transformers >= 5.24) or ``past_key_values`` (earlier 5.x)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


MODES = ("reprefill", "rerotate")


@torch.inference_mode()
def _stop_tokens(model, eos_token_id, pad_token_id, device) -> tuple[torch.Tensor, int]:
    """(EOS ids as a 1-D tensor, the pad id): given, else the generation config's, else EOS / 0."""
    gen = getattr(model, "generation_config", None)
    if eos_token_id is None:
        eos_token_id = getattr(gen, "eos_token_id", None)
    eos = torch.as_tensor([] if eos_token_id is None else eos_token_id, dtype=torch.long, device=device)
    eos = eos.reshape(-1)
    if pad_token_id is None:
        pad_token_id = getattr(gen, "pad_token_id", None)
    if pad_token_id is None:
        pad_token_id = int(eos[0]) if eos.numel() else 0
    return eos, pad_token_id


def generate_across_length(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    mode: str = "reprefill",
    attention_mask: torch.Tensor | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    return_dict_in_generate: bool = False,
    output_logits: bool = False,
):
    """Greedy decoding whose KV cache stays consistent when the sequence passes L.

    ``model.generate(input_ids, do_sample=False, max_new_tokens=...)`` with the factor-set
    switch handled: ``mode="reprefill"`` re-forwards the whole sequence into a fresh cache the
    first time a step uses another set than the cache holds (every step's logits then equal a
    fresh forward's); ``mode="rerotate"`` re-rotates the cached keys instead
    (:class:`RerotatingCache`; cheaper, exact only for the first layer). ``input_ids``
    [batch, prompt]; left padding through ``attention_mask`` (positions ``cumsum(mask) - 1``,
    as ``generate``). Stops when every row has produced ``eos_token_id`` (default: the
    generation config's), padding finished rows with ``pad_token_id``. Returns the sequences
    [batch, prompt + new], or with ``return_dict_in_generate`` an output with ``.sequences``,
    ``.logits`` (float [batch, vocab] per step when ``output_logits``) and the cache.
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    device = model.get_input_embeddings().weight.device
    ids = torch.as_tensor(input_ids, device=device)
    ids = ids[None] if ids.dim() == 1 else ids
    mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask, device=device)
    eos, pad_token_id = _stop_tokens(model, eos_token_id, pad_token_id, device)
    rotation = RotaryTables(model)
    keyword = _cache_keyword(model)

    def new_cache():
        return (
            RerotatingCache(model)
            if mode == "rerotate"
            else DynamicCache(config=getattr(model, "config", None))
        )

    cache = new_cache()
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)  # [batch, seq] of every token
    step_ids, step_positions = ids, positions
    cached_set = None  # the set the cache's keys carry (reprefill mode)
    logits: list[torch.Tensor] = []
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        if mode == "reprefill" and rotation.two_sets:
            step_set = rotation.kind_of(step_positions)
            if cached_set is not None and step_set != cached_set:
                cache, step_ids, step_positions = new_cache(), ids, positions
                step_set = rotation.kind_of(positions)
            cached_set = step_set
        out = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=step_positions,
            use_cache=True,
            logits_to_keep=1,
            **{keyword: cache},
        )
        last = out.logits[:, -1]
        if output_logits:
            logits.append(last.float())
        token = last.argmax(-1).masked_fill(done, pad_token_id)
        ids = torch.cat((ids, token[:, None]), dim=-1)
        done = done | torch.isin(token, eos)
        if bool(done.all()):
            break
        mask = torch.cat((mask, torch.ones_like(mask[:, :1])), dim=-1)
        step_ids, step_positions = token[:, None], positions[:, -1:] + 1
        positions = torch.cat((positions, step_positions), dim=-1)
    if not return_dict_in_generate:
        return ids
    return _generate_output(ids, logits if output_logits else None, cache)


def _generate_output(ids: torch.Tensor, logits: list | None, cache):
    """transformers' ``GenerateDecoderOnlyOutput`` (its cache field is ``cache`` or, in older
    versions, ``past_key_values``)."""
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    fields = GenerateDecoderOnlyOutput.__dataclass_fields__
    return GenerateDecoderOnlyOutput(
        sequences=ids,
        logits=None if logits is None else tuple(logits),
        **{"cache" if "cache" in fields else "past_key_values": cache},
    )
