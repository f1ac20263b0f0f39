"""RopeSpec ⇄ Hugging Face config: transformers v5 ``rope_parameters`` and v4 ``rope_scaling``.

``to_hf_config`` returns the config keys to write: v5 reads ``rope_parameters`` (with
``rope_theta`` inside); v4 and other engines (vLLM, TGI, llama.cpp converters) read
``rope_scaling`` plus top-level ``rope_theta`` / ``original_max_position_embeddings`` /
``max_position_embeddings``. We write both with identical content, and always write
``original_max_position_embeddings`` explicitly (a known silent bug is it defaulting to
``max_position_embeddings``).

Some config classes read more than the generic keys: transformers 5.x ``Phi3Config.validate_rope``
(run by ``save_pretrained``) reads ``rope_parameters["partial_rotary_factor"]`` unconditionally and
accepts only ``rope_type`` ``default`` / ``longrope``; pass ``model_type`` to get keys it accepts.
"""

from __future__ import annotations

from typing import Any

from longctx.rope.errors import RopeExportError, RopeSpecError
from longctx.rope.methods import ROPE_METHODS
from longctx.rope.spec import RopeSpec

# rope_type → our method for reading configs (ntk exports as "default" with a new base)
HF_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")


# model_type → the rope_type values its config class accepts (absent: any HF rope_type)
MODEL_ROPE_TYPES = {"phi3": ("default", "longrope")}
# model types whose config reads ``rope_parameters["partial_rotary_factor"]`` even when it is 1.0
ALWAYS_PARTIAL_ROTARY = ("phi3",)


def to_hf_config(spec: RopeSpec, model_type: str | None = None) -> dict[str, Any]:
    """Config keys that make stock transformers compute ``spec`` exactly; raises if it cannot.

    ``model_type`` (e.g. ``model.config.model_type``) adds what that config class requires:
    for ``phi3``, ``partial_rotary_factor`` is always in the rope dict (1.0 included), and a
    rope_type Phi3Config rejects raises :class:`RopeExportError`. Other types are unaffected.
    """
    if spec.n_hat:
        raise RopeExportError(
            f"n_hat={spec.n_hat}: LongRoPE start positions keep the original RoPE at the first "
            "positions, which no stock rope_type expresses; export spec.replace(n_hat=0) (check its "
            "perplexity first) or keep loading the model through rope.apply_rope"
        )
    params, theta, max_positions = ROPE_METHODS[spec.method].hf_parameters(spec)
    allowed = MODEL_ROPE_TYPES.get(model_type or "")
    if allowed is not None and params.get("rope_type") not in allowed:
        raise RopeExportError(
            f"model_type {model_type!r}: method {spec.method!r} exports as rope_type "
            f"{params.get('rope_type')!r}, but its stock config accepts only {', '.join(allowed)}; "
            "export a longrope spec or keep loading the model through rope.apply_rope"
        )
    rope_parameters = {**params, "rope_theta": theta}
    if spec.partial_rotary_factor != 1.0 or model_type in ALWAYS_PARTIAL_ROTARY:
        rope_parameters["partial_rotary_factor"] = float(spec.partial_rotary_factor)
    out: dict[str, Any] = {
        "rope_parameters": rope_parameters,
        "rope_scaling": dict(rope_parameters),
        "rope_theta": theta,
        "max_position_embeddings": max_positions,
    }
    if "original_max_position_embeddings" in params:
        out["original_max_position_embeddings"] = params["original_max_position_embeddings"]
    if spec.partial_rotary_factor != 1.0:
        out["partial_rotary_factor"] = spec.partial_rotary_factor
    return out


def _as_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, dict):
        return config
    if hasattr(config, "to_dict"):
        return config.to_dict()
    raise RopeSpecError(
        f"from_hf_config: expected a config dict or PretrainedConfig, got {type(config).__name__}"
    )


def _rope_dict(cfg: dict[str, Any]) -> dict[str, Any]:
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise RopeSpecError(f"rope_parameters: expected a mapping, got {type(params).__name__}")
    if params and all(isinstance(v, dict) for v in params.values()):
        raise RopeSpecError(
            f"rope_parameters: per-layer-type RoPE ({', '.join(params)}) is not supported; "
            "supported: one RoPE for all layers"
        )
    return params


