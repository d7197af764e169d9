"""Training data: verification and rewards, k samples per prompt (resume, shards, --until_passed), pass@k, and
prompts straight from .json/.parquet files and Hugging Face dataset folders. Real bash, the real CLI, the real
chat-completions test server; Docker where a sandbox must really disappear."""

from __future__ import annotations

import asyncio
import io
import json
import random
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    FINAL,
    clean_environ,
    make_config,
    one_line_error,
    read_jsonl,
    run_cli,
    run_prompts,
    start_cli,
    wait_for,
)
from docker_support import docker_engine  # noqa: F401
from model_server import ScriptedModelServer, assistant_turns, per_conversation, reply, tool_call

import environments
import mini_swe_runner
import report
import trajectory
from environments import EnvSettings
from mini_swe_runner import Prompt, SampleOutcomes, SampleSchedule

VERIFY = 'test -f solved.txt && echo "verified in $PWD"'


def by_prompt(commands: dict[str, str], default: str = "true"):
    """A script that runs one command chosen by the prompt's text (its first word), then finishes."""

    def choose(request: dict) -> object:
        if assistant_turns(request) == 0:
            text = request["messages"][1]["content"]
            return reply(None, [tool_call(commands.get(text.split()[0], default))])
        return reply(None, [tool_call(FINAL)])

    return choose


def keys(records: list[dict]) -> list[tuple[str, int]]:
    return [trajectory.record_key(r) for r in records]


# ---------------------------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------------------------


def test_verifier_passes_and_fails_in_the_starting_directory_and_the_model_never_sees_it(out):
    # The agent ends in a subdirectory; the verifier still runs where the task started.
    script = by_prompt({"solve": "mkdir -p deep/er && cd deep/er && touch ../../solved.txt", "skip": "mkdir elsewhere"})
    with ScriptedModelServer(script) as server:
        config = make_config(server, out, verify=VERIFY)
        outcome, records = run_prompts(config, ["solve it", "skip it"])
        requests = json.dumps(server.requests)
    records.sort(key=lambda r: r["prompt_index"])
    solved, skipped = records
    assert solved["verification"]["passed"] is True and solved["reward"] == 1.0
    assert solved["verification"]["exit_code"] == 0 and solved["verification"]["error"] is None
    assert "verified in /" in solved["verification"]["output"]
    assert not solved["verification"]["output"].rstrip().endswith("/deep/er")
    assert solved["verification"]["duration_s"] >= 0
    assert skipped["verification"] == {
        "passed": False,
        "exit_code": 1,
        "output": "",
        "duration_s": skipped["verification"]["duration_s"],
        "error": None,
        "baseline": None,  # no --verify_baseline
    }
    assert skipped["reward"] == 0.0
    assert "solved.txt &&" not in requests and "verified in" not in requests  # the model never sees it
    assert all("verified in" not in turn["value"] for r in records for turn in r["conversations"])
    verification = outcome.summary["verification"]
    assert verification["verified"] == 2 and verification["passed"] == 1 and verification["pass_rate"] == 0.5
    assert verification["pass_at_1"] == 0.5 and verification["verifier_errors"] == 0


def test_prompt_verify_overrides_the_default_and_output_is_bounded_and_redacted(out, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "own verifier", "id": "own", "verify": "echo sk-test-key-0123456789; exit 3"})
        + "\n"
        + json.dumps({"prompt": "default verifier", "id": "default"})
        + "\n"
    )
    with ScriptedModelServer(by_prompt({})) as server:
        settings = EnvSettings(max_output_chars=200, secret_values=("sk-test-key-0123456789",))  # as main() makes them
        config = make_config(server, out, verify="seq 1 5000; exit 0", env=settings)
        asyncio.run(mini_swe_runner.run_batch(config, mini_swe_runner.load_prompts(str(prompts))))
    records = {r["task_id"]: r for r in read_jsonl(out)}
    own = records["own"]["verification"]
    assert own["exit_code"] == 3 and own["passed"] is False
    assert "sk-test-key" not in own["output"] and "[REDACTED]" in own["output"]  # the run's key is a secret
    default = records["default"]["verification"]
    assert default["passed"] is True and len(default["output"]) < 600 and "5000" in default["output"]
    assert json.loads(records["own"]["metadata"]["prompt_fields"]) == {}  # verify is consumed, not a field


def test_verifier_timeout_is_a_kept_model_failure(out, tmp_path):
    marker = tmp_path / "verifier-child"
    verify = f"(sleep 30; touch {marker}) & sleep 30"
    with ScriptedModelServer(by_prompt({})) as server:
        config = make_config(server, out, verify=verify, verify_timeout=0.5)
        started = time.monotonic()
        _, [record] = run_prompts(config, ["slow verifier"])
        assert time.monotonic() - started < 15
        verification = record["verification"]
        assert verification["exit_code"] == 124 and verification["passed"] is False
        assert verification["error"] is None and record["reward"] == 0.0
        assert "timed out" in verification["output"]
        # A verifier that ran and failed is the model's failure: resume keeps it.
        outcome, again = run_prompts(make_config(server, out, verify=verify, verify_timeout=0.5), ["slow verifier"])
    assert again == [record] and outcome.summary["run"]["skipped_already_done"] == 1
    time.sleep(0.5)
    assert not marker.exists()  # its process tree was killed


def test_verifier_that_cannot_run_is_infrastructure_and_runs_again_on_resume(out, tmp_path):
    # The agent removes the directory the task started in: the verifier cannot even start there.
    vanish = per_conversation(
        [reply(None, [tool_call('here="$PWD"; touch solved.txt; cd / && rm -rf "$here"')]), reply("ok")]
    )
    with ScriptedModelServer(vanish) as server:
        outcome, [record] = run_prompts(make_config(server, out, verify=VERIFY), ["vanish please"])
    verification = record["verification"]
    assert verification["error"] and verification["passed"] is False and verification["exit_code"] is None
    assert record["reward"] is None and record["exit_reason"] == "completed"
    assert outcome.summary["verification"]["verifier_errors"] == 1
    assert trajectory.is_retryable(record)
    with ScriptedModelServer(by_prompt({"vanish": "touch solved.txt"})) as server:
        outcome, records = run_prompts(make_config(server, out, verify=VERIFY), ["vanish please"])
    assert len(records) == 1 and records[0]["reward"] == 1.0  # the bad verdict was dropped and the sample rerun
    assert outcome.summary["run"]["skipped_already_done"] == 0


def test_no_verification_after_an_ending_that_is_not_the_agents_own(out):
    script = by_prompt({"slow": "sleep 20"})
    with ScriptedModelServer(script) as server:
        _, [record] = run_prompts(make_config(server, out, verify="true", task_timeout=1), ["slow task"])
    assert record["exit_reason"] == "timeout" and record["verification"] is None and record["reward"] is None


def test_no_verifier_means_null_verification_and_no_pass_figures(out):
    with ScriptedModelServer(by_prompt({})) as server:
        outcome, [record] = run_prompts(make_config(server, out), ["plain"])
    assert record["verification"] is None and record["reward"] is None
    assert outcome.summary["verification"] is None
    assert "pass@" not in mini_swe_runner.summary_text(outcome.summary, str(out))


@pytest.mark.usefixtures("docker_engine")
def test_docker_sandbox_gone_before_the_verifier_is_a_verifier_error(out):
    from docker_support import TEST_IMAGE, engine

    def script(request: dict) -> object:
        if assistant_turns(request) == 0:
            return reply(None, [tool_call("touch solved.txt")])
        # The container disappears under the task (an engine restart, an OOM kill...) before its last turn.
        for container in engine().containers.list(filters={"label": f"{environments.DOCKER_LABEL}.task-id=gone"}):
            container.remove(force=True)
        return reply("finished")

    with ScriptedModelServer(script) as server:
        config = make_config(server, out, verify=VERIFY, env=EnvSettings(env_type="docker", image=TEST_IMAGE))
        prompts = [Prompt(index=0, text="vanishing sandbox", task_id="gone")]
        outcome = asyncio.run(mini_swe_runner.run_batch(config, prompts))
    [record] = read_jsonl(out)
    assert record["exit_reason"] == "completed"
    assert record["verification"]["error"] and "gone" in record["verification"]["error"]
    assert record["reward"] is None and outcome.summary["verification"]["verifier_errors"] == 1


# ---------------------------------------------------------------------------------------------------------------
# Samples, scheduling, resume, shards
# ---------------------------------------------------------------------------------------------------------------


def _prompts(count: int) -> list[Prompt]:
    return [Prompt(index=i, text=f"p{i}", task_id=f"p{i}") for i in range(count)]


def test_schedule_starts_sample_0_of_every_prompt_before_sample_1_of_any():
    async def order() -> list[tuple[str, int]]:
        schedule = SampleSchedule(_prompts(3), 3, None, {("p1", 0): 0.0})
        taken = []
        while (sample := schedule.take()) is not None:
            taken.append((sample.prompt.task_id, sample.index))
        return taken

    assert asyncio.run(order()) == [
        ("p0", 0),
        ("p2", 0),  # p1's sample 0 is already in the output
        ("p0", 1),
        ("p1", 1),
        ("p2", 1),
        ("p0", 2),
        ("p1", 2),
        ("p2", 2),
    ]


def test_schedule_until_passed_never_starts_a_sample_that_may_be_unneeded_and_keeps_workers_busy():
    async def scenario() -> None:
        schedule = SampleSchedule(_prompts(3), 4, 1, {("p2", 0): 1.0})  # p2 passed in an earlier run
        assert schedule.total == 8 and not schedule.waiting["p2"]
        first = [schedule.take() for _ in range(2)]
        assert [(s.prompt.task_id, s.index) for s in first] == [("p0", 0), ("p1", 0)]
        assert schedule.take() is None  # p0/p1 have a sample running: another might turn out unneeded
        assert schedule.done(first[1], passed=False) == 0  # p1 failed: its next sample may start
        nxt = schedule.take()
        assert (nxt.prompt.task_id, nxt.index) == ("p1", 1)
        assert schedule.done(first[0], passed=True) == 3  # p0 passed: its 3 other samples are not needed
        assert schedule.take() is None and not schedule.finished()
        schedule.done(nxt, passed=False)
        last = schedule.take()
        assert (last.prompt.task_id, last.index) == ("p1", 2)
        assert schedule.not_needed == 3
        # p1 passes at its third sample, the last one running: its fourth is swept out and nothing is left.
        assert schedule.done(last, passed=True) == 1
        assert schedule.take() is None and schedule.finished()

    asyncio.run(scenario())


def test_until_passed_stops_passing_prompts_early_without_starving_the_others(out):
    # Prompts "good*" pass at their first sample; "bad*" never pass, so they use all 4 samples.
    script = by_prompt({"good": "touch solved.txt"})
    in_flight = {"now": 0, "max": 0}
    lock = threading.Lock()

    def counting(request: dict) -> object:
        with lock:
            in_flight["now"] += 1
            in_flight["max"] = max(in_flight["max"], in_flight["now"])
        time.sleep(0.05)
        with lock:
            in_flight["now"] -= 1
        return script(request)

    texts = [f"{'good' if i % 2 == 0 else 'bad'} prompt {i}" for i in range(8)]
    with ScriptedModelServer(counting) as server:
        config = make_config(server, out, verify=VERIFY, samples=4, until_passed=1, workers=4)
        outcome, records = run_prompts(config, texts)
    per_prompt: dict[str, list[dict]] = {}
    for record in records:
        per_prompt.setdefault(record["conversations"][1]["value"], []).append(record)
    for text, samples in per_prompt.items():
        indices = sorted(r["sample_index"] for r in samples)
        if text.startswith("good"):
            assert indices == [0] and samples[0]["reward"] == 1.0
        else:
            assert indices == [0, 1, 2, 3] and all(r["reward"] == 0.0 for r in samples)
    assert len(records) == 4 + 16 and len(set(keys(records))) == 20
    assert len({r["task_id"] for r in records}) == 8  # task_id stays the prompt's
    assert in_flight["max"] >= 3  # the other workers kept going while bad prompts' samples ran one by one
    summary = outcome.summary
    assert summary["run"]["samples_not_needed"] == 12 and summary["run"]["samples_per_prompt"] == 2.5
    # Every prompt counts in pass@4 (good ones passed early, bad ones used their 4 samples): solved within 4.
    verification = summary["verification"]
    assert verification["prompts_solved"] == 4 and verification["pass_at_k_prompts"] == 8
    assert verification["pass_at_k"] == 0.5 and verification["pass_at_1"] == 0.5


def test_until_passed_batch_ends_when_the_last_running_sample_passes(out):
    # The only prompt fails twice, then passes at its third sample: its fourth is not needed and the run ends.
    attempts = {"n": 0}
    lock = threading.Lock()

    def script(request: dict) -> object:
        if assistant_turns(request) == 0:
            with lock:
                attempts["n"] += 1
                passes = attempts["n"] == 3
            return reply(None, [tool_call("touch solved.txt" if passes else "true")])
        return reply("done")

    with ScriptedModelServer(script) as server:
        config = make_config(server, out, verify=VERIFY, samples=4, until_passed=1, workers=3)
        outcome = asyncio.run(asyncio.wait_for(mini_swe_runner.run_batch(config, _prompts(1)), 60))
    records = sorted(read_jsonl(out), key=lambda r: r["sample_index"])
    assert [r["reward"] for r in records] == [0.0, 0.0, 1.0]  # one after another, never speculatively
    assert outcome.summary["run"]["samples_not_needed"] == 1


def test_samples_each_get_a_fresh_environment(out):
    # Each sample appends to a file in its directory: a shared directory would show more than one line.
    with ScriptedModelServer(by_prompt({}, default="echo x >> count.txt")) as server:
        verify = 'test "$(wc -l < count.txt)" -eq 1'
        _, records = run_prompts(make_config(server, out, verify=verify, samples=3, workers=3), ["count"])
    assert sorted(r["sample_index"] for r in records) == [0, 1, 2]
    assert all(r["reward"] == 1.0 for r in records)


def test_samples_survive_kill_9_and_resume_each_exactly_once(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"solve {i}", "id": f"t{i}"}) + "\n" for i in range(12)))
    output = tmp_path / "out.jsonl"
    args = ["--prompts_file", str(prompts), "--output_file", str(output), "--model", "m", "--workers", "5"]
    args += ["--samples", "3", "--verify", VERIFY, "--quiet"]
    script = per_conversation([reply(None, [tool_call("touch solved.txt")]), reply(None, [tool_call(FINAL)])])
    rng = random.Random(7)
    killed_env = clean_environ(TMPDIR=str(tmp_path))
    with ScriptedModelServer(script, latency=0.15) as server:
        args += ["--base_url", server.base_url]
        for written in (3, 15):  # killed once some samples are written, at a random moment after that
            process = start_cli(args, tmp_path, env=killed_env)
            wait_for(lambda n=written: output.exists() and output.read_bytes().count(b"\n") >= n, timeout=60)
            time.sleep(rng.uniform(0.0, 0.4))
            process.kill()
            process.wait()
        partial = trajectory.read_records(str(output)).records if output.exists() else []
        final = run_cli(args, cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    records = read_jsonl(output)
    expected = {(f"t{i}", s) for i in range(12) for s in range(3)}
    assert sorted(keys(records)) == sorted(expected)  # every sample exactly once
    assert all(r["reward"] == 1.0 for r in records)
    assert 0 < len(partial) < 36  # the kills really landed mid-run


def test_shards_split_prompts_and_each_runs_all_samples_of_its_prompts(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(5)))
    seen: list[tuple[str, int]] = []
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        for number in (1, 2):
            output = tmp_path / f"shard{number}.jsonl"
            result = run_cli(
                ["--prompts_file", str(prompts), "--output_file", str(output), "--shard", f"{number}/2"]
                + ["--samples", "2", "--base_url", server.base_url],
                cwd=tmp_path,
            )
            assert result.returncode == 0, result.stderr
            seen += keys(read_jsonl(output))
    assert len(seen) == len(set(seen)) == 10
    assert {s for _, s in seen} == {0, 1}


# ---------------------------------------------------------------------------------------------------------------
# Figures: pass@k, summary, progress
# ---------------------------------------------------------------------------------------------------------------


