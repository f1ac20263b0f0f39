"""The sample record shared by the synthetic generators (``data``) and the scorers (``eval``).

One record serves both uses of a synthetic long input:
- teacher-forced scoring (LongRoPE2 needle-driven perplexity): feed ``input_ids``, count the
  loss only where ``labels != IGNORE_INDEX`` (the answer tokens);
- generation scoring (passkey, NIAH, RULER-style tasks): feed ``input_ids[:prompt_len]``,
  decode greedily and compare the text with ``answers``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IGNORE_INDEX = -100
"""Label value that no loss counts (the value transformers and torch's cross-entropy ignore)."""


@dataclass(frozen=True)
class SyntheticSample:
    input_ids: list[int]
    """Prompt tokens followed by the answer tokens (BOS first when the tokenizer has one)."""
    labels: list[int]
    """Same length as ``input_ids``; ``IGNORE_INDEX`` everywhere except the answer tokens."""
    prompt_len: int
    """Number of leading tokens that form the prompt; the answer is ``input_ids[prompt_len:]``."""
    answers: tuple[str, ...]
    """Expected answer strings (several for multi-value / multi-query tasks)."""
    task: str
    """Task name, e.g. ``passkey``, ``needle_ppl``, ``niah_single``, ``vt``, ``cwe``."""
    length: int
    """Requested total length in tokens (``len(input_ids) <= length``)."""
    depth: float = 0.0
    """Relative depth(s) of the inserted needle in [0, 1] (first needle when several)."""
    meta: dict = field(default_factory=dict)
    """Task-specific extras (seed, needle keys, all depths, ...) — JSON-serialisable."""

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.input_ids):
            raise ValueError(
                f"SyntheticSample({self.task}): labels has {len(self.labels)} entries, "
                f"input_ids has {len(self.input_ids)}; expected equal lengths"
            )
        if not 0 < self.prompt_len <= len(self.input_ids):
            raise ValueError(
                f"SyntheticSample({self.task}): prompt_len={self.prompt_len} outside 1..{len(self.input_ids)}"
            )
