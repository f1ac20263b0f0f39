"""The one base of every error longctx raises for the user to fix (bad recipe, data, spec,
settings, a locked output directory, a non-finite loss): each says, in one line, what was wrong
and where. Commands catch :class:`LongctxError` — no list of types to keep in sync — and print
it as one line (exit 2); anything else is a bug and keeps its traceback.

Each concrete error also derives from the builtin it always was (``ValueError`` or
``RuntimeError``), so callers catching those keep working.
"""

from __future__ import annotations


class LongctxError(Exception):
    """A user error of longctx: ``str(err)`` is the line to print."""
