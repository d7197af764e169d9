"""The Modal backend through our own interface, against a fake SDK that runs real bash (tests/fake_modal.py).

The contract test checks every call the backend made against the installed ``modal`` package's signatures, and
one test runs against real Modal when credentials are present.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import subprocess
import sys
import time
import warnings

import modal
import modal.exception
import pytest
from fake_modal import CreationLimit, FakeModal, LongTail, bind_real, rate_limit_error, real_function

import environments
import mini_swe_runner
from environments import (
    AGENT_ENV_DEFAULTS,
    DEFAULT_IMAGE,
    MODAL_DRAIN_SECONDS,
    CreationPacer,
    EnvError,
    EnvSettings,
    ModalEnvironment,
    SettingsError,
    create_environment,
    memory_mib,
    modal_credentials_found,
    modal_preflight,
    preflight,
)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def fake(tmp_path):
    return FakeModal(tmp_path / "sandboxes")


def make_env(fake, image=None, cwd=None, task_id="t1", image_setting=None, pacer=None, **settings):
    settings = EnvSettings(env_type="modal", image=image_setting, **settings)
    return ModalEnvironment(settings, image=image, cwd=cwd, task_id=task_id, sdk=fake, pacer=pacer)


async def session(env, *commands, timeout=10):
    """Start, run the commands, close; the results in order."""
    await env.start()
    try:
        return [await env.execute(command, timeout=timeout) for command in commands]
    finally:
        await env.close()


# ---------------------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------------------


def test_exec_asks_for_bytes(fake):
    # text=True would raise on invalid UTF-8 inside the SDK; the contract suite checks the replacement.
    [result] = run(session(make_env(fake), "echo out"))
    assert result.output == "out\n"
    [kwargs] = fake.called("Sandbox.exec.aio")
    assert kwargs["text"] is False


def test_requested_cwd_becomes_the_sandbox_workdir(fake, tmp_path):
    repo = str(tmp_path / "repo")
    [result] = run(session(make_env(fake, cwd=repo), "pwd"))
    assert result.output.strip() == repo
    assert fake.called("Sandbox.create.aio")[0]["workdir"] == repo


def test_relative_cwd_is_refused(fake):
    with pytest.raises(EnvError, match="absolute"):
        run(session(make_env(fake, cwd="repo")))


def test_timeout_returns_124_with_partial_output_and_keeps_the_sandbox(fake):
    env = make_env(fake)

    async def scenario():
        await env.start()
        started = time.monotonic()
        timed_out = await env.execute("echo partial; sleep 30", timeout=1)
        elapsed = time.monotonic() - started
        after = await env.execute("echo alive", timeout=10)
        sandbox_alive = not fake.sandboxes[0].terminated
        await env.close()
        return timed_out, elapsed, after, sandbox_alive

    timed_out, elapsed, after, sandbox_alive = run(scenario())
    assert timed_out.exit_code == 124
    assert timed_out.output.startswith("partial\n") and "timed out after 1 s" in timed_out.output
    assert timed_out.error and elapsed < 5
    assert sandbox_alive and after.ok and after.output == "alive\n"
    assert [name for name, _, _ in fake.calls if "terminate" in name] == ["Sandbox.terminate.aio"]  # close's only


def test_background_child_does_not_hold_the_command(fake):
    env = make_env(fake)
    started = time.monotonic()
    [result] = run(session(env, "sleep 30 & echo started"))
    assert result.ok and result.output == "started\n"
    assert time.monotonic() - started < MODAL_DRAIN_SECONDS + 3


def test_command_too_long_for_modal_is_a_result_not_an_exec(fake):
    [result] = run(session(make_env(fake), "echo " + "x" * 70_000))
    assert result.exit_code == -1 and "too long" in result.error
    assert fake.called("Sandbox.exec.aio") == []


def test_sandbox_gone_mid_run_is_an_error_result(fake):
    env = make_env(fake)

    async def scenario():
        await env.start()
        fake.sandboxes[0].terminated = True  # Modal ended it (lifetime reached, killed from the dashboard...)
        result = await env.execute("echo hi", timeout=10)
        await env.close()
        return result

    result = run(scenario())
    assert result.exit_code == -1 and result.error == "Modal sandbox failed: Sandbox already finished"


# ---------------------------------------------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------------------------------------------


def test_close_terminates_and_is_idempotent(fake):
    env = make_env(fake)

    async def scenario():
        await env.execute("true", timeout=10)  # execute starts the sandbox when start() was not called
        await env.close()
        await env.close()
        with pytest.raises(EnvError, match="closed"):
            await env.execute("true", timeout=10)

    run(scenario())
    assert len(fake.sandboxes) == 1 and fake.sandboxes[0].terminated
    assert len(fake.called("Sandbox.terminate.aio")) == 1


def test_close_before_start_does_nothing(fake):
    run(make_env(fake).close())
    assert fake.calls == []


def test_abandon_terminates_with_the_blocking_api_without_warning(fake):
    env = make_env(fake)

    async def scenario():
        await env.start()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            env.abandon()  # called from inside the loop, as a second Ctrl-C handler would
            env.abandon()

    run(scenario())
    wait_until(lambda: fake.sandboxes[0].terminated)  # the terminate runs in a thread of its own
    assert len(fake.called("Sandbox.terminate")) == 1


def test_second_ctrl_c_abandons_many_environments_in_one_wait(fake):
    environments_ = [make_env(fake, task_id=str(n)) for n in range(4)]

    async def start_all():
        await asyncio.gather(*(env.start() for env in environments_))

    run(start_all())
    for sandbox in fake.sandboxes:
        sandbox.terminate = hanging_terminate  # a network that never answers
    started = time.monotonic()
    mini_swe_runner._abandon_all(set(environments_))  # what the second Ctrl-C does: all at once
    assert time.monotonic() - started < environments.MODAL_ABANDON_WAIT + 1  # not 4 waits


def hanging_terminate():
    time.sleep(30)


def wait_until(condition, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_creation_hang_is_bounded_by_startup_timeout(fake):
    fake.create_delay = math.inf
    env = make_env(fake, startup_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(EnvError, match=r"no Modal sandbox for python:3.11-slim within 0.3 s") as info:
        run(env.start())
    assert time.monotonic() - started < 2
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "error, message",
    [
        (modal.exception.ConnectionError("Could not connect\nto the Modal server."), "could not be created: Could"),
        (modal.exception.AuthError("Token missing.\nCould not authenticate client."), "rejected the credentials"),
        (OSError("Network is unreachable"), "could not be created: Network is unreachable"),
    ],
)
def test_creation_failure_is_a_one_line_env_error(fake, error, message):
    fake.create_error = error
    with pytest.raises(EnvError, match=message) as info:
        run(make_env(fake).start())
    assert "\n" not in str(info.value)


# A creation that never hands us its sandbox: close() finds it by its tags and terminates it.


@pytest.fixture
def quick_sweep(monkeypatch):
    monkeypatch.setattr(environments, "MODAL_SWEEP_INTERVAL", 0.05)


async def start_bystanders(fake):
    """Running sandboxes close() must not touch: another task of the same run, and the same task id of another run."""
    bystanders = [make_env(fake, task_id="t2", run_id="run-1"), make_env(fake, task_id="t1", run_id="run-2")]
    for env in bystanders:
        await env.start()
    return [sandbox for sandbox in fake.sandboxes if not sandbox.terminated]


def sandboxes_tagged(fake, tags):
    """Sandboxes of exactly this run and task (every sandbox also carries its runner's tags for the cleanup sweep)."""
    return [s for s in fake.sandboxes if {k: v for k, v in s.tags.items() if k in ("run_id", "task_id")} == tags]


@pytest.mark.parametrize(
    "create_delay, reply_delay",
    [(0.1, math.inf), (0.6, 0.0)],
    ids=["made-before-the-deadline-reply-lost", "made-after-the-deadline"],
)
def test_creation_past_startup_timeout_leaves_no_sandbox_behind(fake, quick_sweep, create_delay, reply_delay):
    env = make_env(fake, task_id="t1", run_id="run-1", startup_timeout=0.3)

    async def scenario():
        bystanders = await start_bystanders(fake)
        fake.create_delay, fake.reply_delay = create_delay, reply_delay
        with pytest.raises(EnvError, match=r"no Modal sandbox for python:3.11-slim within 0.3 s") as info:
            await env.start()
        assert "\n" not in str(info.value)
        started = time.monotonic()
        await env.close()
        return bystanders, time.monotonic() - started

    bystanders, close_took = run(scenario())
    [orphan] = sandboxes_tagged(fake, {"run_id": "run-1", "task_id": "t1"})
    assert orphan.terminated and orphan not in bystanders
    assert not any(sandbox.terminated for sandbox in bystanders)
    app_id = fake.apps["mini-swe-runner"].app_id
    listed = fake.called("Sandbox.list.aio")
    assert listed and all(
        kwargs == {"app_id": app_id, "tags": {"run_id": "run-1", "task_id": "t1"}} for kwargs in listed
    )
    assert close_took < environments.MODAL_SWEEP_WAIT  # it stops looking once it has found the sandbox


def test_task_cancelled_during_creation_leaves_no_sandbox_behind(fake, quick_sweep):
    env = make_env(fake, task_id="t1", run_id="run-1")
    fake_create_delay = 0.3  # Modal makes the sandbox after the task was cancelled

    async def scenario():
        bystanders = await start_bystanders(fake)
        fake.create_delay = fake_create_delay
        task = asyncio.ensure_future(env.start())
        await asyncio.sleep(0.1)
        task.cancel()  # Ctrl-C or --task_timeout
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sandboxes_tagged(fake, {"run_id": "run-1", "task_id": "t1"}) == []  # not made yet
        await env.close()
        return bystanders

    bystanders = run(scenario())
    [orphan] = sandboxes_tagged(fake, {"run_id": "run-1", "task_id": "t1"})
    assert orphan.terminated
    assert not any(sandbox.terminated for sandbox in bystanders)


def test_normal_close_terminates_by_handle_without_listing(fake):
    run(session(make_env(fake), "true"))
    assert fake.sandboxes[0].terminated
    assert [name for name, _, _ in fake.calls if "list" in name or "terminate" in name] == ["Sandbox.terminate.aio"]


def test_failure_before_the_create_request_lists_nothing(fake):
    async def lookup_fails(*args, **kwargs):
        raise modal.exception.ConnectionError("Could not connect to the Modal server.")

    fake.App.lookup.impl = lookup_fails

    async def scenario():
        env = make_env(fake)
        with pytest.raises(EnvError, match="could not be created"):
            await env.start()
        await env.close()

    run(scenario())
    assert not any("list" in name for name, _, _ in fake.calls)


@pytest.mark.parametrize(
    "list_delay, list_error",
    [(math.inf, None), (0.0, modal.exception.ConnectionError("Could not connect to the Modal server."))],
    ids=["list-hangs", "list-fails"],
)
def test_sweep_is_bounded_and_quiet(fake, monkeypatch, caplog, list_delay, list_error):
    monkeypatch.setattr(environments, "MODAL_SWEEP_WAIT", 0.5)
    fake.create_delay, fake.reply_delay = 0.05, math.inf
    fake.list_delay, fake.list_error = list_delay, list_error
    env = make_env(fake, startup_timeout=0.2)

    async def scenario():
        with pytest.raises(EnvError):
            await env.start()
        started = time.monotonic()
        await asyncio.wait_for(env.close(), 5)  # raises nothing (a TimeoutError here: close is not bounded)
        await env.close()  # and looks only once
        return time.monotonic() - started

    assert run(scenario()) < 0.5 + 0.5
    assert len(fake.called("Sandbox.list.aio")) == 1
    assert not fake.sandboxes[0].terminated  # missed: it ends at its sandbox_timeout
    assert caplog.records == []


def test_abandon_after_a_lost_creation_terminates_with_the_blocking_api(fake):
    env = make_env(fake, task_id="t1", run_id="run-1", startup_timeout=0.2)

    async def scenario():
        bystanders = await start_bystanders(fake)
        fake.create_delay, fake.reply_delay = 0.05, math.inf
        with pytest.raises(EnvError):
            await env.start()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            env.abandon()  # from inside the loop, as a second Ctrl-C handler would
            env.abandon()
        return bystanders

    bystanders = run(scenario())
    [orphan] = sandboxes_tagged(fake, {"run_id": "run-1", "task_id": "t1"})
    wait_until(lambda: orphan.terminated)
    assert not any(sandbox.terminated for sandbox in bystanders)
    assert len(fake.called("Sandbox.list")) == 1 and fake.called("Sandbox.list.aio") == []


# ---------------------------------------------------------------------------------------------------------------
# What the sandbox is created with
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task_image, run_image, kind, ref",
    [
        ("python:3.12-slim", None, "registry", "python:3.12-slim"),
        ("im-AbC123", "ubuntu:24.04", "id", "im-AbC123"),
        (None, "ubuntu:24.04", "registry", "ubuntu:24.04"),
        (None, None, "registry", DEFAULT_IMAGE),
    ],
)
def test_image_per_task(fake, task_image, run_image, kind, ref):
    run(session(make_env(fake, image=task_image, image_setting=run_image)))
    image = fake.called("Sandbox.create.aio")[0]["image"]
    assert (image.kind, image.ref) == (kind, ref)


