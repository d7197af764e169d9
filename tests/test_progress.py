"""Signals while a run runs and when it ends: what is in flight, a hung endpoint, progress between task ends, the
rate, a 0-column terminal, pass@k with --until_passed, runs with nothing to do, and terminal-safe text."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time

from conftest import RUNNER, clean_environ, read_jsonl, require_bwrap, run_cli, tool_results
from model_server import ScriptedModelServer, delayed, http_error, per_conversation, reply, tool_call

import mini_swe_runner


def rates(stderr: str) -> tuple[float, float]:
    """The rate of the last progress line and the summary's."""
    shown = [float(m) for m in re.findall(r"^progress: .*?, ([\d.]+) tasks/min", stderr, re.M)]
    [summary] = re.findall(r"^done: .*?, ([\d.]+) tasks/min", stderr, re.M)
    assert shown, stderr
    return shown[-1], float(summary)


# ---------------------------------------------------------------------------------------------------------------
# In flight: a hung endpoint, a long command
# ---------------------------------------------------------------------------------------------------------------


def test_a_hung_endpoint_shows_what_waits_and_warns_once(tmp_path):
    # The model takes 3 s to answer anything: the progress lines say a call waits, and for how long, and one
    # warning line says the model has answered nothing past --stall_warning.
    with ScriptedModelServer(lambda request: delayed(3, reply("done"))) as server:
        result = run_cli(
            ["--task", "hello", "--base_url", server.base_url] + ["--progress_interval", "0.5", "--stall_warning", "1"],
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr
    waiting = re.findall(r"progress: 0/1 done.*; 1 running \(1 waiting on the model, longest (\d+)s\)", result.stderr)
    assert waiting and max(map(int, waiting)) >= 2, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "has answered nothing" in line]
    assert len(warnings) == 1, result.stderr
    assert server.base_url in warnings[0] and "1 request waiting" in warnings[0]
    assert "progress: 1/1 done, 1 completed, 0 failed" in result.stderr
    assert "1 step, 120 tokens" in result.stderr


