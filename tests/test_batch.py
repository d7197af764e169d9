"""Batch at scale: concurrency, resume after kill -9, signals, shards, rate limits, progress and statistics."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    FINAL,
    check_exactly_once,
    clean_environ,
    make_config,
    quick_script,
    read_jsonl,
    run_cli,
    run_prompts,
    start_cli,
    tool_results,
    wait_for,
    write_prompts,
)
from model_server import ScriptedModelServer, Step, delayed, http_error, per_conversation, per_prompt, reply, tool_call

import mini_swe_runner
import trajectory


def test_many_workers_write_whole_valid_lines(out, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 60, duplicate_every=7)
    with ScriptedModelServer(quick_script(), latency=0.005) as server:
        config = make_config(server, out, workers=24)
        outcome = asyncio.run(mini_swe_runner.run_batch(config, mini_swe_runner.load_prompts(str(prompts))))
    assert outcome.exit_code == 0
    raw_lines = out.read_bytes().split(b"\n")
    assert raw_lines[-1] == b"" and len(raw_lines) == 61
    records = [json.loads(line) for line in raw_lines[:-1]]
    check_exactly_once(records, prompts)
    assert all(r["completed"] for r in records)
    assert outcome.summary["tasks"] == 60 and outcome.summary["exit_reasons"] == {"completed": 60}


def test_workers_really_run_concurrently(out):
    # 12 tasks of one 0.5 s model call each: one at a time would take 6 s.
    with ScriptedModelServer(lambda request: reply("ok"), latency=0.5) as server:
        started = time.monotonic()
        outcome, records = run_prompts(make_config(server, out, workers=12), [f"t{i}" for i in range(12)])
        elapsed = time.monotonic() - started
    assert len(records) == 12 and elapsed < 4.5


def test_overwrite_starts_afresh(out):
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        run_prompts(make_config(server, out), ["a", "b"])
        run_prompts(make_config(server, out, overwrite=True), ["a"])
    assert len(read_jsonl(out)) == 1


def test_kill_9_at_random_moments_never_loses_or_duplicates(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 40, duplicate_every=9)
    output = tmp_path / "out.jsonl"
    args = ["--prompts_file", str(prompts), "--output_file", str(output), "--model", "m", "--workers", "6", "--quiet"]
    rng = random.Random(1234)
    killed_env = clean_environ(TMPDIR=str(tmp_path))  # what kill -9 leaves behind stays in pytest's tmp
    with ScriptedModelServer(quick_script(), latency=0.05) as server:
        args += ["--base_url", server.base_url]
        for _ in range(4):
            process = start_cli(args, tmp_path, env=killed_env)
            time.sleep(rng.uniform(0.6, 1.6))
            process.kill()
            process.wait()
            if output.exists():  # whatever is there must be readable, with at most one torn last line
                assert trajectory.read_records(str(output)).bad_lines <= 1
        final = run_cli(args, cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    check_exactly_once(read_jsonl(output), prompts)


def _sleeping_script(marker_dir: Path):
    # Every task starts a long command that leaves a marker file and a background child behind.
    command = f"pwd > {marker_dir}/started-$$; (sleep 41.5 &) ; sleep 41.5"
    return per_conversation([reply(None, [tool_call(command)]), reply("done")])


def _sleepers() -> list[str]:
    found = subprocess.run(["pgrep", "-f", "sleep 41.5"], capture_output=True, text=True).stdout.split()
    return [pid for pid in found if pid != str(os.getpid())]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_interrupts_cleans_up_and_resume_completes(tmp_path, signum, code):
    markers = tmp_path / "markers"
    markers.mkdir()
    prompts = write_prompts(tmp_path / "p.jsonl", 5)
    output = tmp_path / "out.jsonl"
    base = ["--prompts_file", str(prompts), "--output_file", str(output), "--model", "m", "--workers", "2"]
    with ScriptedModelServer(_sleeping_script(markers)) as server:
        process = start_cli([*base, "--base_url", server.base_url], tmp_path)
        wait_for(lambda: len(list(markers.iterdir())) >= 2)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr and "done: 2 tasks" in stderr and "interrupted" in stderr
    wait_for(lambda: not _sleepers(), timeout=5)  # every command and its background child is gone
    task_dirs = [Path(marker.read_text().strip()) for marker in markers.iterdir()]
    assert len(task_dirs) == 2 and not any(d.exists() for d in task_dirs)  # each task's temp dir was removed
    records = read_jsonl(output)
    assert [r["exit_reason"] for r in records] == ["interrupted", "interrupted"]
    assert all(r["conversations"][-1]["from"] == "tool" for r in records)  # no dangling tool call
    with ScriptedModelServer(quick_script()) as server:
        resumed = run_cli([*base, "--base_url", server.base_url], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "dropped 2 retryable record(s)" in resumed.stderr
    final = read_jsonl(output)
    check_exactly_once(final, prompts)
    assert all(r["completed"] for r in final)


def _processes_in(directory: Path) -> list[int]:
    """Pids of the processes whose working directory is under ``directory``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd").startswith(str(directory)):
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_a_stop_while_first_calls_wait_and_environments_start_leaves_nothing(tmp_path):
    # Each task's environment starts while its first model call is in flight: a stop then cancels both, and
    # neither a supervisor nor a task's temp dir outlives the run.
    temp = tmp_path / "tmp"
    temp.mkdir()
    prompts = write_prompts(tmp_path / "p.jsonl", 4)
    output = tmp_path / "out.jsonl"
    with ScriptedModelServer(lambda request: delayed(60, reply("never"))) as server:
        process = start_cli(
            ["--prompts_file", str(prompts), "--output_file", str(output), "--model", "m", "--workers", "4",
             "--base_url", server.base_url],
            tmp_path,
            env=clean_environ(TMPDIR=str(temp)),
        )  # fmt: skip
        wait_for(lambda: len(server.requests) == 4)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    records = read_jsonl(output)
    assert [r["exit_reason"] for r in records] == ["interrupted"] * 4
    assert all(r["api_calls"] == 1 and [t["from"] for t in r["conversations"]] == ["system", "human"] for r in records)
    wait_for(lambda: not _processes_in(temp), timeout=5)
    assert list(temp.iterdir()) == []  # each task's temp dir was removed