def test_sandbox_options(fake, monkeypatch):
    monkeypatch.setenv("MY_SETTING", "visible")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-leak")
    env = make_env(
        fake,
        task_id="task-7",
        network="none",
        memory="2g",
        cpus=1.5,
        sandbox_timeout=900,
        modal_app="my-app",
        env_vars=("MY_SETTING", "NOT_SET_ANYWHERE"),
        run_id="run-1",
    )
    [result] = run(session(env, "echo $MY_SETTING ${OPENAI_API_KEY:-no-key} $PAGER"))
    assert result.output == "visible no-key cat\n"
    assert [call for call in fake.calls if call[0] == "App.lookup.aio"] == [
        ("App.lookup.aio", ("my-app",), {"create_if_missing": True})
    ]
    options = fake.called("Sandbox.create.aio")[0]
    assert options["app"].name == "my-app"
    assert options["block_network"] is True
    assert (options["memory"], options["cpu"], options["timeout"]) == (2048, 1.5, 900)
    assert options["env"] == {**AGENT_ENV_DEFAULTS, "MY_SETTING": "visible"}
    assert options["tags"] == {
        "run_id": "run-1",
        "task_id": "task-7",
        "mini-swe-runner": "1",
        "mini-swe-runner.host": socket.gethostname(),
        "mini-swe-runner.pid": str(os.getpid()),
        "mini-swe-runner.pid-start": environments._process_start_ticks(os.getpid()),
    }
    assert options["workdir"] is None


