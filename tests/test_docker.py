"""DockerEnvironment, docker_preflight and the reaper against a real engine (scripts/docker-engine.sh)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import time
import tracemalloc

import pytest
from conftest import FINAL, make_config, run_prompts, tool_results
from docker_support import (  # noqa: F401
    TEST_IMAGE,
    HeldCreations,
    docker_engine,
    docker_settings,
    engine,
    podman,
    podman_engine,
    run_containers,
    variant_image,
)
from model_server import ScriptedModelServer, assistant_turns, billed, per_conversation, reply, tool_call

import environments
from environments import (
    DOCKER_CLIENT_GRACE,
    KILL_GRACE,
    DockerEnvironment,
    DockerImages,
    EnvError,
    EnvSettings,
    SettingsError,
    docker_preflight,
    reap_stale_containers,
)

needs_engine = pytest.mark.usefixtures("docker_engine")

# Lists the command lines of every process in the container (the image has no ps).
LIST_PROCESSES = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done"


async def in_container(settings, *commands, timeout: float = 30, **kwargs):
    """Run commands in one fresh container and close it; returns the results."""
    env = DockerEnvironment(settings, **kwargs)
    try:
        await env.start()
        return [await env.execute(command, timeout) for command in commands]
    finally:
        await env.close()


def assert_one_line(error: EnvError, *fragments: str) -> None:
    message = str(error)
    assert "\n" not in message and "Traceback" not in message
    for fragment in fragments:
        assert fragment in message, message


@needs_engine
def test_commands_run_inside_a_fresh_container():
    settings = docker_settings()

    async def scenario():
        env = DockerEnvironment(settings, task_id="task/1")
        await env.start()
        try:
            container = engine().containers.get(env.container_id)
            pid1 = await env.execute("tr '\\0' ' ' < /proc/1/cmdline", 10)
            host = await env.execute("hostname; exit 3", 10)
            return container, pid1, host
        finally:
            await env.close()

    container, pid1, host = asyncio.run(scenario())
    assert pid1.ok and "sleep infinity" in pid1.output  # PID 1 of a container (init + sleep), not of this machine
    assert host.exit_code == 3 and host.error is None and host.output.strip() == container.id[:12]
    labels = container.labels
    assert labels["mini-swe-runner"] == "1" and labels["mini-swe-runner.run-id"] == settings.run_id
    assert labels["mini-swe-runner.task-id"] == "task/1" and labels["mini-swe-runner.pid"] == str(os.getpid())
    assert labels["mini-swe-runner.host"] == socket.gethostname() and labels["mini-swe-runner.started"]
    assert container.attrs["HostConfig"]["Init"] is True and container.attrs["HostConfig"]["Binds"] in (None, [])
    assert run_containers(settings.run_id) == []


@needs_engine
def test_cwd_carries_over_and_defaults_to_workdir_or_requested_path():
    results = asyncio.run(
        in_container(docker_settings(), "pwd", "mkdir -p /tmp/a/b && cd /tmp/a", "cd b; pwd", "cd /nonexistent", "pwd")
    )
    assert [r.output.strip() for r in results] == ["/", "", "/tmp/a/b", results[3].output.strip(), "/tmp/a/b"]
    assert results[3].exit_code != 0 and "nonexistent" in results[3].output

    requested = asyncio.run(in_container(docker_settings(cwd="/srv/repo"), "pwd; ls -d /srv/repo"))
    assert requested[0].ok and requested[0].output.split() == ["/srv/repo", "/srv/repo"]
    workdir = asyncio.run(in_container(docker_settings(), "pwd", image=variant_image()))
    assert workdir[0].output.strip() == "/srv/work"
    with pytest.raises(EnvError) as caught:
        asyncio.run(in_container(docker_settings(), "pwd", cwd="relative/dir"))
    assert_one_line(caught.value, "relative/dir", "absolute")


@needs_engine
def test_timeout_kills_the_command_tree_inside_and_the_container_stays_usable():
    async def scenario():
        env = DockerEnvironment(docker_settings())
        await env.start()
        try:
            started = time.monotonic()
            tree = await env.execute("echo started; sleep 1001 & (sleep 1002; echo never) & sleep 1003", 1)
            tree_elapsed = time.monotonic() - started
            started = time.monotonic()
            stubborn = await env.execute("trap '' TERM; sleep 1004", 1)  # ignores SIGTERM: SIGKILL follows
            stubborn_elapsed = time.monotonic() - started
            left = await env.execute(LIST_PROCESSES, 10)
            after = await env.execute("echo still usable", 10)
            return tree, tree_elapsed, stubborn, stubborn_elapsed, left, after
        finally:
            await env.close()

    tree, tree_elapsed, stubborn, stubborn_elapsed, left, after = asyncio.run(scenario())
    assert tree.exit_code == 124 and "timed out after 1 s" in tree.error and tree.output.startswith("started")
    assert 1 <= tree_elapsed < 1 + KILL_GRACE
    assert stubborn.exit_code == 124 and stubborn.error
    assert 1 + KILL_GRACE <= stubborn_elapsed < 1 + DOCKER_CLIENT_GRACE
    assert "sleep 100" not in left.output, left.output
    assert after.ok and after.output == "still usable\n"


@needs_engine
def test_client_side_guard_when_the_in_container_timeout_cannot_act():
    async def scenario():
        env = DockerEnvironment(docker_settings())
        await env.start()
        try:
            started = time.monotonic()
            # Stops coreutils timeout itself ($PPID of the wrapper's bash), so only our client-side guard is left.
            frozen = await env.execute("kill -STOP $PPID; sleep 1005", 1)
            elapsed = time.monotonic() - started
            left = await env.execute(LIST_PROCESSES, 10)
            return frozen, elapsed, left
        finally:
            await env.close()

    frozen, elapsed, left = asyncio.run(scenario())
    assert frozen.exit_code == 124 and frozen.error
    assert 1 + DOCKER_CLIENT_GRACE <= elapsed < 1 + DOCKER_CLIENT_GRACE + 3
    assert "sleep 1005" not in left.output  # killed through the exec's PID when the engine runs on this machine


@needs_engine
def test_tasks_are_isolated_from_each_other_and_from_the_host(tmp_path, monkeypatch):
    host_file = tmp_path / "host-only"
    host_file.write_text("host")
    monkeypatch.setenv("MSR_HOST_ONLY_VARIABLE", "visible-on-host")
    settings = docker_settings()

    async def scenario():
        first, second = DockerEnvironment(settings, task_id="a"), DockerEnvironment(settings, task_id="b")
        await asyncio.gather(first.start(), second.start())
        try:
            assert first.container_id != second.container_id
            wrote = await first.execute("echo mine > /tmp/task-file && cat /tmp/task-file", 10)
            sees = await second.execute(
                f"cat /tmp/task-file; ls {host_file}; echo ${{MSR_HOST_ONLY_VARIABLE:-unset}}", 10
            )
            return wrote, sees
        finally:
            await asyncio.gather(first.close(), second.close())

    wrote, sees = asyncio.run(scenario())
    assert wrote.ok and wrote.output == "mine\n"
    assert sees.exit_code == 0 and "No such file" in sees.output and sees.output.endswith("unset\n")


@needs_engine
def test_volumes_and_env_vars_only_when_asked(tmp_path, monkeypatch):
    (tmp_path / "shared.txt").write_text("from host")
    monkeypatch.setenv("MSR_PASSED", "passed-value")
    monkeypatch.setenv("MSR_NOT_PASSED", "nope")
    settings = docker_settings(volumes=(f"{tmp_path}:/mnt/host:ro",), env_vars=("MSR_PASSED",))
    read, write, environ = asyncio.run(in_container(settings, "cat /mnt/host/shared.txt", "touch /mnt/host/new", "env"))
    assert read.ok and read.output == "from host"
    assert write.exit_code != 0 and "Read-only" in write.output
    assert "MSR_PASSED=passed-value" in environ.output and "MSR_NOT_PASSED" not in environ.output
    assert "DEBIAN_FRONTEND=noninteractive" in environ.output and "PAGER=cat" in environ.output


@needs_engine
def test_per_task_image_override():
    settings = docker_settings()

    async def scenario():
        return await asyncio.gather(
            in_container(settings, "cat /etc/msr-variant"),
            in_container(settings, "cat /etc/msr-variant", image=variant_image()),
        )

    default, override = asyncio.run(scenario())
    assert default[0].exit_code != 0
    assert override[0].ok and override[0].output == "variant\n"


@needs_engine
def test_hardening_is_visible_in_docker_inspect():
    check_hardening(engine())


@pytest.mark.usefixtures("podman_engine")
def test_podman_runs_the_docker_backend_with_the_same_hardening():
    """Podman's Docker-compatible service (scripts/podman-engine.sh): the same container settings take effect."""
    check_hardening(podman())


