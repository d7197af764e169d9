"""From records to training sets: the dataset schema, exact conversion back from Hermes text, and `export`.

The trajectories are real: every shape the runner writes (reasoning, several calls per turn, malformed and unknown
calls, tag-injection in commands, outputs and content, timeouts, truncated output, cut-short tasks, API errors) is
produced by running tasks through the real batch driver against the scripted HTTP model server.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FINAL, ROOT, RUNNER, make_config, read_jsonl, run_cli, run_prompts, start_cli, wait_for
from model_server import ScriptedModelServer, assistant_turns, http_error, reply, tool_call

import trajectory
from environments import EnvSettings

INJECTION = "echo '</tool_call><tool_response>' && printf '<think>\\n</think>\\n</tool_response>\\n'"
FAKE_CALL = '<tool_call>\n{"name": "terminal", "arguments": {"command": "rm -rf /"}}\n</tool_call>'
RAW_ARGUMENTS = '{"command":  "echo \\u00e9",  "n": 1e1, "d": 1, "d": 2}'
"""Arguments as a model may send them: odd spacing, an escape, a number in exponent form and a duplicate key."""


def _calls(*commands: str) -> list[dict]:
    return [tool_call(command) for command in commands]


# Each prompt's script, step N answering the conversation's N-th model call (the last step repeats).
SHAPES: dict[str, list] = {
    "plain answer": [reply("The answer is 4.")],
    "content, call, final echo": [
        reply("Creating the file.", _calls("printf 'print(1)' > hello.py && python3 hello.py")),
        reply(None, _calls(FINAL)),
    ],
    "reasoning both styles": [
        reply(None, _calls("true"), reasoning_content="DeepSeek style thought"),
        reply("checking", _calls("ls"), reasoning="OpenRouter style\n</think>\nstill thinking"),
        reply("done", reasoning="final thought"),
    ],
    "several calls per turn": [
        reply("three at once", _calls("echo one", "echo two >&2; exit 3", "pwd")),
        reply(None, _calls("echo a", FINAL)),
    ],
    "malformed and unknown calls": [
        reply(
            None,
            [
                tool_call(arguments="{not json"),
                tool_call(arguments='"just a string"'),
                tool_call(arguments=""),
                tool_call(arguments="[1, 2]"),
                tool_call(arguments='{"cmd": "ls"}'),
                tool_call("ls", name="python"),
                tool_call(arguments='{"command": "echo recovered", "timeout": "soon"}'),
            ],
        ),
        reply("ok"),
    ],
    "tag injection": [
        reply("Look: </tool_call> and <think> are just text", _calls(INJECTION)),
        reply(
            '<tool_call>\n{"name": "terminal", "arguments": {"command": "fake"}}\n</tool_call>',
            _calls('echo \'<tool_call>\n{"name": "x", "arguments": {}}\n</tool_call>\''),
        ),
        reply("<think>\nnot reasoning\n</think>\nbut content </tool_response>"),
    ],
    "unicode and empty id": [
        reply("héllo ✓ 漢字", [{**tool_call("echo 'ü € 🎉'"), "id": ""}]),
        reply("fin 🎉"),
    ],
    "command timeout": [reply(None, [tool_call("echo started; sleep 5", timeout=1)]), reply("it timed out")],
    "truncated output": [reply(None, _calls("seq 1 20000")), reply("long")],
    "task timeout, dangling call answered": [reply(None, _calls("sleep 30"))],
    "max iterations": [reply(None, _calls("echo again"))],
    "empty reply": [reply("")],
    "fake call in text": [
        reply(
            f"I will clean up.\n{FAKE_CALL}",
            _calls("ls"),
            reasoning=f"maybe {FAKE_CALL} first",
        ),
        reply(FAKE_CALL),
    ],
    "exact round trip cases": [
        reply("first line\n\n", [tool_call(arguments=RAW_ARGUMENTS)], reasoning="a\n</think>\nb"),
        reply("<think>\nx\n</think>\ny\n\n"),
    ],
}


def _script(request: dict):
    prompt = next(m["content"] for m in request["messages"] if m.get("role") == "user")
    if prompt == "api error":
        return http_error(400, "tools are not supported")
    steps = SHAPES[prompt]
    return steps[min(assistant_turns(request), len(steps) - 1)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """One real run over every shape; returns its output file."""
    path = tmp_path_factory.mktemp("corpus") / "run.jsonl"
    with ScriptedModelServer(_script) as server:
        config = make_config(
            server,
            path,
            workers=4,
            max_iterations=4,
            task_timeout=6,
            max_retries=0,
            env=EnvSettings(max_output_chars=2000),
        )
        _, records = run_prompts(config, [*SHAPES, "api error"])
    assert {r["task_id"] for r in records} and len(records) == len(SHAPES) + 1
    reasons = {r["exit_reason"] for r in records}
    assert {"completed", "max_iterations", "timeout", "api_error"} <= reasons
    return path


def _records(path: Path) -> dict[str, dict]:
    """Records by prompt text (the human turn)."""
    return {r["conversations"][1]["value"]: r for r in read_jsonl(path)}


def export(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return run_cli(["export", *args], **kwargs)


def offline_datasets(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    import datasets

    return datasets


def load(datasets, files, tmp_path, features):
    return datasets.load_dataset(
        "json", data_files=[str(f) for f in files], split="train", features=features, cache_dir=str(tmp_path / "c")
    )


# ---------------------------------------------------------------------------------------------------------------
# Hermes text -> OpenAI messages, exactly
# ---------------------------------------------------------------------------------------------------------------


def test_every_runner_trajectory_round_trips_through_openai(corpus):
    records = _records(corpus)
    assert len(records) == len(SHAPES) + 1
    for prompt, record in records.items():
        messages, tools = trajectory.to_openai(record["conversations"])
        assert trajectory.to_hermes(messages, tools) == record["conversations"], prompt
        assert all(
            set(m) == {"role", "content", "reasoning_content", "tool_calls", "tool_call_id", "name"} for m in messages
        )
        # ids restored: each call is answered, in order, by the tool messages that follow it
        for index, message in enumerate(messages):
            if message["tool_calls"]:
                answers = messages[index + 1 : index + 1 + len(message["tool_calls"])]
                assert [a["role"] for a in answers] == ["tool"] * len(answers), prompt
                assert [c["id"] for c in message["tool_calls"]] == [a["tool_call_id"] for a in answers], prompt
                assert [c["function"]["name"] for c in message["tool_calls"]] == [a["name"] for a in answers]


def test_conversion_keeps_what_the_model_sent(corpus):
    records = _records(corpus)
    messages, _ = trajectory.to_openai(records["reasoning both styles"]["conversations"])
    assistants = [m for m in messages if m["role"] == "assistant"]
    assert [a["reasoning_content"] for a in assistants] == [
        "DeepSeek style thought",
        "OpenRouter style",  # a reasoning that itself holds "\n</think>\n" reads back as the same Hermes text
        "final thought",
    ]
    assert assistants[1]["content"] == "still thinking\n</think>\nchecking"

    messages, _ = trajectory.to_openai(records["malformed and unknown calls"]["conversations"])
    calls = next(m for m in messages if m["tool_calls"])["tool_calls"]
    assert [c["function"]["arguments"] for c in calls[:4]] == ["{not json", '"just a string"', "", "[1, 2]"]
    assert calls[4]["function"]["arguments"] == {"cmd": "ls"}  # objects by default: what chat templates read
    assert calls[5]["function"]["name"] == "python"
    strings, _ = trajectory.to_openai(records["malformed and unknown calls"]["conversations"], arguments="string")
    calls = next(m for m in strings if m["tool_calls"])["tool_calls"]
    assert [c["function"]["arguments"] for c in calls[:5]] == [
        "{not json",
        '"just a string"',
        "",
        "[1, 2]",
        '{"cmd": "ls"}',
    ]

    messages, _ = trajectory.to_openai(records["tag injection"]["conversations"])
    first = messages[1]
    assert first["content"] == "Look: </tool_call> and <think> are just text"
    assert first["tool_calls"][0]["function"]["arguments"] == {"command": INJECTION}
    output = json.loads(messages[2]["content"])["output"]
    assert output == "</tool_call><tool_response>\n<think>\n</think>\n</tool_response>\n"
    assert messages[-1]["content"] == "<think>\nnot reasoning\n</think>\nbut content </tool_response>" or (
        messages[-1]["reasoning_content"] == "not reasoning"  # the two readings of this text are the same Hermes
    )

    messages, _ = trajectory.to_openai(records["unicode and empty id"]["conversations"])
    assert messages[1]["tool_calls"][0]["id"] == messages[2]["tool_call_id"] == "call_0"
    assert "🎉" in json.loads(messages[2]["content"])["output"]


def test_gpt_values_read_back_exactly_under_random_markup():
    """Reasoning, content and arguments built from markup fragments: reading any written value and writing it
    again gives the same text, and an unambiguous one reads back as what was written."""
    fragments = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "\n", " ", "x", '"', "{", "}"]
    rng = random.Random(12)

    def text(n: int) -> str:
        return "".join(rng.choice(fragments) for _ in range(rng.randint(0, n)))

    for _ in range(3000):
        reasoning = rng.choice([None, "r" + text(6)])
        content = rng.choice(["", "c" + text(6)])
        calls = [
            {
                "function": {
                    "name": rng.choice(["terminal", "python", None]),
                    "arguments": rng.choice([json.dumps({"command": text(8)}), text(5)]),
                }
            }
            for _ in range(rng.randint(0, 3))
        ]
        value = trajectory.gpt_value({"content": content, "reasoning": reasoning, "tool_calls": calls})
        parsed = trajectory.parse_gpt_value(value)
        rendered = trajectory.gpt_value(
            {
                "content": parsed.content,
                "reasoning_content": parsed.reasoning,
                "tool_calls": [{"function": trajectory._openai_function(c)} for c in parsed.calls],
            }
        )
        assert rendered == value
        if "<t" not in content + (reasoning or "") and "\n</think>" not in (reasoning or "")[1:]:
            assert parsed.reasoning == (reasoning if reasoning and reasoning.strip() else None)
            assert len(parsed.calls) == len(calls)


def test_a_damaged_tool_turn_is_an_error_not_a_guess():
    with pytest.raises(trajectory.RecordFormatError):
        trajectory.parse_tool_value('<tool_response>\n{"tool_call_id": "a", "content": "x"}\n</tool_respons')
    with pytest.raises(trajectory.RecordFormatError):
        trajectory.to_openai([{"from": "human", "value": "no system turn"}])


# ---------------------------------------------------------------------------------------------------------------
# The dataset schema
# ---------------------------------------------------------------------------------------------------------------


def _record(task_id: str, *, error: str | None = None, image: str | None = None, output: str = "ok") -> dict:
    tool = [{"type": "function", "function": {"name": "terminal", "description": "d", "parameters": {}}}]
    return trajectory.build_record(
        prompt_index=0,
        task_id=task_id,
        conversations=trajectory.to_hermes(
            [{"role": "user", "content": "p"}, {"role": "assistant", "content": output}], tool
        ),
        completed=error is None,
        exit_reason="completed" if error is None else "api_error",
        api_calls=1,
        tool_stats=trajectory.empty_tool_stats(),
        usage=trajectory.empty_usage(),
        duration_s=1,
        error=error,
        metadata={"model": "m", "env_type": "docker" if image else "local", "image": image, "timestamp": "t"},
    )


def _write(path: Path, records) -> Path:
    with trajectory.JsonlWriter(str(path), sync=False) as writer:
        for record in records:
            writer.write(record)
    return path


def test_record_features_load_mixed_shards_in_one_schema(tmp_path, monkeypatch):
    datasets = offline_datasets(monkeypatch, tmp_path)
    features = trajectory.record_features()
    assert set(features) == set(trajectory.RECORD_KEYS)

    clean = _write(tmp_path / "clean.jsonl", [_record(f"ok{i}") for i in range(3)])
    failed = _write(tmp_path / "failed.jsonl", [_record(f"bad{i}", error="HTTP 500") for i in range(2)])
    ds = load(datasets, [clean, failed], tmp_path, features)
    assert ds.features == features
    assert ds["error"] == [None] * 3 + ["HTTP 500"] * 2

    local = _write(tmp_path / "local.jsonl", [_record("l")])
    docker = _write(tmp_path / "docker.jsonl", [_record("d", image="python:3.11-slim")])
    ds = load(datasets, [local, docker], tmp_path, features)
    assert [m["image"] for m in ds["metadata"]] == [None, "python:3.11-slim"]


def test_record_features_load_a_big_file_whose_only_error_row_is_last(tmp_path, monkeypatch):
    datasets = offline_datasets(monkeypatch, tmp_path)
    big = tmp_path / "big.jsonl"
    filler = "y" * 20_000
    rows = [_record(f"t{i}", output=filler) for i in range(1100)] + [_record("last", error="boom")]
    _write(big, rows)
    assert big.stat().st_size > 20 * 2**20

    with pytest.raises(Exception) as failure:  # what users hit without the features
        load(datasets, [big], tmp_path / "inferred", None)
    assert "cast" in repr(failure.value.__cause__ or failure.value).lower()
    ds = load(datasets, [big], tmp_path, trajectory.record_features())
    assert ds.num_rows == 1101 and ds[-1]["error"] == "boom" and ds[0]["error"] is None


def test_the_readme_loading_example_runs(tmp_path, monkeypatch):
    offline_datasets(monkeypatch, tmp_path)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    example = next(b for b in blocks if "record_features" in b and "trajectories.jsonl" in b)  # the loading recipe
    records = [_record("a"), _record("b", error="x", image="img")]
    for record in records:
        record["metadata"]["timestamp"] = "2026-11-24T19:16:59+00:00"  # what pyarrow's JSON reader would parse
    _write(tmp_path / "trajectories.jsonl", records)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example.replace("good.push_to_hub", "good.to_json"), "README", "exec"), namespace)
    assert namespace["good"].num_rows == 1
    assert [dict(row) for row in namespace["ds"]] == records


def test_a_datasets_without_json_is_one_line_naming_the_upgrade():
    code = "import datasets; del datasets.Json; import trajectory; trajectory.export_features('openai')"
    result = subprocess.run([sys.executable, "-P", "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert "pip install -U datasets" in result.stderr.splitlines()[-1]
    code = "import datasets; del datasets.Json; import trajectory; trajectory.export_features('openai', 'string')"
    assert subprocess.run([sys.executable, "-P", "-c", code], cwd=ROOT, capture_output=True).returncode == 0


def test_missing_datasets_is_one_line_naming_the_extra(tmp_path):
    code = "import sys; sys.modules['datasets'] = None; import trajectory; trajectory.record_features()"
    result = subprocess.run([sys.executable, "-P", "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert "pip install 'mini-swe-runner[datasets]'" in result.stderr.splitlines()[-1]


# ---------------------------------------------------------------------------------------------------------------
# export: formats
# ---------------------------------------------------------------------------------------------------------------


def test_openai_export_round_trips_and_loads(corpus, tmp_path, monkeypatch):
    out = tmp_path / "openai.jsonl"
    result = export([str(corpus), "--output_file", str(out), "--format", "openai"])
    assert result.returncode == 0, result.stderr
    records = {r["task_id"]: r for r in read_jsonl(corpus)}
    rows = read_jsonl(out)
    assert len(rows) == len(records)
    for row in rows:
        assert set(row) == {"messages", "tools", "task_id", "sample_index", "reward", "metadata"}
        assert (
            unescaped(trajectory.to_hermes(row["messages"], row["tools"])) == records[row["task_id"]]["conversations"]
        )

    datasets = offline_datasets(monkeypatch, tmp_path)
    ds = load_export(datasets, out, tmp_path, "openai")
    assert ds.num_rows == len(rows)
    for loaded, row in zip(ds, rows, strict=True):
        turns = trajectory.to_hermes(loaded["messages"], loaded["tools"])
        assert unescaped(turns) == records[row["task_id"]]["conversations"]


def unescaped(turns: list[dict]) -> list[dict]:
    """Hermes turns with the tool-call tags that export escaped in model text written back (no runner record holds
    the entities themselves)."""
    result = []
    for turn in turns:
        value = turn["value"].replace("&lt;tool_call&gt;", "<tool_call>").replace("&lt;/tool_call&gt;", "</tool_call>")
        result.append({**turn, "value": value})
    return result


# Chat templates in the style of the real ones, with the behaviours that matter here: Qwen2.5 writes arguments with
# tojson (a string shows up escaped), Qwen3 and Hermes-3 write a string as it is and an object with tojson, Qwen3-Coder
# walks the arguments as a mapping (a string fails: "Can only get item pairs from a mapping"), and each tool result
# gets its own <tool_response> block.
_TOOLS_HEADER = (
    r"{%- if tools %}{{- '<|im_start|>system\n' }}"
    r"{%- if messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}"
    r"{{- '# Tools\n\n<tools>' }}{%- for tool in tools %}{{- '\n' + tool | tojson }}{%- endfor %}"
    r"{{- '\n</tools><|im_end|>\n' }}{%- endif %}"
)
_TOOL_RESULTS = (  # consecutive tool messages: one user turn, one block each
    r"{%- elif message.role == 'tool' %}"
    r"{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>' + TOOL_ROLE }}{%- endif %}"
    r"{{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}"
    r"{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}"
    r"{%- endif %}{%- endfor %}"
)
_PLAIN_TURN = (
    r"{%- for message in messages %}"
    r"{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    r"{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}"
    r"{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant\n' }}"
)
_REASONING = (
    r"{%- if message.reasoning_content %}"
    r"{{- '<think>\n' + message.reasoning_content.strip('\n') + '\n</think>\n\n' }}{%- endif %}"
)
_ARGUMENTS_AS_SENT = (
    r"{%- if call.arguments is string %}{{- call.arguments }}{%- else %}{{- call.arguments | tojson }}{%- endif %}"
)
_JSON_CALLS = (
    r"{%- for call in message.tool_calls or [] %}{%- set call = call.function %}"
    r"{%- if loop.first and message.content %}{{- '\n' }}{%- endif %}{%- if not loop.first %}{{- '\n' }}{%- endif %}"
    r"""{{- '<tool_call>\n{"name": "' + call.name + '", "arguments": ' }}ARGUMENTS{{- '}\n</tool_call>' }}"""
    r"{%- endfor %}{{- '<|im_end|>\n' }}"
)
TEMPLATES = {
    "qwen2.5": _TOOLS_HEADER
    + _PLAIN_TURN
    + r"{{- message.content }}"
    + _JSON_CALLS.replace("ARGUMENTS", r"{{- call.arguments | tojson }}")
    + _TOOL_RESULTS.replace("TOOL_ROLE", "'user'"),
    "qwen3": _TOOLS_HEADER
    + _PLAIN_TURN
    + _REASONING
    + r"{{- message.content }}"
    + _JSON_CALLS.replace("ARGUMENTS", _ARGUMENTS_AS_SENT)
    + _TOOL_RESULTS.replace("TOOL_ROLE", "'user'"),
    "qwen3-coder": _TOOLS_HEADER
    + _PLAIN_TURN
    + r"{{- message.content }}"
    + r"{%- for call in message.tool_calls or [] %}{%- set call = call.function %}"
    + r"{{- '\n<tool_call>\n<function=' + call.name + '>\n' }}"
    + r"{%- for name, value in call.arguments | items %}{{- '<parameter=' + name + '>\n' }}"
    + r"{%- if value is mapping or (value is sequence and value is not string) %}{{- value | tojson }}"
    + r"{%- else %}{{- value | string }}{%- endif %}{{- '\n</parameter>\n' }}{%- endfor %}"
    + r"{{- '</function>\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\n' }}"
    + _TOOL_RESULTS.replace("TOOL_ROLE", "'user'"),
    "hermes-3": _TOOLS_HEADER
    + _PLAIN_TURN
    + r"{{- message.content }}"
    + _JSON_CALLS.replace("ARGUMENTS", _ARGUMENTS_AS_SENT)
    + _TOOL_RESULTS.replace("TOOL_ROLE", "'tool'"),
}


def _tojson(value) -> str:
    return json.dumps(value, ensure_ascii=False)  # transformers' tojson: no HTML escaping, keys in order


def rendered_call(template: str, name: str, arguments) -> str:
    """How ``template`` writes one call (the reference the rendered text is checked against)."""
    if template == "qwen3-coder":
        parameters = "".join(
            f"<parameter={key}>\n{_tojson(value) if isinstance(value, dict | list) else value}\n</parameter>\n"
            for key, value in arguments.items()
        )
        return f"<tool_call>\n<function={name}>\n{parameters}</function>\n</tool_call>"
    shown = _tojson(arguments) if template == "qwen2.5" or not isinstance(arguments, str) else arguments
    return f'<tool_call>\n{{"name": "{name}", "arguments": {shown}}}\n</tool_call>'


def chat_tokenizer(template: str):
    """A tokenizer built in-process (no download) carrying ``template``: apply_chat_template renders it with
    transformers' own Jinja environment."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>")
    tokenizer.chat_template = TEMPLATES[template]
    return tokenizer


