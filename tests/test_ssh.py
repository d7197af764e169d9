"""What only the ssh backend promises, against a real sshd on 127.0.0.1 (tests/ssh_support.py): one connection per
run, a remote temporary directory per task, host keys checked by default, one-line errors. The shared behaviours
(output, cwd, timeouts, cleanup) are in test_contract.py."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from conftest import clean_environ, make_config, read_jsonl, run_cli, run_prompts, tool_results
from model_server import ScriptedModelServer, per_conversation, reply, tool_call
from ssh_support import accepted_connections, drop_connections, sshd_fixture  # noqa: F401

from environments import (
    EnvError,
    EnvSettings,
    OutputCollector,
    SettingsError,
    SSHEnvironment,
    _ChannelOutput,
    create_environment,
    preflight,
)


def in_task(settings: EnvSettings, commands: list[str], cwd: str | None = None, timeout: float = 20):
    async def scenario():
        env = create_environment(settings, cwd=cwd)
        await env.start()
        try:
            return env.base, [await env.execute(command, timeout) for command in commands]
        finally:
            await env.close()

    return asyncio.run(scenario())


def test_one_connection_serves_every_task_of_a_run(sshd, tmp_path):
    script = per_conversation([reply(None, [tool_call("pwd")]), reply(None, [tool_call("echo second")]), reply("done")])
    before = accepted_connections(sshd)
    with ScriptedModelServer(script) as server:
        config = make_config(server, tmp_path / "out.jsonl", env=sshd.settings(concurrency=4), workers=4)
        outcome, records = run_prompts(config, [f"task {i}" for i in range(8)])
    assert outcome.exit_code == 0 and len(records) == 8
    assert all(r["completed"] for r in records), [r["error"] for r in records]
    directories = {tool_results(r)[0]["content"]["output"].strip() for r in records}
    assert len(directories) == 8 and all(d.startswith("/tmp/mini-swe-task-") for d in directories)
    assert not any(os.path.exists(d) for d in directories)  # each task's remote directory removed at close
    # preflight + 8 tasks x (mktemp + 2 commands + cleanup) on ONE connection, not one handshake per command.
    assert accepted_connections(sshd) - before == 1


def test_a_given_cwd_is_used_and_kept(sshd, tmp_path):
    (tmp_path / "existing").write_text("x")
    base, results = in_task(sshd.settings(), ["pwd; ls; touch made"], cwd=str(tmp_path))
    assert base == str(tmp_path)
    assert results[0].output == f"{tmp_path}\nexisting\n"
    assert (tmp_path / "made").exists() and (tmp_path / "existing").exists()


def test_a_missing_remote_cwd_is_an_env_error(sshd, tmp_path):
    with pytest.raises(EnvError, match="does not exist"):
        in_task(sshd.settings(), ["true"], cwd=str(tmp_path / "nope"))
    with pytest.raises(EnvError, match="not a directory"):
        asyncio.run(preflight(sshd.settings(cwd=str(tmp_path / "nope")), set()))


def test_only_named_variables_and_no_local_secrets_reach_remote_commands(sshd, monkeypatch):
    monkeypatch.setenv("MSR_SSH_VAR", "passed")
    monkeypatch.setenv("MSR_SSH_TOKEN", "tok-local-only-0123456789")
    _, results = in_task(sshd.settings(env_vars=("MSR_SSH_VAR",)), ["env"])
    lines = results[0].output.splitlines()
    assert "MSR_SSH_VAR=passed" in lines and "PAGER=cat" in lines
    assert "tok-local-only-0123456789" not in results[0].output


def test_a_stopped_remote_timeout_is_caught_by_the_client_guard(sshd):
    marker = f"sleep 9{os.getpid() % 100000:05d}"
    started = time.monotonic()
    _, [frozen] = in_task(sshd.settings(), [f"kill -STOP $PPID; {marker}"], timeout=1)
    elapsed = time.monotonic() - started
    assert frozen.exit_code == 124 and frozen.error
    assert elapsed < 1 + 6 + 10
    deadline = time.monotonic() + 5
    while subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the remote command outlived its timeout"
        time.sleep(0.1)


def test_an_unknown_host_key_is_refused_by_default(sshd, tmp_path, monkeypatch):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(EnvError) as caught:
        asyncio.run(preflight(sshd.settings(ssh_known_hosts=str(empty)), set()))
    assert "not trusted" in str(caught.value) and "\n" not in str(caught.value)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/known_hosts at all: still checked, still refused
    with pytest.raises(EnvError, match="not trusted"):
        asyncio.run(preflight(sshd.settings(ssh_known_hosts=None), set()))


def test_a_wrong_key_is_a_one_line_error(sshd, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    with pytest.raises(EnvError) as caught:
        asyncio.run(preflight(sshd.settings(ssh_key=str(other)), set()))
    assert "refused" in str(caught.value) and "--ssh_key" in str(caught.value) and "\n" not in str(caught.value)


def test_nothing_listening_is_a_one_line_error(sshd):
    settings = EnvSettings(env_type="ssh", ssh_host="127.0.0.1:1", ssh_key=sshd.key, ssh_known_hosts=sshd.known_hosts)
    with pytest.raises(EnvError) as caught:
        asyncio.run(preflight(settings, set()))
    assert "cannot connect to 127.0.0.1:1" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({}, "needs --ssh_host"),
        ({"ssh_host": "user@host:0"}, "not [user@]host[:port]"),
        ({"ssh_host": "a b"}, "not [user@]host[:port]"),
        ({"ssh_host": "h", "ssh_key": "/no/such/key"}, "--ssh_key /no/such/key: no such file"),
    ],
)
def test_bad_ssh_settings_are_refused_when_built(overrides, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        EnvSettings(env_type="ssh", **overrides)


@pytest.mark.parametrize(
    "value, parsed",
    [("h", (None, "h", 22)), ("u@h:2222", ("u", "h", 2222)), ("[::1]:2200", (None, "::1", 2200))],
)
def test_ssh_host_forms(value, parsed):
    from environments import parse_ssh_host

    assert parse_ssh_host(value) == parsed


def test_the_cli_runs_a_task_over_ssh(sshd, tmp_path):
    script = per_conversation([reply(None, [tool_call("pwd; hostname")]), reply("done")])
    with ScriptedModelServer(script) as server:
        args = ["--task", "t", "--env", "ssh", "--ssh_host", sshd.host, "--ssh_key", sshd.key]
        args += ["--ssh_known_hosts", sshd.known_hosts, "--base_url", server.base_url, "--model", "m"]
        result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [record] = read_jsonl(tmp_path / "trajectories.jsonl")
    output = tool_results(record)[0]["content"]["output"]
    assert output.startswith("/tmp/mini-swe-task-")
    assert record["metadata"]["env_type"] == "ssh" and record["completed"]


def test_without_asyncssh_the_cli_names_the_extra(sshd, tmp_path):
    # asyncssh made unimportable in that process only: what a user without the extra sees.
    code = (
        "import sys; sys.modules['asyncssh'] = None; import mini_swe_runner; "
        f"sys.argv = ['mini-swe-runner'] + {sys.argv[:0]!r} + sys.argv[1:]; mini_swe_runner.cli()"
    )
    with ScriptedModelServer(per_conversation([reply("done")])) as server:
        args = ["--task", "t", "--env", "ssh", "--ssh_host", sshd.host, "--base_url", server.base_url]
        result = subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=tmp_path,
            env=clean_environ(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "mini-swe-runner: --env ssh needs the asyncssh package: pip install 'mini-swe-runner[ssh]'"
    ]


def test_the_backend_is_registered_under_its_name():
    from environments import BACKENDS

    assert BACKENDS["ssh"] is SSHEnvironment and not SSHEnvironment.uses_image


def gone_within(marker: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_nothing_a_task_starts_on_the_remote_outlives_it(sshd):
    # setsid and a double fork leave the command's process group: the task's token in their environment does not.
    sleeps = [f"sleep 5{os.getpid() % 100000:05d}", f"sleep 6{os.getpid() % 100000:05d}"]
    command = f"setsid {sleeps[0]} >/dev/null 2>&1 & (setsid bash -c '{sleeps[1]} & ' >/dev/null 2>&1 &); sleep 0.3"
    count = "; ".join(f"pgrep -xf '{sleep}'" for sleep in sleeps)
    _, [result] = in_task(sshd.settings(), [f"{command}; {{ {count}; }} | wc -l"])
    assert result.output.strip() == "2", result.output  # both ran
    assert gone_within(sleeps[0], 5) and gone_within(sleeps[1], 5)


RUNNER_DIES = """
import asyncio, os, signal, sys
from environments import EnvSettings, SSHEnvironment

