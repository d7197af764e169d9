"""The real command line, as a user runs it: one task, a batch, piping, and every kind of bad input."""

from __future__ import annotations

import inspect
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import FINAL, ROOT, RUNNER, clean_environ, one_line_error, read_jsonl, run_cli
from model_server import ScriptedModelServer, http_error, per_conversation, reply, tool_call

import mini_swe_runner
import trajectory


@pytest.fixture
def server():
    script = per_conversation(
        [reply(None, [tool_call("echo hello > hello.txt && cat hello.txt")]), reply(None, [tool_call(FINAL)])]
    )
    with ScriptedModelServer(script) as running:
        yield running


def local_args(server, *extra: str) -> list[str]:
    return ["--base_url", server.base_url, "--model", "test-model", *extra]


def test_single_task_writes_one_record_and_keeps_stdout_clean(server, tmp_path):
    result = run_cli(["--task", "Create hello.txt", *local_args(server)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # no stray return value, nothing for humans on stdout
    [record] = read_jsonl(tmp_path / "trajectories.jsonl")
    assert record["completed"] and record["prompt_index"] == 0 and record["task_id"].endswith("-0")
    assert tuple(record) == trajectory.RECORD_KEYS
    assert record["metadata"]["model"] == "test-model" and record["metadata"]["env_type"] == "local"
    assert record["metadata"]["image"] is None
    assert "done: 1 tasks" in result.stderr


def test_batch_from_prompts_file(server, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(
            [
                json.dumps({"prompt": "first", "id": "task-a"}),
                "",
                json.dumps({"task": "second", "id": 7}),
                "plain text prompt",
                "plain text prompt",
            ]
        )
        + "\n"
    )
    output = tmp_path / "out.jsonl"
    result = run_cli(["--prompts_file", str(prompts), "--output_file", str(output), *local_args(server)])
    assert result.returncode == 0, result.stderr
    records = sorted(read_jsonl(output), key=lambda r: r["prompt_index"])
    assert [r["prompt_index"] for r in records] == [0, 1, 2, 3]
    assert [r["task_id"] for r in records[:2]] == ["task-a", "7"]
    assert records[2]["task_id"] != records[3]["task_id"]  # duplicate prompts are distinct tasks
    assert records[2]["task_id"].endswith("-0") and records[3]["task_id"].endswith("-1")
    assert all(r["completed"] for r in records)


def test_output_to_stdout_pipes_into_another_program(server, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("one\ntwo\nthree\n")
    consumer = (
        "import sys, json; rows = [json.loads(line) for line in sys.stdin]; print(len(rows), rows[0]['exit_reason'])"
    )
    command = (
        f"{shlex.join(RUNNER)} --prompts_file {prompts} --output_file - "
        f'--base_url {server.base_url} --model m --workers 3 | {sys.executable} -c "{consumer}"'
    )
    result = subprocess.run(command, shell=True, capture_output=True, text=True, env=clean_environ(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3 completed"
    assert "done: 3 tasks" in result.stderr


def test_unknown_flag_is_rejected_before_any_work(tmp_path):
    with ScriptedModelServer([reply("x")]) as server:
        result = run_cli(["--task", "x", "--base_url", server.base_url, "--max_iteratoins", "3"], cwd=tmp_path)
        assert server.requests == []
    one_line_error(result, 2, "unknown flag --max_iteratoins")
    assert not (tmp_path / "trajectories.jsonl").exists()


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--max_iterations", "abc"], "--max_iterations takes a whole number"),
        (["--max_iterations", "0"], "--max_iterations must be at least 1"),
        (["--max_iterations", "2.5"], "--max_iterations takes a whole number"),
        (["--workers", "-3"], "--workers must be at least 1"),
        (["--timeout", "soon"], "--timeout takes a number"),
        (["--temperature", "hot"], "--temperature takes a number"),
        (["--env", "kubernetes"], "--env must be one of local, bwrap, docker, ssh, modal"),
        (["--env", "docker", "--pull", "sometimes"], "--pull must be missing, always or never"),
        (["--verbose", "maybe"], "--verbose takes true or false"),
        (["--shard", "3/2"], "--shard takes I/N"),
        (["--shard", "0/2"], "--shard takes I/N"),
        (["--base_url", "ftp://example.com"], "--base_url must be an http(s) URL"),
    ],
)
def test_bad_flag_values_are_one_line_errors(tmp_path, flags, needle):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("x\n")
    result = run_cli(["--prompts_file", str(prompts), "--base_url", "http://127.0.0.1:9/v1", *flags], cwd=tmp_path)
    one_line_error(result, 2, needle)


def test_task_and_prompts_file_are_exclusive(tmp_path):
    one_line_error(run_cli(["--base_url", "http://127.0.0.1:9/v1"], cwd=tmp_path), 2, "exactly one of")
    result = run_cli(["--task", "a", "--prompts_file", "b", "--base_url", "http://127.0.0.1:9/v1"], cwd=tmp_path)
    one_line_error(result, 2, "exactly one of")


def test_verbose_false_means_false(server, tmp_path):
    quiet_run = run_cli(["--task", "t", "--verbose=false", *local_args(server)], cwd=tmp_path)
    assert quiet_run.returncode == 0 and "$ echo hello" not in quiet_run.stderr
    loud_run = run_cli(["--task", "t2", "--verbose", *local_args(server)], cwd=tmp_path)
    assert loud_run.returncode == 0 and "$ echo hello" in loud_run.stderr


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"prompt": "ok"}\n{"prompt": "broken"\n', "p.jsonl:2: not valid JSON"),
        ('{"prompt": "ok"}\n\n{"id": "no-prompt"}\n', "p.jsonl:3: no prompt"),
        ('{"prompt": ""}\n', "p.jsonl:1: no prompt"),
        ('{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}\n', "p.jsonl:2: id 'x' already used on line 1"),
        ('{"prompt": "a", "image": 5}\n', 'p.jsonl:1: "image" must be a string'),
        ("\n\n", "has no prompts"),
        # Issue 20 item 3: a misspelled key the runner would have read, and JSON that is not an object.
        (
            '{"prompt": "a"}\n{"prompt": "b", "verfy": "true"}\n',
            'p.jsonl:2: unknown key "verfy": did you mean "verify"',
        ),
        ('{"promt": "a"}\n', 'unknown key "promt": did you mean "prompt"'),
        ('{"prompt": "a", "Id": "x"}\n', 'unknown key "Id": did you mean "id"'),
        ('{"prompt": "a", "imgae": "python:3.12"}\n', 'unknown key "imgae": did you mean "image"'),
        ('{"prompt": "a", "cwdd": "/tmp"}\n', 'unknown key "cwdd": did you mean "cwd"'),
        ('{"tsak": "a"}\n', 'unknown key "tsak": did you mean "task"'),
        ('{"prompt": "a"}\n[1, 2]\n', "p.jsonl:2: an array in JSON, not an object"),
        ('"just a string"\n', "p.jsonl:1: a string in JSON, not an object"),
        ("plain text\n1e3\n", "p.jsonl:2: a number in JSON, not an object"),
        ("null\n", "p.jsonl:1: null in JSON, not an object"),
        # Issue 19 item 10: a lone surrogate is refused with its line, not sent to fail on every rerun.
        ('{"prompt": "a"}\n{"prompt": "b\\ud800"}\n', "p.jsonl:2: the prompt holds a lone surrogate (U+D800"),
        ('{"prompt": "b\\udc00x", "id": "t", "repo": "r"}\n', "p.jsonl:1: the prompt holds a lone surrogate"),
        ('{"prompt": "b", "verify": "test \\ud83d"}\n', "p.jsonl:1: the verify command holds a lone surrogate"),
    ],
)
def test_malformed_prompts_file_is_reported_before_any_task(tmp_path, content, needle):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(content)
    with ScriptedModelServer([reply("x")]) as server:
        result = run_cli(["--prompts_file", str(prompts), "--base_url", server.base_url], cwd=tmp_path)
        assert server.requests == []
    one_line_error(result, 2, needle)
    assert not (tmp_path / "trajectories.jsonl").exists()


@pytest.mark.parametrize(
    "lines",
    [['{"prompt": "a", "verfy": "true"}'], ["[1, 2]"], ['{"prompt": "\\ud800"}'], ["ok", '"text"']],
)
def test_piped_prompts_are_refused_as_a_prompts_file_is(tmp_path, lines):
    """A pipe is read whole (no PromptFile): the same refusals, the same words."""
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(mini_swe_runner.UsageError) as whole:
        mini_swe_runner.parse_prompt_lines(lines, str(path))
    with pytest.raises(mini_swe_runner.UsageError) as streamed:
        mini_swe_runner.load_prompts(str(path))
    assert str(streamed.value) == str(whole.value)


def test_extra_keys_that_are_not_misspellings_still_go_to_prompt_fields(server, tmp_path):
    """Keys not close to one the runner reads, a close one whose family is present, or one whose value could not
    be used (a list) are fields, as before; so is a close one a template reads."""
    prompts = tmp_path / "p.jsonl"
    fields = {"prompts": "b", "uid": "u", "prompt_id": "p", "images": ["x.png"], "repo": "r"}
    prompts.write_text(json.dumps({"prompt": "a", **fields}) + "\n")
    result = run_cli(["--prompts_file", str(prompts), *local_args(server)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(read_jsonl(tmp_path / "trajectories.jsonl")[0]["metadata"]["prompt_fields"]) == fields

    templated = tmp_path / "t.jsonl"
    templated.write_text(json.dumps({"prompt": "c", "verfy": "true"}) + "\n")
    out = tmp_path / "t-out.jsonl"
    args = ["--prompts_file", str(templated), "--verify_template", "{verfy}", "--output_file", str(out)]
    result = run_cli([*args, *local_args(server)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = read_jsonl(out)[0]
    assert json.loads(record["metadata"]["prompt_fields"]) == {"verfy": "true"} and record["reward"] == 1.0


def test_a_task_with_a_lone_surrogate_and_an_empty_model_are_refused(tmp_path):
    task = os.fsdecode(b"fix \xff")  # an undecodable argv byte: a lone surrogate in Python
    with ScriptedModelServer([reply("x")]) as server:
        result = run_cli(["--task", task, "--base_url", server.base_url], cwd=tmp_path)
        one_line_error(result, 2, "--task: the prompt holds a lone surrogate")
        one_line_error(
            run_cli(["--task", "a", "--model", "", "--base_url", server.base_url], cwd=tmp_path), 2, "--model is empty"
        )
        one_line_error(
            run_cli(["--task", "a", "--model=  ", "--base_url", server.base_url], cwd=tmp_path), 2, "--model is empty"
        )
        assert server.requests == []
    assert not (tmp_path / "trajectories.jsonl").exists()


def test_unreadable_inputs_and_outputs_are_one_line_errors(tmp_path):
    base = ["--base_url", "http://127.0.0.1:9/v1"]
    one_line_error(run_cli(["--prompts_file", str(tmp_path / "nope.jsonl"), *base]), 2, "does not exist")
    one_line_error(run_cli(["--prompts_file", str(tmp_path), *base]), 2, "is a directory")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage\n")
    one_line_error(run_cli(["--prompts_file", str(binary), *base]), 2, "not UTF-8")
    one_line_error(
        run_cli(["--task", "x", "--output_file", str(tmp_path / "no" / "dir.jsonl"), *base]), 2, "does not exist"
    )
    one_line_error(run_cli(["--task", "x", "--output_file", str(tmp_path), *base]), 2, "is a directory")


def test_missing_key_names_the_variable_to_set(tmp_path):
    result = run_cli(["--task", "x"], cwd=tmp_path)
    one_line_error(result, 2, "OPENROUTER_API_KEY")


def test_openai_key_is_never_sent_to_openrouter(tmp_path):
    result = run_cli(["--task", "x"], cwd=tmp_path, env=clean_environ(OPENAI_API_KEY="sk-openai-secret-123456"))
    line = one_line_error(result, 2, "OPENROUTER_API_KEY", "OPENAI_API_KEY is set but belongs to another provider")
    assert "sk-openai-secret-123456" not in line


def test_key_resolution_per_provider():
    environ = {"OPENAI_API_KEY": "sk-openai", "OPENROUTER_API_KEY": "sk-or", "DEEPSEEK_API_KEY": "sk-ds"}
    resolve = mini_swe_runner.resolve_api_key
    assert resolve("https://openrouter.ai/api/v1", None, environ) == "sk-or"
    assert resolve("https://api.openai.com/v1", None, environ) == "sk-openai"
    assert resolve("https://api.deepseek.com/v1", None, environ) == "sk-ds"
    assert resolve("https://openrouter.ai/api/v1", "sk-flag", environ) == "sk-flag"
    assert resolve("https://api.openai.com/v1", None, {**environ, "MINI_SWE_RUNNER_API_KEY": "sk-any"}) == "sk-any"
    # Local servers need no key and never receive a provider's key.
    for url in (
        "http://localhost:8000/v1",
        "http://127.0.0.1:11434/v1",
        "http://10.1.2.3:8000/v1",
        "http://vllm:8000/v1",
    ):
        assert resolve(url, None, environ) == "no-key-needed"
    with pytest.raises(mini_swe_runner.UsageError, match="MINI_SWE_RUNNER_API_KEY"):
        resolve("https://models.example.com/v1", None, environ)


def test_dotenv_in_current_directory_is_loaded_and_key_stays_secret(server, tmp_path):
    key = "sk-from-dotenv-abcdef123456"
    (tmp_path / ".env").write_text(f"MINI_SWE_RUNNER_API_KEY={key}\n")
    script = per_conversation([reply(None, [tool_call("env; echo $MINI_SWE_RUNNER_API_KEY")]), reply("done")])
    with ScriptedModelServer(script) as own_server:
        result = run_cli(["--task", "show env", "--base_url", own_server.base_url, "--verbose"], cwd=tmp_path)
        assert own_server.headers[0]["authorization"] == f"Bearer {key}"
    assert result.returncode == 0, result.stderr
    output = (tmp_path / "trajectories.jsonl").read_text()
    assert key not in output and key not in result.stderr and key not in result.stdout


def test_incomplete_tasks_still_exit_zero(tmp_path):
    with ScriptedModelServer(per_conversation([reply(None, [tool_call("true")])])) as server:
        result = run_cli(["--task", "loop", "--max_iterations", "2", "--base_url", server.base_url], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [record] = read_jsonl(tmp_path / "trajectories.jsonl")
    assert record["exit_reason"] == "max_iterations"


def test_authentication_failure_is_one_line_exit_1(tmp_path):
    with ScriptedModelServer(lambda request: http_error(401, "Incorrect API key provided")) as server:
        result = run_cli(["--task", "x", "--base_url", server.base_url, "--quiet"], cwd=tmp_path)
    one_line_error(result, 1, "401", "Incorrect API key provided")


def test_help_documents_every_flag():
    result = run_cli(["--help"])
    assert result.returncode == 0
    text = result.stdout + result.stderr  # fire writes help to stderr when stdout is not a terminal
    flags = [
        name
        for name, p in inspect.signature(mini_swe_runner.main).parameters.items()
        if p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    assert len(flags) > 30
    for name in flags:
        assert f"--{name}" in text, name
    docstring = inspect.getdoc(mini_swe_runner.main)
    for name in flags:
        assert f"    {name}: " in docstring, f"{name} has no description in --help"


def test_console_script_is_installed():
    script = shutil.which("mini-swe-runner")
    if script is None and os.environ.get("CI") != "true":
        pytest.skip("mini-swe-runner is not installed here (pip install -e .)")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--prompts_file" in result.stdout + result.stderr


def test_readme_documents_every_flag():
    readme = (ROOT / "README.md").read_text()
    flags = [
        name
        for name, p in inspect.signature(mini_swe_runner.main).parameters.items()
        if p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    missing = [name for name in flags if f"`--{name}`" not in readme]
    assert missing == []


def test_reader_closing_the_pipe_is_a_one_line_error(server, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(40)))
    process = subprocess.Popen(
        [
            *RUNNER,
            "--prompts_file",
            str(prompts),
            "--output_file",
            "-",
            "--quiet",
            *local_args(server),
        ],
        cwd=tmp_path,
        env=clean_environ(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout.read(100)  # like `| head -c 100`: read a little, then go away
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 1
    assert stderr.strip() == "mini-swe-runner: cannot write to stdout (Broken pipe); stopping", stderr


def test_full_disk_is_a_one_line_error_and_devices_are_plain_outputs(server, tmp_path):
    full = run_cli(["--task", "x", "--output_file", "/dev/full", "--quiet", *local_args(server)], cwd=tmp_path)
    one_line_error(full, 1, "cannot write to /dev/full (No space left on device)")
    null = run_cli(["--task", "x", "--output_file", "/dev/null", "--quiet", *local_args(server)], cwd=tmp_path)
    assert null.returncode == 0 and null.stderr == ""


def test_prompts_file_with_bom_and_crlf(server, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_bytes(b'\xef\xbb\xbf{"prompt": "first", "id": "a"}\r\n{"prompt": "second", "id": "b"}\r\n')
    result = run_cli(["--prompts_file", str(prompts), "--output_file", str(tmp_path / "o.jsonl"), *local_args(server)])
    assert result.returncode == 0, result.stderr
    records = read_jsonl(tmp_path / "o.jsonl")
    assert sorted(r["task_id"] for r in records) == ["a", "b"]
    assert sorted(r["conversations"][1]["value"] for r in records) == ["first", "second"]


def test_flag_key_never_reaches_logs_or_records_even_from_the_model(tmp_path):
    key = "sk-flag-secret-0123456789abcdef"
    script = per_conversation([reply(f"My key is {key}", [tool_call(f"echo {key}")]), reply(f"done with {key}")])
    with ScriptedModelServer(script) as server:
        result = run_cli(["--task", "leak", "--api_key", key, "--verbose", "--base_url", server.base_url], cwd=tmp_path)
        assert server.headers[0]["authorization"] == f"Bearer {key}"
    assert result.returncode == 0, result.stderr
    output = (tmp_path / "trajectories.jsonl").read_text()
    assert key not in output and key not in result.stderr
    assert "My key is [REDACTED]" in output and "model: My key is [REDACTED]" in result.stderr


@pytest.mark.parametrize("command", ["", "cleanup", "view", "stats", "export"])
def test_every_command_prints_its_help_and_refuses_a_bad_flag_in_one_line(tmp_path, command):
    """One way in for every command: --help and -h print that command's help and do nothing else (cleanup --help
    used to clean); an unknown flag is one line and exit 2. Docker is pointed nowhere, so a cleanup that ran would
    say so on stderr and exit 1, and touch no engine."""
    words = [command] if command else []
    prog = " ".join(["mini-swe-runner", *words])
    environ = clean_environ(DOCKER_HOST="unix:///nonexistent/docker.sock")
    for ask in ("--help", "-h"):
        result = run_cli([*words, ask], cwd=tmp_path, env=environ)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert f"\nusage: {prog}" in result.stdout
    result = run_cli([*words, "--no_such_flag", "1"], cwd=tmp_path, env=environ)
    one_line_error(result, 2, "unknown flag --no_such_flag", f"see {prog} --help")
    assert list(tmp_path.iterdir()) == []


def test_a_switch_beside_record_files_takes_no_file_as_its_value(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = run_cli(["stats", "--json", str(empty)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["records"] == 0


def test_each_backend_flag_is_declared_once_and_reaches_the_cli_help_and_settings():
    """A backend's Flag is the one place a flag is written down: main's signature (what fire reads), --help, the
    EnvSettings field and its default all come from it; a second declaration of one flag is refused."""
    import dataclasses

    import environments

    parameters = inspect.signature(mini_swe_runner.main).parameters
    text = mini_swe_runner.help_text()
    defaults = environments.EnvSettings()
    assert len(environments.ENV_FLAGS) >= 19
    for name, flag in environments.ENV_FLAGS.items():
        assert parameters[name].default is None and parameters[name].kind is parameters[name].POSITIONAL_OR_KEYWORD
        assert f"  --{name}" in text and environments.flag_help(flag) in text, name
        assert getattr(defaults, flag.setting) == flag.default, name

    class Again(environments.Environment):
        name = "again"
        flags = (dataclasses.replace(environments.CWD),)

    with pytest.raises(TypeError, match="declares --cwd again"):
        environments._every_flag({**environments.BACKENDS, "again": Again})


# ---------------------------------------------------------------------------------------------------------------
# Flag values refused in one line before any work
# ---------------------------------------------------------------------------------------------------------------


def test_command_line_shape(tmp_path):
    one_line_error(run_cli(["clean"], cwd=tmp_path), 2, "unexpected argument 'clean'", "cleanup")
    one_line_error(run_cli(["help"], cwd=tmp_path), 2, "unexpected argument 'help'")
    one_line_error(run_cli(["--task", "x", "--shard", "1/2"], cwd=tmp_path), 2, "--shard")
    one_line_error(run_cli(["--task", "x", "-w", "4"], cwd=tmp_path), 2)
    version = run_cli(["--version"], cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("mini-swe-runner ")
    helped = run_cli(["--help"], cwd=tmp_path)
    assert helped.returncode == 0 and helped.stderr == ""
    assert "--task TEXT" in helped.stdout and "Optional[" not in helped.stdout
    lines = helped.stdout.splitlines()
    for index, line in enumerate(lines):  # every flag has its description under it
        if line.startswith("  --"):
            assert lines[index + 1].strip(), line
    assert not any(
        line.lstrip().startswith("-") and not line.lstrip().startswith("--") for line in helped.stdout.splitlines()
    )  # no short flags shown: none work


NUMERIC_FLAGS = [
    "pull_workers",
    "request_timeout",
    "task_timeout",
    "timeout",
    "max_timeout",
    "max_iterations",
    "workers",
    "max_retries",
    "max_rate_limit_wait",
    "max_retry_after",
    "max_rpm",
    "temperature",
    "max_tokens",
    "max_output_chars",
    "startup_timeout",
    "sandbox_timeout",
    "cpus",
    "pids_limit",
    "samples",
    "verify_timeout",
    "until_passed",
    "top_p",
    "limit",
    "max_task_cost",
    "max_cost",
    "max_tokens_total",
    "progress_interval",
    "stall_warning",
]


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e999"])
def test_non_finite_numbers_are_usage_errors(tmp_path, value):
    for flag in NUMERIC_FLAGS:
        result = run_cli(["--task", "x", f"--{flag}={value}", "--base_url", "http://127.0.0.1:9/v1"], cwd=tmp_path)
        assert result.returncode == 2, (flag, result.stderr)
        assert f"--{flag}" in result.stderr and "Traceback" not in result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr


def test_every_numeric_flag_is_checked_here():
    numeric = {name for name, kind in mini_swe_runner._flag_kinds().items() if kind == "value"}
    assert numeric <= set(NUMERIC_FLAGS), numeric - set(NUMERIC_FLAGS)


def test_progress_flags_are_checked(tmp_path):
    for flag, value, message in (
        ("--progress_interval", "0", "--progress_interval must be at least 0.1"),
        ("--stall_warning", "-1", "--stall_warning must be at least 0"),
        ("--stall_warning", "soon", "--stall_warning takes a number"),
    ):
        result = run_cli(
            ["--task", "x", "--base_url", "http://127.0.0.1:9/v1", "--api_key", "k", flag, value], cwd=tmp_path
        )
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_misspelt_flag_gets_a_suggestion(tmp_path):
    result = run_cli(["--prompt_file", "p.jsonl"], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown flag --prompt_file (did you mean --prompts_file?)" in result.stderr
    result = run_cli(["--task", "x", "--frobnicate", "1"], cwd=tmp_path)
    assert "unknown flag --frobnicate; see mini-swe-runner --help" in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--price", "input=0.15"], "no output price"),
        (["--price", "input=0.15,output=x"], "output takes a price"),
        (["--price", "inputs=1,output=1"], "--price takes input=USD"),
        (["--price", "input=1,output=1", "--prices", "p.json"], "not both"),
        (["--prices", "missing.json"], "does not exist"),
        (["--prices", "p.json", "--model", "other/model"], "has no price for model 'other/model'"),
        (["--max_cost", "0"], "--max_cost must be more than 0"),
        (["--max_task_cost", "abc"], "--max_task_cost takes a number"),
        (["--max_tokens_total", "1.5"], "--max_tokens_total takes a whole number"),
    ],
)
def test_usage_errors_are_one_line_before_any_task(tmp_path, flags, message):
    (tmp_path / "p.json").write_text(json.dumps({"scripted-model": {"input": 1, "output": 1}}))
    result = run_cli(
        ["--task", "x", "--base_url", "http://127.0.0.1:9/v1", "--model", "scripted-model", *flags], cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "trajectories.jsonl").exists()


def test_token_api_flag_is_checked(tmp_path):
    for args, message in (
        (["--token_api", "tgi", "--return_tokens"], "--token_api must be one of vllm, sglang"),
        (["--token_api", "vllm"], "--token_api goes with --return_tokens"),
    ):
        result = run_cli(["--task", "a", "--base_url", "http://127.0.0.1:9/v1", *args])
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_image_flags_are_checked_before_anything_runs(tmp_path):
    for args, fragment in (
        (["--pull_workers", "0"], "--pull_workers"),
        (["--max_image_disk", "lots"], "--max_image_disk"),
    ):
        result = run_cli(["--task", "x", "--env", "docker", "--model", "m", *args], cwd=tmp_path)
        assert result.returncode == 2 and fragment in result.stderr and "Traceback" not in result.stderr
    result = run_cli(["--task", "x", "--model", "m", "--max_image_disk", "1g"], cwd=tmp_path)
    assert result.returncode == 2 and "--max_image_disk does nothing with --env local" in result.stderr