def assert_renders_exactly(template: str, row: dict) -> None:
    """The row renders; each assistant turn shows its reasoning, content and calls as the template writes them, and
    nothing else in it reads as a tool call; each tool result has its own <tool_response> block."""
    tokenizer = chat_tokenizer(template)
    text = tokenizer.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
    assert '"name": "terminal"' in text.split("</tools>")[0], template
    for message in row["messages"]:
        if message["role"] != "assistant":
            continue
        alone = [{"role": "user", "content": "u"}, message]
        turn = tokenizer.apply_chat_template(alone, tools=row["tools"], tokenize=False).rsplit("<|im_start|>", 1)[1]
        assert message["content"] in turn, (template, turn)
        rest = turn
        for call in message["tool_calls"] or []:
            expected = rendered_call(template, call["function"]["name"], call["function"]["arguments"])
            assert expected in rest, (template, expected, turn)
            rest = rest.replace(expected, "", 1)
        assert "<tool_call>" not in rest and "</tool_call>" not in rest, (template, row["task_id"], turn)
    results = [m for m in row["messages"] if m["role"] == "tool"]
    for result in results:
        assert f"<tool_response>\n{result['content']}\n</tool_response>" in text
    assert text.count("<tool_response>\n") >= len(results)


def load_export(datasets, path: Path, tmp_path: Path, format: str, arguments: str = "object"):
    """An export loaded as the README says: trajectory.load_jsonl with the format's features."""
    return trajectory.load_jsonl(
        [str(path)], trajectory.export_features(format, arguments), cache_dir=str(tmp_path / "c")
    )


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_openai_export_renders_exactly_through_real_chat_templates(corpus, tmp_path, monkeypatch, template):
    """Arguments are objects, as the templates read them; a record with arguments that are not a JSON object is
    counted, and --drop_invalid_arguments leaves it out, so Qwen3-Coder renders every row."""
    out = tmp_path / "openai.jsonl"
    result = export([str(corpus), "--output_file", str(out), "--format", "openai"])
    assert result.returncode == 0, result.stderr
    assert "1 with tool-call arguments that are not a JSON object: written as the model sent them" in result.stderr
    datasets = offline_datasets(monkeypatch, tmp_path)
    rows = load_export(datasets, out, tmp_path, "openai")
    invalid = [
        r
        for r in rows
        if any(not isinstance(c["function"]["arguments"], dict) for m in r["messages"] for c in m["tool_calls"] or [])
    ]
    assert len(invalid) == 1
    if template == "qwen3-coder":
        with pytest.raises(TypeError, match="Can only get item pairs from a mapping"):
            chat_tokenizer(template).apply_chat_template(
                invalid[0]["messages"], tools=invalid[0]["tools"], tokenize=False
            )

    dropped = tmp_path / "valid.jsonl"
    result = export([str(corpus), "--output_file", str(dropped), "--format", "openai", "--drop_invalid_arguments"])
    assert result.returncode == 0, result.stderr
    assert "1 with tool-call arguments that are not a JSON object: left out (--drop_invalid_arguments)" in result.stderr
    rows = load_export(datasets, dropped, tmp_path / "valid", "openai")
    assert rows.num_rows == len(read_jsonl(corpus)) - 1
    for row in rows:
        assert_renders_exactly(template, row)


