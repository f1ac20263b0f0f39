"""The package layering: rope ← data ← eval ← train. A module imports only packages below it
(``rope`` none of data/eval/train, ``data`` none of eval/train, ``eval`` not train), at the top
of the file or inside a function alike."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ORDER = ["rope", "data", "eval", "train"]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n.split(".")[1] for n in names if n.startswith("longctx.") and n.count(".") >= 1}


@pytest.mark.parametrize("package", ORDER[:-1])
def test_a_package_imports_none_above_it(package):
    above = set(ORDER[ORDER.index(package) + 1 :])
    bad = {
        str(path.relative_to(REPO)): sorted(_imports(path) & above)
        for path in sorted((REPO / package).rglob("*.py"))
        if _imports(path) & above
    }
    assert bad == {}


def test_the_check_sees_an_upward_import(tmp_path):
    """Negative control: a lazy ``from longctx.train...`` inside a function is found."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from longctx.train.run import main\n    return main\n")
    assert _imports(module) == {"train"}


def test_no_function_outside_tests_is_longer_than_80_lines():
    long = []
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[0] in ("tests", "outputs") or any(p.startswith(".") for p in rel.parts):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.end_lineno - node.lineno >= 80
            ):
                long.append(f"{rel}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []
