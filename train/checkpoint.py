"""Training checkpoints: atomic, keep-last-K, resume from the newest one that loads.

A checkpoint is ``checkpoints/step-<N>/`` holding accelerate's state of ONE stage (its model,
optimizer and RNG of every process — ``Accelerator.save_state``; each stage releases what it
prepared, so nothing of an earlier stage is in it), the LR schedule (``scheduler.pt``) and
``trainer_state.json`` (stage name, step, data position, losses). Loading a checkpoint that
names another stage is refused with one line. It is written to a temp dir,
marked ``COMPLETE`` last, then renamed into place, so a kill at any instant leaves either
the previous checkpoint set or the new one. On resume a checkpoint without its marker, or
one that fails to load, is reported and the previous one is used.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from longctx.errors import LongctxError

MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
SCHEDULER_FILE = "scheduler.pt"


class CheckpointError(LongctxError, RuntimeError):
    """A checkpoint that must not be restored into this stage (written by another one)."""


def _step_of(path: Path) -> int:
    return int(path.name.split("-", 1)[1])


def list_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(found, key=_step_of)


def save_checkpoint(
    accelerator: Accelerator, root: Path, step: int, state: dict, keep: int, *, stage: str, scheduler=None
) -> Path:
    """Save stage ``stage``'s training state for ``step`` atomically and prune to the newest ``keep``."""
    target = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
        (tmp / STATE_FILE).write_text(json.dumps({**state, "stage": stage, "step": step}, indent=2))
        (tmp / MARKER).write_text("ok\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return target


def load_latest(accelerator: Accelerator, root: Path, *, stage: str, scheduler=None) -> dict | None:
    """Restore stage ``stage``'s newest loadable checkpoint; returns its trainer state, or None to
    start fresh. A checkpoint of another stage (or of a version that did not name its stage) is
    refused: restoring it would load another stage's weights into this one."""
    for ckpt in reversed(list_checkpoints(root)):
        problem = None
        if not (ckpt / MARKER).exists():
            problem = "no completion marker"
        else:
            try:
                state = json.loads((ckpt / STATE_FILE).read_text())
            except Exception as err:  # a torn or corrupt file: fall back to the previous one
                state, problem = None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            if state is not None:
                owner = state.get("stage")
                if owner != stage:
                    raise CheckpointError(
                        f"{ckpt} holds the state of stage {owner or '(unnamed: written by an older version)'!r}, "
                        f"not {stage!r}; delete {root} to restart this stage from its start"
                    )
                try:
                    accelerator.load_state(str(ckpt))
                    if scheduler is not None:
                        scheduler.load_state_dict(torch.load(ckpt / SCHEDULER_FILE, weights_only=True))
                    return state
                except Exception as err:  # a torn or corrupt file: fall back to the previous one
                    problem = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if accelerator.is_main_process:
            tqdm.write(f"checkpoint {ckpt} is unusable ({problem}); trying the previous one", file=sys.stderr)
    return None