def test_a_workers_next_sample_asks_the_model_while_the_previous_one_verifies(tmp_path):
    # One worker, two prompts. The first prompt's verifier passes once the model has been asked the second prompt
    # (and fails after 10 s): the worker takes its next sample as soon as the agent is done, so that model call
    # overlaps the verifier instead of waiting for it.
    marks = tmp_path / "marks"
    marks.mkdir()
    temp = tmp_path / "tmp"
    temp.mkdir()
    verifier = (
        f"[ -e {marks}/ended ] && exit 0; "
        f"for i in $(seq 200); do [ -e {marks}/go ] && {{ touch {marks}/ended; exit 0; }}; sleep 0.05; done; "
        f"touch {marks}/ended; exit 1"
    )
    asked_before_the_verifier_ended = []

    def second_prompt_asked() -> Step:
        asked_before_the_verifier_ended.append(not (marks / "ended").exists())
        (marks / "go").touch()
        return reply(None, [tool_call("ls -d $TMPDIR/mini-swe-task-* | wc -l")])

    script = per_prompt(
        {"first": [reply(None, [tool_call(FINAL)])], "second": [second_prompt_asked, reply(None, [tool_call(FINAL)])]},
        lambda request: reply("unexpected"),
    )
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "first"}\n{"prompt": "second"}\n')
    output = tmp_path / "out.jsonl"
    with ScriptedModelServer(script) as server:
        result = run_cli(
            ["--prompts_file", str(prompts), "--output_file", str(output), "--model", "m", "--workers", "1",
             "--verify", verifier, "--base_url", server.base_url],
            cwd=tmp_path,
            env=clean_environ(TMPDIR=str(temp)),
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert asked_before_the_verifier_ended == [True]
    by_prompt = {r["conversations"][1]["value"]: r for r in read_jsonl(output)}
    assert by_prompt["first"]["reward"] == 1.0 and by_prompt["second"]["reward"] == 1.0
    # The second sample's sandbox was made once the first one's was gone: a worker holds one at a time.
    [listing, _] = tool_results(by_prompt["second"])
    assert listing["content"]["output"].strip() == "1"
    assert list(temp.iterdir()) == []


def test_second_ctrl_c_exits_at_once_and_still_cleans_up(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    with ScriptedModelServer(_sleeping_script(markers)) as server:
        process = start_cli(
            [
                "--prompts_file",
                str(prompts),
                "--output_file",
                str(tmp_path / "o.jsonl"),
                "--base_url",
                server.base_url,
                "--workers",
                "3",
            ],
            tmp_path,
        )
        wait_for(lambda: len(list(markers.iterdir())) >= 3)
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=15)
    assert process.returncode == 130
    wait_for(lambda: not _sleepers(), timeout=5)
    assert not any(Path(marker.read_text().strip()).exists() for marker in markers.iterdir())


def test_shards_partition_the_prompts(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 10, duplicate_every=4)
    seen: list[str] = []
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        for number in (1, 2, 3):
            output = tmp_path / f"shard{number}.jsonl"
            result = run_cli(
                [
                    "--prompts_file",
                    str(prompts),
                    "--output_file",
                    str(output),
                    "--shard",
                    f"{number}/3",
                    "--base_url",
                    server.base_url,
                ],
                cwd=tmp_path,
            )
            assert result.returncode == 0, result.stderr
            seen += [r["task_id"] for r in read_jsonl(output)]
            assert {r["prompt_index"] % 3 for r in read_jsonl(output)} == {number - 1}
    assert len(seen) == len(set(seen)) == 10
    check_exactly_once([r for n in (1, 2, 3) for r in read_jsonl(tmp_path / f"shard{n}.jsonl")], prompts)


def test_rate_limited_provider_still_completes_every_task(out):
    counter = {"n": 0}
    lock = threading.Lock()
    inner = quick_script()

    def script(request):
        with lock:
            counter["n"] += 1
            limited = counter["n"] % 3 == 0
        return http_error(429, "rate limited", headers={"retry-after-ms": "50"}) if limited else inner(request)

    with ScriptedModelServer(script, latency=0.01) as server:
        outcome, records = run_prompts(
            make_config(server, out, workers=8, max_retries=10), [f"task {i}" for i in range(20)]
        )
    assert outcome.exit_code == 0
    assert len(records) == 20 and all(r["completed"] for r in records)
    assert counter["n"] > 40  # the 429s really happened and were retried


def test_rate_gate_pauses_everyone_and_spaces_requests():
    async def scenario() -> tuple[float, float]:
        gate = mini_swe_runner.RateGate()
        gate.pause(0.3)
        started = time.monotonic()
        await asyncio.gather(*(gate.wait() for _ in range(10)))
        paused = time.monotonic() - started
        spaced_gate = mini_swe_runner.RateGate(max_rpm=600)  # one request per 0.1 s
        started = time.monotonic()
        await asyncio.gather(*(spaced_gate.wait() for _ in range(6)))
        return paused, time.monotonic() - started

    paused, spaced = asyncio.run(scenario())
    assert paused >= 0.29
    assert spaced >= 0.49


def test_stats_file_and_plain_progress_lines(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 4)
    stats = tmp_path / "stats.json"
    with ScriptedModelServer(quick_script()) as server:
        result = run_cli(
            [
                "--prompts_file",
                str(prompts),
                "--output_file",
                str(tmp_path / "o.jsonl"),
                "--stats_file",
                str(stats),
                "--base_url",
                server.base_url,
            ],
            cwd=tmp_path,
        )
        quiet = run_cli(
            [
                "--prompts_file",
                str(prompts),
                "--output_file",
                str(tmp_path / "q.jsonl"),
                "--quiet",
                "--base_url",
                server.base_url,
            ],
            cwd=tmp_path,
        )
    assert result.returncode == 0
    assert "progress: 4/4 done, 4 completed, 0 failed" in result.stderr
    summary = json.loads(stats.read_text())
    assert summary["tasks"] == 4 and summary["exit_reasons"] == {"completed": 4}
    assert summary["completion_rate"] == 1.0
    assert summary["totals"]["api_calls"] == 8 and summary["totals"]["tool_calls"] == 4
    assert summary["tokens"]["total_tokens"] == 8 * 120
    assert summary["run"]["tasks_per_minute"] > 0 and summary["run"]["wall_time_s"] > 0
    assert quiet.returncode == 0 and quiet.stderr == "" and len(read_jsonl(tmp_path / "q.jsonl")) == 4


def test_progress_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = mini_swe_runner.Progress(3, quiet=False, stream=stream)
    for completed in (True, False, True):
        progress.update({"completed": completed})
    progress.close()
    text = stream.getvalue()
    assert "3/3" in text and "completed=2" in text and "failed=1" in text


def test_task_timeout_flag(tmp_path):
    script = per_conversation([reply(None, [tool_call("sleep 20")]), reply("never")])
    with ScriptedModelServer(script) as server:
        result = run_cli(["--task", "slow", "--task_timeout", "1", "--base_url", server.base_url], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [record] = read_jsonl(tmp_path / "trajectories.jsonl")
    assert record["exit_reason"] == "timeout"


# ---------------------------------------------------------------------------------------------------------------
# Large inputs: a prompts file checked in one pass and read back one prompt at a time (bench/bench_input.py)
# ---------------------------------------------------------------------------------------------------------------

MIXED_LINES = [
    '{"prompt": "quick one", "id": "q1"}',
    "plain text prompt",
    '{"id": "q2", "prompt": "quick two, other key order"}',
    '{"prompt": "with fields", "id": 7, "image": "img:1", "cwd": "/w", "verify": "true", "repo": "r", "n": 3}',
    "",
    "  plain text prompt  ",  # the same text again: its derived id takes occurrence 1
    '{"task": "task field \\u00e9 \\ud83d\\ude00"}',
    '{"prompt": "plain text prompt", "id": "explicit"}',  # counts as an occurrence of the text, too
    "plain text prompt",
    '{"prompt": "quick one", "id": "q3"}',
]


def test_prompt_file_gives_exactly_the_prompts_of_a_whole_read(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(MIXED_LINES).encode() + b"\r\n")
    expected = mini_swe_runner.parse_prompt_lines(MIXED_LINES, str(path))
    loaded = mini_swe_runner.load_prompts(str(path))
    assert isinstance(loaded, mini_swe_runner.PromptFile)
    assert len(loaded) == len(expected) == 9
    assert list(loaded) == expected  # text, id (occurrences included), image, cwd, fields, verify, index
    assert expected[-2].task_id == mini_swe_runner.derived_task_id("plain text prompt", 3)  # the explicit row counted
    assert list(mini_swe_runner.task_ids(loaded)) == [p.task_id for p in expected]
    assert loaded.own_images() == {None, "img:1"} and loaded.any_own_verifier()
    assert [loaded.image_of(i) for i in range(len(loaded))] == [p.image for p in expected]


@pytest.mark.parametrize("shard", [(1, 2), (2, 2), (2, 3), (3, 3), (1, 1)])
def test_prompt_file_shards_and_limits_like_a_list(tmp_path, shard):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(MIXED_LINES) + "\n")
    as_list = mini_swe_runner.parse_prompt_lines(MIXED_LINES, str(path))
    from_file = mini_swe_runner.select_shard(mini_swe_runner.load_prompts(str(path)), shard)
    assert list(from_file) == mini_swe_runner.select_shard(as_list, shard)
    assert list(from_file[:2]) == mini_swe_runner.select_shard(as_list, shard)[:2]
    assert list(mini_swe_runner.task_ids(from_file[:2])) == [p.task_id for p in from_file[:2]]


@pytest.mark.parametrize(
    "lines, error",
    [
        (['{"prompt": "a", "id": "x"}', "b", '{"prompt": "c", "id": "x"}'], ":3: id 'x' already used on line 1"),
        # A derived id is checked against explicit ones, occurrence included.
        (
            ["same", "same", json.dumps({"prompt": "z", "id": mini_swe_runner.derived_task_id("same", 1)})],
            f":3: id '{mini_swe_runner.derived_task_id('same', 1)}' already used on line 2",
        ),
        (['{"prompt": "a", "id": 5}', '{"prompt": "b", "id": "5"}'], ":2: id '5' already used on line 1"),
    ],
)
def test_prompt_file_refuses_duplicate_ids_naming_both_lines(tmp_path, lines, error):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(mini_swe_runner.UsageError) as whole:
        mini_swe_runner.parse_prompt_lines(lines, str(path))
    with pytest.raises(mini_swe_runner.UsageError) as streamed:
        mini_swe_runner.load_prompts(str(path))
    assert str(streamed.value) == str(whole.value) and str(streamed.value).endswith(error)


def test_prompt_file_refuses_a_line_changed_after_the_check_and_keeps_a_replaced_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "first", "id": "a"}\n{"prompt": "second", "id": "b"}\n')
    loaded = mini_swe_runner.load_prompts(str(path))
    # Replaced by a rename (an editor's save): the run goes on reading the file it checked.
    replacement = tmp_path / "new.jsonl"
    replacement.write_text('{"prompt": "other", "id": "z"}\n')
    os.replace(replacement, path)
    assert loaded[1].text == "second"
    # Edited in place: the changed row is refused, never sent as a prompt nobody checked.
    checked = tmp_path / "q.jsonl"
    checked.write_text('{"prompt": "first", "id": "a"}\n{"prompt": "second", "id": "b"}\n')
    loaded = mini_swe_runner.load_prompts(str(checked))
    with open(checked, "r+b") as handle:
        handle.seek(len('{"prompt": "first", "id": "a"}\n{"prompt": "'))
        handle.write(b"SECOND")
    assert loaded[0].text == "first"
    with pytest.raises(mini_swe_runner.FatalRunError, match="changed during the run"):
        loaded[1]


