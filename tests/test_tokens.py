"""--return_tokens: the ids a server rendered and sampled, and their logprobs, recorded compactly and exported for
RL trainers, against a model server that really tokenizes (tests/token_server.py) in vLLM's and SGLang's layouts."""

from __future__ import annotations

import json

import pytest
from conftest import FINAL, make_config, read_jsonl, run_cli, run_prompts
from model_server import ScriptedModelServer, Step, http_error, reply, tool_call
from token_server import IM_END, TokenModel, Turn

import mini_swe_runner
import trajectory

THREE_TURNS = [Turn("echo one"), Turn("ls -la", words=5), Turn(FINAL, words=2)]


def _run(tmp_path, model: TokenModel, prompts: list[str], name: str = "out.jsonl", **overrides):
    with ScriptedModelServer(model) as server:
        config = make_config(server, tmp_path / name, **{"return_tokens": True, **overrides})
        outcome, records = run_prompts(config, prompts)
    return outcome, records, server


def _export(tmp_path, source, format: str, code: int = 0) -> tuple[list[dict], str]:
    result = run_cli(["export", str(source), "--output_file", str(tmp_path / f"{format}.jsonl"), "--format", format])
    assert result.returncode == code, result.stderr
    return read_jsonl(tmp_path / f"{format}.jsonl"), result.stderr


@pytest.mark.parametrize("api", ["vllm", "sglang"])
@pytest.mark.parametrize("token_api", [None, "given"])
@pytest.mark.parametrize("spaced", [False, True], ids=["compact", "spaced"])
def test_stitched_tokens_are_the_servers_last_sequence(tmp_path, api, token_api, spaced):
    model = TokenModel({"do it": THREE_TURNS}, api=api, spaced=spaced)
    _, records, server = _run(tmp_path, model, ["do it"], token_api=api if token_api else None)
    record = records[0]
    tokens = record["tokens"]
    assert record["exit_reason"] == "completed" and record["api_calls"] == 3
    assert tokens["api"] == api and tokens["consistent"] is True and len(tokens["calls"]) == 3
    assert [call["break"] for call in tokens["calls"]] == [False, False, False]
    assert [call["finish_reason"] for call in tokens["calls"]] == ["tool_calls"] * 3
    # what each request asked for: only that dialect's fields when --token_api names it
    asked = server.requests[0]
    assert asked["logprobs"] is True and asked["return_token_ids"] is True
    assert ("return_prompt_token_ids" in asked) == (api == "sglang" or not token_api)

    rows, _ = _export(tmp_path, tmp_path / "out.jsonl", "tokens")
    (row,) = rows
    calls = model.calls["do it"]
    assert row["prompt_ids"] == calls[0][0]
    assert row["prompt_ids"] + row["response_ids"] == model.last_sequence("do it")  # token for token
    sampled = [i for i, m in enumerate(row["response_mask"]) if m == 1]
    expected_sampled, position = [], len(calls[0][0])
    for prompt_ids, completion, _ in calls:  # the completions sit where the server's sequence has them
        position = len(prompt_ids)
        expected_sampled += range(
            position - len(row["prompt_ids"]), position - len(row["prompt_ids"]) + len(completion)
        )
    assert sampled == expected_sampled
    assert [row["response_logprobs"][i] for i in sampled] == [lp for _, _, logprobs in calls for lp in logprobs]
    assert all(row["response_logprobs"][i] == 0.0 for i, m in enumerate(row["response_mask"]) if m == 0)
    assert row["task_id"] == record["task_id"] and row["sample_index"] == 0 and row["reward"] is None


