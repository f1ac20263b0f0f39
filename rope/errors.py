"""Errors of the RoPE core: one line, naming the field and what was expected."""

from longctx.errors import LongctxError


class RopeSpecError(LongctxError, ValueError):
    """A RoPE spec or method parameter is invalid (raised before any model work)."""


class RopeExportError(LongctxError, ValueError):
    """A spec cannot be written as a stock Hugging Face config (says why and what to do)."""


class UnsupportedArchitectureError(LongctxError, ValueError):
    """``apply_rope`` was given a model whose rotary embedding we do not know how to replace."""