def _json_elements() -> list[str]:
    """MIXED_LINES as the elements of a .json array: a plain-text line becomes a JSON string."""
    return [line if line.startswith("{") else json.dumps(line, ensure_ascii=False) for line in MIXED_LINES if line]


def test_a_json_file_gives_exactly_the_prompts_of_a_whole_read(tmp_path):
    path = tmp_path / "p.json"
    # a BOM, JSON's every whitespace between elements, non-ASCII bytes before later elements (offsets in bytes)
    # a BOM, JSON's every whitespace around elements, non-ASCII first (every later offset in bytes is not in chars)
    elements = [json.dumps("«é» first", ensure_ascii=False), *_json_elements()]
    path.write_bytes(b"\xef\xbb\xbf \r\n[" + ",\t\n ".join(elements).encode() + b" \r]\n")
    whole = mini_swe_runner._json_rows(str(path))
    expected = mini_swe_runner.prompts_from_rows(mini_swe_runner._list_rows(whole, str(path)))
    loaded = mini_swe_runner.load_prompts(str(path))
    assert isinstance(loaded, mini_swe_runner.PromptArray)
    assert len(loaded) == len(expected) == 10
    assert list(loaded) == expected  # read back element by element: text, id (occurrences), image, cwd, fields...
    assert list(mini_swe_runner.task_ids(loaded)) == [p.task_id for p in expected]
    assert loaded.own_images() == {None, "img:1"} and loaded.any_own_verifier()
    for shard in [(1, 2), (2, 3)]:
        assert list(mini_swe_runner.select_shard(loaded, shard)) == mini_swe_runner.select_shard(expected, shard)


