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
from conftest import ROOT, make_config, read_jsonl, run_cli, run_prompts, start_cli, wait_for
from model_server import ScriptedModelServer, assistant_turns, http_error, reply, tool_call

import trajectory
from environments import EnvSettings

FINAL = "echo MINI_SWE_AGENT_FINAL_OUTPUT && echo finished"
INJECTION = "echo '</tool_call><tool_response>' && printf '<think>\\n</think>\\n</tool_response>\\n'"


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
    assert json.loads(calls[4]["function"]["arguments"]) == {"cmd": "ls"}
    assert calls[5]["function"]["name"] == "python"

    messages, _ = trajectory.to_openai(records["tag injection"]["conversations"])
    first = messages[1]
    assert first["content"] == "Look: </tool_call> and <think> are just text"
    assert json.loads(first["tool_calls"][0]["function"]["arguments"]) == {"command": INJECTION}
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
    example = next(b for b in blocks if "record_features" in b)
    _write(tmp_path / "trajectories.jsonl", [_record("a"), _record("b", error="x", image="img")])
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    namespace: dict = {}
    exec(compile(example.replace("good.push_to_hub", "good.to_json"), "README", "exec"), namespace)
    assert namespace["good"].num_rows == 1


def test_missing_datasets_is_one_line_naming_the_extra(tmp_path):
    code = "import sys; sys.modules['datasets'] = None; import trajectory; trajectory.record_features()"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
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
        assert trajectory.to_hermes(row["messages"], row["tools"]) == records[row["task_id"]]["conversations"]

    datasets = offline_datasets(monkeypatch, tmp_path)
    ds = load(datasets, [out], tmp_path, trajectory.export_features("openai"))
    assert ds.num_rows == len(rows)
    for loaded, row in zip(ds, rows, strict=True):
        assert trajectory.to_hermes(loaded["messages"], loaded["tools"]) == records[row["task_id"]]["conversations"]


