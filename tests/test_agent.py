"""The agent loop and the model client, driven through the real openai SDK against the scripted HTTP server."""

from __future__ import annotations

import asyncio
import json
import time

from conftest import FINAL, make_config, run_prompts, tool_results
from model_server import (
    ScriptedModelServer,
    Step,
    delayed,
    drop,
    garbage,
    http_error,
    no_choices,
    per_conversation,
    reply,
    tool_call,
)

import mini_swe_runner
from environments import EnvSettings


def test_commands_run_and_marker_completes_the_task(out):
    script = per_conversation(
        [
            reply("Creating the file.", [tool_call("printf 'print(1)' > hello.py && python3 hello.py")]),
            reply(None, [tool_call(FINAL)]),
        ]
    )
    with ScriptedModelServer(script) as server:
        outcome, [record] = run_prompts(make_config(server, out), ["make hello.py"])
    assert outcome.exit_code == 0
    assert record["completed"] is True and record["exit_reason"] == "completed"
    assert record["api_calls"] == 2
    assert record["tool_stats"] == {"terminal": {"count": 2, "success": 2, "failure": 0}}
    assert record["usage"] == {
        "prompt_tokens": 200,
        "completion_tokens": 40,
        "total_tokens": 240,
        "reasoning_tokens": 10,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
    }
    results = tool_results(record)
    assert results[0]["content"] == {"output": "1\n", "exit_code": 0, "error": None}
    assert "MINI_SWE_AGENT_FINAL_OUTPUT" in results[1]["content"]["output"]
    assert [t["from"] for t in record["conversations"]] == ["system", "human", "gpt", "tool", "gpt", "tool"]
    assert record["conversations"][1]["value"] == "make hello.py"
    assert record["error"] is None


def test_request_carries_tool_ephemeral_system_prompt_and_key(out):
    with ScriptedModelServer([reply("nothing to do")]) as server:
        _, [record] = run_prompts(make_config(server, out), ["say hi"])
        request, headers = server.requests[0], server.headers[0]
    assert [t["function"]["name"] for t in request["tools"]] == ["terminal"]
    assert request["tools"][0]["function"]["parameters"]["required"] == ["command"]
    assert request["messages"][0]["role"] == "system"
    assert "MINI_SWE_AGENT_FINAL_OUTPUT" in request["messages"][0]["content"]
    assert request["model"] == "scripted-model"
    assert headers["authorization"] == "Bearer sk-test-key-0123456789"
    # The prompt the model saw is not in the trajectory: turn 0 is the Hermes tool template.
    assert record["conversations"][0]["value"].startswith("You are a function calling AI model.")
    assert request["messages"][0]["content"] not in json.dumps(record)


def test_each_request_goes_where_and_as_the_sdks_own_request_would(out, monkeypatch):
    """The model calls and the endpoint check are sent below the SDK's per-request layer: each must still reach the
    path the SDK joins from --base_url (with or without its trailing slash, under a deeper prefix) with the headers
    the SDK sends (key, content type, user agent, its X-Stainless-* and organization headers), as the SDK's own
    client.post/get sends them from the same settings side by side."""
    import openai

    try:
        from httpx2 import Response
    except ImportError:
        from httpx import Response
    monkeypatch.setenv("OPENAI_ORG_ID", "org-from-the-environment")
    with ScriptedModelServer(lambda request: reply("done")) as server:
        root = server.base_url.removesuffix("/v1")

        async def both_ways(base_url: str) -> None:
            config = make_config(server, out, base_url=base_url)
            sdk = openai.AsyncOpenAI(
                api_key=config.api_key,
                base_url=base_url,
                max_retries=0,
                timeout=config.request_timeout,
                http_client=openai.DefaultAioHttpClient(timeout=config.request_timeout),
            )
            await sdk.get("/models", cast_to=Response)
            await sdk.post("/chat/completions", content=b"{}", cast_to=Response)
            await sdk.close()
            model = mini_swe_runner.ModelClient(config)
            await model.check_endpoint()
            turn = await model.complete([{"role": "user", "content": "hi"}], [])
            await model.close()
            assert turn.message["content"] == "done"

        for base_url in (server.base_url, server.base_url + "/", root + "/deeper/v1/"):
            asyncio.run(both_ways(base_url))
    expected = [
        f"{method} {base}/{path}"
        for base in ("/v1", "/v1", "/deeper/v1")
        for method, path in (("GET", "models"), ("POST", "chat/completions")) * 2
    ]
    assert [path for path, _ in server.seen] == expected
    headers = [{k: v for k, v in sent.items() if k != "content-length"} for _, sent in server.seen]  # bodies differ
    for sdk_get, sdk_post, our_get, our_post in zip(*[iter(headers)] * 4, strict=True):
        assert our_get == sdk_get and our_post == sdk_post
    assert headers[-1]["authorization"] == "Bearer sk-test-key-0123456789"
    assert headers[-1]["openai-organization"] == "org-from-the-environment"
    assert headers[-1]["content-type"] == "application/json" and "content-type" not in headers[-2]