def test_network_open_by_default(fake):
    run(session(make_env(fake)))
    assert fake.called("Sandbox.create.aio")[0]["block_network"] is False


@pytest.mark.parametrize(
    "value, mib",
    [(None, None), ("", None), ("2g", 2048), ("512m", 512), ("4096", 4096), ("1.5G", 1536), ("2GiB", 2048)],
)
def test_memory_in_mib(value, mib):
    assert memory_mib(value) == mib


@pytest.mark.parametrize("value", ["abc", "2x", "512b", "0", "-1g"])
def test_bad_memory_is_an_env_error(value):
    with pytest.raises(EnvError, match="memory"):
        memory_mib(value)


def test_factory_makes_a_modal_environment():
    env = create_environment(EnvSettings(env_type="modal", image="ubuntu:24.04"), image="im-x", cwd="/w", task_id="7")
    assert isinstance(env, ModalEnvironment)
    assert (env.image, env.requested_cwd, env.task_id) == ("im-x", "/w", "7")


# ---------------------------------------------------------------------------------------------------------------
# Concurrency: one event loop, many sandboxes, never blocked, never the blocking API
# ---------------------------------------------------------------------------------------------------------------


def test_64_environments_share_one_event_loop(fake):
    async def task(number):
        env = make_env(fake, task_id=str(number))
        await env.start()
        first = await env.execute(f"mkdir t{number} && cd t{number} && sleep 0.3 && echo {number}", timeout=30)
        second = await env.execute("basename $PWD", timeout=30)
        await env.close()
        return first, second

    async def heartbeat(stop):
        longest, last = 0.0, time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            longest, last = max(longest, now - last), now
        return longest

    async def scenario():
        stop = asyncio.Event()
        beat = asyncio.ensure_future(heartbeat(stop))
        results = await asyncio.gather(*(task(n) for n in range(64)))
        stop.set()
        return results, await beat

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an AsyncUsageWarning (blocking Modal API in the loop) fails the test
        results, longest_stall = run(scenario())
    for number, (first, second) in enumerate(results):
        assert first.output == f"{number}\n" and second.output == f"t{number}\n"
    assert len(fake.sandboxes) == 64 and all(sandbox.terminated for sandbox in fake.sandboxes)
    blocking = {name for name, _, _ in fake.calls if not name.endswith(".aio")}
    assert blocking <= {"Image.from_registry", "Image.from_id", "StreamReader.__aiter__"}  # no I/O in these
    assert longest_stall < 0.5


