"""bf16 training: in-place bf16 AdamW vs the precision policy (fp32 master weights + bf16 autocast).

Prints, for each variant, the share of weights a 10-step fine-tune at lr 2e-5 moves and the
largest loss difference from the fp32 run (same model, same batches, same process):

    python benchmarks/bf16_master_weights.py [--steps 10 --lr 2e-5]
"""

from __future__ import annotations

import argparse
import copy

import torch

from longctx.train.models import init_model, model_config


def _train(model, batches, lr: float, autocast: bool) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    losses = []
    for ids in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def _moved(before: dict, model) -> float:
    after = model.state_dict()
    moved = sum(int((after[k].float() != before[k].float()).sum()) for k in before)
    return moved / sum(t.numel() for t in before.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=2e-5)
    args = p.parse_args(argv)
    cfg = model_config(
        vocab_size=512,
        hidden_size=128,
        num_heads=4,
        num_layers=4,
        original_length=128,
        attn_implementation="sdpa",
    )
    base = init_model(cfg, 0)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 512, (4, 128), generator=g) for _ in range(args.steps)]
    rows = []
    for name, dtype, autocast in (
        ("fp32", torch.float32, False),
        ("bf16 in place", torch.bfloat16, False),
        ("bf16 compute, fp32 master (ours)", torch.float32, True),
    ):
        model = copy.deepcopy(base).to(dtype).train()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        losses = _train(model, batches, args.lr, autocast)
        rows.append((name, _moved(before, model), losses))
    ref = rows[0][2]
    print(f"{args.steps} AdamW steps at lr {args.lr:g}, tiny Llama (4 x 128), CPU")
    print(f"{'variant':36s} {'weights moved':>14s} {'max |loss - fp32| / fp32':>26s}")
    for name, moved, losses in rows:
        gap = max(abs(a - b) / b for a, b in zip(losses, ref))
        print(f"{name:36s} {moved:14.1%} {gap:26.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
