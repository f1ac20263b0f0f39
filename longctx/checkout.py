"""Where the longctx checkout is, for the commands that need the repository rather than the
installed package (the reproduction report, the benchmarks, the default recipe): found from the
working directory or a given folder — never from where the package was installed, which in a
regular ``pip install .`` is site-packages and holds no recipes, docs or benchmarks."""

from __future__ import annotations

from pathlib import Path

from longctx.errors import LongctxError


class CheckoutError(LongctxError, FileNotFoundError):
    """No longctx checkout at or above the folder a command was run from."""


def is_checkout(folder: Path) -> bool:
    """True when ``folder`` holds a longctx checkout (pyproject naming it, and ``recipes/``)."""
    pyproject = folder / "pyproject.toml"
    return (
        (folder / "recipes").is_dir()
        and pyproject.is_file()
        and 'name = "longctx"' in pyproject.read_text(errors="replace")
    )


def checkout_root(start: str | Path | None = None, *, purpose: str = "this command") -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) that is a
    longctx checkout; a :class:`CheckoutError` naming ``purpose`` when there is none."""
    here = Path(start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if is_checkout(folder):
            return folder
    raise CheckoutError(
        f"{purpose} works from a checkout of the longctx repository: {here} has none at or above it "
        "(git clone it and run from there, or pass --repo DIR)"
    )
