"""The precision policy, in one place: what ``model.dtype`` means for each kind of stage.

- ``bfloat16`` / ``float16`` (mixed): compute in the half type, weights and optimizer state in
  fp32. Training stages load fp32 parameters and the accelerator autocasts the forward
  (one device / DDP); under DeepSpeed its bf16 mode keeps fp32 master weights and accumulates
  gradients in fp32 (``data_types.grad_accum_dtype``). AdamW never updates half-precision
  weights in place: at lr 2e-5, bf16 weights updated in place leave ~78 % of a model untouched
  (the update is below half a bf16 ulp) — measured, docs/BENCHMARKS.md.
- ``float32``: everything fp32, no autocast.
- ``auto``: bfloat16 on CUDA, float32 on CPU.

Inference stages (search, readjust, eval, DPE) load the compute dtype directly: nothing is
updated there. RoPE angles never come from a half-precision buffer whatever the policy: the
installed rotary keeps fp32 ``inv_freq`` buffers and multiplies positions in fp32, float64
past 2^20 positions (``rope.install``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}
MIXED_PRECISION = {"bfloat16": "bf16", "float16": "fp16", "float32": "no"}
"""Our dtype name → accelerate's ``mixed_precision``."""


@dataclass(frozen=True)
class Precision:
    name: str
    """float32, bfloat16 or float16 (``auto`` resolved)."""

    @classmethod
    def of(cls, choice: str, cuda: bool | None = None) -> Precision:
        if choice == "auto":
            cuda = torch.cuda.is_available() if cuda is None else cuda
            choice = "bfloat16" if cuda else "float32"
        return cls(choice)

    @property
    def compute(self) -> torch.dtype:
        return HALF.get(self.name, torch.float32)

    @property
    def master(self) -> torch.dtype:
        """The dtype trained parameters and optimizer state are kept in: always fp32."""
        return torch.float32

    @property
    def mixed_precision(self) -> str:
        return MIXED_PRECISION[self.name]

    def load_dtype(self, training: bool) -> torch.dtype:
        return self.master if training else self.compute

    def describe(self) -> str:
        if self.name == "float32":
            return "float32"
        return f"{self.name} compute, float32 master weights and optimizer state"
