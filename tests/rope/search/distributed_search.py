"""Run by test_distributed under ``accelerate launch`` (and in-process): tiny-model searches and a DPE sweep.

Usage: ``python distributed_search.py OUT.json`` — rank 0 writes the results.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from longctx.eval.scorer import build_scorer
from longctx.rope import RopeSpec
from longctx.rope.search import DCISConfig, EvolutionConfig, run_search
from longctx.rope.search.dpe import detect_group_scales
from tests.tiny import tiny_config, tiny_model

L = 32
CONFIGS = {
    "evolution": EvolutionConfig(population=6, generations=2, parents=4, mutants=2, crossovers=2),
    "dcis": DCISConfig(rounds=1, increments=2),
}


def search_all() -> dict:
    torch.set_num_threads(1)
    model = tiny_model(tiny_config("llama", max_position_embeddings=L, num_layers=1))
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 128, (4 * L,), generator=g).tolist() for _ in range(2)]
    template = RopeSpec(
        "longrope", base=10_000.0, head_dim=16, original_length=L, target_length=4 * L, long_factor=[1.0] * 8
    )
    out, forwards = {}, {}
    for alg, cfg in CONFIGS.items():
        scorer = build_scorer(model, rows)
        result = run_search(alg, template, scorer, cfg, seed=0, progress=False)
        out[alg] = {"scores": result.scores, "spec": result.spec.to_dict()}
        forwards[alg] = scorer.forwards
    # DPE's sweep: 2 groups × scales 1…16, 9 distinct settings (both groups at the held 8 once)
    dpe = RopeSpec("dpe", base=10_000.0, head_dim=16, original_length=L, target_length=4 * L,
                   params={"group_scales": [1.0, 1.0], "key_dims": [1, 2, 5, 6], "local_window": 8})  # fmt: skip
    scorer = build_scorer(model, rows)
    result = detect_group_scales(dpe, scorer, groups=2)
    out["dpe"] = {
        "sweeps": [{str(k): v for k, v in s.items()} for s in result.sweeps],
        "spec": result.spec.to_dict(),
    }
    forwards["dpe"] = scorer.forwards
    return out, forwards


if __name__ == "__main__":
    results, forwards = search_all()
    results["forwards_on_rank0"] = forwards
    results["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    if int(os.environ.get("RANK", "0")) == 0:
        with open(sys.argv[1], "w") as fh:
            json.dump(results, fh)
    if torch.distributed.is_initialized():  # as train/run.py: no rank tears gloo down under another
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
