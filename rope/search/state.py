"""Search state on disk: ``state.json`` after every generation / round, and the progress plot.

The state holds what a rerun needs to continue and what a reader wants to see: the
algorithm, seed and config it was started with (a rerun with different ones is refused,
since it could not reproduce the interrupted run), the generation reached, the current
population with scores, the best candidate, and every distinct evaluation in order (the
cache). Writes are atomic (temp file + ``os.replace``), so a kill mid-write leaves the
previous state intact. Resume replays the algorithm against that cache (see
:mod:`rope.search.evaluator`), which makes the resumed result exactly the uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longctx.rope.files import write_text_atomic
from longctx.rope.search.space import Candidate, SearchConfigError

STATE_FILE = "state.json"
PLOT_FILE = "progress.png"
STATE_VERSION = 1


class HistoryStats:
    """``evaluations`` and ``best`` over a ``history`` of (candidate, score) in evaluation order.

    Shared by the live :class:`~rope.search.evaluator.Evaluator` and the saved
    :class:`SearchState`, which hold the same history.
    """

    history: list[tuple[Candidate, float]]

    @property
    def evaluations(self) -> int:
        return len(self.history)

    @property
    def best(self) -> tuple[Candidate, float] | None:
        return min(self.history, key=lambda h: h[1]) if self.history else None


@dataclass
class SearchState(HistoryStats):
    algorithm: str
    seed: int
    config: dict[str, Any]
    generation: int = 0
    """The last generation / round completed (0: the initial population; -1: started, the
    state written before the first score so that a resume can check what it continues)."""
    population: list[tuple[Candidate, float]] = field(default_factory=list)
    history: list[tuple[Candidate, float]] = field(default_factory=list)
    """Every distinct evaluated candidate, in evaluation order (the cache)."""
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        best = self.best
        return {
            "version": STATE_VERSION,
            "algorithm": self.algorithm,
            "seed": self.seed,
            "config": self.config,
            "generation": self.generation,
            "evaluations": self.evaluations,
            "done": self.done,
            "best": None if best is None else {**best[0].to_json(), "score": _num(best[1])},
            "population": [{**c.to_json(), "score": _num(s)} for c, s in self.population],
            "history": [{**c.to_json(), "score": _num(s)} for c, s in self.history],
        }

    def save(self, out_dir: str | os.PathLike) -> Path:
        return write_text_atomic(Path(out_dir) / STATE_FILE, json.dumps(self.to_json()))

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> SearchState | None:
        path = Path(out_dir) / STATE_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        if data.get("version") != STATE_VERSION:
            raise SearchConfigError(
                f"{path}: state version {data.get('version')!r}; expected {STATE_VERSION}"
            )

        def entries(key: str) -> list[tuple[Candidate, float]]:
            return [(Candidate.from_json(e), float(e["score"])) for e in data[key]]

        return cls(
            algorithm=data["algorithm"],
            seed=data["seed"],
            config=data["config"],
            generation=data["generation"],
            population=entries("population"),
            history=entries("history"),
            done=data["done"],
        )

    def check_matches(self, algorithm: str, seed: int, config: dict[str, Any], where: str) -> None:
        """Refuse to continue a state started with another algorithm, seed or config."""
        for name, mine, theirs in (("algorithm", algorithm, self.algorithm), ("seed", seed, self.seed)):
            if mine != theirs:
                raise SearchConfigError(
                    f"{where}: {name}: the saved search used {theirs!r}, this run asks for {mine!r}; "
                    "use another output directory or the same settings"
                )
        if json.loads(json.dumps(config)) != self.config:
            raise SearchConfigError(
                f"{where}: config differs from the saved search's; use another output directory "
                "or the same settings"
            )


def _num(value: float) -> float | str:
    return value if math.isfinite(value) else "inf"


def best_so_far(scores: list[float]) -> list[float]:
    out, best = [], math.inf
    for s in scores:
        best = min(best, s)
        out.append(best)
    return out


def plot_progress(curves: dict[str, list[float]], path: str | os.PathLike, title: str = "") -> Path:
    """PNG of best-so-far score vs evaluations, one line per named run (scores in eval order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, scores in curves.items():
        best = best_so_far(scores)
        ax.plot(range(1, len(best) + 1), best, label=name)
    ax.set_xlabel("evaluations")
    ax.set_ylabel("best score so far (lower is better)")
    ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
