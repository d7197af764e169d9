"""Shared test helpers: run the real CLI in a subprocess, and run batches in-process against the scripted server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
"""The checkout: its README and scripts are read, its modules not imported: scripts/test runs `python -P -m pytest`
against the installed package (tests/test_packaging.py checks). The benchmarks, which import this module too, put
the checkout on sys.path themselves to measure it."""
sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_server import per_conversation, reply, tool_call  # noqa: E402

import mini_swe_runner  # noqa: E402
import trajectory  # noqa: E402
from environments import EnvSettings  # noqa: E402

KEY_VARIABLES = {"MINI_SWE_RUNNER_API_KEY", *mini_swe_runner.PROVIDER_KEY_VARIABLES.values()}
RUNNER = [sys.executable, "-P", "-m", "mini_swe_runner"]
"""The installed CLI in a subprocess: -P keeps the working directory (a checkout, say) off its sys.path."""
FINAL = "echo MINI_SWE_AGENT_FINAL_OUTPUT"
"""The command a scripted model calls to end its task: its output's first line is the final-output marker."""


def clean_environ(**extra: str) -> dict[str, str]:
    """The test process's environment without any model API key, plus ``extra``."""
    environ = {k: v for k, v in os.environ.items() if k not in KEY_VARIABLES}
    environ.update(extra)
    return environ