def test_logprobs_are_a_real_distributions_and_stored_exactly(tmp_path):
    model = TokenModel({"do it": THREE_TURNS})
    _, records, _ = _run(tmp_path, model, ["do it"], temperature=0.7)
    calls = list(trajectory.token_calls(records[0]["tokens"]))
    for call, (prompt_ids, completion, logprobs) in zip(calls, model.calls["do it"], strict=True):
        assert call.prompt_ids == prompt_ids and call.completion_ids == completion
        assert call.logprobs == logprobs  # float32 values, stored exactly
        assert all(value < 0 for value in logprobs)
    assert records[0]["tokens"]["logprob_bytes"] == 4 and records[0]["metadata"]["sampling"]["temperature"] == 0.7


def test_storage_keeps_only_new_prompt_tokens(tmp_path):
    model = TokenModel({"do it": THREE_TURNS})
    _, records, _ = _run(tmp_path, model, ["do it"])
    tokens = records[0]["tokens"]
    stored = [trajectory.unpack_ids(call["prompt_ids"], tokens["id_bits"]) for call in tokens["calls"]]
    calls = model.calls["do it"]
    assert stored[0] == calls[0][0]
    for index in (1, 2):
        previous = calls[index - 1][0] + calls[index - 1][1]
        assert stored[index] == calls[index][0][len(previous) :] and len(stored[index]) < len(calls[index][0]) / 2
    assert tokens["id_bits"] == 16  # a 700-token vocabulary


def test_prompt_ids_that_extend_the_sequence_are_read_from_bytes_and_anything_else_parsed():
    log = trajectory.TokenLog()
    log.add(trajectory.TokenCall([5, 6, 70000], [8, 9], [-0.5, -0.25]))

    def body(prompt_ids: list[int], **json_options) -> tuple[dict, bytes]:
        value = {"choices": [{"message": {"content": "x"}}], "prompt_token_ids": prompt_ids}
        return value, json.dumps(value, **({"separators": (",", ":")} | json_options)).encode()

    value, raw = body([5, 6, 70000, 8, 9, 10, 11])
    payload, known = mini_swe_runner.split_prompt_ids(raw, log)
    assert known.tolist() == [5, 6, 70000, 8, 9, 10, 11] and payload == {**value, "prompt_token_ids": []}
    payload, known = mini_swe_runner.split_prompt_ids(body([5, 6, 70000, 8, 9])[1], log)
    assert known.tolist() == [5, 6, 70000, 8, 9]  # the same ids again: nothing new
    for other in ([5, 6, 70000, 8], [5, 6, 70000, 8, 90], [5, 6, 70000, 8, 95, 1], [1]):  # shorter, other, break
        value, raw = body(other)
        assert mini_swe_runner.split_prompt_ids(raw, log) == (value, None)
    value, raw = body([5, 6, 70000, 8, 9, 10], separators=(", ", ": "))  # spaced: parsed whole
    assert mini_swe_runner.split_prompt_ids(raw, log) == (value, None)
    value = {"prompt_token_ids": [5, 6, 70000, 8, 9, 1], "choices": [{"prompt_token_ids": [5, 6, 70000, 8, 9, 1]}]}
    raw = json.dumps(value, separators=(",", ":")).encode()
    assert mini_swe_runner.split_prompt_ids(raw, log) == (value, None)  # twice: which one is meant is not guessed