@pytest.mark.parametrize(
    "text, error",
    [
        ('[{"prompt": "a", "id": "x"}, "b", {"prompt": "c", "id": "x"}]', "p.json row 2: id 'x' already used on row 0"),
        ('[{"prompt": "a"}, 5]', 'p.json row 1: not an object (give {"prompt": ...} rows)'),
        ('[{"prompt": "a"},]', "p.json: not valid JSON (Expecting value, line 1)"),
        ('[{"prompt": "a"}] [', "p.json: not valid JSON (Extra data, line 1)"),
        ('{"prompt": "a"}', 'p.json: a .json prompts file holds a list of objects: [{"prompt": ...}, ...]'),
        ('[{"prompt": "\\ud800"}]', "p.json row 0: the prompt holds a lone surrogate"),
    ],
)
def test_a_json_file_is_refused_in_the_words_of_a_whole_read(tmp_path, text, error):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(mini_swe_runner.UsageError) as whole:
        mini_swe_runner.prompts_from_rows(mini_swe_runner._list_rows(mini_swe_runner._json_rows(str(path)), str(path)))
    with pytest.raises(mini_swe_runner.UsageError) as spans:
        mini_swe_runner.PromptArray(str(path), mini_swe_runner.RowFormat())
    assert str(spans.value) == str(whole.value) and error in str(spans.value)


