"""The evaluation gate every search algorithm goes through: cache, reject, split, log.

Every candidate costs forward passes at the target length, so nothing reaches the
``score`` callable twice or invalid:

- candidates are deduplicated by :attr:`Candidate.key` (0.01 grid) against every earlier
  evaluation and within the batch; a seen key is answered from the search's history. This is
  the algorithm's record of what it has seen (its budget and its replay on resume), not a
  second score cache: the scores come from ``score``, whose measurement cache
  (``eval.measure``) is keyed by the rotary a spec computes — the same key for the same grid
  candidate, since a candidate's spec carries its grid factors exactly;
- a candidate whose spec does not validate is rejected (score ``inf``) before any forward;
- under ``accelerate launch`` with N processes the new candidates are split across ranks
  (``PartialState.split_between_processes``) and the scores gathered (``gather_object``),
  so every rank holds the same cache and takes the same search path as one process;
- new candidates are scored in rounds of one per rank, and each score is appended to
  ``evaluations.jsonl`` (main process only, fsynced) as its round ends, not when the whole
  generation is done: at 32k one candidate is minutes of forwards.

The evaluation count (the benchmark's cost unit) is the number of distinct candidates
scored. A resumed search replays the algorithm against the cache restored from
``state.json`` and from the evaluations logged after it (a generation cut off part-way):
every candidate evaluated before the interruption is a cache hit, so the rerun reaches
exactly the state of an uninterrupted run (same seed → same path).
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from longctx.rope.errors import RopeSpecError
from longctx.rope.files import append_line, write_text_atomic
from longctx.rope.search.space import Candidate
from longctx.rope.search.state import HistoryStats
from longctx.rope.spec import RopeSpec

LOG_FILE = "evaluations.jsonl"


class BudgetExhausted(Exception):
    """Raised (after recording) when ``max_evaluations`` distinct candidates were scored."""


class Distributed:
    """Candidate split / score gather over the ranks of ``accelerate launch`` (no-op for one)."""

    def __init__(self) -> None:
        self.state = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch
            from accelerate import PartialState

            # without CUDA accelerate leaves the backend unset and every rank believes it is
            # rank 0 of 1 (measured with accelerate 1.15 on CPU); force gloo.
            kwargs = {} if torch.cuda.is_available() else {"cpu": True, "backend": "gloo"}
            self.state = PartialState(**kwargs)

    @property
    def num_processes(self) -> int:
        return 1 if self.state is None else self.state.num_processes

    @property
    def is_main(self) -> bool:
        return self.state is None or self.state.is_main_process

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def rounds(self, fn: Callable[[list], list], items: list) -> Iterator[tuple[list, list]]:
        """``fn`` over ``items`` one item per rank at a time: yields each round's ``(items,
        results)`` as it ends, so the caller logs them before the next round is scored."""
        step = self.num_processes
        for start in range(0, len(items), step):
            part = items[start : start + step]
            yield part, self.map(fn, part)

    def map(self, fn: Callable[[list], list], items: list) -> list:
        """``fn`` over ``items`` split across ranks; every rank gets the full, ordered result."""
        if self.state is None or self.num_processes == 1:
            return fn(items)
        from accelerate.utils import gather_object

        n, world, rank = len(items), self.num_processes, self.state.process_index
        # contiguous blocks, as split_between_processes does, with their start index attached
        per, extra = divmod(n, world)
        start = rank * per + min(rank, extra)
        stop = start + per + (1 if rank < extra else 0)
        local = fn(items[start:stop]) if stop > start else []
        gathered = gather_object([(start, list(local))])
        out: list = [None] * n
        for begin, values in gathered:
            out[begin : begin + len(values)] = values
        return out


class Evaluator(HistoryStats):
    """``evaluate(candidates, cut=None) -> scores`` with cache, rejection, split and log."""

    def __init__(
        self,
        score: Callable,
        to_spec: Callable[[Candidate], RopeSpec],
        *,
        log_dir: str | os.PathLike | None = None,
        max_evaluations: int | None = None,
        progress: bool = False,
        dist: Distributed | None = None,
    ) -> None:
        self.score = score
        self.to_spec = to_spec
        self.cache: dict[tuple, float] = {}
        self._asked: set[tuple] = set()
        self.history: list[tuple[Candidate, float]] = []
        """Distinct evaluated candidates in evaluation order, with their scores."""
        self.rejected = 0
        self.max_evaluations = max_evaluations
        self.dist = dist or Distributed()
        self.log_path = Path(log_dir) / LOG_FILE if log_dir is not None else None
        self._takes_cut = _accepts_cut(score)
        self._bar = _progress_bar(progress and self.dist.is_main, max_evaluations)

    # ----- restore (resume) ---------------------------------------------------------------
    def restore(self, history: Sequence[tuple[Candidate, float]], *, logged: bool = True) -> None:
        """Preload evaluations from a saved state, then (``logged``) those the JSONL log holds
        beyond it, in order, up to a line torn by the interruption; the log is rewritten
        (atomically) to exactly what was restored. ``logged=False``: the log is cut back to
        ``history`` (its other lines belong to no state this search can vouch for)."""
        for cand, value in history:
            self._record(cand, value, log=False)
        if self.log_path is None or not self.log_path.exists():
            return
        lines = self.log_path.read_text().splitlines()
        kept = lines[: len(history)]
        for line in lines[len(history) :] if logged else []:
            try:
                entry = json.loads(line)
                cand, value = Candidate.from_json(entry), float(entry["score"])
            except (ValueError, KeyError, TypeError):
                break  # torn by the kill: it and anything after are dropped
            if entry.get("eval") != self.evaluations + 1 or cand.key in self.cache:
                break
            self._record(cand, value, log=False)
            kept.append(line)
        if self.dist.is_main:
            write_text_atomic(self.log_path, "".join(f"{line}\n" for line in kept))

    # ----- evaluation ---------------------------------------------------------------------
    def seen(self, cand: Candidate) -> bool:
        """Whether this run has already asked for ``cand`` (the novelty test of the algorithms).

        Not the cache: on resume the cache already holds candidates that the replay has not
        reached yet, and testing novelty against it would change the replayed path.
        """
        return cand.key in self._asked

    def __call__(self, candidates: Sequence[Candidate], cut: float | None = None) -> list[float]:
        fresh: dict[tuple, Candidate] = {}
        for cand in candidates:
            self._asked.add(cand.key)
            if cand.key not in self.cache and cand.key not in fresh:
                fresh[cand.key] = cand
        todo = self._reject_invalid(list(fresh.values()))
        room = len(todo) if self.max_evaluations is None else self.max_evaluations - self.evaluations
        if todo and room <= 0:
            raise BudgetExhausted

        def score(part: list[tuple[Candidate, RopeSpec]]) -> list[float]:
            return self._score([spec for _, spec in part], cut)

        for part, scores in self.dist.rounds(score, todo[:room]):
            for (cand, _), value in zip(part, scores):
                self._record(cand, float(value), log=True)
        if len(todo) > room:
            raise BudgetExhausted
        return [self.cache[c.key] for c in candidates]

    def _score(self, specs: list[RopeSpec], cut: float | None) -> list[float]:
        if not specs:
            return []
        return list(self.score(specs, cut=cut) if self._takes_cut else self.score(specs))

    def _reject_invalid(self, candidates: list[Candidate]) -> list[tuple[Candidate, RopeSpec]]:
        valid = []
        for cand in candidates:
            try:
                valid.append((cand, self.to_spec(cand)))
            except RopeSpecError:
                self.rejected += 1
                self.cache[cand.key] = math.inf  # never scored, never counted
        return valid

    def _record(self, cand: Candidate, value: float, *, log: bool) -> None:
        self.cache[cand.key] = value
        self.history.append((cand, value))
        best = self.best[1]
        if log and self.log_path is not None and self.dist.is_main:
            entry = {"eval": self.evaluations, "score": value, "best": best, **cand.to_json()}
            append_line(self.log_path, json.dumps(entry))
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(best=f"{best:.4g}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _accepts_cut(score: Callable) -> bool:
    try:
        return "cut" in inspect.signature(score).parameters
    except (TypeError, ValueError):
        return False


def _progress_bar(enabled: bool, total: int | None):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="search", unit="eval")
