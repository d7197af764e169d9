"""Data integrity through the real CLI: what the user typed reaches the model unchanged, redaction touches only
real secrets, and no path silently loses, mixes or rewrites records (issue 8)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    FINAL,
    RUNNER,
    clean_environ,
    one_line_error,
    read_jsonl,
    run_cli,
    start_cli,
    tool_results,
    wait_for,
)
from model_server import ScriptedModelServer, delayed, http_error, per_conversation, reply, tool_call


def answer_script(*commands: str):
    steps = [reply(None, [tool_call(command)]) for command in commands]
    return per_conversation([*steps, reply("all done")])


TRICKY_TEXTS = [
    '{"k": 1}',
    '"quoted"',
    "'single'",
    "[1, 2]",
    "1, 2",
    "1e3",
    "007",
    "True",
    "None",
    "-x",
    "--looks-like-a-flag",
    "line one\nline two\n",
    "tab\tand trailing space ",
    "{env_type} {marker} {unknown} {{",
    "ünïcödé ✓ 你好",
]


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_task_reaches_the_model_byte_for_byte(tmp_path, text):
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        result = run_cli(["--task", text, "--base_url", server.base_url, "--quiet"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert server.requests[0]["messages"][1]["content"] == text
    record = read_jsonl(tmp_path / "trajectories.jsonl")[0]
    assert record["conversations"][1]["value"] == text


@pytest.mark.parametrize("text", ['{"k": 1}', "1e3", "None", "-x", "[1, 2]"])
def test_every_text_flag_keeps_its_value(tmp_path, text):
    """--model, --system_prompt and --output_file (=form and space form) stay text whatever they look like."""
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        result = run_cli(
            [
                "--task=x",
                f"--model={text}",
                "--system_prompt",
                text,
                "--output_file",
                text,
                "--base_url",
                server.base_url,
                "--quiet",
            ],
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        assert server.requests[0]["model"] == text
        assert server.requests[0]["messages"][0]["content"] == text
    assert (tmp_path / text).is_file()


def test_system_prompt_braces_are_text_and_only_documented_placeholders_are_filled(tmp_path):
    prompt = 'Call it like {"command": "ls"} in a {env_type} box; end with {marker}. {0} {x.y} {'
    file = tmp_path / "system.txt"
    file.write_bytes(b"From a file:\r\n{env_type}\n")
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        result = run_cli(["--task", "x", "--system_prompt", prompt, "--base_url", server.base_url], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        sent = server.requests[0]["messages"][0]["content"]
        assert sent == (
            'Call it like {"command": "ls"} in a local box; end with MINI_SWE_AGENT_FINAL_OUTPUT. {0} {x.y} {'
        )
        result = run_cli(
            [
                "--task",
                "y",
                "--system_prompt_file",
                str(file),
                "--base_url",
                server.base_url,
                "--output_file",
                "2.jsonl",
            ],
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        assert server.requests[1]["messages"][0]["content"] == "From a file:\r\nlocal\n"
    one_line_error(
        run_cli(
            ["--task", "x", "--system_prompt_file", "nope.txt", "--base_url", "http://127.0.0.1:9/v1"], cwd=tmp_path
        ),
        2,
        "does not exist",
    )


def test_short_or_placeholder_keys_never_corrupt_text(tmp_path):
    prompt = "run pytest; a null is fine; EMPTY stays; Broken pipe"
    commands = ["echo pytest null EMPTY Broken pipe test"]
    for key in ("test", "null", "EMPTY", "k", "sk-no-key-required"):
        with ScriptedModelServer(answer_script(*commands)) as server:
            result = run_cli(
                ["--task", prompt, "--api_key", key, "--base_url", server.base_url, "--output_file", f"{key}.jsonl"],
                cwd=tmp_path,
            )
            assert result.returncode == 0, result.stderr
        record = read_jsonl(tmp_path / f"{key}.jsonl")[0]
        assert record["conversations"][1]["value"] == prompt
        assert "[REDACTED]" not in json.dumps(record), key
        assert tool_results(record)[0]["content"]["output"] == "pytest null EMPTY Broken pipe test\n"


def test_real_secrets_are_redacted_value_by_value_but_the_prompt_is_not(tmp_path):
    key = "sk-flag-0123456789abcdef"
    token = "tok-environment-98765"
    prompt = f"my key is {key}; keep this prompt as written"
    script = per_conversation(
        [
            reply(f"I will print {key}", [tool_call(f"echo {key} $MY_TOKEN; echo {token}")]),
            reply(None, [tool_call(FINAL)]),
        ]
    )
    with ScriptedModelServer(script) as server:
        result = run_cli(
            ["--task", prompt, "--api_key", key, "--base_url", server.base_url, "--verbose"],
            cwd=tmp_path,
            env=clean_environ(MY_TOKEN=token),
        )
        assert result.returncode == 0, result.stderr
    record = read_jsonl(tmp_path / "trajectories.jsonl")[0]
    assert record["conversations"][1]["value"] == prompt  # the user's text is never rewritten
    rest = json.dumps(record["conversations"][2:])
    assert key not in rest and token not in rest and "[REDACTED]" in rest
    assert tool_results(record)[0]["content"]["output"] == "[REDACTED]\n[REDACTED]\n"  # $MY_TOKEN is not passed
    assert key not in result.stderr and token not in result.stderr


def test_the_runner_keeps_no_secret_in_its_environment_block_or_command_line(tmp_path):
    key = "sk-flag-secret-0123456789"
    token = "tok-env-secret-0123456789"
    command = 'tr "\\0" "\\n" </proc/$PPID/environ | grep TOKEN | base64; tr "\\0" " " </proc/$PPID/cmdline'
    with ScriptedModelServer(answer_script(command, "sleep 3", FINAL)) as server:
        process = start_cli(
            ["--task", "x", "--api_key", key, "--base_url", server.base_url, "--quiet"],
            cwd=tmp_path,
            env=clean_environ(MY_TOKEN=token, OPENROUTER_API_KEY="sk-or-another-secret-000"),
        )
        wait_for(lambda: len(server.requests) >= 2, timeout=60)
        environ = Path(f"/proc/{process.pid}/environ").read_bytes()
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert process.wait(timeout=60) == 0, process.stderr.read()
    for secret in (key, token, "sk-or-another-secret-000"):
        assert secret.encode() not in environ and secret.encode() not in cmdline
    text = (tmp_path / "trajectories.jsonl").read_text()
    for secret in (key, token):
        assert secret not in text and base64.b64encode(secret.encode()).decode()[:16] not in text


def test_overwrite_keeps_the_old_file_until_the_run_works(tmp_path):
    out = tmp_path / "out.jsonl"
    with ScriptedModelServer(lambda request: reply("first")) as server:
        prompts = tmp_path / "p.jsonl"
        prompts.write_text("a\nb\nc\n")
        assert (
            run_cli(
                ["--prompts_file", str(prompts), "--base_url", server.base_url, "--output_file", str(out), "--quiet"],
                cwd=tmp_path,
            ).returncode
            == 0
        )
    before = out.read_bytes()
    assert len(read_jsonl(out)) == 3
    with ScriptedModelServer(lambda request: http_error(401, "Incorrect API key provided")) as server:
        result = run_cli(
            [
                "--prompts_file",
                str(prompts),
                "--base_url",
                server.base_url,
                "--output_file",
                str(out),
                "--overwrite",
                "--quiet",
            ],
            cwd=tmp_path,
        )
        assert result.returncode == 1
    assert out.read_bytes() == before
    result = run_cli(
        [
            "--prompts_file",
            str(prompts),
            "--cwd",
            str(tmp_path / "missing"),
            "--output_file",
            str(out),
            "--overwrite",
            "--base_url",
            "http://127.0.0.1:9/v1",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 1 and out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.jsonl.new")) == []
    with ScriptedModelServer(lambda request: reply("second")) as server:
        result = run_cli(
            [
                "--prompts_file",
                str(prompts),
                "--base_url",
                server.base_url,
                "--output_file",
                str(out),
                "--overwrite",
                "--quiet",
                "--limit",
                "2",
            ],
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
    records = read_jsonl(out)
    assert [r["conversations"][-1]["value"] for r in records] == ["second", "second"]


def test_overwrite_replaces_the_old_file_as_soon_as_a_model_answers(tmp_path):
    # The agent loop only says "a model answered"; the batch makes that the commit. A run killed after the first answer
    # (nothing written yet, no cleanup) has replaced the old records already, and leaves no new- file behind.
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"task_id": "old"}) + "\n")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("a\n")
    script = per_conversation([reply(None, [tool_call("echo hi")]), delayed(120, reply("late"))])
    with ScriptedModelServer(script) as server:
        args = ["--prompts_file", str(prompts), "--base_url", server.base_url, "--output_file", str(out), "--overwrite"]
        process = start_cli([*args, "--quiet"], cwd=tmp_path)
        try:
            wait_for(lambda: len(server.requests) >= 2)  # the second call follows the first answer's command
            assert out.read_bytes() == b""
            assert [p.name for p in tmp_path.iterdir() if ".new-" in p.name] == []
        finally:
            process.kill()
            process.communicate()
    assert out.read_bytes() == b""


def test_a_second_runner_on_the_same_output_is_refused_and_nothing_is_lost(tmp_path):
    out = tmp_path / "out.jsonl"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(12)))
    with ScriptedModelServer(lambda request: reply("ok"), latency=0.3) as server:
        args = [
            "--prompts_file",
            str(prompts),
            "--base_url",
            server.base_url,
            "--output_file",
            str(out),
            "--workers",
            "2",
            "--quiet",
        ]
        first = start_cli(args, cwd=tmp_path)
        wait_for(lambda: out.exists() and out.stat().st_size > 0, timeout=60)
        second = run_cli(args, cwd=tmp_path)
        line = one_line_error(second, 2, "in use by another mini-swe-runner", f"pid {first.pid}")
        assert "Traceback" not in line
        assert first.wait(timeout=60) == 0, first.stderr.read()
    records = read_jsonl(out)
    assert len(records) == 12 and len({r["task_id"] for r in records}) == 12


def test_symlinked_output_is_written_through_and_leftovers_are_removed(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    target = real / "target.jsonl"
    link = tmp_path / "out.jsonl"
    link.symlink_to(target)
    (real / ".target.jsonl.compact-999999").write_text("stale")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("a\nb\n")
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        base = ["--prompts_file", str(prompts), "--base_url", server.base_url, "--output_file", str(link), "--quiet"]
        assert run_cli([*base, "--limit", "1"], cwd=tmp_path).returncode == 0
        with target.open("a") as handle:
            handle.write('{"torn": ')  # forces a compaction on resume
        assert run_cli(base, cwd=tmp_path).returncode == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert len(read_jsonl(target)) == 2
    # (the prompts' check, .target.jsonl.prompts, is kept once the prompts file is 2 s old: no leftover either)
    names = sorted(p.name for p in real.iterdir() if p.name != ".target.jsonl.prompts")
    assert names == [".target.jsonl.index", ".target.jsonl.lock", "target.jsonl"]


def test_dotenv_of_a_parent_directory_is_not_loaded(tmp_path):
    (tmp_path / ".env").write_text("MINI_SWE_RUNNER_API_KEY=sk-from-parent-0123456789\n")
    child = tmp_path / "child"
    child.mkdir()
    result = run_cli(["--task", "x", "--base_url", "https://api.example.com/v1"], cwd=child)
    one_line_error(result, 2, "no API key")


def test_openai_sdk_environment_defaults(tmp_path):
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        environ = clean_environ(
            OPENAI_BASE_URL=server.base_url, OPENAI_MODEL="env-model", OPENAI_API_KEY="sk-openai-env-0123456789"
        )
        result = run_cli(["--task", "x", "--quiet"], cwd=tmp_path, env=environ)
        assert result.returncode == 0, result.stderr
        assert server.requests[0]["model"] == "env-model"
        assert server.headers[0]["authorization"] == "Bearer sk-openai-env-0123456789"


def test_sampling_options_pass_through_and_are_recorded(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "x", "id": "t1", "repo": "a/b", "difficulty": 3}) + "\n")
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        result = run_cli(
            [
                "--prompts_file",
                str(prompts),
                "--base_url",
                server.base_url,
                "--top_p",
                "0.9",
                "--temperature",
                "0",
                "--reasoning_effort",
                "high",
                "--extra_body",
                '{"top_k": 20, "chat_template_kwargs": {"a": true}}',
            ],
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        body = server.requests[0]
    assert body["top_p"] == 0.9 and body["temperature"] == 0 and body["reasoning_effort"] == "high"
    assert body["top_k"] == 20 and body["chat_template_kwargs"] == {"a": True}
    record = read_jsonl(tmp_path / "trajectories.jsonl")[0]
    assert record["metadata"]["sampling"] == {
        "temperature": 0.0,
        "top_p": 0.9,
        "max_tokens": None,
        "reasoning_effort": "high",
    }
    assert json.loads(record["metadata"]["prompt_fields"]) == {"repo": "a/b", "difficulty": 3}
    for bad in ("[1]", "{not json", '{"model": "x"}'):
        one_line_error(
            run_cli(["--task", "x", "--extra_body", bad, "--base_url", server.base_url], cwd=tmp_path),
            2,
            "--extra_body",
        )


def test_a_401_across_many_workers_is_exactly_one_line(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(f"p{i}\n" for i in range(8)))
    with ScriptedModelServer(lambda request: http_error(401, "Incorrect API key provided"), latency=0.2) as server:
        result = run_cli(
            ["--prompts_file", str(prompts), "--base_url", server.base_url, "--workers", "8"], cwd=tmp_path
        )
    one_line_error(result, 1, "401")


def test_help_and_version_work_without_importing_anything_heavy(tmp_path):
    for flag in ("--version", "--help"):
        result = subprocess.run(
            [sys.executable, "-X", "importtime", *RUNNER[1:], flag],
            capture_output=True,
            text=True,
            env=clean_environ(),
            timeout=60,
        )
        assert result.returncode == 0
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
        assert not {"openai", "fire", "docker", "modal", "httpx", "aiohttp"} & imported, flag


# -- issue 20: a record is reused only for the prompt and verifier it was made for ----------------------------------


def test_a_hard_link_to_the_output_cannot_be_written_by_a_second_runner(tmp_path):
    """Issue 19 item 7: the lock is the file's, not the name's."""
    out = tmp_path / "out.jsonl"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(8)))
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        args = ["--prompts_file", str(prompts), "--base_url", server.base_url, "--workers", "2", "--quiet"]
        assert run_cli([*args, "--output_file", str(out), "--limit", "1"], cwd=tmp_path).returncode == 0
        os.link(out, tmp_path / "alias.jsonl")
        server.latency = 1.0  # the first runner is still at work when the second starts
        first = start_cli([*args, "--output_file", str(out)], cwd=tmp_path)
        wait_for(lambda: len(server.requests) > 1, timeout=60)
        second = run_cli([*args, "--output_file", str(tmp_path / "alias.jsonl")], cwd=tmp_path)
        one_line_error(second, 2, "in use by another mini-swe-runner", "hard link")
        assert first.poll() is None  # refused while the first was running
        assert first.wait(timeout=60) == 0, first.stderr.read()
    records = read_jsonl(out)
    assert len(records) == 8 and len({r["task_id"] for r in records}) == 8
