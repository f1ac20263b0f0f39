"""Two processes under ``accelerate launch`` (gloo on CPU) find exactly what one process finds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.rope.search.distributed_search import search_all

ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_split_candidates_and_match_one(tmp_path):
    out = tmp_path / "two.json"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        str(ROOT / "tests/rope/search/distributed_search.py"), str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(out.read_text())
    assert two.pop("world_size") == 2
    rank0_forwards = two.pop("forwards_on_rank0")
    one, forwards = search_all()
    assert two == one
    assert one["dpe"]["spec"]["params"]["group_scales"] != [1.0, 1.0]  # the sweep moved off its start
    for alg, count in forwards.items():  # rank 0 ran only its share of the candidates / settings
        assert rank0_forwards[alg] < 0.75 * count, alg