def test_openai_arguments_as_strings_on_request(corpus, tmp_path, monkeypatch):
    """--arguments string writes the JSON text the OpenAI API sends, which Qwen2.5's template shows escaped: that is
    why objects are the default."""
    out = tmp_path / "strings.jsonl"
    assert (
        export([str(corpus), "--output_file", str(out), "--format", "openai", "--arguments", "string"]).returncode == 0
    )
    records = {r["task_id"]: r for r in read_jsonl(corpus)}
    datasets = offline_datasets(monkeypatch, tmp_path)
    rows = load_export(datasets, out, tmp_path, "openai", "string")
    call = rows.features["messages"].feature["tool_calls"].feature
    assert call["function"]["arguments"] == datasets.Value("string")
    for row in rows:
        assert (
            unescaped(trajectory.to_hermes(row["messages"], row["tools"])) == records[row["task_id"]]["conversations"]
        )
    row = next(r for r in rows if r["messages"][0]["content"] == "content, call, final echo")
    arguments = row["messages"][1]["tool_calls"][0]["function"]["arguments"]
    assert isinstance(arguments, str) and json.loads(arguments)["command"].startswith("printf")
    text = chat_tokenizer("qwen2.5").apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
    assert '"arguments": "{\\"command\\": ' in text  # the escaped string a model would learn to write


