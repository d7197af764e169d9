"""Another distribution's top-level module named like ours (PyPI has ``trajectory`` and ``report``) is refused in
one line, never imported quietly in place of ours."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, clean_environ


def fake_package(root, name: str) -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("VERSION = 'not ours'\n")


@pytest.mark.parametrize("name", ["trajectory", "environments"])
def test_a_module_of_another_package_first_on_the_path_is_refused_in_one_line(tmp_path, name):
    fake_package(tmp_path, name)
    result = subprocess.run(
        [sys.executable, "-c", "import mini_swe_runner"],
        cwd=tmp_path / name,
        env=clean_environ(PYTHONPATH=f"{tmp_path}:{ROOT}"),
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
        env=clean_environ(PYTHONPATH=f"{tmp_path}:{ROOT}"),
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
        env=clean_environ(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
