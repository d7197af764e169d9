"""A hostile or broken OpenAI-compatible endpoint, and damaged output files: the batch goes on, every task ends with
a valid record that says what happened, a run that cannot work stops in one line, nothing written is lost.

Every model behaviour here comes from the catalogue in tests/model_server.py (HOSTILE), played by the real HTTP
server through the real openai SDK.
"""

from __future__ import annotations

import asyncio
import json
import math
import time

import pytest
from conftest import FINAL, free_port, make_config, read_jsonl, run_cli, run_prompts, tool_results
from model_server import HOSTILE, ScriptedModelServer, http_error, per_conversation, per_prompt, reply, tool_call

import mini_swe_runner
import trajectory


def finish() -> object:
    return reply(None, [tool_call(FINAL)])


def strict_json(line: str) -> dict:
    """A line as a strict JSON parser (and `datasets`) reads it: Infinity and NaN are not JSON."""

    def refuse(constant: str) -> None:
        raise ValueError(f"non-JSON constant {constant}")

    return json.loads(line, parse_constant=refuse)


def assert_valid_record(record: dict) -> None:
    """Every key with its type, a known exit_reason, and each tool_call answered by one result in a tool turn."""
    assert tuple(record) == trajectory.RECORD_KEYS
    assert record["exit_reason"] in trajectory.EXIT_REASONS
    assert isinstance(record["task_id"], str) and isinstance(record["completed"], bool)
    assert isinstance(record["api_calls"], int) and record["api_calls"] >= 0
    assert all(isinstance(v, int) and 0 <= v < 2**53 for v in record["usage"].values())
    assert record["error"] is None or isinstance(record["error"], str)
    assert record["completed"] == (record["exit_reason"] == "completed")
    turns = record["conversations"]
    assert [t["from"] for t in turns[:2]] == ["system", "human"]
    assert all(isinstance(t["value"], str) and t["from"] in ("system", "human", "gpt", "tool") for t in turns)
    for index, turn in enumerate(turns):
        if turn["from"] != "gpt" or "<tool_call>" not in turn["value"]:
            continue
        calls = turn["value"].count("<tool_call>\n")
        assert index + 1 < len(turns) and turns[index + 1]["from"] == "tool", "dangling tool call"
        ids = [r["tool_call_id"] for r in tool_results({"conversations": [turns[index + 1]]})]
        assert len(ids) == calls and all(isinstance(i, str) and i for i in ids) and len(set(ids)) == len(ids)


def read_strict(path) -> list[dict]:
    lines = path.read_bytes().decode("utf-8").splitlines()  # strict UTF-8: no lone surrogate got through
    return [strict_json(line) for line in lines if line.strip()]


# ---------------------------------------------------------------------------------------------------------------
# Each hostile shape alone
# ---------------------------------------------------------------------------------------------------------------

GOES_ON = [name for name, hostile in HOSTILE.items() if not hostile.ends_task]


@pytest.mark.parametrize("name", GOES_ON)
def test_a_hostile_answer_is_survived_and_the_task_goes_on(out, name):
    script = per_prompt({"hostile": [HOSTILE[name].step, finish(), reply("done")]}, per_conversation([reply("ok")]))
    with ScriptedModelServer(script) as server:
        config = make_config(server, out, request_timeout=1, max_retry_after=0.2, workers=1)
        started = time.monotonic()
        outcome, records = run_prompts(config, ["hostile", "healthy"])
    assert time.monotonic() - started < 30
    assert outcome.exit_code == 0, outcome.message
    [record] = [r for r in read_strict(out) if r["conversations"][1]["value"] == "hostile"]
    assert_valid_record(record)
    assert record["completed"], record["error"]
    assert len(records) == 2