# ---------------------------------------------------------------------------------------------------------------
# Modal's creation rate limit: creations are paced to it, and a refusal is waited out, not a failure
# ---------------------------------------------------------------------------------------------------------------


def most_in_one_second(times):
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))


async def start_many(environments_):
    await asyncio.gather(*(env.start() for env in environments_))
    await asyncio.gather(*(env.close() for env in environments_))


def test_pacer_spaces_slots_to_its_rate_after_a_burst():
    pacer = CreationPacer(rate=20, burst=3)

    async def scenario():
        started = time.monotonic()

        async def take():
            await pacer.slot()
            return time.monotonic() - started

        return await asyncio.gather(*(take() for _ in range(30)))

    times = run(scenario())
    assert sum(1 for t in times if t < 0.03) == 3  # the burst goes at once, the rest one per 1/20 s
    assert times == sorted(times)  # first come, first served
    assert most_in_one_second(times) <= 3 + 20
    assert (30 - 3) / 20 - 0.05 <= max(times) < (30 - 3) / 20 + 1.5  # generous: the machine is shared


def test_pacer_hold_moves_the_whole_queue_later_once():
    pacer = CreationPacer(rate=20, burst=1)

    async def scenario():
        started = time.monotonic()
        times = []

        async def take():
            await pacer.slot()
            times.append(time.monotonic() - started)

        waiting = [asyncio.ensure_future(take()) for _ in range(5)]
        await asyncio.sleep(0.01)
        for _ in range(50):  # fifty refusals at once pause the queue once
            pacer.hold(0.5)
        await asyncio.gather(*waiting)
        return times

    times = run(scenario())
    assert times[0] < 0.05  # it went before the hold
    assert 0.5 <= times[1] < 0.5 + 1.0  # the rest waited the hold out, once, and kept their spacing
    assert all(later - earlier >= 0.04 for earlier, later in zip(times[1:], times[2:], strict=False))