def from_hf_config(config: Any) -> RopeSpec:
    """Read a (possibly already extended) model config into a spec.

    Understands v5 ``rope_parameters`` and v4 ``rope_scaling`` (``type`` or ``rope_type``),
    e.g. Phi-3-128k (``longrope``), Llama-3.1 (``llama3``), Qwen2.5 YaRN configs.
    """
    cfg = _as_dict(config)
    rp = _rope_dict(cfg)
    rope_type = rp.get("rope_type", rp.get("type", "default"))
    if rope_type not in HF_TYPES:
        raise RopeSpecError(f"rope_type: {rope_type!r} is not supported; supported: {', '.join(HF_TYPES)}")
    base = float(rp.get("rope_theta", cfg.get("rope_theta", 10_000.0)))
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    partial = float(rp.get("partial_rotary_factor", cfg.get("partial_rotary_factor") or 1.0))
    max_pos = int(cfg["max_position_embeddings"])
    # Phi-3 keeps L at top level and transformers gives it priority; so do we.
    original = int(
        cfg.get("original_max_position_embeddings") or rp.get("original_max_position_embeddings") or max_pos
    )
    common = dict(base=base, head_dim=head_dim, partial_rotary_factor=partial, original_length=original)
    factor = rp.get("factor")
    if rope_type == "default":
        return RopeSpec("default", **{**common, "original_length": max_pos}, target_length=max_pos)
    if rope_type in ("linear", "dynamic"):
        # transformers sizes these by max_position_embeddings: that is L, and L' = L × factor.
        length = original if rope_type == "linear" else max_pos
        params = {"factor": float(factor)}
        target = round(length * float(factor))
        return RopeSpec(
            rope_type, **{**common, "original_length": length}, target_length=target, params=params
        )
    if rope_type == "yarn":
        return _yarn_spec(rp, common, max_pos, original)
    if rope_type == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor")
        params = {k: float(rp[k]) for k in keys if rp.get(k) is not None}
        target = max_pos if max_pos > original else round(original * float(factor))
        return RopeSpec("llama3", **common, target_length=target, params=params)
    params = {"factor": float(factor)} if factor is not None else {}
    return RopeSpec(
        "longrope",
        **common,
        target_length=max_pos,
        long_factor=tuple(rp["long_factor"]),
        short_factor=tuple(rp["short_factor"]) if rp.get("short_factor") is not None else None,
        attention_factor=rp.get("attention_factor"),
        params=params,
    )


def _yarn_spec(rp: dict[str, Any], common: dict[str, Any], max_pos: int, original: int) -> RopeSpec:
    keys = ("factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim")
    params: dict[str, Any] = {k: float(rp[k]) for k in keys if rp.get(k) is not None}
    if rp.get("truncate") is False:
        params["truncate"] = False
    factor = params.get("factor", max_pos / original)
    target = max_pos if max_pos > original else round(original * factor)
    return RopeSpec(
        "yarn", **common, target_length=target, attention_factor=rp.get("attention_factor"), params=params
    )


def lift_sliding_window(config: Any, length: int) -> int | None:
    """Switch ``config``'s sliding-window attention off when ``length`` passes the window (in place).

    Mistral-7B-v0.1 (``sliding_window: 4096``), Phi-3-mini (2047) and Qwen2 with
    ``use_sliding_window`` attend to the last ``sliding_window`` keys only: a model "extended"
    past the window would still see a window of it, in training and in every long eval (flash
    and SDPA both apply it). The LongRoPE papers extend these models with full attention.
    Returns the window that was lifted, or None when there was none or ``length`` fits in it.
    """
    window = getattr(config, "sliding_window", None)
    if window is None or length <= window:
        return None
    config.sliding_window = None
    if getattr(config, "use_sliding_window", False):
        config.use_sliding_window = False
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        config.layer_types = ["full_attention" for _ in layer_types]
    return int(window)
