"""The one measurement cache: what a forward pass measured, keyed by what determines it.

A key is the hash of (what was measured, the model's identity, its dtype, the input, the RoPE
the model computes on that input — :func:`rope_fingerprint`: the inverse frequencies of the
factor set in use hashed bit for bit, the attention factor, n̂, DPE's parameters), so two specs
that compute the same rotary share an entry whatever their JSON says, and two that differ in
any bit never do. Used by the search scorer (``eval.scorer``; the search and the readjustment
write ``<stage>/measurements.jsonl``, so a rerun or a resumed search re-scores nothing), by
the eval driver's perplexities (``<eval stage>/measurements.jsonl``), and by the SmolLM2
short-context benchmark.

The file is append-only JSONL, one record per key; a line torn by a kill is dropped and cut
from the file (``rope.files.read_jsonl(repair=True)``), so an interrupted run loses at most the
measurement it was writing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from longctx.rope import RopeSpec
from longctx.rope.files import append_line, read_jsonl
from longctx.rope.install import ANGLE_FP64_FROM


def digest(data) -> str:
    """32 hex digits of the SHA-256 of ``data`` as canonical JSON."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def rope_fingerprint(spec: RopeSpec, length: int, factor_set: str | None = None) -> dict:
    """What the installed RoPE computes at ``length``: the short set at ≤ L, the long set above
    (``factor_set`` "short"/"long" forces one, as a scorer does), inverse frequencies hashed bit
    for bit, the attention factor, n̂ where the long set applies, DPE's parameters."""
    use_long = length > spec.original_length if factor_set is None else factor_set == "long"
    freqs = spec.frequencies(seq_len=length) if spec.method == "dynamic" else spec.frequencies()
    inv = (freqs.long_inv_freq if use_long else freqs.short_inv_freq).detach().to("cpu", torch.float32)
    out = {
        "set": "long" if use_long else "short",
        "inv_freq": hashlib.sha256(inv.contiguous().numpy().tobytes()).hexdigest()[:32],
        "attention_factor": float(freqs.long_attention_factor if use_long else freqs.short_attention_factor),
    }
    if use_long and spec.n_hat:
        out["n_hat"] = spec.n_hat
    if spec.method == "dpe":
        out["dpe"] = json.loads(json.dumps(spec.params, default=list))
    if max(spec.target_length, spec.original_length) > ANGLE_FP64_FROM:
        out["angles"] = "float64"
    return out


@torch.no_grad()
def model_fingerprint(model: torch.nn.Module) -> str:
    """The model's identity: its config, dtype and a digest of every weight (sum, sum of
    squares — reduced in float64 without a float64 copy of the tensor — and its first values).

    Remembered on the model until a parameter is replaced or modified in place (its tensor's
    version counter moves), so the several scorers of one stage pass over the weights once."""
    params = list(model.named_parameters())
    state = tuple((id(p), p.data_ptr(), p._version) for _, p in params)
    memo = getattr(model, "_longctx_fingerprint", None)
    if memo is not None and memo[0] == state:
        return memo[1]
    config = getattr(model, "config", None)
    parts = {"class": type(model).__name__, "config": config.to_dict() if config is not None else None}
    weights = []
    for name, p in params:
        flat = p.detach().reshape(-1)
        norm = float(torch.linalg.vector_norm(flat, dtype=torch.float64))
        weights.append([name, str(p.dtype), list(p.shape), float(flat.sum(dtype=torch.float64)),
                        norm * norm, flat[:4].float().cpu().tolist()])  # fmt: skip
    parts["weights"] = weights
    found = digest(parts)
    model._longctx_fingerprint = (state, found)
    return found


def inputs_fingerprint(samples: Sequence) -> str:
    """The inputs' identity: every token row (and the labels of labelled samples)."""
    rows = []
    for s in samples:
        if hasattr(s, "input_ids"):
            rows.append([list(s.input_ids), list(s.labels)])
        else:
            rows.append(list(s))
    return digest(rows)


class MeasurementCache:
    """``get(key) -> record | None`` / ``put(key, record)``, in memory, and in an append-only JSONL
    file when ``path`` is given (read back on creation)."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.records: dict[str, dict] = {}
        if self.path is not None:
            self.records = dict(read_jsonl(self.path, lambda rec: (rec["key"], rec), repair=True))
        self.computed = 0
        """Measurements this process computed (the rest were answered from the cache)."""

    @staticmethod
    def key(**parts) -> str:
        return digest(parts)

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def put(self, key: str, record: dict) -> dict:
        record = {**record, "key": key}
        if self.path is not None:
            append_line(self.path, json.dumps(record, sort_keys=True))
        self.records[key] = record
        self.computed += 1
        return record

    def seconds(self) -> float:
        return sum(r.get("seconds", 0.0) for r in self.records.values())
