"""The real CLI with --env docker: signals remove containers, per-prompt images, one-line image errors, cleanup."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import clean_environ, read_jsonl, run_cli, start_cli, tool_results, wait_for
from docker_support import TEST_IMAGE, HeldCreations, docker_engine, engine, variant_image  # noqa: F401
from model_server import ScriptedModelServer, delayed, per_conversation, reply, tool_call

pytestmark = pytest.mark.usefixtures("docker_engine")


def docker_args(server, image: str = TEST_IMAGE) -> list[str]:
    return ["--base_url", server.base_url, "--model", "m", "--env", "docker", "--image", image, "--pull", "never"]


def containers_of(pid: int) -> list[str]:
    """Ids of the containers the CLI ``pid`` made, from ONE list call.

    Not ``containers.list()``: it lists, then inspects each container in a second request, and a container removed
    in between (exactly what these tests wait for) raised docker.errors.NotFound there: the flake of
    test_signal_mid_task_removes_the_containers on a loaded machine."""
    return [c["Id"] for c in engine().api.containers(all=True, filters={"label": f"mini-swe-runner.pid={pid}"})]


def running_sleepers(pid: int, count: int) -> bool:
    """``count`` containers of the CLI ``pid``, each running the scripted ``sleep 4242``."""
    containers = containers_of(pid)
    if len(containers) < count:
        return False
    try:
        return all("sleep 4242" in json.dumps(engine().api.top(c)) for c in containers)
    except Exception:  # a container still starting, or already gone
        return False


def write_prompts(path: Path, objects: list[dict]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objects))
    return path


@pytest.mark.parametrize(
    ("signals", "code"), [([signal.SIGINT], 130), ([signal.SIGTERM], 143), ([signal.SIGINT] * 2, 130)]
)
def test_signal_mid_task_removes_the_containers(tmp_path, signals, code):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "first"}, {"prompt": "second"}])
    script = per_conversation([reply(None, [tool_call("sleep 4242", timeout=600)]), reply("done")])
    with ScriptedModelServer(script) as server:
        process = start_cli(["--prompts_file", str(prompts), "--workers", "2", *docker_args(server)], tmp_path)
        try:
            wait_for(lambda: running_sleepers(process.pid, 2), timeout=60, interval=0.1)
            for signum in signals:
                process.send_signal(signum)
            _, stderr = process.communicate(timeout=60)
        finally:
            process.kill()
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    wait_for(lambda: not containers_of(process.pid), timeout=15)


def test_a_stop_while_the_first_call_waits_and_the_container_is_made_leaves_nothing(tmp_path):
    # The task's container is made while its first model call is in flight: a stop then cancels both, and the
    # container the engine finishes making after the stop is removed before the runner exits.
    asked = threading.Event()

    def script(request: dict):
        asked.set()
        return delayed(60, reply("never"))

    with HeldCreations(hold_for=30) as relay, ScriptedModelServer(script) as server:
        environ = clean_environ(DOCKER_HOST=relay.url)
        process = start_cli(["--task", "stopped early", *docker_args(server)], tmp_path, env=environ)
        try:
            wait_for(lambda: asked.is_set() and relay.holding.is_set(), timeout=20)
            process.send_signal(signal.SIGINT)
            time.sleep(1.0)  # the stop is under way while the engine still holds the creation
            relay.release()
            _, stderr = process.communicate(timeout=60)
        finally:
            process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert relay.held == 1
    wait_for(lambda: not containers_of(process.pid), timeout=15)


def test_killed_run_leaves_containers_that_cleanup_removes(tmp_path):
    script = per_conversation([reply(None, [tool_call("sleep 4242", timeout=600)]), reply("done")])
    with ScriptedModelServer(script) as server:
        process = start_cli(["--task", "sleep", *docker_args(server)], tmp_path)
        try:
            wait_for(lambda: running_sleepers(process.pid, 1), timeout=60, interval=0.1)
        finally:
            process.kill()
            process.communicate(timeout=30)
    # SIGKILL: nothing could clean up, so 1 is left (0 if a parallel test run's reaper was quicker).
    assert len(containers_of(process.pid)) <= 1
    result = run_cli(["cleanup"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "removed" in result.stderr and "Traceback" not in result.stderr
    assert containers_of(process.pid) == []


def test_per_prompt_image_in_the_prompts_file(tmp_path):
    prompts = write_prompts(
        tmp_path / "p.jsonl",
        [{"prompt": "look", "id": "base"}, {"prompt": "look", "id": "variant", "image": variant_image()}],
    )
    script = per_conversation([reply(None, [tool_call("cat /etc/msr-variant || echo none; pwd")]), reply("done")])
    with ScriptedModelServer(script) as server:
        result = run_cli(
            ["--prompts_file", str(prompts), "--output_file", str(tmp_path / "o.jsonl"), *docker_args(server)],
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr
    records = {r["task_id"]: r for r in read_jsonl(tmp_path / "o.jsonl")}
    base, variant = (tool_results(records[name])[0]["content"]["output"] for name in ("base", "variant"))
    assert base.endswith("No such file or directory\nnone\n/\n")
    assert variant == "variant\n/srv/work\n"  # its file, and its WORKDIR as the starting cwd
    assert records["variant"]["metadata"]["image"] == variant_image()
    assert records["base"]["metadata"]["image"] == TEST_IMAGE


def test_missing_image_is_one_line_from_the_cli(tmp_path):
    missing = "mini-swe-runner-test:not-built"
    with ScriptedModelServer(per_conversation([reply("done")])) as server:
        result = run_cli(["--task", "x", *docker_args(server, image=missing)], cwd=tmp_path)
    # A missing image costs its own tasks (env_error, retried on resume), not the batch: here that is every task,
    # so the run ends with one line saying so and naming the fix.
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "every task failed" in last and missing in last and "docker pull" in last, result.stderr
    assert "Traceback" not in result.stderr
    [record] = read_jsonl(tmp_path / "trajectories.jsonl")
    assert record["exit_reason"] == "env_error" and missing in record["error"]