def test_ids_of_every_type_become_distinct_strings_that_pair_calls_with_results(out):
    calls = [
        tool_call("echo 1", call_id="x"),
        {**tool_call("echo 2"), "id": {"x": 1}},
        {**tool_call("echo 3"), "id": ["a", 1]},
        {**tool_call("echo 4"), "id": 7},
        {**tool_call("echo 5"), "id": None},
        tool_call("echo 6", call_id="dup"),
        tool_call("echo 7", call_id="dup"),
        tool_call("echo 8", call_id="a\ud800"),
        tool_call("echo 9", call_id="a\ud801"),
        tool_call("echo 10", call_id="call_1"),  # what a generated id for the object id above could have been
    ]
    with ScriptedModelServer(per_conversation([reply(None, calls), reply("done")])) as server:
        outcome, _ = run_prompts(make_config(server, out), ["ids"])
        second = server.requests[1]["messages"]
    [record] = read_strict(out)
    assert_valid_record(record)
    sent_ids = [call["id"] for call in second[2]["tool_calls"]]
    answered = [m["tool_call_id"] for m in second if m["role"] == "tool"]
    assert answered == sent_ids and len(set(sent_ids)) == 10 and all(isinstance(i, str) for i in sent_ids)
    assert sent_ids[0] == "x" and sent_ids[3] == "7" and sent_ids[5] == "dup"
    assert sent_ids[7] != sent_ids[8]  # two distinct lone-surrogate ids stay distinct
    results = tool_results(record)
    assert [r["tool_call_id"] for r in results] == sent_ids  # the record pairs each call with its result, in order
    assert [r["content"]["output"] for r in results] == [f"{n}\n" for n in range(1, 11)]


def test_text_that_cannot_be_encoded_is_repaired_where_it_enters(out):
    steps = [
        HOSTILE["command_surrogate"].step(),
        HOSTILE["arguments_raw_surrogate"].step(),
        HOSTILE["content_surrogate"].step(),
        HOSTILE["reasoning_surrogate"].step(),
        reply("done"),
    ]
    with ScriptedModelServer(per_conversation(steps)) as server:
        run_prompts(make_config(server, out), ["surrogates"])
        last = server.requests[-1]
    assert "_raw" not in last  # every later request was valid JSON in UTF-8
    [record] = read_strict(out)
    assert_valid_record(record)
    assert record["completed"]
    outputs = [r["content"]["output"] for r in tool_results(record)]
    assert outputs[:2] == ["a\ufffdb\n", "raw-\ufffd\n"]
    assistants = [m for m in last["messages"] if m["role"] == "assistant"]
    assert assistants[2]["content"] == "thinking \ufffd aloud"
    assert assistants[3]["reasoning_content"] == "why \ufffd"
    assert assistants[3]["reasoning_details"] == [{"type": "x", "text": "\ufffd"}]


def test_numbers_that_are_not_finite_or_too_big(out):
    steps = [
        HOSTILE["usage_1e999"].step(),
        HOSTILE["usage_10e400"].step(),
        HOSTILE["timeout_10e400"].step(),
        HOSTILE["timeout_nan_inf"].step(),
        reply("done", usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}),
    ]
    with ScriptedModelServer(per_conversation(steps)) as server:
        run_prompts(make_config(server, out, max_command_timeout=5), ["numbers"])
    [record] = read_strict(out)
    assert_valid_record(record)
    assert record["completed"]
    # The absurd counts count as 0; the two sane turns' completion tokens (20 each) and the last turn's remain.
    assert record["usage"]["prompt_tokens"] == 100 * 2 + 1
    results = tool_results(record)
    assert [r["content"]["exit_code"] for r in results] == [0, 0, 0, 0, 0]
    assert results[2]["content"]["output"] == "big-timeout\n"


def test_a_command_with_a_nul_is_explained_not_run(out):
    with ScriptedModelServer(per_conversation([HOSTILE["command_nul"].step(), reply("done")])) as server:
        run_prompts(make_config(server, out), ["nul"])
    [record] = read_strict(out)
    [result] = tool_results(record)
    assert "NUL" in result["content"]["error"] and record["tool_stats"]["terminal"]["failure"] == 1