def check_hardening(client) -> None:
    settings = docker_settings(memory="256m", cpus=0.5, pids_limit=100, network="none")

    async def scenario():
        env = DockerEnvironment(settings)
        await env.start()
        try:
            host_config = client.api.inspect_container(env.container_id)["HostConfig"]
            status = await env.execute("grep -E '^(NoNewPrivs|CapEff)' /proc/self/status; ls /sys/class/net", 10)
            root_work = await env.execute("touch /tmp/f && chown nobody /tmp/f && chmod u+s /tmp/f && ls -l /tmp/f", 10)
            return host_config, status, root_work
        finally:
            await env.close()

    host_config, status, root_work = asyncio.run(scenario())
    # Docker reports ALL dropped and the needed ones added back; Podman, which starts from a smaller default set,
    # lists each capability it dropped and none added. The container's CapEff below is what counts.
    dropped = {cap.removeprefix("CAP_") for cap in host_config["CapDrop"]}
    added = {cap.removeprefix("CAP_") for cap in host_config["CapAdd"] or ()}
    assert dropped == {"ALL"} or {"NET_RAW", "SYS_CHROOT", "MKNOD", "AUDIT_WRITE"} <= dropped
    assert added <= set(environments.HARDENED_CAPS)
    assert "no-new-privileges" in host_config["SecurityOpt"]
    assert host_config["PidsLimit"] == 100 and host_config["Memory"] == 256 * 1024**2
    assert host_config["NanoCpus"] == 500_000_000 and host_config["NetworkMode"] == "none"
    lines = status.output.split()
    assert lines[lines.index("NoNewPrivs:") + 1] == "1"
    # Exactly the capabilities a root package install needs (HARDENED_CAPS), nothing else.
    hardened = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6, "SETUID": 7}
    hardened["NET_BIND_SERVICE"] = 10
    assert set(environments.HARDENED_CAPS) == set(hardened)
    assert int(lines[lines.index("CapEff:") + 1], 16) == sum(1 << bit for bit in hardened.values())
    assert lines[-1] == "lo"  # network none: loopback only
    assert root_work.ok and "nobody" in root_work.output  # what a root package install needs still works
    assert run_containers(settings.run_id, client) == []  # removed on close

    open_config = asyncio.run(hardening_off(client))
    # The engine's own defaults (Podman drops a few capabilities even then), not ours.
    assert "ALL" not in (open_config["CapDrop"] or ()) and "SYS_CHROOT" not in str(open_config["CapDrop"])
    assert "no-new-privileges" not in str(open_config["SecurityOpt"])


