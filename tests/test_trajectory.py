"""trajectory.py against the record spec: Hermes turns, records, the JSONL writer and the resume reader.

Expected values are written out by hand from the spec (trajectory-format.md), never computed with the
functions under test.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ROOT, small_tmpfs

from trajectory import (
    RECORD_KEYS,
    JsonlWriter,
    build_record,
    compact_for_resume,
    hermes_system_value,
    read_records,
    to_hermes,
)

RECORD_USAGE_KEYS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "reasoning_tokens",
    "cached_tokens",
    "cache_write_tokens",
)

TERMINAL_TOOL = {
    "type": "function",
    "function": {
        "name": "terminal",
        "description": "Run a bash command — output is merged stdout+stderr",
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "string", "description": "the command"}},
            "required": ["command"],
        },
    },
}

# The spec's template, line by line; TOOLS is the only variable part.
SPEC_TEMPLATE_LINES = [
    "You are a function calling AI model. You are provided with function signatures within <tools> </tools> XML "
    "tags. You may call one or more functions to assist with the user query. If available tools are not relevant in "
    "assisting with user query, just respond in natural conversational language. Don't make assumptions about what "
    "values to plug into functions. After calling & executing the functions, you will be provided with function "
    "results within <tool_response> </tool_response> XML tags. Here are the available tools:",
    "<tools>",
    "TOOLS",
    "</tools>",
    "For each function call return a JSON object, with the following pydantic model json schema for each:",
    "{'title': 'FunctionCall', 'type': 'object', 'properties': {'name': {'title': 'Name', 'type': 'string'}, "
    "'arguments': {'title': 'Arguments', 'type': 'object'}}, 'required': ['name', 'arguments']}",
    "Each function call should be enclosed within <tool_call> </tool_call> XML tags.",
    "Example:",
    "<tool_call>",
    "{'name': <function-name>,'arguments': <args-dict>}",
    "</tool_call>",
]


def spec_system_value(tools_json: str) -> str:
    lines = [tools_json if line == "TOOLS" else line for line in SPEC_TEMPLATE_LINES]
    return "\n".join(lines)


TERMINAL_TOOLS_JSON = json.dumps(
    [
        {
            "name": "terminal",
            "description": "Run a bash command — output is merged stdout+stderr",
            "parameters": {
                "type": "object",
                "properties": {"command": {"type": "string", "description": "the command"}},
                "required": ["command"],
            },
            "required": None,
        }
    ],
    ensure_ascii=False,
)
SYSTEM_TURN = {"from": "system", "value": spec_system_value(TERMINAL_TOOLS_JSON)}


def call(call_id: str, name: str, arguments: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def terminal_result(call_id: str, output: str, exit_code: int = 0, error: str | None = None) -> dict:
    content = json.dumps({"output": output, "exit_code": exit_code, "error": error}, ensure_ascii=False)
    return {"role": "tool", "tool_call_id": call_id, "content": content}


# ---------------------------------------------------------------------------------------------------------------
# The system turn
# ---------------------------------------------------------------------------------------------------------------


def test_system_value_is_the_spec_template_exactly():
    value = hermes_system_value([TERMINAL_TOOL])
    expected = spec_system_value(TERMINAL_TOOLS_JSON)
    assert value == expected
    assert not value.endswith("\n")
    assert "—" in value and "\\u2014" not in value  # ensure_ascii=False
    assert '"required": null}]' in value


def test_system_value_lists_every_tool_in_order():
    other = {"type": "function", "function": {"name": "search", "description": "d", "parameters": {}}}
    value = hermes_system_value([TERMINAL_TOOL, other])
    tools_line = value.split("\n")[2]
    assert json.loads(tools_line) == [
        json.loads(TERMINAL_TOOLS_JSON)[0],
        {"name": "search", "description": "d", "parameters": {}, "required": None},
    ]


# ---------------------------------------------------------------------------------------------------------------
# Messages -> Hermes turns
# ---------------------------------------------------------------------------------------------------------------


def test_plain_final_answer_and_system_message_dropped():
    messages = [
        {"role": "system", "content": "You are a careful agent. SYSTEM-PROMPT-TEXT"},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 4.  \n\n"},
    ]
    turns = to_hermes(messages, [TERMINAL_TOOL])
    assert turns == [
        SYSTEM_TURN,
        {"from": "human", "value": "What is 2+2?"},
        {"from": "gpt", "value": "It is 4."},
    ]
    assert "SYSTEM-PROMPT-TEXT" not in json.dumps(turns)


def test_content_and_one_tool_call():
    messages = [
        {"role": "user", "content": "List the files."},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [call("call_1", "terminal", '{"command": "ls"}')],
        },
        terminal_result("call_1", "a.txt\n"),
        {"role": "assistant", "content": "There is one file: a.txt."},
    ]
    assert to_hermes(messages, [TERMINAL_TOOL]) == [
        SYSTEM_TURN,
        {"from": "human", "value": "List the files."},
        {
            "from": "gpt",
            "value": 'Let me look.\n<tool_call>\n{"name": "terminal", "arguments": {"command": "ls"}}\n</tool_call>',
        },
        {
            "from": "tool",
            "value": '<tool_response>\n{"tool_call_id": "call_1", "name": "terminal", "content": '
            '{"output": "a.txt\\n", "exit_code": 0, "error": null}}\n</tool_response>',
        },
        {"from": "gpt", "value": "There is one file: a.txt."},
    ]


PARALLEL_ASSISTANT = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        call("call_a", "terminal", '{"command": "pwd"}'),
        call("call_b", "python", '{"code": "print(1)"}'),
    ],
}
PARALLEL_GPT_VALUE = (
    '<tool_call>\n{"name": "terminal", "arguments": {"command": "pwd"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "python", "arguments": {"code": "print(1)"}}\n</tool_call>'
)
PARALLEL_TOOL_VALUE = (
    '<tool_response>\n{"tool_call_id": "call_a", "name": "terminal", "content": '
    '{"output": "/work\\n", "exit_code": 0, "error": null}}\n</tool_response>\n'
    '<tool_response>\n{"tool_call_id": "call_b", "name": "python", "content": '
    '{"output": "", "exit_code": 1, "error": "boom"}}\n</tool_response>'
)


@pytest.mark.parametrize("results_order", ["call order", "reversed"])
def test_parallel_tool_calls_form_one_tool_turn_in_call_order(results_order):
    results = [terminal_result("call_a", "/work\n"), terminal_result("call_b", "", 1, "boom")]
    if results_order == "reversed":
        results.reverse()
    messages = [{"role": "user", "content": "go"}, PARALLEL_ASSISTANT, *results, {"role": "assistant", "content": "ok"}]
    assert to_hermes(messages, [TERMINAL_TOOL]) == [
        SYSTEM_TURN,
        {"from": "human", "value": "go"},
        {"from": "gpt", "value": PARALLEL_GPT_VALUE},
        {"from": "tool", "value": PARALLEL_TOOL_VALUE},
        {"from": "gpt", "value": "ok"},
    ]


def test_trajectory_may_end_with_the_tool_turn():
    messages = [
        {"role": "user", "content": "go"},
        PARALLEL_ASSISTANT,
        terminal_result("call_a", "/work\n"),
        terminal_result("call_b", "", 1, "boom"),
    ]
    turns = to_hermes(messages, [TERMINAL_TOOL])
    assert [t["from"] for t in turns] == ["system", "human", "gpt", "tool"]
    assert turns[-1]["value"] == PARALLEL_TOOL_VALUE


@pytest.mark.parametrize("key", ["reasoning", "reasoning_content"])
def test_reasoning_becomes_a_think_prefix(key):
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!", key: "The user greets me."},
        {"role": "user", "content": "run ls"},
        {"role": "assistant", "content": "", key: "Use the tool.", "tool_calls": [call("c1", "terminal", "{}")]},
    ]
    turns = to_hermes(messages, [TERMINAL_TOOL])
    assert turns[2] == {"from": "gpt", "value": "<think>\nThe user greets me.\n</think>\nHello!"}
    assert turns[4] == {
        "from": "gpt",
        "value": '<think>\nUse the tool.\n</think>\n<tool_call>\n{"name": "terminal", "arguments": {}}\n</tool_call>',
    }


@pytest.mark.parametrize("arguments", ['{"command": "ls"', "not json at all", "[1, 2]", "", '"{}"'])
def test_malformed_arguments_are_kept_as_the_raw_string(arguments):
    messages = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [call("c1", "terminal", arguments)]},
    ]
    value = to_hermes(messages, [TERMINAL_TOOL])[2]["value"]
    payload = json.loads(value.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>"))
    assert payload == {"name": "terminal", "arguments": arguments}  # never a silent {}


def test_tool_content_json_object_stays_an_object_and_text_stays_a_string():
    messages = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [call("c1", "terminal", "{}"), call("c2", "other", "{}")]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"output": "hi", "exit_code": 0, "error": null}'},
        {"role": "tool", "tool_call_id": "c2", "content": "plain text, not {json}"},
    ]
    value = to_hermes(messages, [TERMINAL_TOOL])[3]["value"]
    assert value == (
        '<tool_response>\n{"tool_call_id": "c1", "name": "terminal", "content": '
        '{"output": "hi", "exit_code": 0, "error": null}}\n</tool_response>\n'
        '<tool_response>\n{"tool_call_id": "c2", "name": "other", "content": "plain text, not {json}"}\n'
        "</tool_response>"
    )
    first_block = value.split("\n")[1]
    assert isinstance(json.loads(first_block)["content"], dict)  # not re-encoded into a string


def test_non_ascii_text_is_kept_unescaped():
    messages = [
        {"role": "user", "content": "Ünïcødé ✓ 日本語"},
        {"role": "assistant", "content": "Voilà", "tool_calls": [call("c1", "terminal", '{"command": "echo café"}')]},
        terminal_result("c1", "café ☕\n"),
    ]
    turns = to_hermes(messages, [TERMINAL_TOOL])
    assert turns[1]["value"] == "Ünïcødé ✓ 日本語"
    assert (
        turns[2]["value"]
        == 'Voilà\n<tool_call>\n{"name": "terminal", "arguments": {"command": "echo café"}}\n</tool_call>'
    )
    assert turns[3]["value"] == (
        '<tool_response>\n{"tool_call_id": "c1", "name": "terminal", "content": '
        '{"output": "café ☕\\n", "exit_code": 0, "error": null}}\n</tool_response>'
    )
    assert "\\u" not in json.dumps(turns, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------------------

SPEC_KEYS = (
    "prompt_index",
    "task_id",
    "sample_index",
    "conversations",
    "completed",
    "exit_reason",
    "api_calls",
    "tool_stats",
    "usage",
    "duration_s",
    "verification",
    "reward",
    "error",
    "patch",
    "cost",
    "cost_source",
    "tokens",
    "metadata",
)
CONVERSATION = [SYSTEM_TURN, {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]


def success_record(**overrides) -> dict:
    fields = dict(
        prompt_index=0,
        task_id="task-0",
        conversations=CONVERSATION,
        completed=True,
        exit_reason="completed",
        api_calls=3,
        tool_stats={"terminal": {"count": 2, "success": 1, "failure": 1}},
        usage={"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120, "reasoning_tokens": 5},
        duration_s=2,  # an int on purpose: the record must still carry a float
        error=None,
        metadata={"model": "test-model", "env_type": "local", "image": None, "timestamp": "2024-05-01T12:00:00+00:00"},
    )
    fields.update(overrides)
    return build_record(**fields)


def failure_record(**overrides) -> dict:
    fields = dict(
        prompt_index=7,
        task_id="task-7",
        conversations=CONVERSATION[:2],
        completed=False,
        exit_reason="api_error",
        api_calls=0,
        tool_stats={"terminal": {"count": 0, "success": 0, "failure": 0}},
        usage={"prompt_tokens": 0},  # partial usage is filled with zeros
        duration_s=0.25,
        error="model server returned HTTP 500 three times",
        metadata={
            "model": "test-model",
            "env_type": "docker",
            "image": "python:3.11",
            "timestamp": "2024-05-01T12:00:01",
        },
    )
    fields.update(overrides)
    return build_record(**fields)


def assert_spec_types(record: dict) -> None:
    assert tuple(record) == SPEC_KEYS
    assert type(record["prompt_index"]) is int
    assert type(record["task_id"]) is str
    assert isinstance(record["conversations"], list)
    for turn in record["conversations"]:
        assert set(turn) == {"from", "value"}
        assert turn["from"] in {"system", "human", "gpt", "tool"} and type(turn["value"]) is str
    assert type(record["completed"]) is bool
    assert record["exit_reason"] in (
        "completed",
        "max_iterations",
        "api_error",
        "context_length",
        "env_error",
        "timeout",
        "interrupted",
    )
    assert type(record["api_calls"]) is int
    assert list(record["tool_stats"]) == ["terminal"]
    assert set(record["tool_stats"]["terminal"]) == {"count", "success", "failure"}
    assert all(type(v) is int for v in record["tool_stats"]["terminal"].values())
    assert set(record["usage"]) == {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "reasoning_tokens",
        "cached_tokens",
        "cache_write_tokens",
    }
    assert all(type(v) is int for v in record["usage"].values())
    assert type(record["duration_s"]) is float
    assert type(record["sample_index"]) is int
    verification = record["verification"]
    if verification is None:
        assert record["reward"] is None
    else:
        assert list(verification) == ["passed", "exit_code", "output", "duration_s", "error", "baseline"]
        baseline = verification["baseline"]
        assert baseline is None or list(baseline) == ["passed", "exit_code", "duration_s", "error"]
        assert type(verification["passed"]) is bool and type(verification["output"]) is str
        assert verification["exit_code"] is None or type(verification["exit_code"]) is int
        assert type(verification["duration_s"]) is float
        assert verification["error"] is None or type(verification["error"]) is str
        assert record["reward"] is None or type(record["reward"]) is float
    assert record["error"] is None or type(record["error"]) is str
    assert record["patch"] is None or type(record["patch"]) is str
    assert list(record["metadata"]) == [
        "model",
        "env_type",
        "image",
        "timestamp",
        "sampling",
        "config_hash",
        "prompt_hash",
        "prompt_fields",
    ]
    assert list(record["metadata"]["sampling"]) == ["temperature", "top_p", "max_tokens", "reasoning_effort"]
    assert type(record["metadata"]["config_hash"]) is str
    assert type(record["metadata"]["prompt_hash"]) is str
    assert type(record["metadata"]["prompt_fields"]) is str and isinstance(
        json.loads(record["metadata"]["prompt_fields"]), dict
    )
    assert type(record["metadata"]["model"]) is str and type(record["metadata"]["env_type"]) is str
    assert record["metadata"]["image"] is None or type(record["metadata"]["image"]) is str
    assert type(record["metadata"]["timestamp"]) is str


def test_record_keys_are_the_spec_keys():
    assert tuple(RECORD_KEYS) == SPEC_KEYS


def test_success_record_has_every_key_with_the_spec_types():
    record = success_record()
    assert_spec_types(record)
    assert record["duration_s"] == 2.0 and record["error"] is None and record["metadata"]["image"] is None
    assert_spec_types(json.loads(json.dumps(record)))  # the types survive JSON (2.0 stays a float)


def test_failure_record_has_every_key_with_the_spec_types():
    record = failure_record()
    assert_spec_types(record)
    assert set(record["usage"]) == set(RECORD_USAGE_KEYS) and not any(record["usage"].values())
    assert record["error"] == "model server returned HTTP 500 three times"
    assert record["metadata"]["image"] == "python:3.11"
    assert_spec_types(json.loads(json.dumps(record)))


@pytest.mark.parametrize("exit_reason", ["done", "", "Completed", None])
def test_unknown_exit_reason_is_rejected(exit_reason):
    with pytest.raises(ValueError):
        success_record(exit_reason=exit_reason)


# ---------------------------------------------------------------------------------------------------------------
# The writer
# ---------------------------------------------------------------------------------------------------------------


def test_concurrent_writers_produce_only_whole_lines(tmp_path):
    path = tmp_path / "out.jsonl"
    threads_count, per_thread = 8, 25
    barrier = threading.Barrier(threads_count)
    writer = JsonlWriter(str(path))

    def work(thread_index: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            # Sizes from a few bytes to ~200 KB, so an unlocked or split write would interleave.
            payload = chr(ord("a") + thread_index) * ((i * 7919 + thread_index * 104729) % 200_000)
            writer.write(success_record(task_id=f"t{thread_index}-{i}", error=payload))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()

    data = path.read_bytes()
    assert data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    assert len(lines) == threads_count * per_thread == writer.written
    task_ids = set()
    for line in lines:
        record = json.loads(line)
        thread_index, i = (int(part) for part in record["task_id"][1:].split("-"))
        assert record["error"] == chr(ord("a") + thread_index) * ((i * 7919 + thread_index * 104729) % 200_000)
        task_ids.add(record["task_id"])
    assert len(task_ids) == threads_count * per_thread


def test_writer_appends_to_an_existing_file(tmp_path):
    path = tmp_path / "out.jsonl"
    with JsonlWriter(str(path)) as writer:
        writer.write(success_record(task_id="first"))
    with JsonlWriter(str(path)) as writer:
        writer.write(success_record(task_id="second"))
    assert [json.loads(line)["task_id"] for line in path.read_text().splitlines()] == ["first", "second"]


def test_dash_writes_to_stdout_and_leaves_stdout_open():
    script = (
        "import sys\n"
        "from trajectory import JsonlWriter, build_record\n"
        "record = build_record(prompt_index=0, task_id='stdout-task', conversations=[], completed=True,\n"
        "    exit_reason='completed', api_calls=1, tool_stats={'terminal': {'count': 0, 'success': 0, 'failure': 0}},\n"
        "    usage={}, duration_s=1.5, error=None, metadata={'model': 'm', 'env_type': 'local', 'timestamp': 't'})\n"
        "writer = JsonlWriter('-')\n"
        "writer.write(record)\n"
        "writer.write(dict(record, task_id='ünïcode'))\n"
        "writer.close()\n"
        "sys.stdout.write('still open\\n')\n"
    )
    completed = subprocess.run(
        [sys.executable, "-P", "-c", script], cwd=ROOT, capture_output=True, timeout=30, check=True
    )
    lines = completed.stdout.decode("utf-8").split("\n")
    assert [json.loads(line)["task_id"] for line in lines[:2]] == ["stdout-task", "ünïcode"]
    assert lines[2:] == ["still open", ""]
    assert "ünïcode".encode() in completed.stdout  # raw UTF-8, not \u escapes


def test_lone_surrogate_still_writes_valid_utf8(tmp_path):
    path = tmp_path / "out.jsonl"
    with JsonlWriter(str(path)) as writer:
        writer.write(
            success_record(
                task_id="s",
                error="before \ud800 after",
                conversations=[
                    {"from": "gpt", "value": "split pair \ud83d\ude00 and lone \udfff"},
                ],
            )
        )
    text = path.read_bytes().decode("utf-8")  # strict: raises on invalid UTF-8
    record = json.loads(text)
    assert record["error"] == "before \ufffd after"
    assert record["conversations"][0]["value"] == "split pair 😀 and lone \ufffd"


# ---------------------------------------------------------------------------------------------------------------
# The reader and resume
# ---------------------------------------------------------------------------------------------------------------


def line(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode()


def write_history(path: Path) -> None:
    """An output file after a crash: every ending, a duplicate, a retryable-then-final task and a torn last line."""
    path.write_bytes(
        line(success_record(task_id="done", api_calls=1))
        + line(success_record(task_id="maxed", exit_reason="max_iterations", completed=False))
        + line(failure_record(task_id="api", exit_reason="api_error"))
        + line(success_record(task_id="long", exit_reason="context_length", completed=False))
        + line(failure_record(task_id="env", exit_reason="env_error"))
        + line(success_record(task_id="slow", exit_reason="timeout", completed=False))
        + line(failure_record(task_id="retried", exit_reason="interrupted"))
        + line(success_record(task_id="retried"))
        + line(success_record(task_id="done", api_calls=2))
        + line(failure_record(task_id="cut", exit_reason="interrupted"))[:57]
    )


def test_read_records_drops_and_counts_a_torn_last_line(tmp_path):
    path = tmp_path / "out.jsonl"
    write_history(path)
    result = read_records(str(path))
    assert result.bad_lines == 1
    assert [r["task_id"] for r in result.records] == [
        "done",
        "maxed",
        "api",
        "long",
        "env",
        "slow",
        "retried",
        "retried",
        "done",
    ]


def test_compact_keeps_final_records_once_and_drops_the_rest_atomically(tmp_path):
    path = tmp_path / "out.jsonl"
    write_history(path)
    inode_before = path.stat().st_ino

    result = compact_for_resume(str(path))

    assert result.done_ids == {"done", "maxed", "long", "slow", "retried"}
    assert (result.dropped_retryable, result.dropped_bad_lines, result.dropped_duplicates) == (3, 1, 1)
    records = [json.loads(raw) for raw in path.read_bytes().decode().splitlines()]
    by_id = {r["task_id"]: r for r in records}
    assert len(records) == len(by_id) == 5
    assert by_id["done"]["api_calls"] == 2  # the last of the duplicates
    assert {r["exit_reason"] for r in records} == {"completed", "max_iterations", "context_length", "timeout"}
    assert path.read_bytes().endswith(b"\n")
    assert path.stat().st_ino != inode_before  # replaced by rename, not rewritten in place
    assert os.listdir(tmp_path) == ["out.jsonl"]  # no temp file left beside it

    # The resumed run appends to the compacted file: every line is whole.
    with JsonlWriter(str(path)) as writer:
        writer.write(success_record(task_id="api"))
    again = read_records(str(path))
    assert again.bad_lines == 0 and len(again.records) == 6


@pytest.mark.parametrize("dropped", ["retryable", "duplicate", "torn"])
def test_compact_rewrites_for_each_kind_of_drop(tmp_path, dropped):
    path = tmp_path / "out.jsonl"
    tail = {
        "retryable": line(failure_record(task_id="b", exit_reason="env_error")),
        "duplicate": line(success_record(task_id="a")),
        "torn": b'{"task_id": "b", "conv',
    }[dropped]
    path.write_bytes(line(success_record(task_id="a")) + tail)
    inode_before = path.stat().st_ino
    result = compact_for_resume(str(path))
    assert result.done_ids == {"a"}
    assert path.stat().st_ino != inode_before
    assert [json.loads(raw)["task_id"] for raw in path.read_bytes().splitlines()] == ["a"]
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_a_compaction_that_runs_out_of_room_leaves_the_file_as_it_was_and_no_temporary(tmp_path):
    """The output fills most of a 64 KB tmpfs: its compaction's copy does not fit. The file keeps every byte, and the
    partial copy goes at once (on a full disk, its space is what the user needs back)."""
    with small_tmpfs(tmp_path / "small", "64k") as small:
        path = small / "out.jsonl"
        lines = [line(success_record(task_id=f"t{n}")) for n in range(20)]  # ~2.2 KB each
        path.write_bytes(b"".join(lines) + line(failure_record(task_id="b", exit_reason="env_error")))
        before = path.read_bytes()
        assert 40_000 < len(before) < 48_000
        with pytest.raises(OSError) as raised:
            compact_for_resume(str(path))
        assert raised.value.errno == errno.ENOSPC
        assert path.read_bytes() == before
        assert os.listdir(small) == ["out.jsonl"]


def test_compact_leaves_a_clean_file_untouched(tmp_path):
    path = tmp_path / "out.jsonl"
    content = (
        line(success_record(task_id="a"))
        + line(success_record(task_id="b", exit_reason="max_iterations", completed=False))
        + line(success_record(task_id="c", exit_reason="timeout", completed=False))
    )
    path.write_bytes(content)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    before = path.stat()
    result = compact_for_resume(str(path))
    after = path.stat()
    assert result.done_ids == {"a", "b", "c"}
    assert (result.dropped_retryable, result.dropped_bad_lines, result.dropped_duplicates) == (0, 0, 0)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert path.read_bytes() == content
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_complete_last_line_missing_only_its_newline_survives_the_next_append(tmp_path):
    # A write cut just before its "\n" leaves a valid record with no newline; the resumed run must not glue
    # its first record onto it.
    path = tmp_path / "out.jsonl"
    path.write_bytes(line(success_record(task_id="a")) + line(success_record(task_id="b"))[:-1])
    result = compact_for_resume(str(path))
    assert result.done_ids == {"a", "b"}
    with JsonlWriter(str(path)) as writer:
        writer.write(success_record(task_id="c"))
    again = read_records(str(path))
    assert again.bad_lines == 0
    assert [r["task_id"] for r in again.records] == ["a", "b", "c"]


def test_compact_copies_the_kept_lines_byte_for_byte_and_takes_settings_from_them_only(tmp_path):
    path = tmp_path / "out.jsonl"
    # Lines another writer spaced or ordered differently are kept exactly as written, never re-serialised.
    spaced = json.dumps(success_record(task_id="a"), indent=None, separators=(",", ":")).encode() + b"  \n"
    first = line(success_record(task_id="b", metadata={**success_record()["metadata"], "config_hash": "old"}))
    later = line(success_record(task_id="b", metadata={**success_record()["metadata"], "config_hash": "new"}))
    path.write_bytes(spaced + first + line(failure_record(task_id="c", exit_reason="api_error")) + later)
    result = compact_for_resume(str(path))
    assert path.read_bytes() == spaced + later
    assert result.done == {("a", 0): None, ("b", 0): None}
    # b's superseded record was written with settings "old": no record kept has them, so resume need not refuse.
    assert set(result.settings) == {success_record()["metadata"]["config_hash"], "new"}


@pytest.mark.parametrize(
    "raw, kept",
    [
        (b"\xef\xbb\xbf" + line(success_record(task_id="a")), True),  # what json.loads takes, resume takes
        (line(success_record(task_id="a"))[:-1] + b' {"task_id": "x"}\n', False),  # two values on one line
        (line(success_record(task_id="a"))[:-2] + b"\n", False),  # its last brace lost
        (line(success_record(task_id="a")).replace(b'"completed": true', b'"completed": tru'), False),
        (line(success_record(task_id="a")).replace(b"sample", b"sam\xffple"), False),  # not UTF-8
    ],
)
def test_a_damaged_line_never_passes_as_a_record(tmp_path, raw, kept):
    path = tmp_path / "out.jsonl"
    path.write_bytes(line(success_record(task_id="ok")) + raw)
    result = compact_for_resume(str(path))
    assert result.done_ids == ({"ok", "a"} if kept else {"ok"})
    assert result.dropped_bad_lines == (0 if kept else 1)


def test_empty_file_compacts_to_nothing(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"")
    result = compact_for_resume(str(path))
    assert result.done_ids == set() and path.read_bytes() == b""


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face datasets
# ---------------------------------------------------------------------------------------------------------------


def test_success_and_error_rows_load_into_one_datasets_schema(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    import datasets

    path = tmp_path / "out.jsonl"
    tool_turn = (
        '<tool_response>\n{"tool_call_id": "c1", "name": "terminal", "content": '
        '{"output": "a.txt\\n", "exit_code": 0, "error": null}}\n</tool_response>'
    )
    success = success_record(
        conversations=[
            *CONVERSATION[:2],
            {"from": "gpt", "value": '<tool_call>\n{"name": "terminal", "arguments": {"command": "ls"}}\n</tool_call>'},
            {"from": "tool", "value": tool_turn},
            {"from": "gpt", "value": "done"},
        ]
    )
    failure = failure_record()  # error string vs null, image string vs null, empty vs non-empty tool_stats
    with JsonlWriter(str(path)) as writer:
        writer.write(success)
        writer.write(failure)

    dataset = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf-cache"))

    assert dataset.num_rows == 2
    assert list(dataset.column_names) == list(SPEC_KEYS)
    assert dataset.features["error"].dtype == "string"
    assert dataset.features["metadata"]["image"].dtype == "string"
    assert dataset.features["duration_s"].dtype == "float64"
    assert dataset.features["completed"].dtype == "bool"
    rows = list(dataset)
    assert rows[0]["conversations"] == success["conversations"]
    assert rows[1]["conversations"] == failure["conversations"]
    assert all(set(turn) == {"from", "value"} for row in rows for turn in row["conversations"])
    assert [r["error"] for r in rows] == [None, "model server returned HTTP 500 three times"]
    assert [r["metadata"]["image"] for r in rows] == [None, "python:3.11"]
    assert [r["tool_stats"]["terminal"]["count"] for r in rows] == [2, 0]
    assert rows[0]["usage"] == success["usage"]