def test_tool_calls_that_are_not_a_list_are_retried_as_an_unreadable_answer(out):
    with ScriptedModelServer([HOSTILE["tool_calls_number"].step()] * 2) as server:
        _, [record] = run_prompts(make_config(server, out, max_retries=1), ["junk"])
    assert record["exit_reason"] == "api_error"
    assert "unreadable response: tool_calls is 5, not a list" in record["error"]
    assert "gave up after 2 attempts" in record["error"]


def test_a_bug_of_ours_in_one_task_becomes_its_record():
    """A run context whose tool list cannot be serialised: the request and the conversion both fail inside the task.
    The task still returns a valid env_error record instead of raising into the batch."""
    with ScriptedModelServer(per_conversation([reply("ok")])) as server:
        config = make_config(server, "-")

        async def scenario() -> dict:
            model = mini_swe_runner.ModelClient(config)
            broken_tools = [{"type": "function", "function": {"name": "terminal", "parameters": {1, 2}}}]
            ctx = mini_swe_runner.RunContext(config=config, model=model, tools=broken_tools, system_prompt="s")
            try:
                return await mini_swe_runner.run_task(mini_swe_runner.Prompt(0, "a task", "t-0"), ctx)
            finally:
                await model.close()

        record = asyncio.run(scenario())
    assert_valid_record(record)
    assert record["exit_reason"] == "env_error" and record["error"].startswith("internal error: TypeError")
    assert record["conversations"][1] == {"from": "human", "value": "a task"}
    strict_json(trajectory.record_line(record).decode())


# ---------------------------------------------------------------------------------------------------------------
# Endings
# ---------------------------------------------------------------------------------------------------------------


def test_an_empty_answer_cut_off_at_the_token_limit_is_not_a_completion(out):
    steps = [reply(None, [tool_call("echo ran")]), HOSTILE["length_empty"].step()]
    with ScriptedModelServer(per_conversation(steps)) as server:
        outcome, [record] = run_prompts(make_config(server, out), ["truncated"])
    assert_valid_record(record)
    assert record["completed"] is False and record["exit_reason"] == "context_length"
    assert 'finish_reason "length"' in record["error"]
    assert record["exit_reason"] not in trajectory.RETRYABLE_EXIT_REASONS  # the model's own failure, kept
    assert outcome.exit_code == 0


def test_a_truncated_answer_with_text_still_counts_as_its_answer(out):
    with ScriptedModelServer([reply("The answer is 4", finish_reason="length")]) as server:
        _, [record] = run_prompts(make_config(server, out), ["partial"])
    assert record["completed"] and record["exit_reason"] == "completed"


def test_api_calls_counts_the_call_that_finally_failed_and_attempts_read_as_english(out):
    script = per_conversation([reply(None, [tool_call("true")]), http_error(503, "down")])
    with ScriptedModelServer(script) as server:
        _, [record] = run_prompts(make_config(server, out, max_retries=0), ["fails on its second call"])
    assert record["api_calls"] == 2
    assert "gave up after 1 attempt: HTTP 503" in record["error"]


# ---------------------------------------------------------------------------------------------------------------
# Rate limits and time
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, low, high",
    [
        ({"retry-after-ms": "300"}, 0.28, 3),
        ({"x-ratelimit-reset-requests": "1s"}, 0.95, 4),
        ({"x-ratelimit-reset-requests": "60ms"}, 0.0, 3),
        ({"llm_provider-retry-after": "1"}, 0.95, 4),
    ],
)
def test_provider_wait_hints_are_honoured(out, headers, low, high):
    with ScriptedModelServer([http_error(429, "slow down", headers=headers), reply("ok")]) as server:
        started = time.monotonic()
        _, [record] = run_prompts(make_config(server, out, retry_initial_delay=5, retry_max_delay=5), ["wait"])
        elapsed = time.monotonic() - started
    assert record["completed"]
    assert low <= elapsed < high  # the hint, not the 5 s backoff this config would use without one


