"""One contract, every backend: the behaviours the agent relies on, run against local, bwrap, docker, ssh (a real
sshd on 127.0.0.1) and modal (through tests/fake_modal.py).

Each backend is described once by a :class:`Backend`: how to make an environment from settings, and how to see
from outside what an environment left behind (processes, directories, containers, sandboxes). Backend-specific
behaviour (hardening, supervisor details, remote connection sharing...) is tested in that backend's own file.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from conftest import processes_running, require_bwrap
from docker_support import TEST_IMAGE, docker_engine, podman, podman_engine, run_containers  # noqa: F401
from ssh_support import sshd_fixture  # noqa: F401

from environments import KILL_GRACE, EnvError, EnvSettings, create_environment

SECRET = "s3cr3t-VALUE-0123456789abcdef"
OMITTED = re.compile(r"\[\.\.\. (\d+) characters omitted \.\.\.\]")


@dataclass
class Backend:
    name: str
    make: Callable[..., object]
    """make(**settings) -> a not-yet-started environment."""
    leftovers: Callable[[object, str], list[str]]
    """leftovers(env, marker) -> what of that environment is still there (processes running ``marker``...)."""


def local_leftovers(env, marker: str) -> list[str]:
    left = processes_running(marker)
    if env.base and env.base.startswith(("/tmp/", os.path.realpath("/tmp") + "/")) and os.path.exists(env.base):
        left.append(f"directory {env.base}")
    return left


def docker_leftovers(env, marker: str) -> list[str]:
    # The engine runs on this machine: a container's processes show in this machine's /proc too.
    return [f"container {name}" for name in run_containers(env.settings.run_id)] + processes_running(marker)


def podman_leftovers(env, marker: str) -> list[str]:
    return [f"container {name}" for name in run_containers(env.settings.run_id, podman())] + processes_running(marker)


@pytest.fixture(params=["local", "bwrap", "docker", "podman", "ssh", "modal"])
def backend(request, tmp_path) -> Backend:
    name = request.param
    if name == "local":
        return Backend(name, lambda **s: create_environment(EnvSettings(**s)), local_leftovers)
    if name == "bwrap":
        require_bwrap()
        return Backend(name, lambda **s: create_environment(EnvSettings(env_type="bwrap", **s)), local_leftovers)
    if name == "docker":
        request.getfixturevalue("docker_engine")

        def make_docker(**s):
            settings = EnvSettings(env_type="docker", image=TEST_IMAGE, pull="never", run_id=secrets.token_hex(4), **s)
            return create_environment(settings)

        return Backend(name, make_docker, docker_leftovers)
    if name == "podman":  # the docker backend against Podman's Docker-compatible service
        request.getfixturevalue("podman_engine")

        def make_podman(**s):
            settings = EnvSettings(env_type="docker", image=TEST_IMAGE, pull="never", run_id=secrets.token_hex(4), **s)
            return create_environment(settings)

        return Backend(name, make_podman, podman_leftovers)
    if name == "ssh":
        server = request.getfixturevalue("sshd")
        return Backend(name, lambda **s: create_environment(server.settings(**s)), local_leftovers)
    from fake_modal import FakeModal

    from environments import ModalEnvironment

    fake = FakeModal(tmp_path / "sandboxes")

    def modal_leftovers(env, marker: str) -> list[str]:
        running = [f"sandbox {s.root}" for s in fake.sandboxes if not s.terminated]
        return running + processes_running(marker)

    return Backend(name, lambda **s: ModalEnvironment(EnvSettings(env_type="modal", **s), sdk=fake), modal_leftovers)


def run_in(backend: Backend, commands: list[str], timeout: float = 20, **settings) -> list:
    async def scenario():
        env = backend.make(**settings)
        await env.start()
        try:
            return [await env.execute(command, timeout) for command in commands]
        finally:
            await env.close()

    return asyncio.run(scenario())


def test_stdout_and_stderr_are_merged_in_order(backend):
    short, long = run_in(
        backend,
        ["echo out1; echo err >&2; echo out2; exit 3", "for i in $(seq 300); do echo out$i; echo err$i >&2; done"],
    )
    assert short.output == "out1\nerr\nout2\n"
    assert short.exit_code == 3 and short.error is None
    assert long.output == "".join(f"out{i}\nerr{i}\n" for i in range(1, 301))


def test_cwd_carries_over_and_a_failed_cd_keeps_it(backend):
    results = run_in(backend, ["mkdir -p sub/dir && cd sub/dir", "pwd", "cd /nonexistent-dir", "pwd; cd ..", "pwd"])
    assert results[0].ok and results[0].output == ""
    first = results[1].output.strip()
    assert first.endswith("/sub/dir") and first.startswith("/")
    assert results[2].exit_code != 0 and "nonexistent-dir" in results[2].output
    assert results[3].output.strip() == first
    assert results[4].output.strip() == first.removesuffix("/dir")


def test_invalid_utf8_is_replaced(backend):
    [result] = run_in(backend, [r"printf 'ok\377\376|\303|end\n'"])
    assert result.output == "ok\ufffd\ufffd|\ufffd|end\n"


def test_long_output_keeps_head_and_tail(backend):
    command = "printf START; head -c 300000 /dev/zero | tr '\\0' x; printf END"
    [result] = run_in(backend, [command], max_output_chars=1000)
    assert result.exit_code == 0
    assert result.output.startswith("START" + "x" * 400) and result.output.endswith("x" * 400 + "END")
    [omitted] = OMITTED.findall(result.output)
    assert int(omitted) == 300_000 + len("STARTEND") - 1000
    assert len(result.output) < 1100


def test_secrets_are_redacted(backend):
    [result] = run_in(backend, [f"echo token={SECRET}; echo {SECRET} >&2"], secret_values=(SECRET,))
    assert result.output == "token=[REDACTED]\n[REDACTED]\n"


def test_timeout_keeps_partial_output_and_kills_the_tree_background_children_included(backend):
    async def scenario():
        env = backend.make()
        await env.start()
        try:
            started = time.monotonic()
            # A background child and a double-forked grandchild would each leave a file after 2 s if they lived.
            timed_out = await env.execute(
                "(sleep 2 && touch child-lived) & ( (sleep 2 && touch grandchild-lived) & ); echo partial; sleep 30", 1
            )
            elapsed = time.monotonic() - started
            await asyncio.sleep(2.5)
            after = await env.execute("ls; echo usable", 20)
            return timed_out, elapsed, after
        finally:
            await env.close()

    timed_out, elapsed, after = asyncio.run(scenario())
    assert timed_out.exit_code == 124
    assert timed_out.output.startswith("partial\n") and "timed out after 1 s" in timed_out.output
    assert timed_out.error and "timed out" in timed_out.error
    assert 1 <= elapsed < 1 + KILL_GRACE + 3
    assert "lived" not in after.output, after.output
    assert after.ok and after.output.endswith("usable\n")


def test_a_quick_exit_124_is_not_a_timeout(backend):
    [result] = run_in(backend, ["echo done; exit 124"], timeout=30)
    assert result.exit_code == 124 and result.error is None and result.output == "done\n"


def test_close_is_idempotent_and_leaves_nothing_behind(backend):
    marker = f"sleep 4{secrets.randbelow(10**6):06d}"

    async def scenario():
        env = backend.make()
        await env.start()
        launched = await env.execute(f"{marker} >/dev/null 2>&1 & echo launched", 20)
        running = backend.leftovers(env, marker)
        await env.close()
        await env.close()
        with pytest.raises(EnvError):
            await env.execute("true", 5)
        return env, launched, running

    env, launched, running = asyncio.run(scenario())
    assert launched.output == "launched\n"
    assert any(marker in line for line in running), running  # the background process really was running...
    deadline = time.monotonic() + 10
    while (left := backend.leftovers(env, marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == []  # ...and close() removed it with everything else


def test_abandon_leaves_nothing_behind(backend):
    marker = f"sleep 5{secrets.randbelow(10**6):06d}"

    async def scenario():
        env = backend.make()
        await env.start()
        await env.execute(f"{marker} >/dev/null 2>&1 &", 20)
        return env

    env = asyncio.run(scenario())  # the loop is gone, as after a second Ctrl-C
    assert any(marker in line for line in backend.leftovers(env, marker))
    env.abandon()
    env.abandon()
    deadline = time.monotonic() + 10
    while (left := backend.leftovers(env, marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == []


def test_help_and_readme_list_every_backend():
    from conftest import ROOT, run_cli

    from environments import BACKENDS

    result = run_cli(["--help"])
    help_text = result.stdout
    readme = (ROOT / "README.md").read_text()
    for name in BACKENDS:
        assert name in help_text.split("--env TEXT", 1)[1].split("--image", 1)[0], name
        assert f"| `{name}` |" in readme, name


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image", "x"], "--image does nothing with --env local: it applies to --env docker or modal only"),
        (["--memory", "2g"], "--memory does nothing with --env local: it applies to --env docker or modal only"),
        (
            ["--volume", "/no/such:/y"],
            "--volume does nothing with --env local: it applies to --env bwrap or docker only",
        ),
        (["--network", "none"], "--network does nothing with --env local: it applies to --env bwrap, docker or modal"),
        (
            ["--env", "bwrap", "--pull", "never"],
            "--pull does nothing with --env bwrap: it applies to --env docker only",
        ),
        (["--env", "ssh", "--ssh_host", "h", "--image", "x"], "--image does nothing with --env ssh"),
        (["--env", "docker", "--ssh_key", "k"], "--ssh_key does nothing with --env docker: it applies to --env ssh"),
        (["--env", "docker", "--image", "Bad Image!"], "--image 'Bad Image!' is not a valid Docker image name"),
        (["--env", "docker", "--image", "UPPER/Case:tag"], "is not a valid Docker image name (repository names are"),
        (["--env", "docker", "--memory", "1k"], "--memory 1k is below Docker's minimum of 6 MB"),
        (["--env", "ssh"], "--env ssh needs --ssh_host"),
    ],
)
def test_flags_the_backend_cannot_use_are_usage_errors(tmp_path, args, message):
    from conftest import run_cli

    result = run_cli(["--task", "t", "--base_url", "http://127.0.0.1:1/v1", *args], cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert message in line
    assert not (tmp_path / "trajectories.jsonl").exists()