def test_pass_at_k_matches_a_hand_computation():
    # 1 - C(n-c, k) / C(n, k) by hand: n=5, c=2, k=3 -> 1 - C(3,3)/C(5,3) = 1 - 1/10.
    assert report.pass_at_k(5, 2, 3) == pytest.approx(0.9)
    assert report.pass_at_k(3, 1, 2) == pytest.approx(1 - 1 / 3)  # 1 - C(2,2)/C(3,2)
    assert report.pass_at_k(4, 0, 2) == 0.0
    assert report.pass_at_k(4, 3, 2) == 1.0  # n-c < k: every draw of 2 holds a pass
    rewards = {}
    for task_id, outcomes in {
        "a": [1.0, 0.0, 0.0],  # n=3 c=1: pass@1 1/3, pass@2 2/3
        "b": [0.0, 0.0, 0.0],  # n=3 c=0: 0, 0
        "c": [1.0, 1.0, None],  # n=3 c=2 (one sample timed out: not verified, still a sample): 2/3, 1
        "d": [0.0],  # n=1 c=0: 0 for pass@1, too few samples for pass@2
    }.items():
        rewards.update({(task_id, i): reward for i, reward in enumerate(outcomes)})
    outcomes = SampleOutcomes(rewards, 5, {"a", "b", "c", "d"}, k=2)
    summary = mini_swe_runner.summarize(mini_swe_runner.RunTally(), 1.0, 0, outcomes)
    verification = summary["verification"]
    assert verification["pass_at_1"] == pytest.approx((1 / 3 + 0 + 2 / 3 + 0) / 4, abs=1e-4)
    assert verification["pass_at_k"] == pytest.approx((2 / 3 + 0 + 1) / 3, abs=1e-4)
    assert verification["pass_at_k_prompts"] == 3 and verification["k"] == 2
    assert verification["verified"] == 9 and verification["passed"] == 3
    assert verification["pass_rate"] == pytest.approx(3 / 9, abs=1e-4)
    assert verification["prompts"] == 4 and verification["prompts_solved"] == 2
    assert summary["run"]["samples_per_prompt"] == pytest.approx(10 / 5)
    text = mini_swe_runner.summary_text(summary, "out.jsonl")
    assert "pass@1 0.250" in text and "pass@2 0.556 over 3 prompts" in text and "2/4 prompts solved" in text


