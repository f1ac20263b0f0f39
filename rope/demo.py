"""Tiny RoPE demo (temporary main job until the recipe runner lands): ``python -m rope.demo``.

Builds a tiny random Llama with pretrained length L, installs every scaling method for
L' = 4L, and prints per method: the factor range, the attention factor, the share of rotation
angles at distances up to 4L that pretraining never produced (LongRoPE2's OOD angles), logit change for a short input (≤ L — zero for
methods that keep the pretrained RoPE there), and the perplexity of the random model on a
4L-token input. It proves the install works end to end on CPU, with no downloads.
"""

from __future__ import annotations

import argparse
import math
import random

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from longctx.rope import RopeSpec, apply_rope, to_hf_config
from longctx.rope.errors import RopeExportError
from longctx.rope.longrope2 import long_factor_from_upper, theoretical_critical_dim


def demo_specs(base: float, head_dim: int, length: int, scale: int) -> list[RopeSpec]:
    common = dict(base=base, head_dim=head_dim, original_length=length, target_length=scale * length)
    n_pairs = head_dim // 2
    rcd = theoretical_critical_dim(base, head_dim, length)
    rng = random.Random(0)
    upper = sorted(rng.uniform(scale, 2 * scale) for _ in range(n_pairs - rcd))
    yarn_factors = RopeSpec("yarn", **common).factors()
    return [
        RopeSpec("default", **{**common, "target_length": length}),
        RopeSpec("linear", **common),
        RopeSpec("ntk", **common),
        RopeSpec("dynamic", **common),
        RopeSpec("yarn", **common),
        RopeSpec("llama3", **common),
        RopeSpec("longrope", **common, long_factor=yarn_factors, n_hat=4),
        RopeSpec("longrope2", **common, long_factor=long_factor_from_upper(upper, rcd)),
        RopeSpec(
            "dpe",
            **common,
            params={"group_scales": [1, 1, 2, 2, 4, 4, scale, scale], "local_window": length // 2},
        ),
    ]


def unseen_angle_share(spec: RopeSpec, n_positions: int) -> float:
    """Share of (pair, distance < n_positions) rotation angles never seen in pretraining (LongRoPE2 §2).

    Only pairs whose period exceeds L count (the rest wrap around within L, so every angle
    was seen); a distance Δ is unseen for pair i when Δ·θ'_i > (L−1)·θ_i.
    """
    g = spec.geometry
    base = g.base_inv_freq().double()
    inv = spec.inv_freq("long").double()
    critical = 2 * math.pi / base > g.original_length  # [d/2]
    if not critical.any():
        return 0.0
    dist = torch.arange(n_positions, dtype=torch.float64)[:, None]  # [n, 1]
    unseen = dist * inv[critical] > (g.original_length - 1) * base[critical]
    return unseen.double().mean().item()


def perplexity(model: LlamaForCausalLM, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return math.exp(model(input_ids=ids, labels=ids).loss.item())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=128, help="pretrained length L of the tiny model")
    parser.add_argument("--scale", type=int, default=4, help="extension ratio L'/L")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, max_position_embeddings=args.length, rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    long_ids = torch.randint(
        0, 256, (1, args.scale * args.length), generator=torch.Generator().manual_seed(1)
    )
    short_ids = long_ids[:, : args.length // 2]
    with torch.no_grad():
        reference_short = model(input_ids=short_ids).logits
    header = f"{'method':<10} {'λ min':>7} {'λ max':>7} {'mscale':>7} {'unseen':>8} {'Δlogit≤L':>9} {'ppl@' + str(args.scale) + 'L':>9}  export"
    print(f"tiny Llama, L={args.length}, L'={args.scale * args.length}, head_dim={config.head_dim}")
    print(header + "\n" + "-" * len(header))
    for spec in demo_specs(10_000.0, config.head_dim, args.length, args.scale):
        apply_rope(model, spec)
        factors = spec.factors("long")
        with torch.no_grad():
            delta = (model(input_ids=short_ids).logits - reference_short).abs().max().item()
        try:
            exportable = to_hf_config(spec)["rope_parameters"]["rope_type"]
        except RopeExportError:
            exportable = "no (DPE)" if spec.method == "dpe" else "no (n̂ > 0)"
        print(
            f"{spec.method:<10} {min(factors):>7.3f} {max(factors):>7.3f} "
            f"{spec.frequencies().long_attention_factor:>7.3f} {unseen_angle_share(spec, args.scale * args.length):>8.1%} "
            f"{delta:>9.2e} {perplexity(model, long_ids):>9.2f}  {exportable}"
        )
    print("\nOK: every method installed, ran at 4×L and maps to a stock config where one exists.")


if __name__ == "__main__":
    main()