def test_a_json_element_changed_after_the_check_is_refused(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[{"prompt": "first", "id": "a"}, {"prompt": "second", "id": "b"}]')
    loaded = mini_swe_runner.load_prompts(str(path))
    with open(path, "r+b") as handle:
        handle.seek(len('[{"prompt": "first", "id": "a"}, {"prompt": "'))
        handle.write(b"SECOND")
    assert loaded[0].text == "first"
    with pytest.raises(mini_swe_runner.FatalRunError, match="changed during the run"):
        loaded[1]


def test_a_prompts_file_changed_during_a_run_stops_it_with_one_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(f'{{"prompt": "task {i}", "id": "t{i}"}}\n' for i in range(3)))
    prompts = mini_swe_runner.load_prompts(str(path))
    path.write_text("".join(f'{{"prompt": "TASK {i}", "id": "t{i}"}}\n' for i in range(3)))
    with ScriptedModelServer(quick_script()) as server:
        outcome = asyncio.run(mini_swe_runner.run_batch(make_config(server, tmp_path / "out.jsonl"), prompts))
        assert not server.requests  # no prompt that was not checked reached the model
    assert outcome.exit_code == 1 and "changed during the run" in outcome.message
    assert not (tmp_path / "out.jsonl").exists() or not read_jsonl(tmp_path / "out.jsonl")