def test_cli_summary_stats_file_and_progress_count_passed_samples(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("good one\nbad one\n")
    stats = tmp_path / "stats.json"
    with ScriptedModelServer(by_prompt({"good": "touch solved.txt"})) as server:
        result = run_cli(
            ["--prompts_file", str(prompts), "--output_file", str(tmp_path / "o.jsonl"), "--stats_file", str(stats)]
            + ["--verify", VERIFY, "--samples", "2", "--base_url", server.base_url],
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr
    assert "progress: 4/4 done, 4 completed, 0 failed, 2 passed" in result.stderr
    assert "verified: 4 samples, 2 passed (pass rate 50.0%); pass@1 0.500, pass@2 0.500 over 2 prompts" in result.stderr
    summary = json.loads(stats.read_text())
    assert summary["verification"]["pass_at_k"] == 0.5 and summary["run"]["samples_per_prompt"] == 2


def test_progress_bar_shows_passed_samples():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = mini_swe_runner.Progress(4, quiet=False, stream=stream, verifying=True)
    for reward in (1.0, 0.0, None):
        progress.update({"completed": True, "reward": reward})
    progress.not_needed(1)
    progress.close()
    text = stream.getvalue()
    assert "3/3" in text and "passed=1" in text


# ---------------------------------------------------------------------------------------------------------------
# Input: .json, .parquet, dataset folders, templates
# ---------------------------------------------------------------------------------------------------------------

SWE_ROWS = [
    {
        "instance_id": "octo__demo-1",
        "repo": "octo/demo",
        "base_commit": "abc123",
        "problem_statement": "The frobnicator crashes on empty input.",
        "FAIL_TO_PASS": ["tests/test_frob.py::test_empty"],
    },
    {
        "instance_id": "octo__demo-2",
        "repo": "octo/demo",
        "base_commit": "def456",
        "problem_statement": "Add a --verbose flag.",
        "FAIL_TO_PASS": ["tests/test_cli.py::test_verbose"],
    },
]


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow
    import pyarrow.parquet

    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    return path


def dataset_environ(tmp_path: Path) -> dict[str, str]:
    return clean_environ(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def test_swe_bench_parquet_works_without_flags_and_templates_fill_verify(tmp_path):
    source = write_parquet(tmp_path / "swe.parquet", SWE_ROWS)
    output = tmp_path / "o.jsonl"
    verify = 'test "{repo}@{base_commit}" = "$(cat checkout.txt)"'
    script = by_prompt({"The": "echo octo/demo@abc123 > checkout.txt", "Add": "echo wrong > checkout.txt"})
    with ScriptedModelServer(script) as server:
        result = run_cli(
            ["--prompts_file", str(source), "--output_file", str(output), "--verify_template", verify]
            + ["--base_url", server.base_url],
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr
    records = {r["task_id"]: r for r in read_jsonl(output)}
    assert set(records) == {"octo__demo-1", "octo__demo-2"}
    first = records["octo__demo-1"]
    assert first["conversations"][1]["value"] == "The frobnicator crashes on empty input."
    assert first["reward"] == 1.0 and records["octo__demo-2"]["reward"] == 0.0
    fields = json.loads(first["metadata"]["prompt_fields"])
    # id and prompt live in task_id and the human turn; what the template read stays in the record's fields.
    assert fields == {"repo": "octo/demo", "base_commit": "abc123", "FAIL_TO_PASS": ["tests/test_frob.py::test_empty"]}


def test_json_list_with_prompt_and_image_templates(tmp_path, out):
    source = tmp_path / "rows.json"
    source.write_text(json.dumps([{"id": 1, "lang": "go", "goal": "say {hi}"}, {"id": 2, "lang": "rust", "goal": "x"}]))
    config_prompts = mini_swe_runner.load_prompts(
        str(source),
        mini_swe_runner.RowFormat(
            prompt=mini_swe_runner.FieldTemplate.parse("prompt_template", "In {lang}: {goal} {{literal}}"),
            image=mini_swe_runner.FieldTemplate.parse("image_template", "img/{lang}:{id}"),
        ),
    )
    assert [p.text for p in config_prompts] == ["In go: say {hi} {literal}", "In rust: x {literal}"]
    assert [p.image for p in config_prompts] == ["img/go:1", "img/rust:2"]
    assert [p.task_id for p in config_prompts] == ["1", "2"]
    assert config_prompts[0].fields == {"lang": "go", "goal": "say {hi}"}


def test_dataset_saved_to_disk_and_a_folder_of_jsonl_files(tmp_path):
    datasets = pytest.importorskip("datasets")
    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {"test": datasets.Dataset.from_list(SWE_ROWS), "train": datasets.Dataset.from_list(SWE_ROWS[:1])}
    ).save_to_disk(str(saved))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"task": f"job {i}", "level": i}) + "\n" for i in range(3)))
    environ = dataset_environ(tmp_path)
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        base = ["--base_url", server.base_url]
        ambiguous = run_cli(["--dataset", str(saved), *base], cwd=tmp_path, env=environ)
        one_line_error(ambiguous, 2, "has splits test, train: pick one with --split")
        saved_run = run_cli(
            ["--dataset", str(saved), "--split", "test", "--output_file", str(tmp_path / "a.jsonl")]
            + ["--prompt_template", "Fix in /testbed:\n{problem_statement}", *base],
            cwd=tmp_path,
            env=environ,
        )
        assert saved_run.returncode == 0, saved_run.stderr
        folder_run = run_cli(
            ["--dataset", str(folder), "--split", "train", "--output_file", str(tmp_path / "b.jsonl"), *base],
            cwd=tmp_path,
            env=environ,
        )
        assert folder_run.returncode == 0, folder_run.stderr
        missing_split = run_cli(["--dataset", str(folder), "--split", "validation", *base], cwd=tmp_path, env=environ)
    saved_records = sorted(read_jsonl(tmp_path / "a.jsonl"), key=lambda r: r["prompt_index"])
    assert [r["task_id"] for r in saved_records] == ["octo__demo-1", "octo__demo-2"]
    assert saved_records[1]["conversations"][1]["value"] == "Fix in /testbed:\nAdd a --verbose flag."
    # A template made the prompt, so the problem statement stays among the row's fields.
    assert "problem_statement" in json.loads(saved_records[1]["metadata"]["prompt_fields"])
    folder_records = read_jsonl(tmp_path / "b.jsonl")
    assert sorted(r["conversations"][1]["value"] for r in folder_records) == ["job 0", "job 1", "job 2"]
    assert missing_split.returncode == 2 and "validation" in missing_split.stderr
    assert "Traceback" not in missing_split.stderr


