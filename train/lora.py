"""LoRA for long-context fine-tuning (peft), with LongLoRA's trainable embeddings and norms.

LongLoRA (Chen et al., arXiv 2309.12307 §3.3) showed plain LoRA fails to adapt to long
contexts unless the embedding and normalisation layers are trained too; ``trainable`` makes
those base parameters fully trainable beside the adapters. The stage saves the MERGED model,
so every later stage and the export see ordinary weights.
"""

from __future__ import annotations

from torch import nn

from longctx.train.recipe import LoraCfg

TRAINABLE_PATTERNS = {"embed": ("embed_tokens",), "norm": ("norm",)}


def wrap_lora(model: nn.Module, cfg: LoraCfg, seed: int = 0) -> nn.Module:
    """A peft model: adapters on ``target_modules``, ``trainable`` base parameters unfrozen.

    The adapters' random init (lora_A) is drawn from ``seed``: every rank must start from the
    SAME adapters — under ZeRO-3 each rank keeps its own slice of its own copy, with no
    broadcast, so ranks whose RNG had advanced differently would train a patchwork — and a
    run must not depend on how much randomness loading consumed before.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(model, config)
    patterns = [p for kind in cfg.trainable for p in TRAINABLE_PATTERNS[kind]]
    for name, param in model.named_parameters():
        if "lora_" not in name and any(p in name.split(".")[-2] for p in patterns):
            param.requires_grad_(True)
    return model


def trainable_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def merged(model: nn.Module) -> nn.Module:
    """The base model with the adapters folded into its weights (no-op for a non-peft model)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
