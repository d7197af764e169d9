"""Images at SWE-bench scale against a real registry on 127.0.0.1 (tests/registry_support.py): pulled ahead in the
order the tasks use them, each once, in parallel; one bad image costs its own tasks; a disk budget that never
touches a running task's image or one that was there before; resume after kill -9 mid-pull."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time

import pytest
from conftest import make_config, read_jsonl, run_cli, start_cli, tool_results, wait_for
from docker_support import TEST_IMAGE, docker_engine, engine  # noqa: F401
from model_server import ScriptedModelServer, per_conversation, reply, tool_call
from registry_support import Throttle, forget_local, local_tags, registry, seeded_image  # noqa: F401

import mini_swe_runner
from environments import EnvSettings

FINAL = "echo MINI_SWE_AGENT_FINAL_OUTPUT && cat /layer-id"
SCRIPT = per_conversation([reply(None, [tool_call(FINAL)]), reply("done")])


@pytest.fixture
def fresh(request):
    """The seeded registry, with none of its images on the engine before the test (nor after it)."""
    seeded = request.getfixturevalue("registry")
    forget_local(seeded.host)
    yield seeded
    forget_local(seeded.host, *RELAYS)
    RELAYS.clear()


RELAYS: list[str] = []
"""The hosts of the relays this test made (their images are named under them)."""


def relay(seeded, bytes_per_second: float) -> Throttle:
    throttle = Throttle(seeded.host, bytes_per_second)
    RELAYS.append(throttle.host)
    return throttle


def prompts_for(images: list[str]) -> list[mini_swe_runner.Prompt]:
    lines = [json.dumps({"prompt": f"task {n}", "id": f"t{n}", "image": image}) for n, image in enumerate(images)]
    return mini_swe_runner.parse_prompt_lines(lines, "test")


def run(server, out, prompts, workers: int = 1, **env) -> mini_swe_runner.RunOutcome:
    settings = EnvSettings(env_type="docker", concurrency=workers, **{"pull": "missing", **env})
    config = make_config(server, out, env=settings, workers=workers)
    return asyncio.run(mini_swe_runner.run_batch(config, prompts))


def layer_of(record: dict) -> str:
    return tool_results(record)[0]["content"]["output"].split()[-1]


def pulls_since(since: float) -> list[str]:
    """The images the engine pulled since ``since`` (its own event log), in order."""
    events = engine().events(since=int(since), until=int(time.time()) + 1, decode=True, filters={"type": "image"})
    return [event["Actor"]["ID"] if "ID" in event.get("Actor", {}) else event["id"] for event in events
            if event.get("Action", event.get("status")) == "pull"]  # fmt: skip


def test_images_are_pulled_ahead_in_order_each_once_and_the_first_task_starts_early(fresh, tmp_path):
    throttle = relay(fresh, 3_000_000)  # ~0.5 s per image
    images = [seeded_image(throttle.host, n) for n in range(12)]
    arrived: dict[str, float] = {}
    watching = True

    def watch() -> None:
        while watching:
            for tag in local_tags(f"{throttle.host}/"):
                arrived.setdefault(tag, time.monotonic())
            time.sleep(0.05)

    first_request: list[float] = []

    def script(request: dict):
        if not first_request:
            first_request.append(time.monotonic())
        return SCRIPT(request)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.time()
    try:
        with ScriptedModelServer(script) as server:
            outcome = run(server, tmp_path / "out.jsonl", prompts_for(images), pull_workers=2)
    finally:
        watching = False
        watcher.join()
        throttle.close()
    records = read_jsonl(tmp_path / "out.jsonl")
    assert outcome.exit_code == 0, outcome.error
    assert [layer_of(r) for r in records] == [f"img{n}" for n in range(12)]  # each task ran in its own image
    assert set(arrived) == set(images)
    # Pull-ahead: the first task talked to the model before the last image had arrived (a serial pre-pull of
    # twelve throttled images would have taken ~6 s before any task).
    assert first_request[0] < max(arrived.values()), (first_request, sorted(arrived.values()))
    order = sorted(images, key=arrived.get)
    assert order[:2] == sorted(images[:2], key=arrived.get)  # the first tasks' images came first
    assert pulls_since(started).count(images[0]) <= 1 and len(pulls_since(started)) == 12  # each image once
    summary = outcome.summary["run"]["images"]
    assert summary["needed"] == 12 and summary["failed"] == {} and summary["pulled_bytes"] >= 12 * 1_000_000


def test_a_missing_tag_costs_only_its_own_tasks_and_resume_retries_it(fresh, tmp_path):
    missing = seeded_image(fresh.host, 1, tag="not-pushed")
    images = [seeded_image(fresh.host, 0), missing, seeded_image(fresh.host, 2), missing]
    out = tmp_path / "out.jsonl"
    with ScriptedModelServer(SCRIPT) as server:
        outcome = run(server, out, prompts_for(images), workers=2)
        records = {r["task_id"]: r for r in read_jsonl(out)}
        assert outcome.exit_code == 0, outcome.error
        assert [records[t]["exit_reason"] for t in ("t0", "t1", "t2", "t3")] == [
            "completed",
            "env_error",
            "completed",
            "env_error",
        ]
        error = records["t1"]["error"]
        assert missing in error and "could not be pulled" in error and "\n" not in error
        assert "manifest unknown" in error or "not found" in error  # the registry's own words
        assert records["t1"]["api_calls"] == 0  # never started: no model call was spent on it
        assert set(outcome.summary["run"]["images"]["failed"]) == {missing}
        assert "could not be had" in mini_swe_runner.summary_text(outcome.summary, str(out))

        # The tag appears in the registry: a rerun retries exactly the failed tasks, and they pass now.
        client = engine()
        client.api.pull(seeded_image(fresh.host, 1).rsplit(":", 1)[0], tag="v1")
        client.api.tag(seeded_image(fresh.host, 1), missing.rsplit(":", 1)[0], tag="not-pushed")
        for line in client.api.push(missing.rsplit(":", 1)[0], tag="not-pushed", stream=True, decode=True):
            assert "error" not in line, line
        client.api.remove_image(missing)
        rerun = run(server, out, prompts_for(images), workers=2)
    assert rerun.exit_code == 0, rerun.error
    final = mini_swe_runner_last(out)
    assert {t: r["exit_reason"] for t, r in final.items()} == {f"t{n}": "completed" for n in range(4)}
    assert layer_of(final["t1"]) == "img1"


def mini_swe_runner_last(out) -> dict[str, dict]:
    """The last record of each task (a resumed run appends; the earlier env_error lines stay until compaction)."""
    last = {}
    for record in read_jsonl(out):
        last[record["task_id"]] = record
    return last


def test_a_registry_that_stops_mid_run_fails_the_rest_quickly_and_resume_finishes(fresh, tmp_path):
    throttle = relay(fresh, 1_000_000)  # ~1.5 s per image
    images = [seeded_image(throttle.host, n) for n in range(6)]
    out = tmp_path / "out.jsonl"
    result: dict = {}
    try:
        with ScriptedModelServer(SCRIPT) as server:
            runner = threading.Thread(
                target=lambda: result.update(outcome=run(server, out, prompts_for(images), pull_workers=1)),
                daemon=True,
            )
            runner.start()
            wait_for(lambda: out.exists() and out.read_text().count("\n") >= 1, timeout=60)
            fresh.stop()
            runner.join(timeout=120)
            assert not runner.is_alive(), "the run hung after the registry went away"
            records = read_jsonl(out)
            reasons = [r["exit_reason"] for r in records]
            assert len(records) == 6 and reasons[0] == "completed" and "env_error" in reasons
            assert all("could not be pulled" in r["error"] for r in records if r["exit_reason"] == "env_error")
            fresh.start()
            rerun = run(server, out, prompts_for(images), pull_workers=2)
    finally:
        if fresh.process is None:
            fresh.start()
        throttle.close()
    assert rerun.exit_code == 0, rerun.error
    assert {t: r["exit_reason"] for t, r in mini_swe_runner_last(out).items()} == {
        f"t{n}": "completed" for n in range(6)
    }


def test_the_disk_budget_removes_only_what_this_run_pulled_and_no_running_task_needs(fresh, tmp_path):
    images = [seeded_image(fresh.host, n) for n in range(6)]
    before = images[0]
    engine().api.pull(before.rsplit(":", 1)[0], tag="v1")  # present before the run: never removed
    # Two tasks on each image; with a 1-byte budget every pulled image is over it from the start.
    prompts = prompts_for([image for image in images for _ in range(2)])
    with ScriptedModelServer(SCRIPT) as server:
        outcome = run(server, tmp_path / "out.jsonl", prompts, workers=2, pull_workers=2, max_image_disk=1)
    records = read_jsonl(tmp_path / "out.jsonl")
    assert outcome.exit_code == 0, outcome.error
    # Every task had its image while it ran (a removed image fails the container's creation).
    assert all(r["exit_reason"] == "completed" for r in records) and len(records) == 12
    assert sorted(layer_of(r) for r in records) == sorted(f"img{n}" for n in range(6) for _ in range(2))
    left = local_tags(f"{fresh.host}/")
    assert left == {before}, left
    summary = outcome.summary["run"]["images"]
    assert sorted(summary["removed"]) == sorted(images[1:]) and summary["not_removed"] == {}


def test_pull_never_pulls_and_removes_nothing(fresh, tmp_path):
    present, absent = seeded_image(fresh.host, 0), seeded_image(fresh.host, 1)
    engine().api.pull(present.rsplit(":", 1)[0], tag="v1")
    with ScriptedModelServer(SCRIPT) as server:
        outcome = run(server, tmp_path / "out.jsonl", prompts_for([present, absent]), pull="never", max_image_disk=1)
    records = {r["task_id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert records["t0"]["exit_reason"] == "completed"
    assert records["t1"]["exit_reason"] == "env_error" and "--pull never" in records["t1"]["error"]
    assert local_tags(f"{fresh.host}/") == {present}
    assert outcome.summary["run"]["images"]["removed"] == []


def test_kill_9_mid_pull_then_resume_gives_every_record_once(fresh, tmp_path):
    throttle = relay(fresh, 1_000_000)
    images = [seeded_image(throttle.host, n) for n in range(5)]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"task {n}", "id": f"t{n}", "image": i}) + "\n" for n, i in enumerate(images))
    )
    out = tmp_path / "out.jsonl"
    try:
        with ScriptedModelServer(SCRIPT) as server:
            args = ["--prompts_file", str(prompts), "--output_file", str(out), "--base_url", server.base_url]
            args += ["--model", "m", "--env", "docker", "--workers", "1", "--pull_workers", "2"]
            process = start_cli(args, tmp_path)
            try:
                wait_for(lambda: out.exists() and out.read_text().count("\n") >= 1, timeout=60)
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
            finally:
                process.kill()
            rerun = run_cli(args, cwd=tmp_path, timeout=180)
    finally:
        throttle.close()
    assert rerun.returncode == 0, rerun.stderr
    records = read_jsonl(out)
    assert sorted(r["task_id"] for r in records) == [f"t{n}" for n in range(5)]  # each once, none lost
    assert all(r["exit_reason"] == "completed" for r in records)


def test_samples_that_until_passed_makes_unneeded_give_their_image_back(fresh, tmp_path):
    """Two prompts x 3 samples with --until_passed 1: the first sample of each passes, the other two never start,
    so each image is free once that sample ended and the budget removes it; without that bookkeeping both would be
    held to the end."""
    images = [seeded_image(fresh.host, 4), seeded_image(fresh.host, 5)]
    settings = EnvSettings(env_type="docker", pull="missing", max_image_disk=1, concurrency=1)
    with ScriptedModelServer(SCRIPT) as server:
        config = make_config(
            server, tmp_path / "out.jsonl", env=settings, workers=1, samples=3, until_passed=1, verify="true"
        )
        outcome = asyncio.run(mini_swe_runner.run_batch(config, prompts_for(images)))
    records = read_jsonl(tmp_path / "out.jsonl")
    assert outcome.exit_code == 0, outcome.error
    assert len(records) == 2 and all(r["reward"] == 1.0 for r in records)
    assert outcome.summary["run"]["samples_not_needed"] == 4
    assert sorted(outcome.summary["run"]["images"]["removed"]) == sorted(images)
    assert local_tags(f"{fresh.host}/") == set()
