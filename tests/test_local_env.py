"""LocalEnvironment through its interface: real bash, real files, real processes.

Each test drives the coroutine interface with asyncio.run (no pytest plugin needed).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, processes_running

from environments import (
    EnvError,
    EnvSettings,
    ExecResult,
    LocalEnvironment,
    OutputCollector,
    truncate_text,
)

OMITTED = re.compile(r"(\d+) characters omitted")


def run_commands(commands: list[str], settings: EnvSettings | None = None, timeout: float = 10) -> list[ExecResult]:
    """Run ``commands`` one after another in one fresh environment, closing it afterwards."""

    async def scenario() -> list[ExecResult]:
        env = LocalEnvironment(settings or EnvSettings())
        await env.start()
        try:
            return [await env.execute(command, timeout) for command in commands]
        finally:
            await env.close()

    return asyncio.run(scenario())


def run_one(command: str, settings: EnvSettings | None = None, timeout: float = 10) -> ExecResult:
    return run_commands([command], settings, timeout)[0]


def omitted_count(output: str) -> int:
    counts = OMITTED.findall(output)
    assert len(counts) == 1, f"expected exactly one truncation marker in {output[:200]!r}..."
    return int(counts[0])


def is_alive(pid: int) -> bool:
    """True while ``pid`` is a running process; a zombie (killed, not yet reaped by init) counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def wait_until_dead(pids: list[int], within: float = 3.0) -> list[int]:
    """The pids still alive after ``within`` seconds (SIGKILL is asynchronous; it lands within milliseconds)."""
    deadline = time.monotonic() + within
    while True:
        alive = [pid for pid in pids if is_alive(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


def live_members_of_group(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


# ---------------------------------------------------------------------------------------------------------------
# Working directory
# ---------------------------------------------------------------------------------------------------------------


def test_fixed_start_dir_is_used_and_not_deleted(tmp_path):
    (tmp_path / "existing.txt").write_text("keep me")
    results = run_commands(["pwd", "ls", "touch made-by-agent"], EnvSettings(cwd=str(tmp_path)))
    assert results[0].output == f"{tmp_path}\n"
    assert results[1].output == "existing.txt\n"
    # close() removed only what it created: the user's directory and everything in it stay.
    assert (tmp_path / "existing.txt").read_text() == "keep me"
    assert (tmp_path / "made-by-agent").exists()


def test_the_task_cwd_overrides_the_run_cwd(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "task").mkdir()

    async def scenario():
        env = LocalEnvironment(EnvSettings(cwd=str(tmp_path / "run")), cwd=str(tmp_path / "task"))
        await env.start()
        try:
            return await env.execute("pwd", 10)
        finally:
            await env.close()

    assert asyncio.run(scenario()).output == f"{tmp_path / 'task'}\n"


def test_missing_cwd_raises_env_error(tmp_path):
    missing = tmp_path / "does-not-exist"
    env = LocalEnvironment(EnvSettings(cwd=str(missing)))
    with pytest.raises(EnvError, match="does not exist"):
        asyncio.run(env.start())
    with pytest.raises(EnvError):  # execute() starts a not-started environment, and fails the same way
        asyncio.run(env.execute("pwd", 10))
    assert not missing.exists()


# ---------------------------------------------------------------------------------------------------------------
# Exit codes, merged output, stdin
# ---------------------------------------------------------------------------------------------------------------


def test_exit_codes_are_reported():
    results = run_commands(["true", "false", "exit 3", "(exit 42)", "bash -c 'kill -9 $$'"])
    assert [r.exit_code for r in results] == [0, 1, 3, 42, 137]
    assert [r.ok for r in results] == [True, False, False, False, False]
    assert all(r.error is None for r in results)


STDIN_CHILD = """
import asyncio, json
from environments import EnvSettings, LocalEnvironment

async def main():
    env = LocalEnvironment(EnvSettings())
    await env.start()
    try:
        results = [await env.execute(command, 5) for command in ("cat", "read line; echo read-status=$?")]
    finally:
        await env.close()
    print(json.dumps([[r.output, r.exit_code] for r in results]))

asyncio.run(main())
"""


def test_stdin_is_closed():
    # The runner's own stdin is an open pipe with data waiting: a command must neither read it nor wait on it.
    # (Under pytest fd 0 is /dev/null, so the check needs a child process with a real stdin.)
    child = subprocess.Popen(
        [sys.executable, "-P", "-c", STDIN_CHILD], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        child.stdin.write(b"RUNNER-STDIN-DATA\n")
        child.stdin.flush()
        started = time.monotonic()
        stdout = child.stdout.read()
        elapsed = time.monotonic() - started
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
        child.wait()
    assert json.loads(stdout) == [["", 0], ["read-status=1\n", 0]]
    assert elapsed < 5  # no command waited for its 5 s timeout


def test_exit_still_reports_the_cwd():
    async def scenario():
        env = LocalEnvironment(EnvSettings())
        await env.start()
        try:
            failed = await env.execute("mkdir -p sub && cd sub && echo leaving && exit 3", 10)
            cwd_after = env.cwd
            pwd = await env.execute("pwd", 10)
            return env.base, failed, cwd_after, pwd
        finally:
            await env.close()

    base, failed, cwd_after, pwd = asyncio.run(scenario())
    assert failed.exit_code == 3
    assert failed.output == "leaving\n"  # and no trace of the cwd report
    assert cwd_after == f"{base}/sub"
    assert pwd.output == f"{base}/sub\n"


# ---------------------------------------------------------------------------------------------------------------
# Timeouts and leftover processes
# ---------------------------------------------------------------------------------------------------------------


def test_timeout_with_no_output_still_says_so():
    result = run_one("sleep 30", timeout=0.5)
    assert result.exit_code == 124
    assert "timed out" in result.output
    assert not result.ok


# ---------------------------------------------------------------------------------------------------------------
# Output: truncation, decoding
# ---------------------------------------------------------------------------------------------------------------

BIG_OUTPUT_CHILD = """
import asyncio, json, re
from environments import EnvSettings, LocalEnvironment

async def main():
    env = LocalEnvironment(EnvSettings(max_output_chars=1000))
    await env.start()
    try:
        result = await env.execute("printf START; head -c 100000000 /dev/zero | tr '\\\\0' x; printf END", 120)
    finally:
        await env.close()
    # Peak RSS of this process's own memory. Not getrusage().ru_maxrss: Linux carries that across execve, so
    # a child spawned by a big pytest process would report the parent's size.
    with open("/proc/self/status") as status:
        peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1))
    print(json.dumps({"output": result.output, "exit_code": result.exit_code, "peak_rss_kb": peak_kb}))

asyncio.run(main())
"""


def test_100_mb_of_output_is_truncated_in_bounded_memory():
    completed = subprocess.run(
        [sys.executable, "-P", "-c", BIG_OUTPUT_CHILD], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(completed.stdout)
    output = report["output"]
    assert report["exit_code"] == 0
    assert output.startswith("START" + "x" * 400)
    assert output.endswith("x" * 400 + "END")
    shown = output.count("x") + len("START") + len("END")
    assert shown == 1000
    assert omitted_count(output) == 100_000_000 + len("STARTEND") - shown
    assert len(output) < 1100
    assert report["peak_rss_kb"] < 150 * 1024, f"peak RSS {report['peak_rss_kb']} KB for 100 MB of output"


@pytest.mark.parametrize("char", ["é", "€", "😀"])
@pytest.mark.parametrize("count", [1_500, 20_000])  # within the collector's buffers, and far beyond them
def test_truncation_counts_multibyte_characters(char, count):
    result = run_one(f"printf '{char}%.0s' $(seq {count})", EnvSettings(max_output_chars=1000))
    assert result.exit_code == 0
    assert "\ufffd" not in result.output  # no character cut in half
    shown = result.output.count(char)
    assert shown == 1000
    assert omitted_count(result.output) == count - shown
    head, _, tail = result.output.partition("\n\n[")
    assert head == char * 500 and tail.endswith("\n\n" + char * 500)


def test_output_at_exactly_the_limit_is_untouched():
    exact, over = run_commands(
        ["head -c 1000 /dev/zero | tr '\\0' y", "head -c 1001 /dev/zero | tr '\\0' y"],
        EnvSettings(max_output_chars=1000),
    )
    assert exact.output == "y" * 1000
    assert omitted_count(over.output) == 1


def test_cwd_report_never_leaks_whatever_the_output_size():
    # The wrapper's cwd report is the last line of every command's output. Whatever the output size - also
    # when the report lands where the collector's head buffer ends and its tail begins (4 x the limit in
    # bytes) - it must be taken out of the output and the cwd must carry over.
    limit = 100

    async def scenario():
        env = LocalEnvironment(EnvSettings(max_output_chars=limit))
        await env.start()
        try:
            await env.execute("mkdir sub", 10)
            outcomes = []
            for size in range(4 * limit - 120, 4 * limit + 10, 5):
                env.cwd = env.base
                result = await env.execute(f"cd sub && head -c {size} /dev/zero | tr '\\0' a", 10)
                outcomes.append((size, result.output, env.cwd))
            return env.base, outcomes
        finally:
            await env.close()

    base, outcomes = asyncio.run(scenario())
    for size, output, cwd in outcomes:
        leaked = "__" in output or "mini-swe-task" in output or not output.endswith("a" * (limit // 2))
        assert not leaked, f"cwd report leaked into the output of a {size}-byte command: ...{output[-60:]!r}"
        assert cwd == f"{base}/sub", f"cwd lost after a {size}-byte command"
        assert output.startswith("a" * (limit // 2))
        assert omitted_count(output) == size - limit


# ---------------------------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------------------------


def test_secret_variables_do_not_reach_commands(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-openai-0123456789")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_fakeGithubToken0123456789")
    monkeypatch.setenv("DB_PASSWORD", "fake-db-password-hunter2")
    monkeypatch.setenv("MSR_PLAIN_SETTING", "plain-value-visible")
    monkeypatch.setenv("MSR_PASSED_TOKEN", "passed-through-on-purpose")

    result = run_one("env", EnvSettings(pass_env=("MSR_PASSED_TOKEN",)))

    assert result.exit_code == 0
    for name, value in [
        ("OPENAI_API_KEY", "sk-fake-openai-0123456789"),
        ("GITHUB_TOKEN", "ghp_fakeGithubToken0123456789"),
        ("DB_PASSWORD", "fake-db-password-hunter2"),
    ]:
        assert name not in result.output
        assert value not in result.output
    lines = result.output.splitlines()
    assert "MSR_PLAIN_SETTING=plain-value-visible" in lines
    assert "MSR_PASSED_TOKEN=passed-through-on-purpose" in lines


SECRET = "s3cr3t-VALUE-0123456789abcdef"


def test_secret_cut_by_truncation_is_not_partly_shown():
    # max_output_chars=100 keeps the first 50 characters: the secret starts at 40, so the cut falls inside it.
    settings = EnvSettings(secret_values=(SECRET,), max_output_chars=100)
    result = run_one(f"printf '%040d{SECRET}'; head -c 500 /dev/zero | tr '\\0' b", settings)
    assert omitted_count(result.output) > 0
    assert SECRET[:10] not in result.output, f"part of a secret is visible: {result.output[:60]!r}"


# ---------------------------------------------------------------------------------------------------------------
# truncate_text and OutputCollector
# ---------------------------------------------------------------------------------------------------------------

TEXT = "".join(chr(ord("a") + i % 26) for i in range(1000))


def test_truncate_text_at_the_boundary():
    assert truncate_text(TEXT[:100], 100) == TEXT[:100]
    assert truncate_text("", 100) == ""
    over = truncate_text(TEXT[:101], 100)
    assert over.startswith(TEXT[:50]) and over.endswith(TEXT[51:101])
    assert omitted_count(over) == 1
    far_over = truncate_text(TEXT, 100)
    assert far_over.startswith(TEXT[:50]) and far_over.endswith(TEXT[-50:])
    assert omitted_count(far_over) == 900


def test_truncate_text_counts_characters_not_bytes():
    assert truncate_text("é" * 100, 100) == "é" * 100
    assert omitted_count(truncate_text("日" * 150, 100)) == 50


def feed_in_chunks(collector: OutputCollector, data: bytes, size: int) -> None:
    for start in range(0, len(data), size):
        collector.feed(data[start : start + size])


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_collector_at_the_boundary(chunk_size):
    exact = OutputCollector(100)
    feed_in_chunks(exact, TEXT[:100].encode(), chunk_size)
    assert exact.text() == TEXT[:100]

    over = OutputCollector(100)
    feed_in_chunks(over, TEXT[:101].encode(), chunk_size)
    assert over.text().startswith(TEXT[:50]) and over.text().endswith(TEXT[51:101])
    assert omitted_count(over.text()) == 1

    wide = OutputCollector(100)
    feed_in_chunks(wide, ("😀" * 100).encode(), chunk_size)  # exactly the limit, 4 bytes each
    assert wide.text() == "😀" * 100


@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_collector_keeps_head_and_tail_of_a_long_stream_in_bounded_memory(chunk_size):
    collector = OutputCollector(100)
    data = ("é" + TEXT) * 200  # 1001 characters, 1002 bytes each time
    feed_in_chunks(collector, data.encode(), chunk_size)
    assert len(collector.head) + len(collector.tail) <= 3 * collector.keep_bytes
    text = collector.text()
    assert text.startswith(data[:50]) and text.endswith(data[-50:])
    assert omitted_count(text) == len(data) - 100


# ---------------------------------------------------------------------------------------------------------------
# No way out: commands are not the runner's children, and nothing they start outlives them
# ---------------------------------------------------------------------------------------------------------------


def wait_until_gone(marker: str, within: float = 5.0) -> list[str]:
    deadline = time.monotonic() + within
    while (left := processes_running(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_commands_are_not_the_runners_children_and_their_parent_holds_no_secret(monkeypatch, tmp_path):
    monkeypatch.setenv("MSR_TEST_TOKEN", "tok-never-visible-0123456789")
    (tmp_path / ".env").write_text("OPENAI_API_KEY=sk-from-dotenv-0123456789\n")
    monkeypatch.chdir(tmp_path)  # the runner's cwd, with a .env in it
    [result] = run_commands(
        [
            "echo ppid=$PPID; tr '\\0' '\\n' </proc/$PPID/environ | grep -c TOKEN; "
            "ls /proc/$PPID/cwd/.env 2>&1; grandparent=$(cut -d' ' -f4 /proc/$PPID/stat); echo gp=$grandparent"
        ]
    )
    lines = result.output.splitlines()
    assert lines[0] != f"ppid={os.getpid()}" and lines[0].startswith("ppid=")
    assert lines[1] == "0"  # the process above the command has no secret-looking variable
    assert "No such file" in lines[2]  # and does not sit in the runner's directory
    assert lines[3] != f"gp={os.getpid()}"  # nor is its parent the runner: command -> supervisor -> zygote -> runner


def test_signalling_the_parent_does_not_stop_the_runner():
    results = run_commands(
        ["kill -TERM $PPID; kill -INT $PPID; kill -HUP $PPID; echo still here", "echo next command runs"]
    )
    assert results[0].output == "still here\n" and results[0].exit_code == 0
    assert results[1].output == "next command runs\n"


ESCAPES = {
    "setsid-nohup": "setsid nohup {sleep} >/dev/null 2>&1 &",
    "job-control": "set -m; {sleep} >/dev/null 2>&1 &",
    "setsid": "setsid {sleep} >/dev/null 2>&1 &",
    "double-fork-setsid": "( setsid sh -c '{sleep} >/dev/null 2>&1 &' & )",
}


def time_out_then_look(command: str, timeout: float, marker: str) -> tuple[ExecResult, list[str]]:
    """Run ``command`` into its timeout; what still runs ``marker`` while the task goes on (its end kills all)."""

    async def scenario():
        env = LocalEnvironment(EnvSettings())
        await env.start()
        try:
            result = await env.execute(command, timeout)
            return result, await asyncio.to_thread(wait_until_gone, marker)
        finally:
            await env.close()

    return asyncio.run(scenario())


@pytest.mark.parametrize("escape", ESCAPES, ids=list(ESCAPES))
def test_escaped_background_children_die_at_the_commands_timeout(escape):
    sleep = f"sleep 6{os.getpid() % 1000:03d}{len(escape):03d}"
    command = ESCAPES[escape].format(sleep=sleep) + "\nsleep 0.3; echo launched; sleep 30"
    result, left = time_out_then_look(command, 1.5, sleep)
    assert result.exit_code == 124 and result.output.startswith("launched")
    assert left == []


@pytest.mark.parametrize("escape", ESCAPES, ids=list(ESCAPES))
def test_escaped_background_children_die_at_the_tasks_end(escape):
    sleep = f"sleep 7{os.getpid() % 1000:03d}{len(escape):03d}"

    async def scenario():
        env = LocalEnvironment(EnvSettings())
        await env.start()
        result = await env.execute(ESCAPES[escape].format(sleep=sleep) + "\nsleep 0.3; echo launched", 10)
        running = processes_running(sleep)
        await env.close()
        return result, running

    result, running = asyncio.run(scenario())
    assert result.ok and result.output == "launched\n"
    assert running, "the escaped process should run until the task ends"
    assert wait_until_gone(sleep) == []


RUNNER_DIES_CHILD = """
import asyncio, os, signal, sys
from environments import EnvSettings, LocalEnvironment

async def main():
    env = LocalEnvironment(EnvSettings())
    await env.start()
    await env.execute("setsid nohup {sleep} >/dev/null 2>&1 & sleep 0.3", 10)
    print(env.base, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # the runner dies without any cleanup

asyncio.run(main())
"""


def test_nothing_outlives_a_runner_killed_with_sigkill():
    sleep = f"sleep 8{os.getpid() % 100000:05d}"
    child = subprocess.run(
        [sys.executable, "-P", "-c", RUNNER_DIES_CHILD.replace("{sleep}", sleep)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    base = child.stdout.strip()
    assert child.returncode == -9 and "mini-swe-task-" in base, child.stderr
    assert wait_until_gone(sleep) == []  # the supervisor saw its socket close and killed the task's processes
    deadline = time.monotonic() + 5
    while os.path.exists(base):  # ...and removed the task's temporary directory
        assert time.monotonic() < deadline, f"{base} left behind"
        time.sleep(0.05)


def test_a_command_that_kills_its_parent_is_an_error_result_and_the_task_goes_on():
    server = f"sleep 8{os.getpid() % 100000:05d}"
    sleep = f"sleep 9{os.getpid() % 100000:05d}"

    async def scenario():
        env = LocalEnvironment(EnvSettings())
        await env.start()
        try:
            results = [await env.execute(f"setsid {server} >/dev/null 2>&1 &", 10)]
            results.append(await env.execute(f"kill -KILL $PPID; {sleep}", 10))
            left = await asyncio.to_thread(wait_until_gone, "sleep [89]" + sleep[7:])
            return results + [await env.execute("echo next", 10)], left
        finally:
            await env.close()

    results, left = asyncio.run(scenario())
    assert results[1].exit_code == -1 and "killed the process that ran it" in results[1].error
    # What the dead parent ran goes with it, during the task (an earlier command's server too: it was the parent's).
    assert left == []
    assert results[2].ok and results[2].output == "next\n"


def test_a_later_task_is_served_by_the_same_supervisor_with_nothing_of_the_earlier_task(monkeypatch):
    # The zygote hands an idle supervisor the next task instead of forking one (bench_harness: about 2 ms of CPU per
    # task). What the earlier task started, its directory and its variables must all be gone by then.
    monkeypatch.setenv("MSR_TEST_TOKEN", "tok-of-the-first-task-only")
    first_settings = EnvSettings(pass_env=("MSR_TEST_TOKEN",))
    assert "MSR_TEST_TOKEN" in first_settings.command_environ  # read once per run: now, before the variable goes
    monkeypatch.delenv("MSR_TEST_TOKEN")
    daemon = f"sleep 3{os.getpid() % 100000:05d}"
    show = 'echo "$PPID|$PWD|${MSR_TEST_TOKEN-unset}"'

    async def task(settings: EnvSettings, command: str) -> tuple[str, str]:
        env = LocalEnvironment(settings)
        await env.start()
        try:
            return (await env.execute(command, 10)).output, env.base
        finally:
            await env.close()

    async def scenario():
        first = await task(first_settings, f"setsid nohup {daemon} >/dev/null 2>&1 & {show}")
        left = processes_running(daemon)
        second = await task(EnvSettings(), show)
        return first, left, second

    (first, first_dir), left, (second, second_dir) = asyncio.run(scenario())
    first_parent, first_pwd, first_token = first.strip().split("|")
    second_parent, second_pwd, second_token = second.strip().split("|")
    assert first_token == "tok-of-the-first-task-only" and first_pwd == first_dir
    assert second_parent == first_parent  # the same supervisor...
    assert second_pwd == second_dir != first_dir and second_token == "unset"  # ...with the second task's own setting
    assert left == [] and not os.path.exists(first_dir)  # the first task was clean before its close returned


def test_a_command_that_stops_its_parent_times_out_and_the_task_goes_on():
    sleep = f"sleep 2{os.getpid() % 100000:05d}"
    results = run_commands([f"kill -STOP $PPID; {sleep}", "echo next"], timeout=1)
    assert results[0].exit_code == 124 and "timed out" in results[0].output
    assert results[1].ok and results[1].output == "next\n"
    assert wait_until_gone(sleep) == []


def test_a_background_server_outlives_a_later_commands_timeout_and_dies_at_the_tasks_end():
    server = f"sleep 6{os.getpid() % 100000:05d}"
    plain_daemon = f"sleep 5{os.getpid() % 100000:05d}"
    cleared_daemon = f"sleep 4{os.getpid() % 100000:05d}"

    async def scenario():
        env = LocalEnvironment(EnvSettings())
        await env.start()
        started = await env.execute(
            f"setsid nohup {server} >/dev/null 2>&1 & setsid env -i {cleared_daemon} >/dev/null 2>&1 & echo up", 10
        )
        timed_out = await env.execute(f"setsid nohup {plain_daemon} >/dev/null 2>&1 & sleep 30", 1)
        await asyncio.sleep(0.2)
        running = {name: bool(processes_running(name)) for name in (server, plain_daemon, cleared_daemon)}
        await env.close()
        return started, timed_out, running

    started, timed_out, running = asyncio.run(scenario())
    assert started.ok and timed_out.exit_code == 124
    # Command 1's processes (one with its environment cleared, started before command 2) are not command 2's.
    assert running == {server: True, plain_daemon: False, cleared_daemon: True}
    assert wait_until_gone(server) == [] and wait_until_gone(cleared_daemon) == []


def test_a_daemon_that_cleared_its_environment_dies_at_the_commands_timeout():
    sleep = f"sleep 3{os.getpid() % 100000:05d}"
    escapes = f"( setsid env -i {sleep} >/dev/null 2>&1 & ); setsid env -i sh -c '{sleep}1 >/dev/null 2>&1 &'"
    result, left = time_out_then_look(escapes + "; sleep 0.3; echo launched; sleep 30", 1.5, sleep)
    assert result.exit_code == 124 and result.output.startswith("launched")
    assert left == []


def test_each_command_carries_its_own_id():
    # The id is what a timeout uses to tell a command's escaped processes from those of the commands before it.
    cleared = "env -i sh -c 'echo ${MSR_COMMAND_ID:-none}'"
    results = run_commands(["echo $MSR_COMMAND_ID", "echo $MSR_COMMAND_ID", cleared])
    first, second = int(results[0].output), int(results[1].output)
    assert second != first and results[2].output == "none\n"


def test_a_removed_task_directory_is_an_error_result_naming_it(tmp_path):
    base = tmp_path / "task"
    base.mkdir()
    commands = ['cd / && rm -rf "$OLDPWD" && echo removed', "echo never"]
    removed, after = run_commands(commands, EnvSettings(cwd=str(base)))
    assert removed.ok and removed.output == "removed\n"
    assert after.exit_code == -1 and after.error == f"could not start bash in {base} (No such file or directory)"


def test_an_environment_started_under_one_event_loop_runs_commands_under_another():
    env = LocalEnvironment(EnvSettings())
    asyncio.run(env.start())
    try:
        assert asyncio.run(env.execute("echo one", 10)).output == "one\n"
        assert asyncio.run(env.execute("echo two", 10)).output == "two\n"
    finally:
        asyncio.run(env.close())


def test_the_command_holds_no_descriptor_of_ours():
    # 0 is /dev/null, 1 and 2 the output pipe, 9 the wrapper's copy of stdout for its cwd report: nothing else (a
    # stray copy of the pipe would keep it open as long as anything the command started in the background runs).
    result = run_one("ls /proc/$$/fd")
    assert result.output.split() == ["0", "1", "2", "9"]


# Run by a command: copies what it can read of /proc/<pid>/environ and /proc/<pid>/mem of every ancestor up to the
# test process (excluded: it runs the model server, which sees the key) and of every sibling of each, into files.
# The test, not the command, looks for the secrets in them: the command's text passes through the supervisor.
MEMORY_PROBE = r"""
import os, re, sys
stop, out = int(sys.argv[1]), sys.argv[2]
os.makedirs(out, exist_ok=True)

def parent(pid):
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])

def children(pid):
    found = []
    for task in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                found += map(int, f.read().split())
        except OSError:
            pass
    return found

chain, pid = [], parent(os.getpid())
while pid not in (stop, 0, 1):
    chain.append(pid)
    pid = parent(pid)
targets = set(chain)
for pid in chain:
    targets.update(children(pid))
targets.discard(os.getpid())
for pid in sorted(targets):
    readable = []
    try:
        with open("/proc/%d/environ" % pid, "rb") as f, open("%s/%d.environ" % (out, pid), "wb") as dump:
            dump.write(f.read())
        readable.append("environ")
    except OSError:
        pass
    try:
        with open("/proc/%d/maps" % pid) as f:
            regions = [line.split() for line in f]
        with open("/proc/%d/mem" % pid, "rb", 0) as mem, open("%s/%d.mem" % (out, pid), "wb") as dump:
            for fields in regions:
                if fields[1][0] != "r" or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                    continue
                start, end = (int(x, 16) for x in fields[0].split("-"))
                try:
                    mem.seek(start)
                    dump.write(mem.read(end - start))
                except (OSError, ValueError, OverflowError):
                    pass
        readable.append("mem")
    except OSError:
        pass
    print(pid, "in chain" if pid in chain else "sibling", *readable or ["nothing"])
"""


def test_no_secret_in_the_memory_of_any_ancestor_or_sibling_of_a_command(runner_user):
    from conftest import clean_environ, read_jsonl, tool_results
    from model_server import ScriptedModelServer, per_conversation, reply, tool_call

    api_key = "sk-probe-api-key-" + os.urandom(8).hex()
    variable = "tok-probe-variable-" + os.urandom(8).hex()
    probe = runner_user.home / "probe.py"
    probe.write_text(MEMORY_PROBE)
    dumps = runner_user.home / "dumps"
    command = f"{runner_user.python} -I -S {probe} {os.getpid()} {dumps}"
    with ScriptedModelServer(per_conversation([reply(None, [tool_call(command)]), reply("done")])) as server:
        result = runner_user.run(
            ["--task", "t", "--api_key", api_key, "--base_url", server.base_url, "--model", "m", "--workers", "2"],
            env=clean_environ(HOME=str(runner_user.home), MSR_PROBE_TOKEN=variable),
        )
    assert result.returncode == 0, result.stderr
    [record] = read_jsonl(runner_user.home / "trajectories.jsonl")
    said = tool_results(record)[0]["content"]["output"]
    lines = said.splitlines()
    # What was looked at: the command's bash, the supervisor, the zygote and the runner (at least).
    assert sum(" in chain " in line or line.endswith(" in chain") for line in lines) >= 4, said
    assert any(line.endswith("environ mem") for line in lines), said  # the probe can read what it may
    assert (dumps).is_dir(), said
    for dump in dumps.iterdir():
        data = dump.read_bytes()
        for secret in (api_key, variable):
            assert secret.encode() not in data, (dump.name, said)


def test_nothing_outlives_the_run_when_a_command_kills_the_zygote_and_then_its_supervisor(tmp_path):
    # Both subreapers above the command gone: what it started would go to PID 1; the runner adopts it and kills it
    # when it exits.
    from conftest import read_jsonl, run_cli, tool_results
    from model_server import ScriptedModelServer, per_conversation, reply, tool_call

    sleep = f"sleep 7{os.getpid() % 100000:05d}"
    command = (
        f"setsid {sleep} </dev/null >/dev/null 2>&1 & sleep 0.2; zygote=$(cut -d' ' -f4 /proc/$PPID/stat); "
        "kill -KILL $zygote; sleep 0.2; kill -KILL $PPID; sleep 1"
    )
    script = per_conversation([reply(None, [tool_call(command)]), reply(None, [tool_call("echo next")]), reply("ok")])
    with ScriptedModelServer(script) as server:
        result = run_cli(["--task", "t", "--base_url", server.base_url, "--model", "m"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [record] = read_jsonl(tmp_path / "trajectories.jsonl")
    first, second = tool_results(record)
    assert "killed the process that ran it" in first["content"]["error"], first
    assert second["content"]["output"] == "next\n"  # the task went on, under a new zygote and supervisor
    assert wait_until_gone(sleep, within=2) == []
