"""Reproduction as data: each published table is a spec (``benchmarks/tables/*.yaml``: its
recipe, overrides, seeds, rows as eval runs or search stages, columns as measurements, claims
with their noise rule); ``longctx reproduce --only T`` runs the recipe through ``longctx run``,
writes the table's measurements to ``docs/results/T.json`` (committed), and one renderer turns
every spec and its results into docs/REPRODUCTION*.md — setup lines rendered from the recipe,
"pending" where a result is missing."""
