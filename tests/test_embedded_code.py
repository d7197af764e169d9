"""Code kept in strings is linted like the modules around it: Python by ruff, shell by its shell's parser.

The local backend ships its supervisor and zygote as source text (into the zygote, into a bwrap sandbox), so they
are strings in environments.py, out of sight of the linter that checks the modules. Here each is compiled by this
interpreter (the one the runner starts them with) and checked by ruff; any finding fails. The report page's
HTML/CSS/JS is checked in tests/test_report.py (it needs the browser those tests drive).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import environments

EMBEDDED_PYTHON = {
    # name: (the text exactly as shipped, how it is run)
    "supervisor": environments.SUPERVISOR_SCRIPT,  # bwrap: `python -I -S -c CODE_FROM_STDIN`; also exec'd by the zygote
    "zygote": environments.ZYGOTE_SOURCE,  # the zygote's source, the supervisor's ahead of it
    "code-from-stdin": environments.CODE_FROM_STDIN,  # the `-c` stub both start with
}

# Defects, not layout: pyflakes (undefined and unused names, ...), syntax errors, bugbear's likely bugs and pylint's
# errors. The scripts' compact style (several imports on a line, short statements joined by ";") is deliberate:
# they are read from a pipe at every start, and these rules do not judge it.
RULES = "F,E9,B,PLE"


def ruff() -> list[str]:
    """The ruff the test extra installs, beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).with_name("ruff")
    found = str(beside) if beside.exists() else shutil.which("ruff")
    if found is None:
        pytest.fail("ruff is missing: it is in the test extra (pip install '.[test]')", pytrace=False)
    return [found]


def lint(name: str, source: str) -> str:
    """ruff's findings on ``source`` (empty when none), with our line length and Python version."""
    result = subprocess.run(
        [*ruff(), "check", "--isolated", "--no-cache", "--select", RULES, "--line-length", "120",
         "--target-version", "py311", "--output-format", "concise", "--stdin-filename", f"{name}.py", "-"],
        input=source,
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr  # 2: ruff itself failed
    return result.stdout.strip() if result.returncode else ""


@pytest.mark.parametrize("name", sorted(EMBEDDED_PYTHON))
def test_embedded_python_compiles_and_has_no_lint_finding(name):
    source = EMBEDDED_PYTHON[name]
    compile(source, f"<{name}>", "exec")  # a SyntaxError fails the test with its line
    assert lint(name, source) == ""


def test_the_lint_finds_a_defect():
    # The check itself must be able to fail: an undefined name in a copy of the supervisor is reported.
    broken = environments.SUPERVISOR_SCRIPT.replace("kill_until_gone(lambda", "kill_until_gonne(lambda", 1)
    assert broken != environments.SUPERVISOR_SCRIPT
    assert "F821" in lint("supervisor", broken)


# Shell kept in strings: each with the shell that runs it. `-n` parses without running; a parse error is what a
# quoting slip in one of these strings becomes, and it would only show when that path runs (a timeout, a lost ssh
# connection).
EMBEDDED_SHELL = {
    "wrapper": ("bash", environments._WRAPPER_SCRIPT),  # every command of every backend
    "end-task-processes": ("bash", environments._END_TASK_PROCESSES_SCRIPT),  # before a verifier (Modal, ssh)
    "bwrap-owner": ("sh", environments._BWRAP_OWNER_SCRIPT),  # bwrap's argv runs it under sh
    "ssh-watchdog": ("bash", environments._SSH_WATCHDOG_SCRIPT),  # the remote watchdog
    "ssh-reap": ("sh", environments._remote_reap("0" * 24)),  # the remote task's end, in the user's login shell
}


def shell_parse_errors(shell: str, text: str) -> str:
    result = subprocess.run([shell, "-n", "-c", text], capture_output=True, text=True, timeout=30)
    return "" if result.returncode == 0 and not result.stderr else f"{result.returncode}: {result.stderr.strip()}"


@pytest.mark.parametrize("name", sorted(EMBEDDED_SHELL))
def test_embedded_shell_parses(name):
    shell, text = EMBEDDED_SHELL[name]
    assert shell_parse_errors(shell, text) == ""


def test_the_shell_parse_check_finds_a_defect():
    # A quoting slip of the kind a Python string invites: the watchdog with one closing quote dropped.
    broken = environments._SSH_WATCHDOG_SCRIPT.replace('"$mark.$$"', '"$mark.$$', 1)
    assert broken != environments._SSH_WATCHDOG_SCRIPT
    assert shell_parse_errors("bash", broken) != ""
