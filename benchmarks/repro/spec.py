"""The table spec: what a published table measures and claims (pydantic, strict)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from longctx.errors import LongctxError

METRICS = (
    "ppl", "passkey", "passkey_digits", "niah", "niah_digits", "digits", "exact", "ruler",
    "attention", "stock_hf", "evaluations", "evals_to_best", "best_score",
)  # fmt: skip
"""What a column reads (``benchmarks.repro.measure``): from an eval stage's results per run —
perplexity, passkey / NIAH exact and digit accuracy (%), their means, RULER's average over the
tasks that ran, the run's attention factors and whether stock transformers serves its spec —
or from a search stage's log: distinct candidates, candidates until within 1 % of the best, the
best score."""


class TableError(LongctxError, ValueError):
    """A table spec that does not validate (file and key path named)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Variant(Strict):
    """One ``longctx run`` (per seed): the table's recipe (or its own), overrides, output folder."""

    recipe: str | None = None
    overrides: list[str] = []
    output_dir: str


class Row(Strict):
    label: str
    run: str | None = None
    """The eval run (``runs[].name``) whose results fill the row."""
    stage: str | None = None
    """Or a search stage whose log fills it (efficiency metrics)."""
    variant: str | None = None
    """Read every cell of the row from this variant (default: each column's)."""

    @model_validator(mode="after")
    def _one_source(self) -> Row:
        if (self.run is None) == (self.stage is None):
            raise ValueError(f"row {self.label!r}: set exactly one of run or stage")
        return self


class Column(Strict):
    header: str
    metric: Literal[METRICS]  # type: ignore[valid-type]
    length: int | None = None
    variant: str = "main"
    stage: str | None = None
    """The eval stage to read (default: every eval stage of the run, first with the run)."""
    digits: int = 2
    relative_to: str | None = None
    """A row label: the cell is this row's value / that row's (e.g. ppl / the original's)."""

    @property
    def key(self) -> str:
        return f"{self.variant}:{self.stage or '*'}:{self.metric}@{self.length}"


class Claim(Strict):
    text: str
    column: str
    """A column header."""
    better: Literal["lower", "higher"]
    rows: list[str] = Field(min_length=1)
    """Labels; the claim's side is the best of them."""
    against: list[str] = Field(min_length=1)
    noise: Literal["seeds", "samples"] = "seeds"
    """seeds: holds only when the seeds' ranges are apart; samples: a gap worth at most two of
    ``samples`` retrieval samples is no verdict."""
    samples: int | None = None


class Table(Strict):
    id: str
    doc: str = "REPRODUCTION.md"
    order: int
    title: str
    recipe: str
    variants: dict[str, Variant]
    seeds: list[int] = [0]
    setup: str = ""
    """Prose with ``{dotted.recipe.key}`` fields (stages by name), rendered from the recipe."""
    rows: list[Row] = Field(min_length=1)
    columns: list[Column] = Field(min_length=1)
    claims: list[Claim] = []
    notes: str = ""
    cell: Literal["spread", "value"] = "spread"
    """spread: mean ± half the range over the seeds; value: seed 0's value alone."""

    @model_validator(mode="after")
    def _references(self) -> Table:
        labels, headers = {r.label for r in self.rows}, {c.header for c in self.columns}
        for r in self.rows:
            if r.variant is not None and r.variant not in self.variants:
                raise ValueError(f"row {r.label!r}: variant {r.variant!r} not in variants")
        for c in self.columns:
            if c.variant not in self.variants:
                raise ValueError(f"column {c.header!r}: variant {c.variant!r} not in variants")
            if c.relative_to is not None and c.relative_to not in labels:
                raise ValueError(f"column {c.header!r}: relative_to {c.relative_to!r} is not a row")
        for claim in self.claims:
            if claim.column not in headers:
                raise ValueError(f"claim {claim.text!r}: column {claim.column!r} is not a column")
            unknown = sorted(set(claim.rows + claim.against) - labels)
            if unknown:
                raise ValueError(f"claim {claim.text!r}: rows {unknown} are not rows")
        return self

    def recipe_of(self, variant: str) -> str:
        return self.variants[variant].recipe or self.recipe

    def output_dir(self, variant: str, seed: int) -> str:
        base = self.variants[variant].output_dir
        return base if seed == 0 else f"{base}_s{seed}"


def load_table(path: Path) -> Table:
    try:
        return Table(**yaml.safe_load(path.read_text()))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise TableError(f"{path}: {where}: {first['msg']}") from None


def load_tables(root: Path) -> list[Table]:
    """Every table spec under ``root/benchmarks/tables``, in document order."""
    tables = [load_table(p) for p in sorted((root / "benchmarks" / "tables").glob("*.yaml"))]
    return sorted(tables, key=lambda t: (t.doc, t.order))
