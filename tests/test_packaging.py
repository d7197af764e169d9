"""How the package is installed and found: the suite runs against the installed package, and another distribution's
top-level module named like ours (PyPI has ``trajectory`` and ``report``) is refused in one line, never imported
quietly in place of ours."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from importlib.metadata import distribution
from pathlib import Path

import pytest
from conftest import ROOT, RUNNER, clean_environ

import environments
import mini_swe_runner
import report
import trajectory

OUR_MODULES = (mini_swe_runner, environments, trajectory, report)


def test_the_suite_runs_against_the_installed_package():
    # scripts/test installs the checkout (not editable) before every run and says so in MSR_TEST_INSTALLED; by hand,
    # an editable install (pip install -e) is fine, and this test has nothing to check.
    direct_url = json.loads(distribution("mini-swe-runner").read_text("direct_url.json") or "{}")
    if direct_url.get("dir_info", {}).get("editable") and os.environ.get("MSR_TEST_INSTALLED") != "1":
        pytest.skip("an editable install (pip install -e) imports the checkout: bash scripts/test runs this check")
    site = {Path(sysconfig.get_path(kind)).resolve() for kind in ("purelib", "platlib")}
    for module in OUR_MODULES:
        installed = Path(module.__file__).resolve()
        assert installed.parent in site, f"{module.__name__} imported from {installed}, not from {site}"
        # The install is this checkout as it is now, not an earlier one.
        assert installed.read_bytes() == (ROOT / installed.name).read_bytes(), f"{installed} is stale: reinstall"
    # The CLI the tests run in subprocesses, from the checkout as its working directory, finds the same files.
    names = ", ".join(module.__name__ for module in OUR_MODULES)
    code = f"import {names}; print(*[m.__file__ for m in ({names},)], sep=chr(10))"
    result = subprocess.run(
        [*RUNNER[:2], "-c", code], cwd=ROOT, env=clean_environ(), capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == [module.__file__ for module in OUR_MODULES], result.stderr


def fake_package(root, name: str) -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("VERSION = 'not ours'\n")


@pytest.mark.parametrize("name", ["trajectory", "environments"])
def test_a_module_of_another_package_first_on_the_path_is_refused_in_one_line(tmp_path, name):
    fake_package(tmp_path, name)
    result = subprocess.run(
        [sys.executable, "-c", "import mini_swe_runner"],
        cwd=tmp_path / name,
        env=clean_environ(PYTHONPATH=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"`import {name}` found another package's module" in lines[0], result.stderr
    assert str(tmp_path / name) in lines[0] and f"pip uninstall {name}" in lines[0]


def test_the_report_commands_refuse_another_report_module(tmp_path):
    fake_package(tmp_path, "report")
    code = "import sys; sys.argv = ['mini-swe-runner', 'stats', 'x.jsonl']; import mini_swe_runner as m; m.cli()"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path / "report",
        env=clean_environ(PYTHONPATH=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "`import report` found another package's module" in result.stderr and "Traceback" not in result.stderr


def test_our_own_modules_pass(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "import mini_swe_runner, report; mini_swe_runner.check_own_modules(report)"],
        cwd=tmp_path,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