def test_argument_errors_answer_without_importing_the_http_stack(tmp_path):
    for argv in (["--bogus", "1"], ["--task", "x", "--env", "nope"], ["--task", "x", "--workers", "0"], []):
        result = subprocess.run(
            [sys.executable, "-X", "importtime", str(Path(mini_swe_runner.__file__)), *argv],
            capture_output=True,
            text=True,
            env=clean_environ(),
            timeout=60,
            cwd=tmp_path,
        )
        assert result.returncode == 2, (argv, result.stderr[-300:])
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
        assert not {"openai", "httpx", "httpcore", "anyio"} & imported, argv


def test_a_prompts_pipe_is_read_once_whole(tmp_path):
    fifo = tmp_path / "prompts.jsonl"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text('{"prompt": "a", "id": "x"}\nplain\n'))
    writer.start()
    prompts = mini_swe_runner.load_prompts(str(fifo))  # a pipe cannot be read back: no PromptFile
    writer.join(timeout=10)
    assert prompts == mini_swe_runner.parse_prompt_lines(['{"prompt": "a", "id": "x"}', "plain"], str(fifo))


def test_a_parquet_pipe_is_read_once_whole(tmp_path):
    import pyarrow
    import pyarrow.parquet

    table = tmp_path / "table.parquet"
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist([{"prompt": "a", "id": "x"}, {"prompt": "b"}]), str(table))
    fifo = tmp_path / "prompts.parquet"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(table.read_bytes()))
    writer.start()
    prompts = mini_swe_runner.load_prompts(str(fifo))
    writer.join(timeout=10)
    assert [(prompt.text, prompt.task_id) for prompt in prompts] == [
        ("a", "x"),
        ("b", mini_swe_runner.derived_task_id("b", 0)),
    ]