async def hardening_off(client):
    env = DockerEnvironment(docker_settings(hardening=False))
    await env.start()
    try:
        return client.api.inspect_container(env.container_id)["HostConfig"]
    finally:
        await env.close()


@needs_engine
def test_100mb_of_output_is_truncated_in_bounded_memory():
    settings = docker_settings(max_output_chars=10_000)

    async def scenario():
        env = DockerEnvironment(settings)
        await env.start()
        try:
            tracemalloc.start()
            result = await env.execute("head -c 100000000 /dev/zero | tr '\\0' x; echo; echo END", 120)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            return result, peak
        finally:
            await env.close()

    result, peak = asyncio.run(scenario())
    assert result.ok and result.output.startswith("xxxx") and result.output.endswith("xxxx\nEND\n")
    assert "characters omitted" in result.output and len(result.output) < 10_200
    omitted = int(result.output.split("[... ")[1].split(" characters")[0])
    assert omitted == 100_000_000 + len("\nEND\n") - (
        len(result.output) - len(f"\n\n[... {omitted} characters omitted ...]\n\n")
    )
    assert peak < 8 * 1024**2, f"peak traced memory {peak} bytes"


@needs_engine
def test_container_removed_after_an_engine_error():
    settings = docker_settings()

    async def scenario():
        env = DockerEnvironment(settings)
        try:
            await env.start()
            engine().api.kill(env.container_id)  # the container dies under the task
            await env.execute("true", 5)
        finally:
            await env.close()

    with pytest.raises(EnvError) as caught:
        asyncio.run(scenario())
    assert_one_line(caught.value, "msr-")
    assert run_containers(settings.run_id) == []


@needs_engine
@pytest.mark.parametrize("cancel_after", [0.0, 0.05, 1.5], ids=["before-start", "mid-start", "mid-command"])
def test_container_removed_when_the_task_is_cancelled(cancel_after):
    settings = docker_settings()

    async def task():
        env = DockerEnvironment(settings)
        try:
            await env.start()
            await env.execute("sleep 1000", 2000)
        finally:
            await env.close()

    async def scenario():
        running = asyncio.create_task(task())
        await asyncio.sleep(cancel_after)
        running.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await running
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 10
    assert run_containers(settings.run_id) == []


