"""benchmarks/gpu_check.py on a machine without CUDA: runs what CPU can, skips the rest with a reason."""

from __future__ import annotations

import pytest
import torch

from longctx.benchmarks.gpu_check import CHECKS, main


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU mode of the script")
def test_gpu_check_exits_zero_on_cpu_and_lists_its_skips(capsys):
    assert main([]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert len(rows) == len(CHECKS)
    status = {row.split("|")[1].strip(): row.split("|")[2].strip() for row in rows}
    assert (
        status["a placement"]
        == status["b rope fp32"]
        == status["c packed"]
        == status["e bf16 master"]
        == "ok"
    )
    skipped = [row for row in rows if "| skip |" in row]
    assert skipped and all("no CUDA" in row or "install" in row for row in skipped)