async def main():
    env = SSHEnvironment(EnvSettings(**{settings!r}))
    await env.start()
    print(env.base, flush=True)
    task = asyncio.ensure_future(env.execute("setsid {sleep} >/dev/null 2>&1 & sleep 30", 1))
    await asyncio.sleep(2.5)  # past the command's timeout: the remote `timeout` ended it, the setsid child runs on
    os.kill(os.getpid(), signal.SIGKILL)  # the runner dies without any cleanup

asyncio.run(main())
"""


def test_a_runner_killed_with_sigkill_leaves_nothing_on_the_remote(sshd):
    sleep = f"sleep 4{os.getpid() % 100000:05d}"
    settings = dict(env_type="ssh", ssh_host=sshd.host, ssh_key=sshd.key, ssh_known_hosts=sshd.known_hosts)
    settings["startup_timeout"] = 1.0  # the watchdog waits 1 + 5 s for a reconnection before it cleans up
    child = subprocess.run(
        [sys.executable, "-P", "-c", RUNNER_DIES.format(settings=settings, sleep=sleep)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    base = child.stdout.strip()
    assert child.returncode == -9 and base.startswith("/tmp/mini-swe-task-"), child.stderr
    assert subprocess.run(["pgrep", "-f", sleep], capture_output=True).returncode == 0  # outlived its command
    assert gone_within(sleep, 15), "the remote watchdog did not kill what the task left"
    deadline = time.monotonic() + 5
    while os.path.exists(base):  # removed right after
        assert time.monotonic() < deadline, f"{base} left behind"
        time.sleep(0.05)


def test_a_dropped_connection_is_reestablished_and_the_tasks_go_on(sshd):
    before = accepted_connections(sshd)
    started = []

    async def task(settings, number):
        env = create_environment(settings)
        await env.start()
        try:
            results = [await env.execute(f"echo state-{number} > kept", 10)]
            started.append(number)
            results.append(await env.execute("sleep 3; echo never", 10))  # the connection drops under this one
            results.append(await env.execute("cat kept", 10))
            return results
        finally:
            await env.close()

    async def scenario():
        settings = sshd.settings(startup_timeout=20)
        tasks = [asyncio.ensure_future(task(settings, number)) for number in range(6)]
        while len(started) < 6:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1)  # every task in its `sleep 3`
        assert await asyncio.to_thread(drop_connections, sshd) >= 1
        return await asyncio.gather(*tasks)

    outcomes = asyncio.run(scenario())
    for number, (first, cut, after) in enumerate(outcomes):
        assert first.ok
        assert cut.exit_code == -1 and "dropped during this command" in cut.error and "never" not in cut.output
        assert after.ok and after.output == f"state-{number}\n"  # the task's remote state survived, and went on
    assert accepted_connections(sshd) - before == 2  # the first one, and one reconnection shared by every task
    assert gone_within("sleep 3; echo never", 5)  # the cut commands were stopped


def test_a_task_whose_remote_state_went_with_the_connection_is_an_env_error(sshd):
    # The remote directory removed while the connection was down: only that task is lost.
    async def scenario():
        env = create_environment(sshd.settings(startup_timeout=5))
        await env.start()
        try:
            await env.execute("true", 10)
            drop_connections(sshd)
            subprocess.run(["rm", "-rf", env.base], check=True)
            await asyncio.sleep(0.5)
            return await env.execute("echo hi", 10)
        finally:
            await env.close()

    started = time.monotonic()
    try:
        asyncio.run(scenario())
    except EnvError as exc:
        message = str(exc)
    else:
        message = ""
    assert time.monotonic() - started < 20
    assert "was lost, and with it the task's directory" in message, message


def test_a_batch_of_twelve_tasks_survives_a_dropped_connection(sshd, tmp_path):
    # The run: 12 tasks running, the connection killed under them; none may end as env_error.
    sleep = f"sleep 5.{os.getpid() % 1000:03d}"
    script = per_conversation(
        [
            reply(None, [tool_call("pwd > kept")]),
            reply(None, [tool_call(f"{sleep}; echo slept")]),
            reply(None, [tool_call("cat kept; pwd")]),
            reply("done"),
        ]
    )

    def drop_when_sleeping() -> None:  # once at least 4 tasks are in their sleep
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = subprocess.run(["pgrep", "-xf", sleep], capture_output=True, text=True).stdout.split()
            if len(found) >= 4:
                drop_connections(sshd)
                return
            time.sleep(0.05)

    with ScriptedModelServer(script) as server:
        config = make_config(
            server, tmp_path / "out.jsonl", env=sshd.settings(concurrency=12, startup_timeout=20), workers=12
        )
        dropper = threading.Thread(target=drop_when_sleeping)
        dropper.start()
        try:
            outcome, records = run_prompts(config, [f"task {i}" for i in range(12)])
        finally:
            dropper.join()
    assert len(records) == 12
    assert all(r["completed"] for r in records), [(r["error"], len(tool_results(r))) for r in records]
    cut = 0
    for record in records:
        results = [result["content"] for result in tool_results(record)]
        assert len(results) == 3
        for result in results:
            assert result["exit_code"] == 0 or "dropped during this command" in result["error"], result
        cut += sum(1 for result in results if result["exit_code"] != 0)
        if results[0]["exit_code"] == 0 and results[2]["exit_code"] == 0:  # (not themselves cut short)
            kept, here = results[2]["output"].split()[-2:]  # (after what a remote .bashrc may print)
            assert kept == here  # the task's remote directory survived and the task went on in it
    assert cut >= 4  # the drop did cut commands short
    assert outcome.exit_code == 0


@pytest.mark.parametrize(
    "chunks",
    [
        [b"MSR-PGID 4242\n", b"err\n"],
        [b"pyenv: cannot rehash: /root/.pyenv/shims isn't writable\n", b"MSR-PGID 4242\nerr\n"],
        [b"noise without a newline yet", b"\nMSR-PG", b"ID 4242\ne", b"rr\n"],
    ],
    ids=["clean", "login-shell-noise", "split-anywhere"],
)
def test_the_remote_login_shells_noise_is_not_the_commands_output(chunks):
    """A remote ~/.bashrc that complains on stderr before the command starts (pyenv under load) once made its line
    read as the command's process group and its noise part of the output."""

    async def scenario():
        collector = OutputCollector(10_000)
        output = _ChannelOutput(collector)
        output.data_received(b"out\n", None)
        for chunk in chunks:
            output.data_received(chunk, 1)
        output.exit_status_received(0)
        return output.pgid, collector.text()

    assert asyncio.run(scenario()) == (4242, "out\nerr\n")


def test_a_shell_that_fails_before_the_marker_still_says_why():
    async def scenario():
        collector = OutputCollector(10_000)
        output = _ChannelOutput(collector)
        output.data_received(b"bash: /etc/profile: Permission denied\n", 1)
        output.exit_status_received(126)
        return output.pgid, collector.text()

    assert asyncio.run(scenario()) == (0, "bash: /etc/profile: Permission denied\n")