def test_creations_over_modal_limit_are_paced_not_refused(fake):
    fake.creation_limit = CreationLimit(rate=10, burst=3)
    pacer = CreationPacer(rate=8, burst=2)
    environments_ = [make_env(fake, task_id=str(n), pacer=pacer) for n in range(24)]
    run(start_many(environments_))
    assert fake.refused == 0
    assert len(fake.created_at) == 24 and all(sandbox.terminated for sandbox in fake.sandboxes)
    assert most_in_one_second(fake.created_at) <= 10


def test_without_pacing_the_fake_refuses_and_each_refusal_is_retried(fake):
    fake.creation_limit = CreationLimit(rate=20, burst=5)
    pacer = CreationPacer(rate=1000, burst=1000)  # no pacing to speak of: the limit bites
    environments_ = [make_env(fake, task_id=str(n), pacer=pacer) for n in range(30)]
    run(start_many(environments_))
    assert fake.refused > 0  # the limit was hit ...
    assert len(fake.created_at) == 30  # ... and every task still got its sandbox
    assert all(sandbox.terminated for sandbox in fake.sandboxes)
    assert not any("list" in name for name, _, _ in fake.calls)  # a refused creation made nothing to sweep


def test_refusals_past_startup_timeout_are_one_env_error(fake):
    fake.creation_limit = CreationLimit(rate=1e-9, burst=0)  # Modal refuses every creation
    env = make_env(fake, startup_timeout=1.5, pacer=CreationPacer(rate=1000, burst=1000))

    async def scenario():
        started = time.monotonic()
        with pytest.raises(EnvError) as info:
            await env.start()
        took = time.monotonic() - started
        await env.close()
        return str(info.value), took

    message, took = run(scenario())
    assert message.startswith("no Modal sandbox for python:3.11-slim within 1.5 s: Modal kept refusing creations")
    assert "rate limit" in message and "\n" not in message
    assert 1.5 <= took < 4
    assert fake.refused >= 2  # tried again within the bound
    assert fake.sandboxes == [] and not any("list" in name for name, _, _ in fake.calls)


def test_waiting_for_a_slot_is_not_startup_time_and_holds_no_sandbox(fake):
    pacer = CreationPacer(rate=2, burst=1)
    environments_ = [make_env(fake, task_id=str(n), startup_timeout=0.5, pacer=pacer) for n in range(3)]

    async def scenario():
        starting = [asyncio.ensure_future(env.start()) for env in environments_]
        await asyncio.sleep(0.2)
        made_while_queued = len(fake.sandboxes)
        await asyncio.gather(*starting)  # the last waits 1 s for its slot, twice its startup_timeout: no error
        for env in environments_:
            await env.close()
        return made_while_queued

    assert run(scenario()) == 1
    assert len(fake.created_at) == 3


def test_cancelled_while_waiting_for_a_slot_leaves_nothing(fake):
    pacer = CreationPacer(rate=0.5, burst=1)

    async def scenario():
        first = make_env(fake, task_id="first", pacer=pacer)
        await first.start()
        queued = make_env(fake, task_id="queued", pacer=pacer)
        task = asyncio.ensure_future(queued.start())
        await asyncio.sleep(0.1)
        task.cancel()  # Ctrl-C or --task_timeout while it waits its turn
        with pytest.raises(asyncio.CancelledError):
            await task
        await queued.close()
        await first.close()

    run(scenario())
    assert len(fake.sandboxes) == 1 and len(fake.called("Sandbox.create.aio")) == 1
    assert not any("list" in name for name, _, _ in fake.calls)


def test_admission_lets_a_task_start_only_when_its_slot_is_near():
    pacer = CreationPacer(rate=20, burst=1)

    async def scenario():
        started = time.monotonic()

        async def admitted():
            await pacer.admit(lead=0.25)
            return time.monotonic() - started

        return await asyncio.gather(*(admitted() for _ in range(30)))

    times = run(scenario())
    assert times == sorted(times)  # first come, first served
    # The slot of the k-th is k/20 s away: it starts 0.25 s before that, so about 6 at once, not all 30.
    assert 4 <= sum(1 for t in times if t < 0.05) <= 8
    assert (29 / 20 - 0.25) - 0.05 <= max(times) < (29 / 20 - 0.25) + 1.5  # generous: the machine is shared


