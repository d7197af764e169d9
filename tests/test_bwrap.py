"""What only the bwrap backend promises: a read-only host, one writable directory, a private /tmp, its own PID
namespace, no network with --network none, volumes, and a one-line preflight error when bwrap cannot run.
The shared behaviours (output, cwd, timeouts, cleanup) are in test_contract.py."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, require_bwrap

import environments
from environments import BwrapEnvironment, EnvError, EnvSettings, SettingsError, preflight


@pytest.fixture(autouse=True)
def need_bwrap():
    require_bwrap()


def run_commands(commands: list[str], timeout: float = 20, cwd: str | None = None, **settings) -> tuple[str, list]:
    async def scenario():
        env = BwrapEnvironment(EnvSettings(env_type="bwrap", **settings), cwd=cwd)
        await env.start()
        try:
            return env.base, [await env.execute(command, timeout) for command in commands]
        finally:
            await env.close()

    return asyncio.run(scenario())


def test_host_is_read_only_and_only_the_task_directory_is_writable():
    outside = Path("/var/msr-bwrap-probe")  # not the checkout: CI may clone it under /tmp, private in the sandbox
    home_probe = os.path.expanduser("~/msr-bwrap-probe")
    base, results = run_commands(
        [
            f"touch {outside} 2>&1; touch {home_probe} 2>&1; touch /etc/msr-probe 2>&1; echo done",
            "echo kept > mine.txt && cat mine.txt",
            "echo scratch > /tmp/scratch && ls /tmp",
        ]
    )
    assert results[0].output.count("Read-only file system") == 3, results[0].output
    assert not outside.exists() and not os.path.exists(home_probe) and not os.path.exists("/etc/msr-probe")
    assert results[1].output == "kept\n"
    # A private /tmp: the task's own directory (bound into it) and what the command wrote, nothing of the host's.
    # (plus the mount point of this Python when it lives under /tmp: the supervisor runs on it)
    interpreter = {path.split("/")[2] for path in environments._interpreter_paths_under_tmp()}
    assert sorted(results[2].output.split()) == sorted({os.path.basename(base), "scratch", *interpreter})
    assert not os.path.exists("/tmp/scratch")


def test_a_given_cwd_is_the_writable_place_and_survives(tmp_path):
    (tmp_path / "existing").write_text("x")
    _, results = run_commands(["pwd; ls; touch made"], cwd=str(tmp_path))
    assert results[0].output == f"{tmp_path}\nexisting\n"
    assert (tmp_path / "made").exists() and (tmp_path / "existing").exists()


def test_own_pid_namespace():
    _, results = run_commands(["ls /proc | grep -c '^[0-9]'; echo $$"])
    count, pid = results[0].output.split()
    assert int(count) < 10  # bwrap's init, the supervisor, bash and what it runs; not the host's processes
    assert int(pid) < 100


def test_network_none_cuts_the_network():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    threading.Thread(target=lambda: listener.accept(), daemon=True).start()
    probe = f"timeout 5 bash -c 'echo > /dev/tcp/127.0.0.1/{port}' 2>/dev/null && echo connected || echo refused"
    try:
        _, shared = run_commands([probe])
        _, cut = run_commands([probe + "; tail -n +3 /proc/net/dev | cut -d: -f1"], network="none")
    finally:
        listener.close()
    assert shared[0].output.strip() == "connected"
    assert cut[0].output.split() == ["refused", "lo"]


def test_secret_variables_do_not_reach_commands(monkeypatch):
    monkeypatch.setenv("MSR_BWRAP_TOKEN", "tok-0123456789-never")
    monkeypatch.setenv("MSR_BWRAP_PLAIN", "visible")
    monkeypatch.setenv("MSR_PASSED_SECRET", "passed-on-purpose")
    _, results = run_commands(["env"], pass_env=("MSR_PASSED_SECRET",))
    lines = results[0].output.splitlines()
    assert "MSR_BWRAP_PLAIN=visible" in lines and "MSR_PASSED_SECRET=passed-on-purpose" in lines
    assert "tok-0123456789-never" not in results[0].output


def test_volumes_mount_read_write_and_read_only(tmp_path):
    (tmp_path / "rw").mkdir()
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "data").write_text("given")
    volumes = (f"{tmp_path / 'rw'}:/tmp/rw", f"{tmp_path / 'ro'}:/tmp/ro:ro")
    _, results = run_commands(["echo out > /tmp/rw/result; cat /tmp/ro/data; touch /tmp/ro/x 2>&1"], volumes=volumes)
    assert results[0].output.startswith("given") and "Read-only file system" in results[0].output
    assert (tmp_path / "rw" / "result").read_text() == "out\n"
    assert not (tmp_path / "ro" / "x").exists()


def test_a_volume_target_bwrap_cannot_create_is_a_one_line_preflight_error(tmp_path):
    settings = EnvSettings(env_type="bwrap", volumes=(f"{tmp_path}:/no-such-top-dir/data",))
    with pytest.raises(EnvError, match="must exist on this machine or lie under /tmp"):
        asyncio.run(preflight(settings, set()))


def test_a_sandbox_that_cannot_start_is_a_one_line_env_error(tmp_path):
    # Past preflight (say the target vanished since): the task fails at start with bwrap's own words.
    target = tmp_path / "target"
    target.mkdir()
    env = BwrapEnvironment(EnvSettings(env_type="bwrap", volumes=(f"{tmp_path}:/no-such-top-dir/data",)))
    with pytest.raises(EnvError) as caught:
        asyncio.run(env.start())
    assert "did not start" in str(caught.value) and "\n" not in str(caught.value)


def test_bad_network_value_is_refused_when_the_settings_are_built():
    with pytest.raises(SettingsError, match="--network"):
        EnvSettings(env_type="bwrap", network="my-docker-net")


def test_missing_bwrap_is_a_one_line_preflight_error(monkeypatch, tmp_path):
    os.symlink(shutil.which("bash"), tmp_path / "bash")
    monkeypatch.setenv("PATH", str(tmp_path))  # bash, but no bwrap
    with pytest.raises(EnvError) as caught:
        asyncio.run(preflight(EnvSettings(env_type="bwrap"), set()))
    assert "apt-get install bubblewrap" in str(caught.value) and "\n" not in str(caught.value)


def test_bwrap_that_cannot_make_namespaces_is_a_one_line_preflight_error(monkeypatch, tmp_path):
    # A bwrap that fails the way it does where user namespaces are refused (the message is bwrap's own).
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(EnvError) as caught:
        asyncio.run(preflight(EnvSettings(env_type="bwrap"), set()))
    message = str(caught.value)
    assert "No permissions to creating new namespace" in message and "user namespaces" in message
    assert "\n" not in message


def test_preflight_passes_here():
    asyncio.run(preflight(EnvSettings(env_type="bwrap", network="none"), set()))


def test_the_cli_runs_a_task_in_bwrap(tmp_path):
    from conftest import read_jsonl, run_cli, tool_results
    from model_server import ScriptedModelServer, per_conversation, reply, tool_call

    script = per_conversation([reply(None, [tool_call("touch /etc/msr-cli-probe 2>&1; echo $PPID")]), reply("done")])
    with ScriptedModelServer(script) as server:
        result = run_cli(
            ["--task", "t", "--env", "bwrap", "--network", "none", "--base_url", server.base_url, "--model", "m"],
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr
    [record] = read_jsonl(tmp_path / "trajectories.jsonl")
    output = tool_results(record)[0]["content"]["output"]
    assert "Read-only file system" in output
    assert record["metadata"]["env_type"] == "bwrap" and record["metadata"]["image"] is None


def test_sys_executable_runs_inside(tmp_path):
    # The supervisor is this Python, seen through the read-only bind of /: the venv must be visible in the sandbox.
    check = subprocess.run([sys.executable, "-P", "-c", "print(1)"], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0
    _, results = run_commands([f"{sys.executable} -I -S -c 'print(40 + 2)'"])
    assert results[0].output == "42\n"


def test_a_command_that_kills_its_parent_is_an_error_result_and_the_task_goes_on_in_a_new_sandbox():
    # Its parent is the sandbox's supervisor: that sandbox goes at once, with every process in its PID namespace;
    # the next command gets a new one on the same task directory.
    sleep = f"sleep 9{os.getpid() % 100000:05d}"

    async def scenario():
        env = BwrapEnvironment(EnvSettings(env_type="bwrap"))
        await env.start()
        try:
            commands = ("echo kept > mine.txt", f"kill -KILL $PPID; {sleep}")
            results = [await env.execute(command, 20) for command in commands]
            left = subprocess.run(["pgrep", "-f", sleep], capture_output=True, text=True).stdout
            return results + [await env.execute("cat mine.txt", 20)], left
        finally:
            await env.close()

    results, left = asyncio.run(scenario())
    assert results[1].exit_code == -1 and "killed the process that ran it" in results[1].error
    assert left == ""  # nothing of the dead sandbox runs, before the task's end
    assert results[2].ok and results[2].output == "kept\n"


# What a command tried, as an attacker would, in the issue (#19): each line says what it got.
ESCAPE_SUITE = r"""
grep CapEff /proc/self/status
mount -o remount,rw / 2>/dev/null && echo "remount: DONE" || echo "remount: refused"
for target in /root/msr-escape-probe {venv}/msr-escape-probe; do
  touch "$target" 2>/dev/null && echo "write $target: DONE" || echo "write $target: refused"