def test_wait_hint_parsing():
    hint = mini_swe_runner.provider_wait_hint
    assert hint({"x-ratelimit-reset-requests": "6m0s"}).seconds == 360
    assert hint({"x-ratelimit-reset-requests": "1h2m3.5s"}).seconds == 3723.5
    assert hint({"retry-after-ms": "150", "retry-after": "9"}).seconds == 0.15
    assert hint({"retry-after": "-5"}).seconds == 0
    assert 86000 < hint({"retry-after": a_day_ahead()}).seconds <= 86400
    for junk in ("nan", "inf", "soon", "", "1e999"):
        assert hint({"retry-after": junk}) is None, junk
    assert hint({}) is None and hint(None) is None


def a_day_ahead() -> str:
    return HOSTILE["retry_after_http_date"].step().headers["Retry-After"]


def test_a_huge_retry_after_is_capped_and_said_once(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(f"task {i}\n" for i in range(4)))
    huge = [HOSTILE["retry_after_huge"].step, HOSTILE["retry_after_http_date"].step, reply("ok")]
    script = per_prompt({f"task {i}": huge for i in range(4)}, per_conversation([reply("ok")]))
    with ScriptedModelServer(script) as server:
        started = time.monotonic()
        result = run_cli(
            [
                "--prompts_file",
                str(prompts),
                "--output_file",
                str(tmp_path / "o.jsonl"),
                "--base_url",
                server.base_url,
                "--model",
                "m",
                "--max_retry_after",
                "1",
                "--workers",
                "4",
            ],
            cwd=tmp_path,
            timeout=60,
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 20
    said = [line for line in result.stderr.splitlines() if "asked to wait" in line]
    assert len(said) == 1 and "100000 s" in said[0] and "--max_retry_after" in said[0]
    assert all(r["completed"] for r in read_jsonl(tmp_path / "o.jsonl"))


def test_429s_are_bounded_by_time_not_by_the_retry_count(out):
    limited = http_error(429, "slow down", headers={"retry-after-ms": "50"})
    with ScriptedModelServer([limited] * 8 + [reply("finally")]) as server:
        _, [record] = run_prompts(make_config(server, out, max_retries=1), ["patient"])
    assert record["completed"] and record["api_calls"] == 1

    with ScriptedModelServer(lambda request: limited) as server:
        started = time.monotonic()
        _, [record] = run_prompts(make_config(server, out, overwrite=True, max_rate_limit_wait=0.5), ["limited"])
        elapsed = time.monotonic() - started
    assert record["exit_reason"] == "api_error" and "still rate limited" in record["error"]
    assert "--max_rate_limit_wait 0.5" in record["error"]
    assert 0.45 <= elapsed < 5


def test_retry_after_zero_again_and_again_backs_off_instead_of_hammering(out):
    now = http_error(429, "slow down", headers={"Retry-After": "0"})
    with ScriptedModelServer(lambda request: now) as server:
        config = make_config(server, out, max_rate_limit_wait=2, retry_initial_delay=0.2, retry_max_delay=1)
        _, [record] = run_prompts(config, ["limited"])
        asked = len(server.requests)
    assert record["exit_reason"] == "api_error"
    assert asked <= 8  # 0.2, 0.4, 0.8, 1 s... apart, not hundreds of requests in 2 s


def test_a_trickling_body_times_out_as_a_whole(tmp_path):
    steps = [HOSTILE["trickle"].step(), reply("done")]  # in order: the trickle, then the retry's answer
    with ScriptedModelServer(steps) as server:
        started = time.monotonic()
        result = run_cli(
            [
                "--task",
                "trickle",
                "--output_file",
                str(tmp_path / "o.jsonl"),
                "--base_url",
                server.base_url,
                "--model",
                "m",
                "--request_timeout",
                "1",
            ],
            cwd=tmp_path,
            timeout=60,
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 20
    [record] = read_jsonl(tmp_path / "o.jsonl")
    assert record["completed"] and record["conversations"][-1]["value"] == "done"


def test_waiting_behind_another_tasks_rate_limit_does_not_time_out_healthy_tasks(out):
    """Task "limited" gets a 429 asking for 2.5 s, which pauses every worker; the healthy tasks need a second model
    call during that pause. With --task_timeout 1.5 they used to end as `timeout`, which resume never retries."""
    delayed_call = reply(None, [tool_call("echo step")])
    slow_first = [lambda: _delayed(0.3, delayed_call), reply("done")]
    scripts = {
        "limited": [http_error(429, "slow down", headers={"Retry-After": "2.5"}), reply("done")],
        "healthy 1": slow_first,
        "healthy 2": slow_first,
    }
    with ScriptedModelServer(per_prompt(scripts, per_conversation([reply("ok")]))) as server:
        started = time.monotonic()
        outcome, records = run_prompts(
            make_config(server, out, workers=3, task_timeout=1.5), ["limited", "healthy 1", "healthy 2"]
        )
        elapsed = time.monotonic() - started
    assert elapsed >= 2.4  # the pause really happened, longer than the task timeout
    assert sorted(r["exit_reason"] for r in records) == ["completed"] * 3


def test_a_task_that_really_runs_too_long_still_times_out(out):
    script = per_conversation([reply(None, [tool_call("sleep 30")]), reply("never")])
    with ScriptedModelServer(script) as server:
        _, [record] = run_prompts(make_config(server, out, task_timeout=1), ["slow"])
    assert record["exit_reason"] == "timeout"


def _delayed(seconds: float, step):
    from model_server import delayed

    return delayed(seconds, step)


# ---------------------------------------------------------------------------------------------------------------
# Runs that cannot work
# ---------------------------------------------------------------------------------------------------------------


def test_a_refused_endpoint_stops_the_run_before_the_first_task(out, tmp_path):
    config = make_config(type("S", (), {"base_url": f"http://127.0.0.1:{free_port()}/v1"}), out)
    prompts = mini_swe_runner.parse_prompt_lines([f"task {i}" for i in range(16)], "test")
    outcome = asyncio.run(mini_swe_runner.run_batch(config, prompts))
    # Said by the endpoint check, before any task: tasks that had started would have retried, then each written an
    # api_error record (no clock here: under load `import openai` alone took 2 s).
    assert outcome.exit_code == 1 and "cannot reach the model API" in outcome.message
    assert "connection refused" in outcome.message and "timed out" not in outcome.message
    assert not out.exists()  # nothing written: the file the run created is not left behind empty

    result = run_cli(
        ["--task", "x", "--output_file", str(out), "--base_url", f"http://127.0.0.1:{free_port()}/v1"],
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "connection refused" in result.stderr


def test_a_rejected_key_at_the_endpoint_check_stops_before_any_model_call(out):
    with ScriptedModelServer(lambda request: reply("never"), models=http_error(401, "bad key")) as server:
        outcome, records = run_prompts(make_config(server, out), ["a", "b"])
        assert server.requests == []
    assert outcome.exit_code == 1 and "401" in outcome.message and "bad key" in outcome.message
    assert records == []


def test_an_endpoint_without_a_models_route_is_still_used(out):
    with ScriptedModelServer(lambda request: reply("ok"), models=http_error(404, "no such route")) as server:
        outcome, [record] = run_prompts(make_config(server, out), ["a"])
    assert outcome.exit_code == 0 and record["completed"]


@pytest.mark.parametrize("name", ["litellm_invalid_model", "litellm_no_db"])
def test_the_same_permanent_api_error_on_the_first_tasks_stops_the_run(tmp_path, name):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(f"task {i}\n" for i in range(40)))
    with ScriptedModelServer(lambda request: HOSTILE[name].step()) as server:
        result = run_cli(
            [
                "--prompts_file",
                str(prompts),
                "--output_file",
                str(tmp_path / "o.jsonl"),
                "--base_url",
                server.base_url,
                "--model",
                "no-such-model",
                "--workers",
                "2",
            ],
            cwd=tmp_path,
            timeout=60,
        )
        asked = len(server.requests)
    assert result.returncode == 1
    message = json.loads(HOSTILE[name].step().body)["error"]["message"]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message.split(".")[0] in lines[0] and "first 3 tasks" in lines[0], result.stderr
    assert asked <= 4  # not the whole batch
    assert len(read_jsonl(tmp_path / "o.jsonl")) <= 2


def test_a_run_in_which_every_task_failed_exits_non_zero(out, tmp_path):
    missing = str(tmp_path / "missing")
    lines = [json.dumps({"prompt": f"p{i}", "cwd": missing}) for i in range(2)]
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        outcome, records = run_prompts(make_config(server, out), lines)
    assert len(records) == 2 and {r["exit_reason"] for r in records} == {"env_error"}
    assert outcome.exit_code == 1 and "every task failed" in outcome.message and "does not exist" in outcome.message

    with ScriptedModelServer(lambda request: http_error(400, "tools are not supported")) as server:
        outcome, records = run_prompts(make_config(server, out, overwrite=True), ["one", "two"])
    assert outcome.exit_code == 1 and "tools are not supported" in outcome.message


# ---------------------------------------------------------------------------------------------------------------
# Damaged lines
# ---------------------------------------------------------------------------------------------------------------


def test_reader_counts_damaged_lines(tmp_path):
    path = tmp_path / "o.jsonl"
    path.write_text(
        json.dumps({"task_id": "ok", "exit_reason": "completed"})
        + "\n"
        + json.dumps({"task_id": "x", "exit_reason": ["completed"]})
        + "\n"
        + "{" * 0
        + "[" * 100_000
        + "]" * 100_000
        + "\n"
    )
    result = trajectory.read_records(str(path))
    assert [r["task_id"] for r in result.records] == ["ok"] and result.bad_lines == 2
    compacted = trajectory.compact_for_resume(str(path))
    assert compacted.done_ids == {"ok"} and compacted.dropped_bad_lines == 2


# ---------------------------------------------------------------------------------------------------------------
# All of it at once
# ---------------------------------------------------------------------------------------------------------------


def test_a_batch_with_one_task_answered_by_every_hostile_shape(tmp_path):
    """10 tasks; task 0's requests get every shape of the catalogue in turn (the task goes on after each, save the
    last). Every task ends with a valid record, the run exits 0, in bounded time."""
    order = [name for name in HOSTILE if not HOSTILE[name].ends_task]
    ending = next(name for name in HOSTILE if HOSTILE[name].ends_task)
    hostile_steps = [HOSTILE[name].step for name in order] + [HOSTILE[ending].step]
    healthy = per_conversation([reply(None, [tool_call("echo working")]), finish()])
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(f"task {i}\n" for i in range(10)))
    output = tmp_path / "o.jsonl"
    with ScriptedModelServer(per_prompt({"task 0": hostile_steps}, healthy)) as server:
        started = time.monotonic()
        result = run_cli(
            [
                "--prompts_file",
                str(prompts),
                "--output_file",
                str(output),
                "--base_url",
                server.base_url,
                "--model",
                "m",
                "--workers",
                "4",
                "--request_timeout",
                "1",
                "--max_retry_after",
                "0.2",
                "--max_retries",
                "10",
                "--max_iterations",
                "100",
                "--task_timeout",
                "120",
            ],
            cwd=tmp_path,
            timeout=180,
        )
        elapsed = time.monotonic() - started
        hostile_requests = sum(1 for r in server.requests if r.get("messages", [{}, {}])[1].get("content") == "task 0")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 90
    records = read_strict(output)
    assert len(records) == 10
    for record in records:
        assert_valid_record(record)
    by_prompt = {r["conversations"][1]["value"]: r for r in records}
    assert all(by_prompt[f"task {i}"]["completed"] for i in range(1, 10))
    hostile = by_prompt["task 0"]
    assert hostile_requests == len(hostile_steps)  # every shape was really played
    assert hostile["exit_reason"] in ("api_error", "context_length") and hostile["error"]
    assert not math.isnan(hostile["duration_s"])
