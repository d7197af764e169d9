"""The Python API (mini_swe_runner.run / run_sync), used only through its public names: the real openai SDK against
the scripted chat-completions server, real bash in the local backend."""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import threading
from pathlib import Path

import pytest
from conftest import FINAL
from model_server import ScriptedModelServer, http_error, per_conversation, reply, tool_call

from environments import EnvSettings
from mini_swe_runner import Prompt, Run, RunConfig, RunOutcome, UsageError, run, run_sync

KEY = "sk-api-test-key-0123456789"


def settings(server: ScriptedModelServer, output: Path, **overrides) -> RunConfig:
    values = dict(
        model="scripted-model",
        base_url=server.base_url,
        api_key=KEY,
        output_file=str(output),
        quiet=True,
        workers=2,
        retry_initial_delay=0.01,
        env=EnvSettings(env_type="local"),
    )
    values.update(overrides)
    return RunConfig(**values)


def script(command: str) -> object:
    """Every task runs ``command`` once, then finishes."""
    return per_conversation([reply(None, [tool_call(command)]), reply(None, [tool_call(FINAL)])])


def prompt_of(record: dict) -> str:
    return record["conversations"][1]["value"]


def written(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_run_sync_returns_the_records_it_wrote_with_a_verifier_and_samples(tmp_path):
    output = tmp_path / "out.jsonl"
    with ScriptedModelServer(script("touch solved.txt")) as server:
        given = settings(server, output, verify="test -f solved.txt", samples=2, stats_file=str(tmp_path / "s.json"))
        outcome = run_sync(["fix it", "fix that"], given)
    assert isinstance(outcome, RunOutcome) and outcome.exit_code == 0 and outcome.message is None
    assert outcome.records == written(output)
    assert sorted((r["prompt_index"], r["sample_index"]) for r in outcome.records) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(r["reward"] == 1.0 and r["completed"] for r in outcome.records)
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads(json.dumps(outcome.summary))
    assert given.api_key == KEY and given.env.secret_values == ()  # the caller's settings are not changed


def test_two_runs_share_one_event_loop_and_leave_no_process_state(tmp_path):
    before_handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    frozen_before = gc.get_freeze_count()  # earlier tests of this process may have run the CLI's own_process path
    thresholds = gc.get_threshold()
    in_loop: list[dict] = []  # asyncio.run's own SIGINT handler first, then what the runs saw

    async def consume(prompts: list[str], output: Path, server: ScriptedModelServer) -> tuple[list[dict], Run]:
        records = []
        started = run(prompts, settings(server, output))
        async for record in started:
            records.append(record)
            in_loop.append({s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)})
        return records, started

    async def both(server: ScriptedModelServer) -> list[tuple[list[dict], Run]]:
        in_loop.append({s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)})
        return await asyncio.gather(
            consume(["a1", "a2", "a3"], tmp_path / "a.jsonl", server),
            consume(["b1", "b2"], tmp_path / "b.jsonl", server),
        )

    with ScriptedModelServer(script("echo hi")) as server:
        (a_records, a_run), (b_records, b_run) = asyncio.run(both(server))
    assert a_records == written(tmp_path / "a.jsonl") and len(a_records) == 3
    assert b_records == written(tmp_path / "b.jsonl") and len(b_records) == 2
    assert a_run.outcome.exit_code == 0 and b_run.outcome.exit_code == 0
    assert {prompt_of(r) for r in a_records} == {"a1", "a2", "a3"}
    assert len(in_loop) == 6 and all(handlers == in_loop[0] for handlers in in_loop)  # the caller's handlers
    assert {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} == before_handlers
    # The collector is the caller's: nothing frozen by these runs. A freeze would move every tracked object (tens of
    # thousands) into the permanent generation; the count may only fall, when an object an earlier test froze is freed.
    assert gc.get_freeze_count() <= frozen_before
    assert gc.get_threshold() == thresholds  # nor its full collections put off (CollectorSchedule is the CLI's)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("msr")]  # no thread pool of ours left