def test_an_error_answer_is_the_sdks_own_exception_with_its_message_and_body(out):
    """Each error answer becomes the exception the SDK's client.post raised for it (class, message, body, code,
    status, headers), read from the same answer side by side: the fatal, permanent and retried verdicts and every
    message the runner writes from them (_api_message, _is_context_length, provider_wait_hint) depend on them."""
    import openai

    try:
        from httpx2 import Response
    except ImportError:
        from httpx import Response
    answers = [
        http_error(401, "Incorrect API key provided"),
        http_error(403, "not allowed"),
        http_error(404, "The model `x` does not exist", code="model_not_found"),
        http_error(400, "This model's maximum context length is 8192 tokens", code="context_length_exceeded"),
        http_error(409, "conflict"),
        http_error(422, "unprocessable"),
        http_error(429, "slow down", headers={"Retry-After": "3", "x-ratelimit-reset-requests": "6m0s"}),
        http_error(500, ""),
        Step(status=502, body=b"<html>Bad Gateway</html>", headers={"Content-Type": "text/html"}),
        Step(status=503, body=json.dumps({"message": "top-level message", "code": 7}).encode()),
        Step(status=400, body=("[" * 100_000 + "]" * 100_000).encode()),
        Step(status=418, body=json.dumps({"error": "a bare string"}).encode()),
        Step(status=302, body=b"moved, but no Location"),
    ]

    async def both_ways(server: ScriptedModelServer) -> list[tuple[tuple, tuple]]:
        config = make_config(server, out)
        sdk = openai.AsyncOpenAI(api_key=config.api_key, base_url=config.base_url, max_retries=0)
        model = mini_swe_runner.ModelClient(config)
        pairs = []
        for _ in answers:
            raised = []
            for send in (
                lambda: sdk.post("/chat/completions", content=b"{}", cast_to=Response),
                lambda: model._send("POST", model.chat_url, b"{}"),
            ):
                try:
                    await send()
                except openai.APIStatusError as exc:
                    headers = {k: v for k, v in exc.response.headers.items() if k not in ("date", "server")}
                    raised.append((type(exc), str(exc), exc.body, exc.code, exc.status_code, headers))
            pairs.append(tuple(raised))
        await sdk.close()
        await model.close()
        return pairs

    with ScriptedModelServer([step for answer in answers for step in (answer, answer)]) as server:
        pairs = asyncio.run(both_ways(server))
    for sdk_raised, ours in pairs:
        assert ours == sdk_raised
    assert [ours[0].__name__ for _, ours in pairs][:3] == [
        "AuthenticationError",
        "PermissionDeniedError",
        "NotFoundError",
    ]


def test_a_redirect_is_followed_as_the_sdk_follows_it(out):
    """A proxy in front of the model that answers 307 with another path: the call (method and body kept) goes on
    there, as the SDK's client followed redirects; a redirect without a Location is an error answer, not a crash."""
    steps = [Step(status=307, headers={"Location": "/moved/v1/chat/completions"}), reply("done")]
    with ScriptedModelServer(steps) as server:
        _, [record] = run_prompts(make_config(server, out), ["follow it"])
        assert [path for path, _ in server.seen[1:]] == ["POST /v1/chat/completions", "POST /moved/v1/chat/completions"]
        assert server.raw_requests[0] == server.raw_requests[1]
    assert record["error"] is None and record["conversations"][-1]["value"] == "done"
    with ScriptedModelServer([Step(status=302, body=b"moved")]) as server:
        _, [record] = run_prompts(make_config(server, out.with_name("second.jsonl")), ["nowhere"])
    assert record["exit_reason"] == "api_error" and record["error"] == "HTTP 302: Error code: 302"