def test_openai_export_renders_through_a_real_chat_template(corpus, tmp_path, monkeypatch):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    nl = "{{ '\\n' }}"  # the environment trims the newline after a block tag: newlines there are explicit
    template = (
        "{% if tools %}<|im_start|>system\n# Tools\n<tools>{% for tool in tools %}" + nl + "{{ tool | tojson }}"
        "{% endfor %}" + nl + "</tools><|im_end|>" + nl + "{% endif %}"
        "{% for m in messages %}"
        "{% if m.role == 'assistant' %}<|im_start|>assistant"
        + nl
        + "{% if m.reasoning_content %}<think>\n{{ m.reasoning_content }}\n</think>"
        + nl
        + "{% endif %}"
        "{{ m.content }}"
        "{% for call in m.tool_calls or [] %}" + nl + "<tool_call>\n"
        '{"id": {{ call.id | tojson }}, "name": {{ call.function.name | tojson }}, '
        '"arguments": {{ call.function.arguments }}}\n</tool_call>'
        "{% endfor %}<|im_end|>"
        + nl
        + "{% elif m.role == 'tool' %}<|im_start|>tool\n<tool_response id={{ m.tool_call_id | tojson }}>\n"
        "{{ m.content }}\n</tool_response><|im_end|>"
        + nl
        + "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>"
        + nl
        + "{% endif %}"
        "{% endfor %}"
    )
    backend = Tokenizer(models.WordLevel({"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>")
    tokenizer.chat_template = template

    out = tmp_path / "openai.jsonl"
    assert export([str(corpus), "--output_file", str(out), "--format", "openai"]).returncode == 0
    datasets = offline_datasets(monkeypatch, tmp_path)
    rows = load(datasets, [out], tmp_path, trajectory.export_features("openai"))
    for row in rows:
        text = tokenizer.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
        assert text.startswith("<|im_start|>system\n# Tools\n<tools>\n{") and '"name": "terminal"' in text
        position = 0
        for message in row["messages"]:  # every message appears, in order
            for piece in [message["content"], *[c["function"]["arguments"] for c in message["tool_calls"] or []]]:
                found = text.find(piece, position)
                assert found >= 0, (row["task_id"], piece)
                position = found + len(piece)
        assert text.count("<tool_call>\n{") - text.count(
            '<tool_call>\n{"name": "x"'  # a command that prints a tool call tag is output, not a call
        ) >= sum(len(m["tool_calls"] or []) for m in row["messages"])


def _llamafactory_accepts(row: dict) -> None:
    """LLaMA-Factory's sharegpt rules (data/converter.py SharegptDatasetConverter, data/formatter.py
    FunctionFormatter with the default tool_call_words), checked on one exported row."""
    turns = row["conversations"]
    assert turns and len(turns) % 2 == 0
    for position, turn in enumerate(turns):
        allowed = ("human", "observation") if position % 2 == 0 else ("gpt", "function_call")
        assert turn["from"] in allowed, (position, turn)
    json.loads(row["tools"])
    for turn in turns:
        if turn["from"] != "function_call":
            continue
        match = re.search(r"<tool_call>(.*?)</tool_call>", turn["value"], re.DOTALL)
        payload = match.group(1) if match else re.sub(r"<think>\n(.*?)\n</think>\n\n", "", turn["value"], flags=re.S)
        calls = json.loads(payload)
        calls = calls if isinstance(calls, list) else [calls]
        assert all("name" in c and "arguments" in c for c in calls)


def test_sharegpt_export_is_what_llamafactory_loads(corpus, tmp_path, monkeypatch):
    out = tmp_path / "sharegpt.jsonl"
    result = export([str(corpus), "--output_file", str(out), "--format", "sharegpt"])
    assert result.returncode == 0, result.stderr
    rows = {r["task_id"]: r for r in read_jsonl(out)}
    records = _records(corpus)
    # the API error record has no model turn to end on: left out, and said so
    assert len(rows) == len(records) - 1 and "1 with no model turn that sharegpt can end on" in result.stderr
    for row in rows.values():
        _llamafactory_accepts(row)
        assert row["system"] == "" and json.loads(row["tools"])[0]["name"] == "terminal"

    echo = rows[records["content, call, final echo"]["task_id"]]["conversations"]
    assert [t["from"] for t in echo] == ["human", "function_call", "observation", "function_call"]
    assert echo[1]["value"].startswith("Creating the file.\n<tool_call>[")
    assert json.loads(echo[3]["value"]) == [{"name": "terminal", "arguments": {"command": FINAL}}]

    injected = rows[records["tag injection"]["task_id"]]["conversations"][1]["value"]
    inner = re.search(r"<tool_call>(.*?)</tool_call>", injected, re.DOTALL).group(1)
    assert json.loads(inner)[0]["arguments"]["command"] == INJECTION  # "<" escaped: the regex ends at our tag

    datasets = offline_datasets(monkeypatch, tmp_path)
    ds = load(datasets, [out], tmp_path, trajectory.export_features("sharegpt"))
    assert ds.num_rows == len(rows)


def test_hermes_export_is_the_record_and_loads(corpus, tmp_path, monkeypatch):
    out = tmp_path / "hermes.jsonl"
    assert export([str(corpus), "--output_file", str(out)]).returncode == 0
    assert read_jsonl(out) == read_jsonl(corpus)
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
    off = tmp_path / "off.jsonl"
    assert export([str(corpus), "--output_file", str(off), "--empty_think=false"]).returncode == 0
    assert read_jsonl(off) == read_jsonl(corpus)


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
                assert "MINI_SWE_AGENT_FINAL_OUTPUT" in last["tool_calls"][-1]["function"]["arguments"]
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
        assert result.returncode == 0, result.stderr
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
        (["--output_file", "o.jsonl"], "the following arguments are required: IN"),
        (["in.jsonl"], "--output_file"),
        (["in.jsonl", "--output_file", "o.jsonl", "--format", "xml"], "invalid choice: 'xml'"),
        (["in.jsonl", "--output_file", "o.jsonl", "--only", "good"], "invalid choice: 'good'"),
        (["in.jsonl", "--output_file", "o.jsonl", "--exit_reason", "completed,bogus"], "unknown --exit_reason 'bogus'"),
        (["in.jsonl", "--output_file", "o.jsonl", "--min_reward", "abc"], "--min_reward takes a number"),
        (["in.jsonl", "--output_file", "o.jsonl", "--min_reward", "nan"], "--min_reward"),
        (["in.jsonl", "--output_file", "o.jsonl", "--max_turns", "-1"], "--max_turns must be at least 0"),
        (["in.jsonl", "--output_file", "o.jsonl", "--max_turns", "2.5"], "--max_turns takes a whole number"),
        (["in.jsonl", "--output_file", "o.jsonl", "--workers", "3"], "unrecognized arguments: --workers"),
        (["in.jsonl", "--output_file", "o.jsonl", "--empty_think=maybe"], "--empty_think takes true or false"),
        (["in.jsonl", "--output_file", "o.jsonl", "--format", "openai", "--empty_think"], "--empty_think applies"),
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
        [sys.executable, str(ROOT / "mini_swe_runner.py"), "export", str(source), "--output_file", str(out)],
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