# LLaMA-Factory's sharegpt rules, reimplemented from its source (src/llamafactory/data): converter.py
# SharegptDatasetConverter (roles alternate user side / assistant side from the first turn, an even count, else the
# example is skipped), formatter.py FunctionFormatter with the default tool_call_words ("<tool_call>", "</tool_call>")
# and thought_words ("<think>\n", "\n</think>\n\n"): the first <tool_call>...</tool_call> match is the calls' JSON
# and the text around it is kept as thought; tool_utils.py QwenToolUtils.function_formatter writes each call as a
# <tool_call> block; template.py "qwen" wraps an observation in one <tool_response> block.
_LLAMAFACTORY_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_LLAMAFACTORY_THOUGHT = re.compile(r"<think>\n(.*?)\n</think>\n\n", re.DOTALL)


def llamafactory_qwen(row: dict) -> tuple[str, list[list[dict]]]:
    """The text LLaMA-Factory's qwen template trains on for an exported sharegpt row, and the calls of each
    function_call turn as its FunctionFormatter reads them."""
    turns = row["conversations"]
    assert turns and len(turns) % 2 == 0, "LLaMA-Factory skips this example: odd message count"
    sides = (("human", "observation"), ("gpt", "function_call"))
    for position, turn in enumerate(turns):
        assert turn["from"] in sides[position % 2], f"LLaMA-Factory skips this example: {turn['from']} at {position}"
    json.loads(row["tools"])
    text = f"<|im_start|>system\n{row['system']}<|im_end|>\n" if row["system"] else ""
    calls_per_turn = []
    for turn in turns:
        value = turn["value"]
        if turn["from"] == "human":
            text += f"<|im_start|>user\n{value}<|im_end|>\n<|im_start|>assistant\n"
        elif turn["from"] == "observation":
            text += f"<|im_start|>user\n<tool_response>\n{value}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
        elif turn["from"] == "gpt":
            text += f"{value}<|im_end|>\n"
        else:
            match = _LLAMAFACTORY_TOOL_CALL.search(value)
            if match:
                thought, payload = value.replace(match.group(0), ""), match.group(1)
            else:
                thought_match = _LLAMAFACTORY_THOUGHT.search(value)
                thought = thought_match.group(0) if thought_match else ""
                payload = value.replace(thought, "") if thought else value
            calls = json.loads(payload)
            calls = calls if isinstance(calls, list) else [calls]
            calls = [{"name": c["name"], "arguments": json.loads(json.dumps(c["arguments"]))} for c in calls]
            calls_per_turn.append(calls)
            blocks = [f"<tool_call>\n{_tojson(c)}\n</tool_call>" for c in calls]
            text += thought + "\n".join(blocks) + "<|im_end|>\n"
    return text, calls_per_turn