def test_each_request_is_the_whole_history_as_json_the_sdk_would_send(out):
    """The runner encodes each message once (the history only grows) and sends the bytes through the SDK: every
    request must still be one JSON object with each key once, the full history in order, UTF-8 text unescaped,
    and --extra_body unable to replace the messages."""
    prompt = 'Réponds en 中文 😀 \\ "quoted" </tool_call> {marker}'
    script = per_conversation(
        [reply("first ✓", [tool_call("printf 'ünï\\n'")]), reply(None, [tool_call("echo two")]), reply("done")]
    )
    with ScriptedModelServer(script) as server:
        config = make_config(server, out, extra_body={"messages": "replaced?", "top_k": 20}, temperature=0.5)
        _, [record] = run_prompts(config, [prompt])
        raw, requests, headers = server.raw_requests, server.requests, server.headers

    def no_repeated_keys(pairs: list) -> dict:
        keys = [key for key, _ in pairs]
        assert len(keys) == len(set(keys)), keys
        return dict(pairs)

    assert record["completed"] is True and len(raw) == 3
    for body, request, header in zip(raw, requests, headers, strict=True):
        assert json.loads(body, object_pairs_hook=no_repeated_keys) == request
        assert header["content-type"] == "application/json"
        assert request["model"] == "scripted-model" and request["top_k"] == 20 and request["temperature"] == 0.5
        assert [t["function"]["name"] for t in request["tools"]] == ["terminal"]
    assert json.dumps(prompt, ensure_ascii=False).encode() in raw[0]  # UTF-8 as it is, no \\u escapes
    assert "ünï".encode() in raw[1]
    first, second, third = (request["messages"] for request in requests)
    assert first[1] == {"role": "user", "content": prompt}
    assert second[:2] == first and third[: len(second)] == second  # each call: the one before, then what is new
    assert [m["role"] for m in third] == ["system", "user", "assistant", "tool", "assistant", "tool"]
    assert second[2]["content"] == "first ✓" and json.loads(second[3]["content"])["output"] == "ünï\n"
    assert json.loads(third[5]["content"])["output"] == "two\n"


def test_answer_without_tool_calls_completes(out):
    with ScriptedModelServer([reply("The answer is 4.")]) as server:
        _, [record] = run_prompts(make_config(server, out), ["what is 2+2?"])
    assert record["completed"] and record["exit_reason"] == "completed" and record["api_calls"] == 1
    assert record["conversations"][-1] == {"from": "gpt", "value": "The answer is 4."}


def test_parallel_tool_calls_run_in_order_each_answered(out):
    calls = [
        tool_call("echo one > f", call_id="c1"),
        tool_call("cat f; exit 1", call_id="c2"),
        tool_call("cat f", call_id="c3"),
    ]
    with ScriptedModelServer(per_conversation([reply(None, calls), reply("done")])) as server:
        _, [record] = run_prompts(make_config(server, out), ["parallel"])
        second = server.requests[1]["messages"]
    tool_messages = [m for m in second if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_messages] == ["c1", "c2", "c3"]
    assert [json.loads(m["content"])["output"] for m in tool_messages] == ["", "one\n", "one\n"]
    assert record["tool_stats"]["terminal"] == {"count": 3, "success": 2, "failure": 1}
    tool_turns = [t for t in record["conversations"] if t["from"] == "tool"]
    assert len(tool_turns) == 1 and tool_turns[0]["value"].count("<tool_response>") == 3
    assert [r["tool_call_id"] for r in tool_results(record)] == ["c1", "c2", "c3"]


def test_reasoning_is_recorded_and_sent_back_as_received(out):
    details = [{"type": "reasoning.encrypted", "data": "opaque-blob", "id": "r1"}]
    script = per_conversation(
        [
            reply(None, [tool_call("true")], reasoning_content="DeepSeek style thought"),
            reply(None, [tool_call("true")], reasoning="OpenRouter style thought", reasoning_details=details),
            reply("done"),
        ]
    )
    with ScriptedModelServer(script) as server:
        _, [record] = run_prompts(make_config(server, out), ["think"])
        last_request = server.requests[2]["messages"]
    assistants = [m for m in last_request if m["role"] == "assistant"]
    assert assistants[0]["reasoning_content"] == "DeepSeek style thought"
    assert assistants[1]["reasoning"] == "OpenRouter style thought"
    assert assistants[1]["reasoning_details"] == details  # unchanged, as Gemini needs
    gpt = [t["value"] for t in record["conversations"] if t["from"] == "gpt"]
    assert gpt[0].startswith("<think>\nDeepSeek style thought\n</think>\n<tool_call>")
    assert gpt[1].startswith("<think>\nOpenRouter style thought\n</think>\n")