@needs_engine
def test_reaper_removes_dead_runs_containers_and_spares_live_ones():
    marker = f"reaper{os.getpid()}{time.monotonic_ns()}"
    dead = subprocess.Popen(["true"])
    dead.wait()
    with open(f"/proc/{os.getpid()}/stat") as f:
        stat = f.read()
    my_start = stat[stat.rfind(")") + 2 :].split()[19]
    host = socket.gethostname()

    def labels(pid, pid_start, host=host, ours=True):
        values = {"mini-swe-runner.run-id": marker, "mini-swe-runner.host": host}
        values |= {"mini-swe-runner.pid": str(pid), "mini-swe-runner.pid-start": pid_start}
        return {"mini-swe-runner": "1", **values} if ours else {"other-program": "1", **values}

    cases = {
        "dead-runner": labels(dead.pid, "12345"),
        "reused-pid": labels(os.getpid(), str(int(my_start) + 1)),
        "live-runner": labels(os.getpid(), my_start),
        "other-host": labels(dead.pid, "12345", host="some-other-machine"),
        "other-program": labels(dead.pid, "12345", ours=False),
    }
    for name, container_labels in cases.items():
        engine().containers.create(TEST_IMAGE, ["sleep", "infinity"], name=f"{marker}-{name}", labels=container_labels)

    def left() -> dict[str, str]:  # summaries only: a reaper in a parallel test run may remove some meanwhile
        found = engine().api.containers(all=True, filters={"name": marker})
        return {c["Names"][0].removeprefix(f"/{marker}-"): c["Id"] for c in found}

    try:
        removed = reap_stale_containers()
        assert set(left()) == {"live-runner", "other-host", "other-program"}
        assert isinstance(removed, int)  # 2 here, unless a parallel run's reaper got to them first
    finally:
        for container_id in left().values():
            engine().api.remove_container(container_id, force=True)


@needs_engine
def test_preflight_accepts_a_present_image_and_reaps():
    asyncio.run(docker_preflight(docker_settings(), {TEST_IMAGE}))


@needs_engine
def test_missing_image_is_a_one_line_error():
    missing = "mini-swe-runner-test:does-not-exist"
    with pytest.raises(EnvError) as caught:
        DockerImages(docker_settings()).prepare(missing, lambda size: None)
    assert_one_line(caught.value, missing, "docker pull", "docker build", "--pull")

    unpullable = "msr-no-such-user/msr-no-such-image:v0"
    with pytest.raises(EnvError) as caught:
        DockerImages(docker_settings(pull="missing")).prepare(unpullable, lambda size: None)
    assert_one_line(caught.value, unpullable, "could not be pulled")

    settings = docker_settings(image=missing)
    with pytest.raises(EnvError) as caught:
        asyncio.run(in_container(settings, "true"))
    assert_one_line(caught.value, missing, "not present locally")
    assert run_containers(settings.run_id) == []


def test_unreachable_daemon_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")
    with pytest.raises(EnvError) as caught:
        asyncio.run(docker_preflight(docker_settings(), {TEST_IMAGE}))
    assert_one_line(caught.value, "cannot reach the Docker daemon", "DOCKER_HOST")
    with pytest.raises(EnvError) as caught:
        asyncio.run(in_container(docker_settings(), "true"))
    assert_one_line(caught.value, "cannot reach the Docker daemon")


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"pull": "sometimes"}, "--pull"),
        ({"memory": "lots"}, "--memory"),
        ({"memory": "1k"}, "minimum of 6 MB"),
        ({"memory": "5m"}, "minimum of 6 MB"),
        ({"cpus": -1}, "--cpus"),
        ({"volumes": ("no-container-path",)}, "host:sandbox"),
        ({"image": "Bad Image!"}, "not a valid Docker image name"),
        ({"image": "UPPER/Case:tag"}, "lower case"),
        ({"image": "python:3.11 slim"}, "not a valid Docker image name"),
    ],
)
def test_bad_options_are_refused_when_the_settings_are_built(overrides, fragment):
    with pytest.raises(SettingsError) as caught:
        docker_settings(**overrides)
    assert_one_line(caught.value, fragment)


@pytest.mark.parametrize(
    "image", ["python:3.11-slim", "localhost:5000/team/app:v1.2", "ghcr.io/org/x", "a/b/c@sha256:" + "0" * 64]
)
def test_valid_image_names_pass(image):
    assert docker_settings(image=image).image == image
    assert docker_settings(memory="6m").memory == "6m"