def test_a_batch_starts_tasks_as_creation_slots_near_and_a_stop_ends_the_waits(tmp_path, monkeypatch):
    """Thousands of workers wait for their turn before they start a task (bench/bench_modal_scale.py: each started
    task keeps its state alive for every garbage collection); a Ctrl-C ends those waits at once, not at their turn."""
    import signal

    from model_server import ScriptedModelServer, reply

    fake = FakeModal(tmp_path / "sandboxes")
    fake.keep_history = True
    monkeypatch.setitem(sys.modules, "modal", fake)  # the SDK boundary: what the backend's `import modal` gets
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")
    tasks = 300  # at 25 creations/s the last one's slot is 12 s away

    async def scenario(base_url):
        config = mini_swe_runner.RunConfig(
            model="m",
            base_url=base_url,
            api_key="k",
            output_file=str(tmp_path / "out.jsonl"),
            workers=tasks,
            quiet=True,
            env=EnvSettings(env_type="modal"),
        )
        prompts = [mini_swe_runner.Prompt(index=i, text=f"task {i}", task_id=f"t{i}") for i in range(tasks)]
        batch = asyncio.ensure_future(mini_swe_runner.run_batch(config, prompts))
        while not fake.called("Sandbox.create.aio"):  # past the preflight and the endpoint check: tasks run
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        started_tasks = len(fake.called("App.lookup.aio"))  # every started task looks the app up first
        stopped_at = time.monotonic()
        os.kill(os.getpid(), signal.SIGINT)
        outcome = await batch
        return started_tasks, time.monotonic() - stopped_at, outcome

    with ScriptedModelServer(lambda request: reply("done"), latency=0.5) as server:
        started_tasks, stop_took, outcome = run(scenario(server.base_url))
    # 1 s in: the slots of about 80 tasks are within 2 s; without the turn all 300 had started.
    assert 0 < started_tasks <= 150
    assert outcome.exit_code == mini_swe_runner.EXIT_SIGNAL[signal.SIGINT]
    assert stop_took < 8  # the waiting workers were cancelled, not left to sleep until their turn (12 s)
    assert all(sandbox.terminated for sandbox in fake.sandboxes)


def test_fake_rate_limit_error_is_what_the_sdk_raises_for_resource_exhausted():
    import grpclib
    from modal import _grpc_client

    error = rate_limit_error()
    assert type(error) is _grpc_client._STATUS_TO_EXCEPTION[grpclib.Status.RESOURCE_EXHAUSTED]
    assert isinstance(error, modal.exception.ResourceExhaustedError) and isinstance(error, modal.exception.Error)
    assert "rate limit" in str(error)


def test_fake_latencies_and_scripted_execs(fake):
    latency = LongTail(median=0.05, p99=0.5, seed=7)
    draws = sorted(latency() for _ in range(2000))
    assert 0.04 < draws[1000] < 0.06 and 0.3 < draws[1980] < 0.8
    fake.exec_latency = LongTail(median=0.05, p99=0.06)
    fake.exec_script = lambda argv: (b"scripted\n", 3)
    fake.keep_history = False

    async def scenario():
        app = await fake.App.lookup.aio("a", create_if_missing=True)
        sandbox = await fake.Sandbox.create.aio(app=app, image=fake.Image.from_registry("x"))
        started = time.monotonic()
        process = await sandbox.exec.aio("bash", "-c", "echo real", text=False)
        took = time.monotonic() - started
        output = b"".join([chunk async for chunk in process.stdout])
        code = await process.wait.aio()
        await sandbox.terminate.aio()
        with pytest.raises(TypeError):  # still checked against the installed SDK
            await sandbox.exec.aio("true", not_a_modal_option=1)
        return output, code, took

    output, code, took = run(scenario())
    assert (output, code) == (b"scripted\n", 3) and took >= 0.04
    assert fake.calls == [] and fake.sandboxes == []  # no history kept; terminated sandboxes forgotten


# ---------------------------------------------------------------------------------------------------------------
# The fake behaves like the real SDK where it matters
# ---------------------------------------------------------------------------------------------------------------


def test_fake_behaves_like_modal(fake):
    async def scenario():
        app = await fake.App.lookup.aio("a", create_if_missing=True)
        sandbox = await fake.Sandbox.create.aio(app=app, image=fake.Image.from_registry("x"))
        process = await sandbox.exec.aio("bash", "-c", r"printf 'ok\377'", text=False)
        chunks = [chunk async for chunk in process.stdout]
        assert b"".join(chunks) == b"ok\xff" and await process.wait.aio() == 0
        process = await sandbox.exec.aio("bash", "-c", r"printf 'ok\377'")
        with pytest.raises(UnicodeDecodeError):
            [chunk async for chunk in process.stdout]
        started = time.monotonic()
        process = await sandbox.exec.aio("bash", "-c", "echo before; sleep 30", timeout=1, text=False)
        chunks = [chunk async for chunk in process.stdout]  # the stream just ends at the deadline
        assert b"".join(chunks) == b"before\n" and await process.wait.aio() == -1
        assert time.monotonic() - started < 5
        with pytest.warns(modal.exception.AsyncUsageWarning):
            sandbox.terminate()
        with pytest.raises(modal.exception.ConflictError):
            await sandbox.exec.aio("true")
        with pytest.raises(TypeError):  # a keyword the real SDK does not have
            await fake.Sandbox.create.aio(app=app, not_a_modal_option=1)

    run(scenario())