def test_an_endpoint_check_with_no_answer_is_said_at_once(tmp_path):
    # GET /models hangs past its bound (--request_timeout 1 here): one warning line, then the run goes on.
    with ScriptedModelServer(lambda request: reply("done"), models=delayed(4, reply("unused"))) as server:
        result = run_cli(["--task", "hello", "--base_url", server.base_url, "--request_timeout", "1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"the model API at {server.base_url} did not answer GET /models in 1s" in result.stderr
    assert read_jsonl(tmp_path / "trajectories.jsonl")[0]["completed"]


def test_a_quiet_model_is_no_stall_while_commands_run(tmp_path):
    # A command that takes 3 s is not a hung model: no warning, and the progress line moves (the step and its
    # tokens, the running command) before the task ends.
    script = per_conversation([reply(None, [tool_call("sleep 3")]), reply("done")])
    with ScriptedModelServer(script) as server:
        result = run_cli(
            ["--task", "hello", "--base_url", server.base_url]
            + ["--progress_interval", "0.3", "--stall_warning", "1.5"],
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr
    assert "has answered nothing" not in result.stderr
    assert re.search(r"progress: 0/1 done.*; 1 running \(1 command\); 1 step, 120 tokens", result.stderr), result.stderr
    assert "progress: 1/1 done" in result.stderr and "2 steps, 240 tokens" in result.stderr


def test_stall_warning_zero_never_warns(tmp_path):
    with ScriptedModelServer(lambda request: delayed(1.5, reply("done"))) as server:
        result = run_cli(
            ["--task", "hello", "--base_url", server.base_url, "--stall_warning", "0", "--progress_interval", "0.5"],
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr
    assert "has answered nothing" not in result.stderr
    assert "waiting on the model" in result.stderr


def test_the_bar_shows_what_is_in_flight():
    class Terminal:
        def __init__(self):
            self.text = ""

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return True

    stream = Terminal()
    activity = mini_swe_runner.Activity()
    progress = mini_swe_runner.Progress(2, quiet=False, stream=stream, activity=activity)
    with activity.task(), activity.model_call():
        activity.answered(120)
        with activity.command():
            progress.tick()
    progress.close()
    assert "0/2" in stream.text and "1 running (1 waiting on the model, longest 0s; 1 command)" in stream.text
    assert "1 step, 120 tokens" in stream.text and "tasks/min" in stream.text


# ---------------------------------------------------------------------------------------------------------------
# The rate, and a terminal nobody sized
# ---------------------------------------------------------------------------------------------------------------


def test_the_progress_rate_is_the_summarys(tmp_path):
    # The endpoint check takes 2 s: a rate counted from after it (the old progress line) is far above the summary's.
    models = delayed(2, reply("unused"))
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\nthree\n")
    with ScriptedModelServer(lambda request: reply("done"), models=models) as server:
        result = run_cli(["--prompts_file", str(prompts), "--base_url", server.base_url], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown, summary = rates(result.stderr)
    assert abs(shown - summary) <= 0.05 * summary + 0.1, result.stderr


def test_a_zero_column_terminal_still_shows_progress(tmp_path):
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    script = per_conversation([reply(None, [tool_call("sleep 1")]), reply("done")])
    with ScriptedModelServer(script) as server:
        process = subprocess.Popen(
            [*RUNNER, "--task", "hello", "--base_url", server.base_url]
            + ["--progress_interval", "0.3", "--output_file", str(tmp_path / "o.jsonl")],
            cwd=tmp_path,
            env=clean_environ(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=child,
        )
        os.close(child)
        seen = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # EIO: every writer closed the pty
                    break
                if not chunk:
                    break
                seen += chunk
            elif process.poll() is not None:
                break
        process.wait(30)
        os.close(main)
    text = seen.decode(errors="replace")
    assert process.returncode == 0, text
    assert "progress: 0/1 done" in text and "progress: 1/1 done, 1 completed" in text, text
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 1


def test_progress_lines_go_on_without_a_task_ending(tmp_path):
    # Not a terminal: a plain line every --progress_interval, not only when a task ends.
    script = per_conversation([reply(None, [tool_call("sleep 2")]), reply("done")])
    with ScriptedModelServer(script) as server:
        result = run_cli(["--task", "hello", "--base_url", server.base_url, "--progress_interval", "0.4"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(re.findall(r"^progress: 0/1 done", result.stderr, re.M)) >= 3, result.stderr
    assert read_jsonl(tmp_path / "trajectories.jsonl")[0]["completed"]


# ---------------------------------------------------------------------------------------------------------------
# pass@k for the run's settings
# ---------------------------------------------------------------------------------------------------------------


def test_until_passed_reports_pass_at_k_from_what_it_sampled():
    # --samples 4 --until_passed 1: a passed at once, b on its second sample, c never (all 4 drawn). c/n and the
    # unbiased estimator read pass@1 0.5 and pass@4 0.0 (a and b have n < 4); what was sampled says pass@1 1/3
    # (first samples) and pass@4 2/3 (prompts solved within 4 samples).
    rewards = {("a", 0): 1.0, ("b", 0): 0.0, ("b", 1): 1.0, **{("c", i): 0.0 for i in range(4)}}
    outcomes = mini_swe_runner.SampleOutcomes(rewards, 3, {"a", "b", "c"}, k=4, until_passed=1)
    summary = mini_swe_runner.summarize(mini_swe_runner.RunTally(), 1.0, 0, outcomes)
    verification = summary["verification"]
    assert verification["pass_at_1"] == 0.3333 and verification["pass_at_k"] == 0.6667
    assert verification["pass_at_k_prompts"] == 3 and verification["pass_at_k_method"].startswith("--until_passed")
    text = mini_swe_runner.summary_text(summary, "out.jsonl")
    assert "pass@1 0.333, pass@4 0.667 over 3 prompts (--until_passed stops" in text


def test_until_passed_leaves_out_prompts_still_sampling():
    # An interrupted run: d has 2 failed samples of 4 and no pass yet: whether it is solved within 4 is unknown.
    rewards = {("a", 0): 1.0, ("d", 0): 0.0, ("d", 1): 0.0}
    outcomes = mini_swe_runner.SampleOutcomes(rewards, 2, {"a", "d"}, k=4, until_passed=1)
    verification = mini_swe_runner.summarize(mini_swe_runner.RunTally(), 1.0, 0, outcomes)["verification"]
    assert verification["pass_at_k"] == 1.0 and verification["pass_at_k_prompts"] == 1
    assert verification["pass_at_1"] == 0.5


def test_k_of_one_prints_pass_at_1_once():
    outcomes = mini_swe_runner.SampleOutcomes({("a", 0): 1.0, ("b", 0): 0.0}, 2, {"a", "b"}, k=1)
    text = mini_swe_runner.summary_text(mini_swe_runner.summarize(mini_swe_runner.RunTally(), 1.0, 0, outcomes), "o")
    assert text.count("pass@1") == 1 and "pass@1 0.500;" in text


# ---------------------------------------------------------------------------------------------------------------
# The edges of a run: nothing to do, nothing written, a misspelt flag, a closed pipe, ps
# ---------------------------------------------------------------------------------------------------------------


def test_a_rerun_with_nothing_to_do_says_so(tmp_path):
    with ScriptedModelServer(lambda request: reply("done")) as server:
        first = run_cli(["--task", "hello", "--base_url", server.base_url], cwd=tmp_path)
        again = run_cli(["--task", "hello", "--base_url", server.base_url, "--stats_file", "s.json"], cwd=tmp_path)
    assert first.returncode == 0 and again.returncode == 0, again.stderr
    assert "completion" not in again.stderr and "tasks/min" not in again.stderr
    assert "done: no task run; 1 skipped as already done -> trajectories.jsonl" in again.stderr
    assert json.loads((tmp_path / "s.json").read_text())["completion_rate"] is None


def test_a_run_that_fails_before_its_first_task_leaves_no_empty_file(tmp_path):
    unreachable = ["--base_url", "http://127.0.0.1:9/v1", "--api_key", "k"]
    result = run_cli(["--task", "hello", *unreachable], cwd=tmp_path)
    assert result.returncode == 1 and "cannot reach" in result.stderr
    assert not (tmp_path / "trajectories.jsonl").exists()
    assert not (tmp_path / ".trajectories.jsonl.index").exists()
    # A file that was there is never removed: an empty one the user made, or one with records.
    (tmp_path / "empty.jsonl").write_text("")
    assert run_cli(["--task", "hello", "--output_file", "empty.jsonl", *unreachable], cwd=tmp_path).returncode == 1
    assert (tmp_path / "empty.jsonl").exists()
    with ScriptedModelServer(lambda request: reply("done")) as server:
        assert run_cli(["--task", "one", "--base_url", server.base_url], cwd=tmp_path).returncode == 0
    kept = (tmp_path / "trajectories.jsonl").read_bytes()
    assert run_cli(["--task", "two", *unreachable], cwd=tmp_path).returncode != 0
    assert (tmp_path / "trajectories.jsonl").read_bytes() == kept


def test_stats_into_a_closed_pipe_ends_without_a_traceback(tmp_path):
    with ScriptedModelServer(lambda request: reply("done")) as server:
        assert run_cli(["--task", "hello", "--base_url", server.base_url], cwd=tmp_path).returncode == 0
    for extra in (["--json"], []):
        read_end, write_end = os.pipe()
        os.close(read_end)  # `| head` that has already gone: every write is EPIPE
        process = subprocess.run(
            [*RUNNER, "stats", "trajectories.jsonl", *extra],
            cwd=tmp_path,
            env=clean_environ(),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
        os.close(write_end)
        assert process.stderr == "" and process.returncode == 141, process.stderr


def test_ps_shows_a_name_not_the_supervisors_source(tmp_path):
    # The command's parent is its supervisor, forked by the zygote: both show a short command line with a name.
    show = "tr '\\0' ' ' < /proc/$PPID/cmdline; echo; tr '\\0' ' ' < /proc/$(ps -o ppid= $PPID | tr -d ' ')/cmdline"
    lines = command_output(tmp_path, show, "local").strip().splitlines()
    assert len(lines) == 2 and all("mini-swe-runner-zygote" in line and len(line) < 300 for line in lines), lines


def test_ps_shows_a_name_not_the_supervisors_source_in_bwrap(tmp_path):
    require_bwrap()
    line = command_output(tmp_path, "tr '\\0' ' ' < /proc/$PPID/cmdline", "bwrap").strip()
    assert "mini-swe-runner-supervisor" in line and len(line) < 300, line


def command_output(tmp_path, command: str, env: str) -> str:
    """The output of ``command`` run by a one-task run with ``--env env``."""
    script = per_conversation([reply(None, [tool_call(command)]), reply("done")])
    with ScriptedModelServer(script) as server:
        result = run_cli(["--task", "hello", "--env", env, "--base_url", server.base_url], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [record] = read_jsonl(tmp_path / "trajectories.jsonl")
    [output] = tool_results(record)
    return output["content"]["output"]


# ---------------------------------------------------------------------------------------------------------------
# Record text on the terminal: control characters escaped (issue 19, item 9)
# ---------------------------------------------------------------------------------------------------------------

HOSTILE = "\x1b]0;owned\x07\x1b[2J\x9b31m\r"


def test_stats_escapes_control_characters_of_record_fields(tmp_path):
    with ScriptedModelServer(lambda request: reply("done")) as server:
        assert run_cli(["--task", "hello", "--base_url", server.base_url], cwd=tmp_path).returncode == 0
    [record] = read_jsonl(tmp_path / "trajectories.jsonl")
    record["metadata"]["model"] = f"model{HOSTILE}"
    record["metadata"]["image"] = f"image{HOSTILE}"
    (tmp_path / "hostile.jsonl").write_text(json.dumps(record, ensure_ascii=False) + "\n")
    table = run_cli(["stats", "hostile.jsonl"], cwd=tmp_path)
    as_json = run_cli(["stats", "hostile.jsonl", "--json"], cwd=tmp_path)
    for result in (table, as_json):
        assert result.returncode == 0, result.stderr
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", result.stdout), repr(result.stdout)
    assert "model\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\x0d" in table.stdout
    assert json.loads(as_json.stdout)["models"] == {f"model{HOSTILE}": 1}  # the same JSON, only escaped


def test_verbose_logs_and_error_lines_escape_control_characters(tmp_path):
    script = per_conversation([reply(f"look{HOSTILE}", [tool_call("echo hi")]), reply("done")])
    with ScriptedModelServer(script) as server:
        verbose = run_cli(["--task", "hello", "--base_url", server.base_url, "--verbose"], cwd=tmp_path)
    assert verbose.returncode == 0, verbose.stderr
    assert "model: look\\x1b]0;owned\\x07" in verbose.stderr
    failing = lambda request: http_error(400, f"bad{HOSTILE}")  # noqa: E731
    with ScriptedModelServer(failing) as server:
        failed = run_cli(["--task", "x", "--base_url", server.base_url, "--output_file", "f.jsonl"], cwd=tmp_path)
    assert failed.returncode == 1 and "every task failed" in failed.stderr
    assert "bad\\x1b]0;owned" in failed.stderr
    for result in (verbose, failed):
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", result.stderr), repr(result.stderr)