done
[ -d {home} ] && echo "output directory: in sight"
echo '{{"forged": true}}' >> {output} 2>/dev/null && echo "append output: DONE" || echo "append output: refused"
{python} -I -S -c '
import glob, socket
for path in ["/var/run/docker.sock", "/run/docker.sock", *glob.glob("/run/**/*.sock", recursive=True)]:
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        print("connect", path, "DONE")
    except OSError as exc:
        print("connect", path, "refused", exc.errno)
'
"""


@pytest.mark.parametrize("network", ["bridge", "none"])
def test_no_escape_as_root_or_as_an_unprivileged_user(runner_user, network):
    from conftest import read_jsonl, tool_results
    from model_server import ScriptedModelServer, per_conversation, reply, tool_call

    output = runner_user.home / "out.jsonl"
    venv = sys.prefix
    suite = ESCAPE_SUITE.format(venv=venv, home=runner_user.home, output=output, python=runner_user.python)
    with ScriptedModelServer(per_conversation([reply(None, [tool_call(suite)]), reply("done")])) as server:
        result = runner_user.run(
            ["--task", "t", "--env", "bwrap", "--network", network, "--output_file", str(output), "--model", "m",
             "--base_url", server.base_url],
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [record] = read_jsonl(output)  # one line: nothing forged was appended
    said = tool_results(record)[0]["content"]["output"]
    assert "CapEff:\t0000000000000000" in said, said
    assert "DONE" not in said, said
    assert "remount: refused" in said and said.count("connect ") >= 2 and "output directory: in sight" in said
    assert not os.path.exists("/root/msr-escape-probe") and not os.path.exists(f"{venv}/msr-escape-probe")


def test_host_sockets_are_hidden_and_network_none_makes_no_unix_socket(tmp_path):
    # A socket of the host outside /run and /tmp, bound by this process (so in the runner's network namespace).
    where = Path("/var/tmp") / f"msr-probe-{os.getpid()}.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(where))
    listener.listen()
    probe = f"""{sys.executable} -I -S -c '