def test_malformed_tool_calls_are_explained_and_counted(out):
    bad_calls = [
        tool_call(arguments="{not json", call_id="b1"),
        tool_call(arguments='{"cmd": "ls"}', call_id="b2"),
        tool_call("ls", name="python", call_id="b3"),
        tool_call(arguments='{"command": "echo recovered", "timeout": "soon"}', call_id="b4"),
    ]
    with ScriptedModelServer(per_conversation([reply(None, bad_calls), reply("ok")])) as server:
        _, [record] = run_prompts(make_config(server, out), ["break things"])
        tool_messages = [m for m in server.requests[1]["messages"] if m["role"] == "tool"]
    errors = [json.loads(m["content"])["error"] for m in tool_messages]
    assert "not a valid JSON object" in errors[0]
    assert 'missing "command"' in errors[1]
    assert "unknown tool 'python'" in errors[2]
    assert errors[3] is None and json.loads(tool_messages[3]["content"])["output"] == "recovered\n"
    assert record["tool_stats"]["terminal"] == {"count": 4, "success": 1, "failure": 3}
    assert record["completed"]
    first_gpt = next(t["value"] for t in record["conversations"] if t["from"] == "gpt")
    assert '{"name": "terminal", "arguments": "{not json"}' in first_gpt  # kept raw, never a silent {}


def test_requested_timeout_is_capped(out):
    script = per_conversation([reply(None, [tool_call("echo started; sleep 20", timeout=1000)]), reply("ok")])
    with ScriptedModelServer(script) as server:
        started = time.monotonic()
        _, [record] = run_prompts(make_config(server, out, max_command_timeout=1), ["slow"])
    assert time.monotonic() - started < 15
    [result] = tool_results(record)
    assert result["content"]["exit_code"] == 124
    assert result["content"]["output"].startswith("started\n")
    assert "timed out after 1 s" in result["content"]["error"]
    assert record["tool_stats"]["terminal"]["failure"] == 1


def test_max_iterations_stops_without_dangling_call(out):
    with ScriptedModelServer(per_conversation([reply(None, [tool_call("echo again")])])) as server:
        _, [record] = run_prompts(make_config(server, out, max_iterations=3), ["loop forever"])
        assert len(server.requests) == 3
    assert record["exit_reason"] == "max_iterations" and record["completed"] is False
    assert record["api_calls"] == 3
    assert record["conversations"][-1]["from"] == "tool"


def test_transient_errors_are_retried_then_succeed(out):
    script = [
        http_error(429, "slow down", headers={"Retry-After": "0"}),
        http_error(500, "boom"),
        http_error(503, "unavailable"),
        drop(),
        no_choices(),
        garbage(),
        delayed(3, reply("too late")),  # past request_timeout: the client gives up and retries
        reply("finally"),
    ]
    with ScriptedModelServer(script) as server:
        outcome, [record] = run_prompts(make_config(server, out, request_timeout=0.5, max_retries=8), ["flaky"])
        assert len(server.requests) == 8
    assert outcome.exit_code == 0
    assert record["completed"] and record["api_calls"] == 1
    assert record["conversations"][-1]["value"] == "finally"


def test_retry_after_is_honoured(out):
    script = [http_error(429, "slow down", headers={"Retry-After": "1"}), reply("ok")]
    with ScriptedModelServer(script) as server:
        started = time.monotonic()
        _, [record] = run_prompts(make_config(server, out), ["wait"])
    assert time.monotonic() - started >= 0.95
    assert record["completed"]


def test_exhausted_retries_record_api_error_and_batch_goes_on(out):
    def script(request):
        if request["messages"][1]["content"] == "doomed":
            return http_error(502, "bad gateway")
        return reply("fine")

    with ScriptedModelServer(script) as server:
        outcome, records = run_prompts(make_config(server, out, max_retries=2, workers=1), ["doomed", "healthy"])
        doomed_attempts = sum(1 for r in server.requests if r["messages"][1]["content"] == "doomed")
    assert outcome.exit_code == 0
    by_prompt = {r["conversations"][1]["value"]: r for r in records}
    assert by_prompt["doomed"]["exit_reason"] == "api_error" and not by_prompt["doomed"]["completed"]
    assert "502" in by_prompt["doomed"]["error"] and "3 attempts" in by_prompt["doomed"]["error"]
    assert doomed_attempts == 3
    assert by_prompt["healthy"]["completed"]


def test_garbage_and_empty_choices_end_in_api_error(out):
    with ScriptedModelServer([garbage(), no_choices("provider down")]) as server:
        _, [record] = run_prompts(make_config(server, out, max_retries=1), ["garbage"])
    assert record["exit_reason"] == "api_error"
    assert "no choices" in record["error"] and "provider down" in record["error"]