def run_cli(
    args: list[str],
    *,
    cwd: str | Path | None = None,
    env: dict | None = None,
    timeout: float = 120,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """The real CLI as a user runs it, in a subprocess."""
    return subprocess.run(
        [*RUNNER, *args],
        cwd=cwd,
        env=env if env is not None else clean_environ(),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def start_cli(args: list[str], cwd: str | Path, env: dict | None = None) -> subprocess.Popen:
    """The real CLI in the background, for tests that signal or kill it."""
    return subprocess.Popen(
        [*RUNNER, *args],
        cwd=cwd,
        env=env if env is not None else clean_environ(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def one_line_error(result: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The CLI failed with exit ``code`` and one stderr line, no traceback, holding every needle; returns the line."""
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def processes_running(marker: str) -> list[str]:
    """The command lines of the processes whose command line holds ``marker`` (pgrep itself left out)."""
    found = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout.splitlines()
    return [line for line in found if "pgrep" not in line]


def require_bwrap() -> None:
    """Skip the test when bwrap is missing; fail it instead under CI=true, where scripts/test installs it."""
    if shutil.which("bwrap") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but bwrap is missing (scripts/test installs bubblewrap)", pytrace=False)
        pytest.skip("bwrap is not installed (apt-get install bubblewrap)")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path`` (made here) while the block runs: a file system that fills up. Skips
    the test where mounting is not allowed (not root, no mount namespace rights)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (at the moment of asking)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, timeout: float = 30.0, interval: float = 0.05) -> None:
    """Poll ``condition`` until it is true; fail the test past ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(interval)


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def make_config(server, output_file: str | Path, **overrides) -> mini_swe_runner.RunConfig:
    """A RunConfig for in-process runs: quick retries, quiet, the scripted server as endpoint."""
    env = overrides.pop("env", None) or EnvSettings(max_output_chars=overrides.pop("max_output_chars", 50_000))
    values = dict(
        model="scripted-model",
        base_url=server.base_url,
        api_key="sk-test-key-0123456789",
        output_file=str(output_file),
        retry_initial_delay=0.01,
        retry_max_delay=0.2,
        quiet=True,
        workers=2,
        env=env,
    )
    values.update(overrides)
    return mini_swe_runner.RunConfig(**values)


def run_prompts(config: mini_swe_runner.RunConfig, texts: list[str]) -> tuple[mini_swe_runner.RunOutcome, list[dict]]:
    """Run prompts through the real batch driver; returns the outcome and the records written."""
    prompts = mini_swe_runner.parse_prompt_lines(texts, "test")
    outcome = asyncio.run(mini_swe_runner.run_batch(config, prompts))
    # A run that wrote nothing leaves no output file it created.
    records = read_jsonl(config.output_file) if os.path.isfile(config.output_file) else []
    return outcome, records


def tool_results(record: dict) -> list[dict]:
    """Every tool_response payload in a record, in order."""
    results = []
    for turn in record["conversations"]:
        if turn["from"] == "tool":
            results.extend(trajectory.parse_tool_value(turn["value"]))
    return results


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out.jsonl"


__all__ = [
    "ROOT",
    "RUNNER",
    "check_exactly_once",
    "clean_environ",
    "free_port",
    "run_cli",
    "start_cli",
    "wait_for",
    "write_prompts",
    "read_jsonl",
    "make_config",
    "quick_script",
    "run_prompts",
    "tool_results",
    "trajectory",
]


# ---------------------------------------------------------------------------------------------------------------
# The runner as root and as an unprivileged user (the escape tests run both ways)
# ---------------------------------------------------------------------------------------------------------------

UNPRIVILEGED_ID = 64_999
"""A uid and gid with no account: setpriv needs none, and nothing of the machine's users is touched."""


class RunnerUser:
    """Who the CLI runs as in a test: ``name`` is "root" or "unprivileged"; ``home`` a fresh directory it owns
    (its cwd and output), ``python`` the interpreter it runs on, ``path`` its PYTHONPATH (where it finds the runner
    and its packages, when not in that interpreter's own site-packages), ``run`` the real CLI as that user."""

    def __init__(self, name: str, home: Path, prefix: list[str], python: str = sys.executable, path: str = ""):
        self.name, self.home, self.prefix, self.python, self.path = name, home, prefix, python, path

    def run(self, args: list[str], env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        environ = env if env is not None else clean_environ(HOME=str(self.home))
        if self.path:
            environ["PYTHONPATH"] = self.path
        return subprocess.run(
            [*self.prefix, self.python, "-m", "mini_swe_runner", *args],
            cwd=self.home,
            env=environ,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


def _runtime_distributions() -> list:
    """The installed distributions the runner needs at run time: mini-swe-runner's requirements, with the extras they
    ask for, and theirs in turn (its own extras, the test tools among them, left out)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, tuple] = {}
    pending = [("mini-swe-runner", frozenset())]
    while pending:
        name, extras = pending.pop()
        key = canonicalize_name(name)
        if key in found and extras <= found[key][1]:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:  # only needed on another platform or Python (its marker said so)
            continue
        extras |= found[key][1] if key in found else frozenset()
        found[key] = (dist, extras)
        for text in dist.requires or []:
            requirement = Requirement(text)
            wanted = not requirement.marker or any(requirement.marker.evaluate({"extra": e}) for e in {"", *extras})
            if wanted:
                pending.append((requirement.name, frozenset(requirement.extras)))
    return [dist for key, (dist, _) in found.items() if key != "mini-swe-runner"]


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # same file system: no copy at all
    except OSError:
        shutil.copy2(source, target)


@pytest.fixture(scope="session")
def readable_runner(tmp_path_factory) -> Path:
    """A directory anyone can read holding the runner's modules (those this test process imported) and the packages
    they need: an unprivileged user may not reach the checkout or its venv (a checkout under `mktemp -d`, mode 0700),
    and needs neither with this on its PYTHONPATH."""
    import tempfile

    import environments
    import report

    where = Path(tempfile.mkdtemp(prefix="msr-readable-runner-", dir="/var/tmp"))
    try:
        for module in (mini_swe_runner, environments, trajectory, report):
            _link_or_copy(Path(module.__file__), where / Path(module.__file__).name)
        for dist in _runtime_distributions():
            for file in dist.files or []:
                source = Path(dist.locate_file(file))
                if not file.parts or file.parts[0] == ".." or not source.is_file():  # console scripts, outside
                    continue
                _link_or_copy(source, where / file)
        for directory, _, _ in os.walk(where):  # mkdtemp's 0700 and the umask's choice: made readable
            os.chmod(directory, 0o755)
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(params=["root", "unprivileged"])
def runner_user(request, tmp_path: Path):
    """The CLI run by root, then by an unprivileged user (setpriv to UNPRIVILEGED_ID); a variant this machine
    cannot give (not root: no other user to become; root: nothing to drop to without setpriv) skips with why."""
    import tempfile

    root = os.geteuid() == 0
    if request.param == "root":
        if not root:
            pytest.skip("the runner is not root here: the root case runs on CI (as root)")
        # Not under /tmp (private in a bwrap sandbox): its output file must be in the sandbox's sight.
        home = Path(tempfile.mkdtemp(prefix="msr-root-", dir="/var/tmp"))
        try:
            yield RunnerUser("root", home, [])
        finally:
            shutil.rmtree(home, ignore_errors=True)
        return
    if not root:
        yield RunnerUser("unprivileged", tmp_path, [])
        return
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is missing: cannot run the runner as an unprivileged user")
    # The runner and its packages from a directory the user can read, whatever the mode of the checkout's parents.
    path = str(request.getfixturevalue("readable_runner"))
    # Not under tmp_path: its parents are root's, mode 0700.
    home = Path(tempfile.mkdtemp(prefix="msr-unprivileged-", dir="/var/tmp"))
    os.chown(home, UNPRIVILEGED_ID, UNPRIVILEGED_ID)
    prefix = ["setpriv", f"--reuid={UNPRIVILEGED_ID}", f"--regid={UNPRIVILEGED_ID}", "--clear-groups"]
    # An interpreter of this version the user can run: this one, the one its venv was made from, or the system's
    # (this one may live where the user cannot go: pyenv under /root, mode 0700; a venv under the checkout).
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, os.path.realpath(sys.executable), f"/usr/bin/{version}", f"/usr/local/bin/{version}"]
    for python in dict.fromkeys(candidates):
        check = f"import sys; sys.path[:0] = [{path!r}]; import mini_swe_runner, openai, fire"
        probe = subprocess.run([*prefix, "/bin/sh", "-c", 'exec "$0" -I -c "$1"', python, check], capture_output=True)
        if probe.returncode == 0:
            break
    else:
        shutil.rmtree(home, ignore_errors=True)
        pytest.skip(f"uid {UNPRIVILEGED_ID} can run no Python {version} here ({', '.join(candidates)})")
    try:
        yield RunnerUser("unprivileged", home, prefix, python, path)
    finally:
        shutil.rmtree(home, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Batches of prompts (shared by the batch and resume tests)
# ---------------------------------------------------------------------------------------------------------------


def quick_script() -> object:
    return per_conversation([reply(None, [tool_call("echo step")]), reply("done")])


def write_prompts(path: Path, count: int, duplicate_every: int = 0) -> Path:
    lines = []
    for i in range(count):
        text = "duplicate prompt" if duplicate_every and i % duplicate_every == 0 else f"prompt number {i}"
        lines.append(json.dumps({"prompt": text}))
    path.write_text("\n".join(lines) + "\n")
    return path


def check_exactly_once(records: list[dict], prompts_file: Path) -> None:
    expected = {p.task_id for p in mini_swe_runner.load_prompts(str(prompts_file))}
    ids = [r["task_id"] for r in records]
    assert len(ids) == len(set(ids)), "a task was recorded twice"
    assert set(ids) == expected
    for record in records:
        assert tuple(record) == trajectory.RECORD_KEYS