import socket, sys
a, b = socket.socketpair()
print("socketpair ok")
try:
    s = socket.socket(socket.AF_UNIX)
except OSError as exc:
    sys.exit(print("no unix socket", exc.errno))
try:
    s.connect("{where}")
    print("connected")
except OSError as exc:
    print("refused", exc.errno)
'"""
    try:
        _, shared = run_commands([probe])
        _, cut = run_commands([probe], network="none")
    finally:
        listener.close()
        where.unlink()
    assert shared[0].output.split() == ["socketpair", "ok", "refused", "111"]  # /dev/null in its place
    assert cut[0].output.split() == ["socketpair", "ok", "no", "unix", "socket", "13"]


def test_the_private_tmp_is_bounded_by_tmp_size():
    write = "head -c 3000000 /dev/zero 2>/dev/null > /tmp/big; echo $?; df -k --output=size /tmp | tail -1"
    _, bounded = run_commands([write], tmp_size="2m")
    _, default = run_commands(["df -k --output=size /tmp | tail -1"])
    assert bounded[0].output.split() == ["1", "2048"]  # the write failed (no space left), the tmpfs is 2 MiB
    assert default[0].output.strip() == str(1024 * 1024)  # 1g by default
    with pytest.raises(SettingsError, match="--tmp_size"):
        EnvSettings(env_type="bwrap", tmp_size="lots")
    with pytest.raises(SettingsError, match="below 1m"):
        EnvSettings(env_type="bwrap", tmp_size="1k")


RUNNER_DIES = """
import asyncio, os, signal, sys
from environments import BwrapEnvironment, EnvSettings

async def main():
    env = BwrapEnvironment(EnvSettings(env_type="bwrap"))
    await env.start()
    await env.execute("echo x > made; {sleep} &", 10)
    print(env.base, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # the runner dies without any cleanup

asyncio.run(main())
"""


def test_a_runner_killed_with_sigkill_leaves_no_task_directory_and_no_process():
    sleep = f"sleep 6{os.getpid() % 100000:05d}"
    child = subprocess.run(
        [sys.executable, "-P", "-c", RUNNER_DIES.format(sleep=sleep)], capture_output=True, text=True
    )
    base = child.stdout.strip()
    assert child.returncode == -9 and "mini-swe-task-" in base, child.stderr
    deadline = time.monotonic() + 5
    while os.path.exists(base) or subprocess.run(["pgrep", "-f", sleep], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, f"{base} or {sleep} left behind"
        time.sleep(0.05)