class Cycle:
    """An object that refers to itself: freed by the cycle collector only, never by reference counting."""

    def __init__(self, payload: bytes):
        self.payload, self.me = payload, self
        self.young = [[] for _ in range(1_000)]  # objects the collector tracks: what makes its pass long


def test_full_collections_wait_for_memory_and_still_free_cyclic_garbage(tmp_path):
    """A command-line run turns the automatic full collections off (each stalls the event loop for every tracked
    object) and runs one when memory has grown: cyclic garbage in the oldest generation outlives young collections
    however many objects are promoted, and is freed once it weighs enough; the thresholds come back after."""
    import gc
    import weakref

    thresholds = gc.get_threshold()
    collections = mini_swe_runner.CollectorSchedule()
    try:
        grow = max(collections.GROWTH_FLOOR, collections.baseline * collections.GROWTH) + 48 * 2**20
        garbage = [Cycle(b"\x01" * 2**20) for _ in range(int(grow // 2**20))]
        probe = weakref.ref(garbage[0])
        gc.collect(1)
        gc.collect(1)  # survived two young collections: in the oldest generation, as a model call's objects get
        del garbage
        for _ in range(300):  # young collections by the hundred, over ~100,000 promoted objects: by CPython's own
            [[] for _ in range(1_000)]  # rule (a quarter of the long-lived ones promoted) a full one would be due
        assert probe() is not None, "an automatic full collection ran"
        assert collections.due()

        async def until_freed() -> None:
            collector = asyncio.ensure_future(mini_swe_runner._collect_on_schedule(collections))
            try:
                await wait_for_async(lambda: probe() is None, 10)
            finally:
                collector.cancel()

        asyncio.run(until_freed())
        assert collections.collections == 1 and not collections.due()
    finally:
        collections.close()
    assert gc.get_threshold() == thresholds
    with ScriptedModelServer(quick_script()) as server:  # a run (the command line's path) gives them back too
        outcome, records = run_prompts(make_config(server, tmp_path / "out.jsonl"), ["one", "two"])
    assert outcome.exit_code == 0 and len(records) == 2 and gc.get_threshold() == thresholds


def test_young_collections_run_on_a_clock_when_births_and_deaths_balance():
    """CPython starts a young collection when allocations less deallocations pass its threshold; in a steady run the
    older objects that die cancel the new ones born, and the young generation grows without a collection until one
    walks tens of thousands of objects with the event loop stopped. A command-line run collects the young
    generations on a clock, so they hold what one tick allocated."""
    import gc

    schedule = mini_swe_runner.CollectorSchedule()
    try:
        old = [[] for _ in range(210_000)]  # enough to die for both halves
        gc.collect(1)
        gc.collect(1)  # in the oldest generation, as the objects of model calls that ran for seconds are
        kept: list = []
        young_sizes: list[int] = []

        async def churn(with_schedule: bool) -> None:
            collector = asyncio.ensure_future(mini_swe_runner._collect_on_schedule(schedule)) if with_schedule else None
            try:
                for _ in range(50):  # every 10 ms 2,000 born, each as one of the old dies: the count stays put
                    for _ in range(2_000):
                        kept.append([])
                        old.pop()
                    young_sizes.append(len(gc.get_objects(0)) + len(gc.get_objects(1)))
                    await asyncio.sleep(0.01)
            finally:
                if collector is not None:
                    collector.cancel()

        asyncio.run(churn(with_schedule=False))
        unscheduled = max(young_sizes)
        gc.collect(1)
        young_sizes.clear()
        asyncio.run(churn(with_schedule=True))
        assert unscheduled >= 90_000, unscheduled
        assert max(young_sizes) <= 40_000, young_sizes  # one tick (0.1 s) is ~20,000 births; slack for a slow loop
    finally:
        schedule.close()


async def wait_for_async(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