@pytest.mark.parametrize("bits", trajectory.ID_BITS)
def test_ids_pack_exactly_at_every_width(bits):
    import random

    rng = random.Random(bits)
    top = (1 << bits) - 1
    for count in range(0, 13):  # every remainder of the sub-byte packings
        ids = [rng.randint(0, top) for _ in range(count)] + ([top, 0] if count else [])
        text = trajectory.pack_ids(ids, bits)
        assert trajectory.unpack_ids(text, bits) == ids
        assert len(text) <= 4 * -(-(len(ids) * bits // 8 + 1) // 3)  # base64 of bits/8 bytes an id, no more
    assert trajectory.id_bits_for(151_935) == 18 and trajectory.id_bits_for(65_535) == 16
    assert len(trajectory.pack_ids(range(1000, 151_000, 150), 18)) == 4 * 1000 * 18 // 8 // 3  # 3 characters an id


def test_a_template_that_drops_reasoning_is_a_break_exported_only_as_steps(tmp_path):
    turns = [Turn("echo one", reasoning="first I look"), Turn("echo two", reasoning="then more"), Turn(FINAL)]
    model = TokenModel({"think": turns, "plain": THREE_TURNS}, keep_reasoning=False)
    _, records, _ = _run(tmp_path, model, ["think", "plain"], workers=1)
    by_prompt = {r["conversations"][1]["value"]: r for r in records}
    tokens = by_prompt["think"]["tokens"]
    assert tokens["consistent"] is False and [c["break"] for c in tokens["calls"]] == [False, True, True]
    assert by_prompt["plain"]["tokens"]["consistent"] is True

    rows, summary = _export(tmp_path, tmp_path / "out.jsonl", "tokens")
    assert [row["task_id"] for row in rows] == [by_prompt["plain"]["task_id"]]  # left out, never spliced
    assert "1 whose prompts broke the token prefix" in summary

    steps, _ = _export(tmp_path, tmp_path / "out.jsonl", "steps")
    think = [s for s in steps if s["task_id"] == by_prompt["think"]["task_id"]]
    assert [s["step_index"] for s in think] == [0, 1, 2] and [s["is_last"] for s in think] == [False, False, True]
    for step, (prompt_ids, completion, logprobs) in zip(think, model.calls["think"], strict=True):
        assert (step["prompt_ids"], step["completion_ids"], step["logprobs"]) == (prompt_ids, completion, logprobs)
        assert step["trajectory_id"] == f"{step['task_id']}#0" and step["group"] == step["task_id"]


def test_im_end_inside_a_tool_output_keeps_the_servers_ids(tmp_path):
    command = f"printf 'a {IM_END} b'"
    model = TokenModel({"special": [Turn(command), Turn(FINAL)]})
    _, records, _ = _run(tmp_path, model, ["special"])
    rows_path = tmp_path / "out.jsonl"
    rows, _ = _export(tmp_path, rows_path, "tokens")
    im_end = model.tok.token_to_id(IM_END)
    sequence = rows[0]["prompt_ids"] + rows[0]["response_ids"]
    assert sequence == model.last_sequence("special")
    # the tool turn carries the special id the server's tokenizer made of the text: one more than the turns' ends
    tool_text = json.loads(records[0]["conversations"][3]["value"].split("\n", 1)[1].rsplit("\n", 1)[0])
    assert IM_END in tool_text["content"]["output"]
    # system, user, assistant and tool turns end in one each; the command holds one, its output one, and the last
    # completion ends in one: the server's ids, not a re-tokenization of the record's text
    assert sequence.count(im_end) == 4 + 1 + 1 + 1


def test_steps_rows_rebuild_every_prompt_and_reward_sits_on_the_last(tmp_path):
    model = TokenModel({"do it": THREE_TURNS})
    _run(tmp_path, model, ["do it"], verify="true")
    steps, _ = _export(tmp_path, tmp_path / "out.jsonl", "steps")
    assert [s["reward"] for s in steps] == [None, None, 1.0]
    assert [s["prompt_ids"] for s in steps] == [call[0] for call in model.calls["do it"]]


def test_samples_resume_and_dedup_keep_tokens(tmp_path):
    model = TokenModel({"a": THREE_TURNS, "b": [Turn(FINAL)]})
    with ScriptedModelServer(model) as server:
        first = make_config(server, tmp_path / "out.jsonl", return_tokens=True, samples=2)
        _, records = run_prompts(first, ["a"])
        assert sorted(r["sample_index"] for r in records) == [0, 1]
        assert all(r["tokens"]["consistent"] for r in records)
        first_completions = [next(trajectory.token_calls(r["tokens"])).completion_ids for r in records]
        assert first_completions[0] != first_completions[1]  # two samples of one prompt, each sampled
        # resume with one more prompt: the finished samples are kept, the new prompt's run
        _, records = run_prompts(first, ["a", "b"])
    assert len(records) == 4 and all(r["tokens"] is not None for r in records)
    # the same records twice (a repeated shard): export keeps one per (task_id, sample_index)
    copy = tmp_path / "copy.jsonl"
    copy.write_text((tmp_path / "out.jsonl").read_text())
    result = run_cli(
        [
            "export",
            str(tmp_path / "out.jsonl"),
            str(copy),
            "--output_file",
            str(tmp_path / "t.jsonl"),
            "--format",
            "tokens",
        ]
    )
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(tmp_path / "t.jsonl")
    assert sorted((r["task_id"], r["sample_index"]) for r in rows) == sorted(
        (r["task_id"], r["sample_index"]) for r in records
    )


def test_resuming_with_tokens_into_a_text_only_output_is_refused(tmp_path):
    model = TokenModel({"a": THREE_TURNS})
    with ScriptedModelServer(model) as server:
        _, records = run_prompts(make_config(server, tmp_path / "out.jsonl"), ["a"])
        assert records[0]["tokens"] is None  # without --return_tokens: null, and no token field asked for
        assert "return_token_ids" not in server.requests[0]
        with pytest.raises(mini_swe_runner.UsageError, match="--return_tokens"):
            run_prompts(make_config(server, tmp_path / "out.jsonl", return_tokens=True), ["a"])


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(lambda: TokenModel({"a": THREE_TURNS}, api="sglang-meta"), id="old-sglang-no-prompt-ids"),
        pytest.param(lambda: lambda request: reply(None, [tool_call("true")]), id="plain-openai-server"),
    ],
)
def test_an_endpoint_without_ids_is_a_one_line_error(tmp_path, model):
    with ScriptedModelServer(model()) as server:
        result = run_cli(
            [
                "--task",
                "a",
                "--base_url",
                server.base_url,
                "--output_file",
                str(tmp_path / "o.jsonl"),
                "--return_tokens",
            ]
        )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "--return_tokens" in line]
    assert len(lines) == 1 and "returned no prompt token ids" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_records_with_and_without_tokens_load_in_one_schema(tmp_path):
    datasets = pytest.importorskip("datasets")
    model = TokenModel({"a": THREE_TURNS})
    _run(tmp_path, model, ["a"], name="with.jsonl")
    _run(tmp_path, model, ["a"], name="without.jsonl", return_tokens=False)
    old = read_jsonl(tmp_path / "without.jsonl")[0]
    del old["tokens"]  # a record written before the key existed
    (tmp_path / "old.jsonl").write_text(json.dumps(old) + "\n")
    files = [str(tmp_path / name) for name in ("with.jsonl", "without.jsonl", "old.jsonl")]
    loaded = datasets.load_dataset("json", data_files=files, features=trajectory.record_features(), split="train")
    assert [row["tokens"] is None for row in loaded] == [False, True, True]
    for format in ("tokens", "steps"):
        rows, summary = _export(tmp_path, tmp_path / "with.jsonl", format)
        features = trajectory.export_features(format)
        data = datasets.load_dataset("json", data_files=str(tmp_path / f"{format}.jsonl"), features=features)
        assert data["train"].num_rows == len(rows) > 0
    _, summary = _export(tmp_path, tmp_path / "without.jsonl", "steps", code=1)  # it wrote nothing: exit 1
    assert "1 without token ids" in summary and "export wrote nothing of a non-empty input" in summary