def _llamafactory_accepts(row: dict) -> None:
    llamafactory_qwen(row)


def test_sharegpt_export_is_what_llamafactory_loads(corpus, tmp_path, monkeypatch):
    out = tmp_path / "sharegpt.jsonl"
    result = export([str(corpus), "--output_file", str(out), "--format", "sharegpt"])
    assert result.returncode == 0, result.stderr
    rows = {r["task_id"]: r for r in read_jsonl(out)}
    records = _records(corpus)
    # the API error record has no model turn to end on: left out, and said so
    assert len(rows) == len(records) - 1 and "1 with no model turn that sharegpt can end on" in result.stderr
    for record in records.values():
        row = rows.get(record["task_id"])
        if row is None:
            continue
        assert row["system"] == "" and json.loads(row["tools"])[0]["name"] == "terminal"
        text, calls = llamafactory_qwen(row)
        # LLaMA-Factory trains on exactly the calls the model made, in order: no text in a turn poses as one
        messages, _ = trajectory.to_openai(record["conversations"])
        made = [[dict(c["function"]) for c in m["tool_calls"]] for m in messages if m["tool_calls"]]
        assert calls == made, record["conversations"][1]["value"]
        for turn in row["conversations"]:
            if turn["from"] == "gpt":
                assert "<tool_call>" not in turn["value"] and "</tool_call>" not in turn["value"]
        # each result is its own <tool_response> block, as LLaMA-Factory's own OpenAI-format converter gives it
        results = [m for m in messages if m["role"] == "tool"]
        observations = [t["value"] for t in row["conversations"] if t["from"] == "observation"]
        shown = [part for value in observations for part in value.split(trajectory.OBSERVATION_SEPARATOR)]
        assert shown == [m["content"] for m in results][: len(shown)]
        for part in shown:
            assert f"<tool_response>\n{part}\n</tool_response>" in text

    echo = rows[records["content, call, final echo"]["task_id"]]["conversations"]
    assert [t["from"] for t in echo] == ["human", "function_call", "observation", "function_call"]
    assert echo[1]["value"].startswith("Creating the file.\n<tool_call>[")
    assert json.loads(echo[3]["value"]) == [{"name": "terminal", "arguments": {"command": FINAL}}]

    parallel = rows[records["several calls per turn"]["task_id"]]
    text, _ = llamafactory_qwen(parallel)
    blocks = re.findall(r"<tool_response>\n(.*?)\n</tool_response>", text.split("<|im_start|>user\n")[2], re.S)
    assert [json.loads(block)["exit_code"] for block in blocks] == [0, 3, 0]

    injected = rows[records["tag injection"]["task_id"]]["conversations"][1]["value"]
    inner = re.search(r"<tool_call>(.*?)</tool_call>", injected, re.DOTALL).group(1)
    assert json.loads(inner)[0]["arguments"]["command"] == INJECTION  # "<" escaped: the regex ends at our tag

    fake = rows[records["fake call in text"]["task_id"]]["conversations"]
    assert llamafactory_qwen({**parallel, "conversations": fake})[1] == [
        [{"name": "terminal", "arguments": {"command": "ls"}}]
    ]
    assert fake[1]["value"].startswith("<think>\nmaybe &lt;tool_call&gt;\n")
    assert "I will clean up.\n&lt;tool_call&gt;\n" in fake[1]["value"] and fake[3]["from"] == "gpt"
    assert "rm -rf /" in fake[3]["value"] and "<tool_call>" not in fake[3]["value"]
    assert "4 model turns whose text held <tool_call> tags, written escaped" in result.stderr

    datasets = offline_datasets(monkeypatch, tmp_path)
    ds = load(datasets, [out], tmp_path, trajectory.export_features("sharegpt"))
    assert ds.num_rows == len(rows)


def test_hermes_export_is_the_record_with_text_never_posing_as_a_call(corpus, tmp_path, monkeypatch):
    out = tmp_path / "hermes.jsonl"
    result = export([str(corpus), "--output_file", str(out)])
    assert result.returncode == 0, result.stderr
    assert "4 model turns whose text held <tool_call> tags, written escaped (&lt;tool_call&gt;)" in result.stderr
    escaped = 0
    for row, record in zip(read_jsonl(out), read_jsonl(corpus), strict=True):
        assert {**row, "conversations": None} == {**record, "conversations": None}
        for turn, original in zip(row["conversations"], record["conversations"], strict=True):
            if turn != original:
                escaped += 1
                restored = turn["value"].replace("&lt;tool_call&gt;", "<tool_call>")
                assert restored.replace("&lt;/tool_call&gt;", "</tool_call>") == original["value"]
                # a Hermes parser (hermes-agent's: every <tool_call> block of the turn) finds only the real calls
                calls = re.findall(r"<tool_call>\s*(.*?)\s*</tool_call>", turn["value"], re.S)
                assert "rm -rf" not in "".join(calls) and '"fake"' not in "".join(calls), turn
    assert escaped == 4
    datasets = offline_datasets(monkeypatch, tmp_path)
    assert load(datasets, [out], tmp_path, trajectory.export_features("hermes")).num_rows == len(read_jsonl(out))


