"""The one exception type of the data pipeline.

Every bad input (an empty file, undecodable bytes, a missing jsonl field, too few long
documents, an impossible window) raises :class:`DataError` with ONE line that names the
file / field / key and says what was expected, so a user can fix the input without reading
a traceback. It subclasses ``ValueError`` so callers that already catch bad values keep
working.
"""

from __future__ import annotations

from longctx.errors import LongctxError


class DataError(LongctxError, ValueError):
    """A data source, tokenisation, packing or sampling input that cannot be used as given."""

    def __init__(self, message: str) -> None:
        if "\n" in message:
            message = " ".join(part.strip() for part in message.splitlines() if part.strip())
        super().__init__(message)