def test_fake_lists_running_sandboxes_by_app_and_tags(fake):
    async def scenario():
        app = await fake.App.lookup.aio("a", create_if_missing=True)
        other_app = await fake.App.lookup.aio("b", create_if_missing=True)
        image = fake.Image.from_registry("x")
        mine = await fake.Sandbox.create.aio(app=app, image=image, tags={"run": "1", "task": "a"})
        sibling = await fake.Sandbox.create.aio(app=app, image=image, tags={"run": "1", "task": "b"})
        await fake.Sandbox.create.aio(app=other_app, image=image, tags={"run": "1", "task": "a"})
        found = [sandbox async for sandbox in fake.Sandbox.list.aio(app_id=app.app_id, tags={"run": "1"})]
        assert found == [mine, sibling]  # at least these tags, this app only
        found = [sandbox async for sandbox in fake.Sandbox.list.aio(app_id=app.app_id, tags={"task": "a"})]
        assert found == [mine]
        await mine.terminate.aio()
        assert [sandbox async for sandbox in fake.Sandbox.list.aio(app_id=app.app_id, tags={"task": "a"})] == []
        with pytest.raises(TypeError):  # keyword-only in the real SDK
            fake.Sandbox.list.aio(app.app_id)
        # A caller that stops waiting does not stop Modal making the sandbox.
        fake.create_delay = 0.2
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(fake.Sandbox.create.aio(app=app, image=image, tags={"task": "late"}), 0.05)
        await asyncio.sleep(0.3)
        return [sandbox async for sandbox in fake.Sandbox.list.aio(app_id=app.app_id, tags={"task": "late"})]

    [late] = run(scenario())
    assert [sandbox.tags for sandbox in fake.Sandbox.list(app_id=late.app.app_id, tags={"task": "late"})] == [
        {"task": "late"}
    ]


# ---------------------------------------------------------------------------------------------------------------
# Contract: what our code calls exists in the installed modal package, with those keywords
# ---------------------------------------------------------------------------------------------------------------


def test_every_modal_call_matches_the_installed_sdk(fake, tmp_path):
    async def scenario():
        for image in ("python:3.12-slim", "im-123"):
            env = make_env(fake, image=image, cwd=str(tmp_path / image), network="none", memory="1g", cpus=2)
            await env.execute("echo hi >&2", timeout=10)
            await env.execute("sleep 5", timeout=0.5)
            await env.close()
        env = make_env(fake)
        await env.start()
        env.abandon()
        # Creations that never hand us their sandbox: close() and abandon() find it by its tags.
        fake.create_delay, fake.reply_delay = 0.05, math.inf
        for task_id in ("lost-then-closed", "lost-then-abandoned"):
            env = make_env(fake, task_id=task_id, startup_timeout=0.2)
            with pytest.raises(EnvError):
                await env.start()
            await env.close() if task_id.endswith("closed") else env.abandon()

    run(scenario())
    for name, args, kwargs in fake.calls:  # the fake checked these as they were made; check again, explicitly
        assert real_function(name) is not None
        bind_real(name, args, kwargs)
    used = {name for name, _, _ in fake.calls}
    assert used == {
        "App.lookup.aio",
        "Image.from_registry",
        "Image.from_id",
        "Sandbox.create.aio",
        "Sandbox.exec.aio",
        "ContainerProcess.wait.aio",
        "StreamReader.__aiter__",
        "Sandbox.terminate.aio",
        "Sandbox.terminate",
        "Sandbox.list.aio",
        "Sandbox.list",
    }
    # Attributes read off the module rather than called.
    assert issubclass(modal.exception.AuthError, modal.exception.Error)
    assert modal.App and modal.Image and modal.Sandbox


# ---------------------------------------------------------------------------------------------------------------
# Preflight: credentials and options, without network
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_modal_credentials(tmp_path, monkeypatch):
    for name in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_PROFILE", "MODAL_OAUTH_REFRESH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = tmp_path / "modal.toml"
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(config))
    return config


def test_missing_credentials_fail_preflight_in_one_line(no_modal_credentials):
    settings = EnvSettings(env_type="modal")
    with pytest.raises(EnvError) as info:
        run(preflight(settings, set()))
    assert str(info.value) == (
        "Modal credentials not found: run `modal token new` (or `modal token set`), "
        "or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"
    )


def test_credentials_from_the_environment(no_modal_credentials, monkeypatch):
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-1")
    assert not modal_credentials_found()
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-1")
    assert modal_credentials_found()
    run(modal_preflight(EnvSettings(env_type="modal"), {"python:3.12"}))