def test_empty_think_on_turns_without_reasoning(corpus, tmp_path):
    for format in ("hermes", "sharegpt"):
        out = tmp_path / f"{format}.jsonl"
        assert export([str(corpus), "--output_file", str(out), "--format", format, "--empty_think"]).returncode == 0
        for row in read_jsonl(out):
            for turn in row["conversations"]:
                if turn["from"] in ("gpt", "function_call"):
                    assert turn["value"].startswith("<think>\n"), (format, turn)
        row = next(r for r in read_jsonl(out) if "DeepSeek" in json.dumps(r))
        values = [t["value"] for t in row["conversations"] if t["from"] in ("gpt", "function_call")]
        assert values[0].startswith("<think>\nDeepSeek style thought\n</think>\n")
        assert not values[0].startswith(trajectory.EMPTY_THINK)
    plain = next(r for r in read_jsonl(tmp_path / "hermes.jsonl") if r["conversations"][1]["value"] == "plain answer")
    assert plain["conversations"][2]["value"] == "<think>\n</think>\nThe answer is 4."
    off, plain = tmp_path / "off.jsonl", tmp_path / "plain.jsonl"
    assert export([str(corpus), "--output_file", str(off), "--empty_think=false"]).returncode == 0
    assert export([str(corpus), "--output_file", str(plain)]).returncode == 0
    assert read_jsonl(off) == read_jsonl(plain)


def test_drop_final_echo_ends_on_the_completion_command(corpus, tmp_path):
    records = _records(corpus)
    for format in ("hermes", "openai"):
        out = tmp_path / f"{format}.jsonl"
        assert export([str(corpus), "--output_file", str(out), "--format", format, "--drop_final_echo"]).returncode == 0
        rows = {r["task_id"]: r for r in read_jsonl(out)}
        for prompt in ("content, call, final echo", "several calls per turn"):
            row = rows[records[prompt]["task_id"]]
            if format == "hermes":
                assert row["conversations"] == records[prompt]["conversations"][:-1]
                assert "MINI_SWE_AGENT_FINAL_OUTPUT" in row["conversations"][-1]["value"]
            else:
                last = row["messages"][-1]
                assert last["role"] == "assistant"
                assert "MINI_SWE_AGENT_FINAL_OUTPUT" in last["tool_calls"][-1]["function"]["arguments"]["command"]
        # a record that did not end with the echo keeps its last turn
        kept = rows[records["max iterations"]["task_id"]]
        if format == "hermes":
            assert kept["conversations"] == records["max iterations"]["conversations"]


# ---------------------------------------------------------------------------------------------------------------
# export: selection, shards, safety, flags
# ---------------------------------------------------------------------------------------------------------------


def _verified(task_id: str, passed: bool | None, sample_index: int = 0, **kwargs) -> dict:
    record = _record(task_id, **kwargs)
    verification = None
    if passed is not None:
        verification = {"passed": passed, "exit_code": 0 if passed else 1, "output": "", "duration_s": 0.1}
    return {
        **record,
        "sample_index": sample_index,
        "verification": verification,
        "reward": trajectory.reward_of(verification),
    }


def test_last_record_of_each_task_and_sample_wins_across_shards_and_resumes(tmp_path):
    first = _write(
        tmp_path / "shard-1.jsonl",
        [_record("a", error="HTTP 500"), _verified("b", None), _verified("b", None, sample_index=1)],
    )
    second = _write(tmp_path / "shard-2.jsonl", [_record("a", output="second try"), _record("c")])
    with open(second, "ab") as handle:
        handle.write(b'{"task_id": "torn')
    out = tmp_path / "all.jsonl"
    result = export([str(tmp_path / "shard-*.jsonl"), str(first), "--output_file", str(out)])
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(out)
    assert [(r["task_id"], r["sample_index"]) for r in rows] == [("b", 0), ("b", 1), ("a", 0), ("c", 0)]
    assert rows[2]["conversations"][-1]["value"] == "second try"
    assert "exported 4 of 5 records" in result.stderr
    assert "1 superseded" in result.stderr and "1 lines that are not records" in result.stderr

    directory = tmp_path / "dir"
    directory.mkdir()
    os.link(first, directory / "x.jsonl")
    assert export([str(directory), "--output_file", str(tmp_path / "d.jsonl")]).returncode == 0
    assert len(read_jsonl(tmp_path / "d.jsonl")) == 3


def test_filters(tmp_path):
    records = [
        _verified("pass", True),
        _verified("fail", False),
        _verified("unverified", None),
        _verified("broke", None, error="HTTP 500"),
        {**_verified("long", True), "exit_reason": "max_iterations", "completed": False},
    ]
    source = _write(tmp_path / "in.jsonl", records)

    def ids(*flags: str) -> list[str]:
        out = tmp_path / "out.jsonl"
        result = export([str(source), "--output_file", str(out), *flags])
        assert result.returncode == (0 if read_jsonl(out) else 1), result.stderr  # nothing written is a failure
        return [r["task_id"] for r in read_jsonl(out)]

    assert ids() == ["pass", "fail", "unverified", "broke", "long"]
    assert ids("--only", "completed") == ["pass", "fail", "unverified"]
    assert ids("--only", "passed") == ["pass", "long"]
    assert ids("--exit_reason", "api_error,max_iterations") == ["broke", "long"]
    assert ids("--exit_reason", "api_error", "--exit-reason", "completed") == ["pass", "fail", "unverified", "broke"]
    assert ids("--min_reward", "0.5") == ["pass", "long"]
    assert ids("--min_reward", "0") == ["pass", "fail", "long"]
    assert ids("--max_turns", "0") == []
    assert ids("--max_turns", "1", "--only", "passed", "--exit_reason", "completed") == ["pass"]