def test_a_damaged_tokens_record_is_left_out_whole_and_counted(tmp_path):
    model = TokenModel({"a": THREE_TURNS, "b": THREE_TURNS})
    _, records, _ = _run(tmp_path, model, ["a", "b"], workers=1)
    damaged = records[0]
    damaged["tokens"]["calls"][-1]["logprobs"] = damaged["tokens"]["calls"][-1]["logprobs"][:-8]  # 2 logprobs short
    (tmp_path / "damaged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for format in ("steps", "tokens"):
        rows, summary = _export(tmp_path, tmp_path / "damaged.jsonl", format)
        assert {row["task_id"] for row in rows} == {records[1]["task_id"]}  # none of the damaged one's steps
        assert f"1 records whose tokens cannot be read back, first: {damaged['task_id']}" in summary
    result = run_cli(["export", str(tmp_path / "damaged.jsonl"), "--output_file", str(tmp_path / "x.jsonl"),
                      "--format", "steps", "--empty_think"])  # fmt: skip
    assert result.returncode == 2 and "--empty_think applies to hermes and sharegpt" in result.stderr


def test_resume_runs_a_failed_sample_again_with_tokens_and_keeps_the_finished_ones(tmp_path):
    model = TokenModel({"a": THREE_TURNS, "b": THREE_TURNS})
    failing = True

    def script(request: dict):
        if failing and any(m["role"] == "user" and m["content"] == "b" for m in request["messages"]):
            return http_error(503, "overloaded")
        return model(request)

    with ScriptedModelServer(script) as server:
        config = make_config(server, tmp_path / "out.jsonl", return_tokens=True, max_retries=0)
        _, records = run_prompts(config, ["a", "b"])
        by_prompt = {r["conversations"][1]["value"]: r for r in records}
        assert by_prompt["b"]["exit_reason"] == "api_error" and by_prompt["b"]["tokens"] is None
        kept = json.dumps(by_prompt["a"])
        calls_of_a = len(model.calls["a"])
        failing = False
        _, records = run_prompts(config, ["a", "b"])
    by_prompt = {r["conversations"][1]["value"]: r for r in records}
    assert len(records) == 2 and len(model.calls["a"]) == calls_of_a  # "a" was not run again
    assert json.dumps(by_prompt["a"]) == kept
    assert by_prompt["b"]["exit_reason"] == "completed" and by_prompt["b"]["tokens"]["consistent"] is True
    rows, _ = _export(tmp_path, tmp_path / "out.jsonl", "tokens")
    assert sorted(row["prompt_ids"] + row["response_ids"] for row in rows) == sorted(
        model.last_sequence(prompt) for prompt in ("a", "b")
    )


def _altered(change):
    """A vLLM-layout TokenModel whose answers ``change`` edits (a JSON body -> None) before they are sent."""
    model = TokenModel({"a": THREE_TURNS})

    def script(request: dict):
        step = model(request)
        body = json.loads(step.body)
        change(body)
        return Step(body=json.dumps(body).encode())

    return script


def _mislabel(body: dict) -> None:
    body["choices"][0]["logprobs"]["content"][0]["token"] = "token_id:999999"


def _short_logprobs(body: dict) -> None:
    del body["choices"][0]["logprobs"]["content"][-1]


def _infinite_logprob(body: dict) -> None:
    body["choices"][0]["logprobs"]["content"][1]["logprob"] = float("-inf")  # written as -Infinity


def _float_ids(body: dict) -> None:
    body["prompt_token_ids"] = [float(i) for i in body["prompt_token_ids"]]


@pytest.mark.parametrize(
    "change, message",
    [
        (_mislabel, "returned logprobs that do not match its token ids"),
        (_short_logprobs, "completion ids but"),
        (_infinite_logprob, "usable logprobs"),
        (_float_ids, "returned no prompt token ids"),
    ],
)
def test_ids_and_logprobs_that_do_not_fit_together_are_a_one_line_error(tmp_path, change, message):
    with ScriptedModelServer(_altered(change)) as server:
        result = run_cli(
            ["--task", "a", "--base_url", server.base_url, "--output_file", str(tmp_path / "o.jsonl"),
             "--return_tokens"]
        )  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if "--return_tokens" in line]
    assert result.returncode != 0 and len(lines) == 1 and message in lines[0], result.stderr