def test_missing_datasets_library_names_the_extra(tmp_path):
    blocker = tmp_path / "blocker"
    (blocker / "datasets").mkdir(parents=True)
    (blocker / "datasets" / "__init__.py").write_text("raise ImportError('No module named datasets')\n")
    (blocker / "pyarrow").mkdir()
    (blocker / "pyarrow" / "__init__.py").write_text("raise ImportError('No module named pyarrow')\n")
    environ = clean_environ(PYTHONPATH=str(blocker))
    base = ["--base_url", "http://127.0.0.1:9/v1"]
    result = run_cli(["--dataset", "anything", *base], cwd=tmp_path, env=environ)
    one_line_error(result, 2, "pip install 'mini-swe-runner[datasets]'")
    source = tmp_path / "rows.parquet"
    source.write_bytes(b"PAR1")
    result = run_cli(["--prompts_file", str(source), *base], cwd=tmp_path, env=environ)
    one_line_error(result, 2, "pip install 'mini-swe-runner[datasets]'")


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--prompt_template", "Fix {repo}: {hints}"], "swe.parquet row 1 (id 'octo__demo-2'): field 'hints' is null"),
        (["--image_template", "img/{nope}"], "swe.parquet row 0 (id 'octo__demo-1'): field 'nope' is missing"),
        (["--image_template", "img/{x.__class__}"], "{x.__class__} is not a plain field name"),
        (["--verify_template", "{FAIL_TO_PASS[0]}"], "{FAIL_TO_PASS[0]} is not a plain field name"),
        (["--prompt_template", "{repo!r}"], "{repo!r} is not a plain field name"),
        (["--prompt_template", "{}"], "{} is not a plain field name"),
        (["--prompt_template", "open { brace"], "--prompt_template: "),
        (["--verify", "true", "--verify_template", "true"], "not both"),
        (["--samples", "2", "--until_passed", "3"], "--until_passed 3 can never be reached with --samples 2"),
        (["--samples", "2", "--until_passed", "1"], "--until_passed counts passed samples: give a verifier"),
        (["--samples", "0"], "--samples must be at least 1"),
        (["--verify_timeout", "soon"], "--verify_timeout takes a number"),
        (["--split", "test"], "--split goes with --dataset"),
    ],
)
def test_bad_templates_and_sampling_flags_are_one_line_errors_before_any_task(tmp_path, flags, needle):
    rows = [dict(SWE_ROWS[0], hints="see #12"), SWE_ROWS[1]]
    source = write_parquet(tmp_path / "swe.parquet", rows)
    with ScriptedModelServer([reply("x")]) as server:
        result = run_cli(["--prompts_file", str(source), "--base_url", server.base_url, *flags], cwd=tmp_path)
        assert server.requests == []
    one_line_error(result, 2, needle)
    assert not (tmp_path / "trajectories.jsonl").exists()


def test_unusual_but_valid_prompts_file_input(tmp_path):
    # Issue 9 item 8: split on "\n" only; ids that differ by lone surrogates; absurd nesting.
    separators = tmp_path / "sep.jsonl"
    separators.write_text(
        json.dumps({"prompt": "line\u2028separator and next\u0085line", "id": "a"}, ensure_ascii=False)
        + "\nplain text with\u2028a line separator\n",
        encoding="utf-8",
    )
    prompts = mini_swe_runner.load_prompts(str(separators))
    assert [p.text for p in prompts] == [
        "line\u2028separator and next\u0085line",
        "plain text with\u2028a line separator",
    ]
    surrogates = tmp_path / "sur.jsonl"
    surrogates.write_text('{"prompt": "x", "id": "a\\ud800"}\n{"prompt": "y", "id": "a\\ud801"}\n')
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    base = ["--base_url", "http://127.0.0.1:9/v1"]
    one_line_error(run_cli(["--prompts_file", str(surrogates), *base], cwd=tmp_path), 2, "sur.jsonl:1: id 'a\\ud800'")
    one_line_error(
        run_cli(["--prompts_file", str(deep), *base], cwd=tmp_path), 2, "deep.jsonl:1: JSON nested too deeply"
    )
    # A prompt text with a lone surrogate is refused with its line (issue 19 item 10): it could never be sent.
    with pytest.raises(mini_swe_runner.UsageError, match="t:2: the prompt holds a lone surrogate"):
        mini_swe_runner.parse_prompt_lines(['{"prompt": "a"}', '{"prompt": "a\\ud801"}'], "t")