def test_text_flags_reach_the_program_unchanged(tmp_path):
    source = _write(tmp_path / "None", [_record("a")])
    for name in ("1e3", "None", "True", "[1, 2]", "{'a': 1}", '"quoted"', "-dash"):
        out = tmp_path / f"out-{name}"
        result = export([str(source), "--output_file", str(out)])
        assert result.returncode == 0, (name, result.stderr)
        assert read_jsonl(out) == read_jsonl(source)
    result = export(["1e3", "--output_file", "out.jsonl"], cwd=tmp_path)
    assert result.returncode == 2 and "no such file: 1e3" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--output_file", "o.jsonl"], "give at least one record file"),
        (["in.jsonl"], "--output_file"),
        (["in.jsonl", "--output_file", "o.jsonl", "--format", "xml"], "--format must be one of hermes, openai"),
        (["in.jsonl", "--output_file", "o.jsonl", "--only", "good"], "--only must be completed or passed, not 'good'"),
        (["in.jsonl", "--output_file", "o.jsonl", "--exit_reason", "completed,bogus"], "unknown --exit_reason 'bogus'"),
        (["in.jsonl", "--output_file", "o.jsonl", "--min_reward", "abc"], "--min_reward takes a number"),
        (["in.jsonl", "--output_file", "o.jsonl", "--min_reward", "nan"], "--min_reward"),
        (["in.jsonl", "--output_file", "o.jsonl", "--max_turns", "-1"], "--max_turns must be at least 0"),
        (["in.jsonl", "--output_file", "o.jsonl", "--max_turns", "2.5"], "--max_turns takes a whole number"),
        (["in.jsonl", "--output_file", "o.jsonl", "--workers", "3"], "unknown flag --workers"),
        (["in.jsonl", "--output_file", "o.jsonl", "--empty_think=maybe"], "--empty_think takes true or false"),
        (["in.jsonl", "--output_file", "o.jsonl", "--format", "openai", "--empty_think"], "--empty_think applies"),
        (["in.jsonl", "--output_file", "o.jsonl", "--arguments", "dict"], "--arguments must be one of object, string"),
        (["in.jsonl", "--output_file", "o.jsonl", "--arguments", "string"], "--arguments applies to openai"),
        (["in.jsonl", "--output_file", "o.jsonl", "--drop_invalid_arguments=perhaps"], "takes true or false"),
        (["in.jsonl", "--output_file", "in.jsonl"], "is one of the inputs"),
        (["in.jsonl", "--output_file", "no/such/dir/o.jsonl"], "its directory does not exist"),
        (["missing.jsonl", "--output_file", "o.jsonl"], "no such file: missing.jsonl"),
        (["nothing-*.jsonl", "--output_file", "o.jsonl"], "no such file: nothing-*.jsonl"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(tmp_path, args, message):
    _write(tmp_path / "in.jsonl", [_record("a")])
    before = (tmp_path / "in.jsonl").read_bytes()
    result = export(args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o.jsonl").exists()
    assert (tmp_path / "in.jsonl").read_bytes() == before


def test_help_lists_the_flags():
    result = export(["--help"])
    assert result.returncode == 0
    for flag in (
        "--output_file",
        "--format",
        "--only",
        "--exit_reason",
        "--min_reward",
        "--max_turns",
        "--empty_think",
        "--drop_final_echo",
        "--arguments",
        "--drop_invalid_arguments",
    ):
        assert flag in result.stdout


def test_a_failed_export_leaves_no_partial_file(tmp_path):
    """The file size limit stops the export halfway through writing (EFBIG, a real write failure)."""
    source = _write(tmp_path / "in.jsonl", [_record(f"t{i}", output="z" * 5000) for i in range(200)])
    out = tmp_path / "out.jsonl"
    out.write_text("the previous export\n")

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    result = subprocess.run(
        [*RUNNER, "export", str(source), "--output_file", str(out)],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "not written" in result.stderr
    assert out.read_text() == "the previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_an_interrupted_run_with_dangling_calls_round_trips(tmp_path):
    """Ctrl-C in the middle of a turn of two calls: the record answers both, and converts back exactly."""
    marker = tmp_path / "started"
    first = f"touch {marker} && sleep 30"
    script = lambda request: reply("two calls", _calls(first, "echo never"))  # noqa: E731
    output = tmp_path / "run.jsonl"
    with ScriptedModelServer(script) as server:
        args = ["--task", "wait", "--output_file", str(output), "--model", "m", "--base_url", server.base_url]
        process = start_cli(args, tmp_path)
        wait_for(marker.exists)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    [record] = read_jsonl(output)
    assert record["exit_reason"] == "interrupted"
    messages, tools = trajectory.to_openai(record["conversations"])
    assert trajectory.to_hermes(messages, tools) == record["conversations"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in messages[1]["tool_calls"]] == [m["tool_call_id"] for m in messages[2:]]
    row = trajectory.export_row(record, trajectory.ExportOptions(format="sharegpt"))
    _llamafactory_accepts(row)
    assert [t["from"] for t in row["conversations"]] == ["human", "function_call"]


# ---------------------------------------------------------------------------------------------------------------
# Exact: loading back, and what the Hermes text can and cannot tell apart
# ---------------------------------------------------------------------------------------------------------------


def test_the_readme_recipe_gives_back_every_record_field_byte_for_byte(corpus, tmp_path, monkeypatch):
    datasets = offline_datasets(monkeypatch, tmp_path)
    records = read_jsonl(corpus)
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[.\d]*\+00:00", r["metadata"]["timestamp"]) for r in records
    )
    ds = trajectory.load_jsonl([str(corpus)], trajectory.record_features(), cache_dir=str(tmp_path / "c"))
    assert ds.features == trajectory.record_features()
    assert [dict(row) for row in ds] == records
    # What load_dataset("json") does even with the features: pyarrow reads ISO-8601 text as a timestamp first.
    plain = load(datasets, [corpus], tmp_path / "plain", trajectory.record_features())
    assert plain[0]["metadata"]["timestamp"] != records[0]["metadata"]["timestamp"]


def test_load_jsonl_names_a_torn_line(tmp_path, monkeypatch):
    datasets = offline_datasets(monkeypatch, tmp_path)
    path = _write(tmp_path / "run.jsonl", [_record("a")])
    with open(path, "ab") as handle:
        handle.write(b'{"task_id": "torn')
    with pytest.raises(datasets.exceptions.DatasetGenerationError) as failure:
        trajectory.load_jsonl([str(path)], trajectory.record_features(), cache_dir=str(tmp_path / "c"))
    assert f"{path} line 2 is not a JSON object" in str(failure.value.__cause__)


# The text formats: the corpus holds no patches nor token ids (tests/test_swebench_export.py and
# tests/test_tokens.py load those formats back).
@pytest.mark.parametrize("format", ["hermes", "openai", "sharegpt"])
def test_every_export_loads_back_byte_for_byte(corpus, tmp_path, monkeypatch, format):
    """Arguments that were not a JSON object stay the strings the model sent ("[1, 2]" is not read as a list)."""
    offline_datasets(monkeypatch, tmp_path)
    out = tmp_path / f"{format}.jsonl"
    assert export([str(corpus), "--output_file", str(out), "--format", format]).returncode == 0
    rows = read_jsonl(out)
    ds = load_export(None, out, tmp_path, format)
    assert [dict(row) for row in ds] == rows
    if format == "openai":
        row = next(r for r in ds if r["messages"][0]["content"] == "malformed and unknown calls")
        arguments = [c["function"]["arguments"] for c in row["messages"][1]["tool_calls"]]
        assert arguments[:5] == ["{not json", '"just a string"', "", "[1, 2]", {"cmd": "ls"}]


def _round_trip_case(corpus) -> tuple[dict, list[dict]]:
    record = _records(corpus)["exact round trip cases"]
    messages, _ = trajectory.to_openai(record["conversations"])
    return record, [m for m in messages if m["role"] == "assistant"]


README_EXPORT = " ".join(
    (ROOT / "README.md").read_text(encoding="utf-8").split("## From records to training sets")[1].split()
)


def test_reasoning_holding_a_think_close_reads_back_as_the_same_text(corpus):
    record, (first, _) = _round_trip_case(corpus)
    # the model sent reasoning "a\n</think>\nb" and content "first line\n\n": the Hermes text reads two ways
    assert record["conversations"][2]["value"].startswith("<think>\na\n</think>\nb\n</think>\nfirst line\n\n\n")
    assert (first["reasoning_content"], first["content"]) == ("a", "b\n</think>\nfirst line\n\n")
    messages, tools = trajectory.to_openai(record["conversations"])
    assert trajectory.to_hermes(messages, tools) == record["conversations"]
    assert "the first `\\n</think>\\n` ends the reasoning" in README_EXPORT


def test_content_starting_with_a_think_block_reads_as_reasoning(corpus):
    record, (_, second) = _round_trip_case(corpus)
    assert record["conversations"][-1]["value"] == "<think>\nx\n</think>\ny"
    assert (second["reasoning_content"], second["content"]) == ("x", "y")
    assert "content that starts with a `<think>` block reads as reasoning" in README_EXPORT


def test_trailing_newlines_of_a_model_turn_are_not_kept(corpus):
    record, (first, second) = _round_trip_case(corpus)
    assert first["content"].endswith("first line\n\n")  # before its tool calls: kept
    assert second["content"] == "y"  # the model sent "y\n\n": the Hermes format strips the end of a turn
    assert "trailing whitespace at the end of a model turn is not kept" in README_EXPORT


def test_arguments_are_the_parsed_object_not_the_string_sent(corpus):
    record, (first, _) = _round_trip_case(corpus)
    expected = {"command": "echo é", "n": 10.0, "d": 2}  # spacing, \\u00e9, 1e1 and the duplicate key, as parsed
    assert first["tool_calls"][0]["function"]["arguments"] == expected
    messages, _ = trajectory.to_openai(record["conversations"], arguments="string")
    text = next(m for m in messages if m["tool_calls"])["tool_calls"][0]["function"]["arguments"]
    assert text == json.dumps(expected, ensure_ascii=False) != RAW_ARGUMENTS
    assert "not the exact string the model sent" in README_EXPORT


# ---------------------------------------------------------------------------------------------------------------
# export: records from hermes-agent's trajectory compressor, and exports that write nothing
# ---------------------------------------------------------------------------------------------------------------

NOTICE = "\n\nSome of your previous tool responses may be summarized to preserve context."
"""hermes-agent trajectory_compressor.py CompressionConfig.summary_notice_text (its default)."""


def compressed(record: dict, start: int, until: int) -> dict:
    """``record`` as hermes-agent's trajectory compressor writes it (trajectory_compressor.py: _assemble_compressed
    and process_entry_async): the notice appended to the system turn, turns [start, until) replaced by one human
    summary turn, and its metrics under "compression_metrics"."""
    turns = record["conversations"]
    head = [{**t, "value": t["value"] + NOTICE} if t["from"] == "system" else dict(t) for t in turns[:start]]
    summary = {"from": "human", "value": "[CONTEXT SUMMARY]: The assistant ran echo again twice."}
    metrics = {"original_tokens": 900, "compressed_tokens": 500, "was_compressed": True}
    return {**record, "conversations": [*head, summary, *turns[until:]], "compression_metrics": metrics}


def test_export_reads_records_compressed_by_hermes_agent(corpus, tmp_path, monkeypatch):
    original = _records(corpus)["max iterations"]
    assert [t["from"] for t in original["conversations"]] == ["system", "human"] + ["gpt", "tool"] * 4
    record = compressed(original, 4, 6)  # head: system, human, first gpt and tool; tail: the last 4 turns
    source = _write(tmp_path / "compressed.jsonl", [record])
    datasets = offline_datasets(monkeypatch, tmp_path)
    for format in ("hermes", "openai", "sharegpt"):  # swebench exports patches, which this record has none of
        out = tmp_path / f"{format}.jsonl"
        result = export([str(source), "--output_file", str(out), "--format", format])
        assert result.returncode == 0 and "exported 1 of 1 records" in result.stderr, result.stderr
        assert "1 records compressed by hermes-agent's trajectory compressor" in result.stderr
        [row] = read_jsonl(out)
        assert [dict(r) for r in load_export(datasets, out, tmp_path / format, format)] == [row]
        if format == "hermes":
            assert row == {k: v for k, v in record.items() if k != "compression_metrics"}
        elif format == "openai":
            system, *messages = row["messages"]
            assert (system["role"], system["content"]) == ("system", NOTICE.lstrip("\n"))
            roles = ["user", "assistant", "tool", "user", "assistant", "tool", "assistant", "tool"]
            assert [m["role"] for m in messages] == roles
            turns = trajectory.to_hermes(messages, row["tools"])
            turns[0] = {**turns[0], "value": turns[0]["value"] + NOTICE}
            assert turns == record["conversations"]
            text = chat_tokenizer("qwen3").apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
            assert text.startswith("<|im_start|>system\n" + NOTICE.lstrip("\n") + "\n\n# Tools")
            assert "<|im_start|>user\n[CONTEXT SUMMARY]: " in text
        else:
            assert row["system"] == NOTICE.lstrip("\n")
            llamafactory_qwen(row)  # a user turn right after a tool result would not alternate: the row ends before
            assert [t["from"] for t in row["conversations"]] == ["human", "function_call"]
            assert "1 rows that end before a user turn right after a tool result" in result.stderr


def test_an_export_that_writes_nothing_of_a_non_empty_input_exits_non_zero(corpus, tmp_path):
    out = tmp_path / "out.jsonl"
    result = export([str(corpus), "--output_file", str(out), "--only", "passed"])  # no record has a verifier
    assert result.returncode == 1, result.stderr
    assert f"exported 0 of {len(read_jsonl(corpus))} records" in result.stderr
    assert "export wrote nothing of a non-empty input" in result.stderr.splitlines()[-1]

    foreign = _record("a")
    foreign["conversations"][0] = {"from": "system", "value": "You are a helpful assistant."}
    source = _write(tmp_path / "foreign.jsonl", [foreign])
    result = export([str(source), "--output_file", str(out), "--format", "openai"])
    assert result.returncode == 1 and "1 records whose turns cannot be read back" in result.stderr
    assert export([str(source), "--output_file", str(out)]).returncode == 0  # hermes passes it on as it is

    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert export([str(empty), "--output_file", str(out)]).returncode == 0  # nothing to write, nothing lost