@pytest.mark.parametrize(
    "images, fragment",
    [({"Bad Image!"}, "not a valid Docker image name"), ({"UPPER/Case:tag"}, "lower case")],
)
def test_bad_prompt_images_and_missing_volumes_fail_preflight_before_any_engine_call(
    monkeypatch, tmp_path, images, fragment
):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")  # refused before the daemon is asked
    with pytest.raises(EnvError) as caught:
        asyncio.run(docker_preflight(docker_settings(), images))
    assert_one_line(caught.value, fragment)
    with pytest.raises(EnvError) as caught:
        asyncio.run(docker_preflight(docker_settings(volumes=("/definitely/not/here:/mnt",)), {TEST_IMAGE}))
    assert_one_line(caught.value, "does not exist")


@needs_engine
def test_the_client_pool_is_sized_from_the_workers():
    settings = EnvSettings(env_type="docker", concurrency=40)
    env = DockerEnvironment(settings)
    adapter = env._client().api.adapters["http+docker://"]
    assert adapter.max_pool_size == 40 + environments.DOCKER_POOL_EXTRA


@needs_engine
def test_many_tasks_in_parallel():
    settings = docker_settings()

    async def one(i):
        results = await in_container(settings, f"echo {i} > /tmp/id", "cat /tmp/id", task_id=f"p{i}")
        return results[1].output.strip()

    async def scenario():
        return await asyncio.gather(*(one(i) for i in range(6)))

    assert asyncio.run(scenario()) == [str(i) for i in range(6)]
    assert run_containers(settings.run_id) == []


# ---------------------------------------------------------------------------------------------------------------
# A task's container is made while its first model call is in flight (the runner's start order)
# ---------------------------------------------------------------------------------------------------------------


@needs_engine
def test_the_first_model_call_is_made_while_the_container_is_created(tmp_path, monkeypatch):
    containers_made_when_asked = []
    with HeldCreations(hold_for=5) as relay:

        def script(request: dict):
            if assistant_turns(request) == 0:
                containers_made_when_asked.append(relay.let_go)
                relay.release()
                return reply(None, [tool_call(FINAL)])
            return reply("done")

        settings = docker_settings()
        with ScriptedModelServer(script) as server, monkeypatch.context() as patched:
            patched.setenv("DOCKER_HOST", relay.url)
            _, [record] = run_prompts(make_config(server, tmp_path / "out.jsonl", env=settings), ["task"])
    # The model had the prompt while the engine was still making the container: one start-up less per task.
    assert containers_made_when_asked == [0] and relay.held == 1
    assert record["completed"] and record["exit_reason"] == "completed", record["error"]
    assert run_containers(settings.run_id) == []


class _ReleaseOnAnswer(logging.Handler):
    """Lets the relay's held creation go (and fail) once the runner has logged the model's first answer."""

    def __init__(self, relay: HeldCreations):
        super().__init__(logging.INFO)
        self.relay = relay

    def emit(self, record: logging.LogRecord) -> None:
        if "model: " in record.getMessage():
            self.relay.release()


@needs_engine
def test_a_container_failing_after_the_first_answer_keeps_it_in_the_env_error_record(tmp_path, monkeypatch):
    script = per_conversation([reply("Looking first.", [tool_call("ls")], usage=billed(0.25)), reply("done")])
    logger = logging.getLogger("mini_swe_runner")
    with HeldCreations(hold_for=5, fail=True) as relay:
        handler = _ReleaseOnAnswer(relay)
        logger.addHandler(handler)
        level, logger.level = logger.level, logging.INFO
        settings = docker_settings()
        try:
            with ScriptedModelServer(script) as server, monkeypatch.context() as patched:
                patched.setenv("DOCKER_HOST", relay.url)
                _, [record] = run_prompts(make_config(server, tmp_path / "out.jsonl", env=settings), ["task"])
                assert len(server.requests) == 1  # nothing was asked once the container could not be had
        finally:
            logger.removeHandler(handler)
            logger.level = level
    assert record["exit_reason"] == "env_error" and "the relay refused this creation" in record["error"]
    # The answer happened and was paid for: its turn, its tokens and its cost stay in the record.
    assert record["api_calls"] == 1 and record["cost"] == 0.25
    assert record["usage"]["prompt_tokens"] == 100 and record["usage"]["completion_tokens"] == 20
    gpt = [turn["value"] for turn in record["conversations"] if turn["from"] == "gpt"]
    assert len(gpt) == 1 and "Looking first." in gpt[0] and '"ls"' in gpt[0]
    [result] = tool_results(record)  # the call the model made is answered, never left dangling
    assert "not run: the task ended (env_error)" in result["content"]["error"]
    assert run_containers(settings.run_id) == []