def test_resume_yields_only_what_was_not_written_before(tmp_path):
    output = tmp_path / "out.jsonl"
    with ScriptedModelServer(script("echo hi")) as server:
        first = run_sync(["one", "two"], settings(server, output))
        requests_after_first = len(server.requests)
        second = run_sync(["one", "two", "three"], settings(server, output))
    assert [prompt_of(r) for r in first.records] != [] and len(first.records) == 2
    assert [prompt_of(r) for r in second.records] == ["three"]
    assert len(server.requests) - requests_after_first == 2  # one task: its two model calls
    assert sorted(prompt_of(r) for r in written(output)) == ["one", "three", "two"]


def test_a_prompts_file_and_prompt_objects_are_taken(tmp_path):
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text('{"id": "first", "prompt": "from the file"}\n', encoding="utf-8")
    with ScriptedModelServer(script("echo hi")) as server:
        from_file = run_sync(prompts_file, settings(server, tmp_path / "a.jsonl"))
        from_objects = run_sync(
            [Prompt(index=0, text="built in Python", task_id="mine", verify="false")],
            settings(server, tmp_path / "b.jsonl"),
        )
    assert [(r["task_id"], prompt_of(r)) for r in from_file.records] == [("first", "from the file")]
    assert [(r["task_id"], r["reward"]) for r in from_objects.records] == [("mine", 0.0)]


def test_the_api_key_and_the_environments_secrets_are_redacted_though_the_caller_named_none(tmp_path, monkeypatch):
    output = tmp_path / "out.jsonl"
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "tok-value-9876543210")
    with ScriptedModelServer(script(f"echo {KEY} tok-value-9876543210")) as server:
        outcome = run_sync(["show the key"], settings(server, output))
    text = output.read_text(encoding="utf-8")
    assert KEY not in text and KEY not in json.dumps(outcome.records)
    assert "tok-value-9876543210" not in text
    assert "echo" in text  # the command ran and its output was recorded


def test_bad_settings_and_prompts_raise_before_anything_starts(tmp_path):
    with ScriptedModelServer(script("echo hi")) as server:
        with pytest.raises(UsageError, match="until_passed"):
            run(["x"], settings(server, tmp_path / "o.jsonl", samples=1, until_passed=2))
        with pytest.raises(UsageError, match="not mixed"):
            run(["x", Prompt(index=1, text="y", task_id="y")], settings(server, tmp_path / "o.jsonl"))
        with pytest.raises(UsageError, match="RunConfig"):
            run(["x"], {"model": "m"})
        with pytest.raises(UsageError, match="verifier"):
            run(["x"], settings(server, tmp_path / "o.jsonl", verify_baseline=True))
        assert server.requests == []
    assert not (tmp_path / "o.jsonl").exists()


def test_leaving_early_with_aclose_stops_the_run_and_a_rerun_resumes(tmp_path):
    output = tmp_path / "out.jsonl"

    async def first_only(server: ScriptedModelServer) -> list[dict]:
        async with run([f"p{i}" for i in range(6)], settings(server, output, workers=1)) as records:
            async for record in records:
                return [record]

    with ScriptedModelServer(script("echo hi")) as server:
        got = asyncio.run(first_only(server))
        kept = written(output)
        rest = run_sync([f"p{i}" for i in range(6)], settings(server, output, workers=1))
    assert len(got) == 1 and got[0] == kept[0]
    assert 1 <= len(kept) < 6 and len(kept) + len(rest.records) == 6
    assert sorted(prompt_of(r) for r in written(output)) == [f"p{i}" for i in range(6)]


def test_a_fatal_error_is_an_outcome_not_an_exception(tmp_path):
    output = tmp_path / "out.jsonl"
    with ScriptedModelServer(script("echo hi"), models=http_error(401, "invalid key")) as server:
        outcome = run_sync(["x"], settings(server, output))
    assert outcome.exit_code == 1 and "401" in outcome.message and outcome.records == []
    assert not output.exists()