def test_credentials_from_the_config_file_and_its_profiles(no_modal_credentials, monkeypatch):
    config = no_modal_credentials
    config.write_text('[default]\ntoken_id = "ak-1"\ntoken_secret = "as-1"\n')
    assert modal_credentials_found()
    config.write_text('[work]\ntoken_id = "ak-1"\ntoken_secret = "as-1"\nactive = true\n[default]\ntoken_id = "x"\n')
    assert modal_credentials_found()
    monkeypatch.setenv("MODAL_PROFILE", "default")  # incomplete profile
    assert not modal_credentials_found()
    monkeypatch.setenv("MODAL_PROFILE", "work")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "")  # set but empty wins over the profile, as in modal.config
    assert not modal_credentials_found()


def test_home_modal_toml_is_found(no_modal_credentials, monkeypatch, tmp_path):
    monkeypatch.delenv("MODAL_CONFIG_PATH")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".modal.toml").write_text('[default]\ntoken_id = "ak-1"\ntoken_secret = "as-1"\n')
    assert modal_credentials_found()


def test_broken_config_file_is_a_one_line_error(no_modal_credentials):
    no_modal_credentials.write_text("[default\ntoken_id = \n")
    with pytest.raises(EnvError, match="cannot read the Modal config") as info:
        run(modal_preflight(EnvSettings(env_type="modal"), set()))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "settings, message",
    [(dict(memory="lots"), "--memory"), (dict(cwd="repo"), "absolute"), (dict(image="python 3.11"), "invalid image")],
)
def test_bad_settings_are_refused_when_built(settings, message):
    with pytest.raises(SettingsError, match=message) as info:
        EnvSettings(env_type="modal", **settings)
    assert "\n" not in str(info.value)


def test_preflight_checks_the_prompts_images(no_modal_credentials, monkeypatch):
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-1")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-1")
    with pytest.raises(EnvError, match="invalid image"):
        run(modal_preflight(EnvSettings(env_type="modal"), {"python 3.11"}))


# ---------------------------------------------------------------------------------------------------------------
# Cleanup of dead runs' sandboxes
# ---------------------------------------------------------------------------------------------------------------


def test_cleanup_terminates_only_sandboxes_of_dead_runners_on_this_host(fake):
    dead = subprocess.Popen(["true"])
    dead.wait()

    async def make(tags):
        app = await fake.App.lookup.aio("mini-swe-runner", create_if_missing=True)
        return await fake.Sandbox.create.aio(app=app, image=fake.Image.from_registry("x"), tags=tags)

    async def scenario():
        live = await make(environments._runner_tags())
        orphan_tags = {**environments._runner_tags(), "mini-swe-runner.pid": str(dead.pid)}
        orphan = await make(orphan_tags)
        elsewhere = await make({**orphan_tags, "mini-swe-runner.host": "another-machine"})
        untagged = await make({"run_id": "r"})
        return live, orphan, elsewhere, untagged

    live, orphan, elsewhere, untagged = run(scenario())
    line = ModalEnvironment.cleanup_leftovers(sdk=fake)
    assert line == "modal: terminated 1 sandbox(es) left by dead runs"
    assert orphan.terminated
    assert not live.terminated and not elsewhere.terminated and not untagged.terminated
    assert fake.called("Sandbox.list.aio") == [
        {
            "app_id": fake.apps["mini-swe-runner"].app_id,
            "tags": {"mini-swe-runner": "1", "mini-swe-runner.host": socket.gethostname()},
        }
    ]


def test_cleanup_without_credentials_asks_nothing(no_modal_credentials):
    assert ModalEnvironment.cleanup_leftovers() is None


# ---------------------------------------------------------------------------------------------------------------
# Real Modal
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not modal_credentials_found(), reason="no Modal credentials (MODAL_TOKEN_ID/SECRET or ~/.modal.toml)"
)
def test_real_modal_sandbox():
    settings = EnvSettings(env_type="modal", startup_timeout=300, sandbox_timeout=600, run_id="pytest")
    env = environments.create_environment(settings, image="python:3.11-slim", task_id="integration")

    async def scenario():
        await modal_preflight(settings, {"python:3.11-slim"})
        await env.start()
        try:
            merged = await env.execute("echo out; echo err >&2; exit 3", timeout=60)
            await env.execute("mkdir -p /tmp/work && cd /tmp/work", timeout=60)
            where = await env.execute("pwd", timeout=60)
            bad_utf8 = await env.execute(r"printf 'a\377b'", timeout=60)
            timed_out = await env.execute("echo partial; sleep 60", timeout=3)
            alive = await env.execute("echo alive", timeout=60)
        finally:
            await env.close()
        return merged, where, bad_utf8, timed_out, alive

    with warnings.catch_warnings():
        warnings.simplefilter("error", modal.exception.AsyncUsageWarning)
        merged, where, bad_utf8, timed_out, alive = run(scenario())
    assert (merged.output, merged.exit_code) == ("out\nerr\n", 3)
    assert where.output == "/tmp/work\n"
    assert bad_utf8.output == "a\ufffdb"
    assert timed_out.exit_code == 124 and timed_out.output.startswith("partial\n")
    assert alive.ok and alive.output == "alive\n"