def test_context_length_ends_task_without_retry(out):
    openai_style = http_error(
        400, "This model's maximum context length is 8192 tokens.", code="context_length_exceeded"
    )
    vllm_style = http_error(400, "This model's maximum context length is 4096 tokens. However, you requested 5000")
    for step in (openai_style, vllm_style):
        with ScriptedModelServer([step, reply("never")]) as server:
            _, [record] = run_prompts(make_config(server, out, overwrite=True), ["long"])
            assert len(server.requests) == 1
        assert record["exit_reason"] == "context_length" and "maximum context length" in record["error"]


def test_other_client_errors_are_not_retried(out):
    with ScriptedModelServer([http_error(400, "tools are not supported"), reply("never")]) as server:
        _, [record] = run_prompts(make_config(server, out), ["x"])
        assert len(server.requests) == 1
    assert record["exit_reason"] == "api_error" and "tools are not supported" in record["error"]


def test_authentication_error_stops_the_whole_run(out):
    with ScriptedModelServer(lambda request: http_error(401, "invalid api key")) as server:
        outcome, records = run_prompts(make_config(server, out, workers=2), [f"task {i}" for i in range(6)])
        assert len(server.requests) <= 2  # nobody kept hammering after the first 401
    assert outcome.exit_code == 1
    assert "401" in outcome.message and "invalid api key" in outcome.message
    assert records == []


def test_task_timeout_ends_task_and_answers_the_pending_call(out):
    script = per_conversation([reply(None, [tool_call("sleep 30")]), reply("never")])
    with ScriptedModelServer(script) as server:
        started = time.monotonic()
        _, [record] = run_prompts(make_config(server, out, task_timeout=1), ["slow task"])
    assert time.monotonic() - started < 10
    assert record["exit_reason"] == "timeout" and not record["completed"]
    assert "--task_timeout 1" in record["error"]
    [result] = tool_results(record)
    assert "task ended (timeout)" in result["content"]["error"]


def test_missing_usage_counts_as_zero(out):
    with ScriptedModelServer([reply("ok", usage=None)]) as server:
        _, [record] = run_prompts(make_config(server, out), ["no usage"])
    assert set(record["usage"]) == set(mini_swe_runner.trajectory.empty_usage()) and not any(record["usage"].values())


def test_env_error_is_recorded_for_a_bad_prompt_cwd(out, tmp_path):
    lines = [json.dumps({"prompt": "x", "cwd": str(tmp_path / "missing")}), "fine prompt"]
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        outcome, records = run_prompts(make_config(server, out, workers=1), lines)
    by_prompt = {r["conversations"][1]["value"]: r for r in records}
    assert by_prompt["x"]["exit_reason"] == "env_error" and "does not exist" in by_prompt["x"]["error"]
    assert by_prompt["fine prompt"]["completed"]
    assert outcome.exit_code == 0


def test_secrets_never_reach_commands_or_records(out, tmp_path, monkeypatch):
    key = "sk-test-key-0123456789"
    (tmp_path / "leak.txt").write_text(f"the key is {key}\n")
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "tok-abcdefgh12345")  # the runner's environment, not our code
    script = per_conversation(
        [
            reply(None, [tool_call("cat leak.txt; env | grep -c -E 'TOKEN|API_KEY' || true")]),
            reply("done"),
        ]
    )
    settings = EnvSettings(cwd=str(tmp_path), secret_values=(key,))
    with ScriptedModelServer(script) as server:
        _, [record] = run_prompts(make_config(server, out, env=settings), ["leak it"])
    [result] = tool_results(record)
    assert result["content"]["output"] == "the key is [REDACTED]\n0\n"
    assert key not in out.read_text()


def test_unknown_tool_call_id_missing_still_pairs_results(out):
    call = tool_call("echo x")
    call["id"] = ""  # some local servers send no id
    with ScriptedModelServer(per_conversation([reply(None, [call]), reply("ok")])) as server:
        _, [record] = run_prompts(make_config(server, out), ["ids"])
        tool_message = next(m for m in server.requests[1]["messages"] if m["role"] == "tool")
    assert tool_message["tool_call_id"] == "call_0"
    assert tool_results(record)[0]["tool_call_id"] == "call_0"


def test_step_objects_are_plain_data():
    # Guard for the scripted server itself: a step is data, so scripts can be shared between conversations.
    assert isinstance(reply("x"), Step) and reply("x").status == 200
    assert mini_swe_runner.FINAL_OUTPUT_MARKER == "MINI_SWE_AGENT_FINAL_OUTPUT"
