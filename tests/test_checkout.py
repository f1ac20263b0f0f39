"""The installed package holds the product only; tools that need the repository (the
reproduction report, benchmarks, the default recipe) find the checkout from the working
directory or an argument, never from the package's install location."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from longctx.checkout import CheckoutError, checkout_root
from longctx.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_maps_no_benchmark_or_reproduction_module():
    text = (REPO / "pyproject.toml").read_text()
    packages = re.search(r"^packages = \[(.*?)\]", text, re.M | re.S).group(1)
    package_dir = re.search(r"^package-dir = \{(.*)\}$", text, re.M).group(1)
    assert "benchmarks" not in packages and "benchmarks" not in package_dir
    assert importlib.util.find_spec("longctx.benchmarks") is None  # the editable install agrees


def test_checkout_is_found_from_a_subfolder_and_refused_outside(tmp_path):
    assert checkout_root(REPO / "docs") == REPO
    with pytest.raises(CheckoutError, match=r"longctx reproduce works from a checkout .* --repo DIR"):
        checkout_root(tmp_path, purpose="longctx reproduce")


def test_reproduce_outside_a_checkout_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["reproduce", "--report-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path) in err[0] and "checkout" in err[0]


def test_run_without_a_recipe_outside_a_checkout_names_the_missing_default(tmp_path, monkeypatch, capsys):
    from longctx.train.run import main

    monkeypatch.chdir(tmp_path)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "recipes/tiny.yaml" in err and "Traceback" not in err
