"""Thousands of tasks in flight through the Modal backend, against the fake SDK with Modal's latencies and rate limit.

The runner (``mini_swe_runner.run_batch``, ``--env modal``, every task started at once) runs in a child process so
its peak RSS is its own. The fake (tests/fake_modal.py) is what ``import modal`` finds in that process, so the
runner's own code path is unchanged; it adds a long-tailed creation latency (median 1 s, p99 20 s), a long-tailed
exec round trip (median 80 ms, p99 300 ms) and Modal's creation limit as a token bucket (30/s, burst 30; over it
``Sandbox.create`` raises ``modal.exception.ResourceExhaustedError``). The model is tests/model_server.py's scripted
server in this (parent) process, answering each call after 2-5 s.

Execs are answered from a script by default (no process per command): a thousand sandboxes of real bash on a
2-core machine measure the machine, not the runner. ``--real_bash`` runs them for real.

Printed: creations and the most in any 1 s window (the limit: 30/s sustained), refusals the fake sent and
env_errors tasks recorded, the event loop's longest stall once the tasks run (a heartbeat sleeping 10 ms in the
runner's loop; its lateness, the loop thread's CPU in that beat, the process's other threads' CPU, and the time
the loop's thread waited on the kernel's run queue for a CPU: the machine's share) with its p99, the longest single
callback the loop ran (a beat's lateness also holds every callback queued before it: on a loaded machine, the backlog
of the time the process waited for a CPU), the garbage collections once the tasks run (full and young), the resident
memory every 10 s and its growth while the tasks in flight hold steady (flat: no garbage builds up), peak RSS of the
runner process; then a table of each figure beside its target for every --tasks given. The progress display runs (plain
lines, the child's stderr being a pipe), as in a real run.

    python bench/bench_modal_scale.py                    # 1000 tasks, workers 1000, 5 commands each
    python bench/bench_modal_scale.py --tasks 200 --commands 3
    python bench/bench_modal_scale.py --tasks 1000 10000     # the figures beside their targets at both scales
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import gc
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

HEARTBEAT = 0.010


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most events in any half-open window [t, t + window)."""
    times = sorted(times)
    return max((bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


def resident_growth(samples: list[tuple[float, float]], live_until: float) -> float:
    """MB the resident memory grew from a quarter of the way to the last creation up to it: the span in which the
    tasks in flight stay about the same in number, so growth there is memory kept, not more tasks."""
    steady = [mb for at, mb in samples if live_until / 4 <= at <= live_until]
    return steady[-1] - steady[0] if len(steady) > 1 else 0.0


def callback_name(handle) -> str:
    """A task's step by its coroutine (and where it waits now), any other callback by its function's name."""
    callback = handle._callback
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coroutine, names = owner.get_coro(), []
        while coroutine is not None and len(names) < 4:
            names.append(getattr(coroutine, "__qualname__", type(coroutine).__name__))
            coroutine = getattr(coroutine, "cr_await", None)
        return " > ".join(names)
    return getattr(callback, "__qualname__", repr(callback))[:80]


def beat_row(stall: tuple[float, ...]) -> tuple[float, ...]:
    """A late beat as printed: seconds since the start, then its milliseconds (late, loop CPU, others, queued)."""
    at, *seconds = stall
    return (round(at, 2), *(round(value * 1000, 1) for value in seconds))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)] if ordered else 0.0


def child(args: argparse.Namespace) -> None:
    if args.runner_root:  # the runner of another checkout (the figures before a change), this checkout's fake
        sys.path.insert(0, str(Path(args.runner_root).resolve()))
    import fake_modal

    fake = fake_modal.FakeModal(tempfile.mkdtemp(prefix="bench-modal-"))
    fake.create_latency = fake_modal.LongTail(median=1.0, p99=20.0, seed=1)
    fake.exec_latency = fake_modal.LongTail(median=0.08, p99=0.3, seed=2)
    fake.creation_limit = fake_modal.CreationLimit(rate=30.0, burst=30)
    fake.keep_history = False  # every call is still checked against the installed SDK's signatures
    if not args.real_bash:
        fake.exec_script = lambda argv: (b"ok\n", 0)
    sys.modules["modal"] = fake  # the SDK boundary: what the backend's `import modal` gets
    os.environ.update(MODAL_TOKEN_ID="ak-bench", MODAL_TOKEN_SECRET="as-bench")  # preflight looks for a token

    import mini_swe_runner
    from environments import EnvSettings

    lateness: list[float] = []  # of every beat once the tasks run
    # (since start, lateness, loop CPU, other threads' CPU, time waiting for a CPU) of beats later than 50 ms
    stalls: list[tuple[float, float, float, float, float]] = []
    startup_stall = [0.0, 0.0]  # the latest beat before the tasks run (importing the SDK...): wall, loop CPU
    ended = [False]
    running = [False]  # run_batch froze the start-up objects: the tasks run (gc.get_freeze_count walks a list: once)
    gc_pauses: list[tuple[float, float]] = []  # (wall, CPU) of each full collection
    gc_started = [0.0, 0.0]

    # (since start, wall, CPU, objects freed) of the full ones once the tasks run
    gc_during_run: list[tuple[float, float, float, int]] = []
    young_longest = [0.0]  # CPU of the longest young (generation 0 or 1) collection once the tasks run
    # (CPU ms, generation, objects in the generations it walks, objects freed) of young ones over 10 ms
    young_long: list[tuple[float, int, int, int]] = []
    young_size = [0]

    def gc_timer(phase: str, info: dict) -> None:
        if phase == "start":
            if running[0] and info["generation"] < 2:  # how many objects it walks: the counts of its generations
                young_size[0] = sum(len(gc.get_objects(g)) for g in range(info["generation"] + 1))
            gc_started[:] = time.perf_counter(), time.thread_time()
        elif info["generation"] < 2:
            if running[0]:
                cpu = time.thread_time() - gc_started[1]
                young_longest[0] = max(young_longest[0], cpu)
                if cpu > 0.010:
                    young_long.append((round(cpu * 1000, 1), info["generation"], young_size[0], info["collected"]))
        else:
            wall, cpu = time.perf_counter() - gc_started[0], time.thread_time() - gc_started[1]
            gc_pauses.append((wall, cpu))
            if running[0]:  # after run_batch froze the start-up objects: the tasks' own collections
                gc_during_run.append((time.monotonic() - started, wall, cpu, info["collected"]))

    gc.callbacks.append(gc_timer)

    # Each callback the loop runs, timed: a beat's lateness is every callback that ran before it, so on a loaded
    # machine the work of a second the process waited for the CPU lands in one beat; the longest single callback is
    # what one piece of work holds the loop for (a collection included, in the callback that set it off).
    long_callbacks: list[tuple[float, float, float, str]] = []  # (CPU, wall, since start, what) over 20 ms of CPU
    run_handle = asyncio.events.Handle._run

    def timed_run(handle: asyncio.events.Handle) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        run_handle(handle)
        cpu = time.thread_time() - cpu
        if cpu > 0.02 and running[0] and not (what := callback_name(handle)).startswith("child.<locals>.heartbeat"):
            long_callbacks.append((cpu, time.perf_counter() - wall, time.monotonic() - started, what))

    asyncio.events.Handle._run = timed_run
    resident: list[tuple[float, float]] = []  # (since start, MB) every 10 s: flat while tasks run means no leak

    def resident_mb() -> float:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    live_peak = 0
    started = time.monotonic()

    def waited_for_cpu() -> float:
        """Seconds this thread has waited on a run queue, runnable but not running (the kernel's schedstat)."""
        try:
            with open("/proc/thread-self/schedstat", "rb") as schedstat:
                return int(schedstat.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return 0.0

    async def heartbeat(stop: asyncio.Event) -> None:
        nonlocal live_peak
        beats = 0
        while not stop.is_set():
            before, cpu_before, process_before = time.monotonic(), time.thread_time(), time.process_time()
            queued_before = waited_for_cpu()
            await asyncio.sleep(HEARTBEAT)
            last_beat[0] = time.monotonic()
            late, cpu = last_beat[0] - before - HEARTBEAT, time.thread_time() - cpu_before
            process_cpu = time.process_time() - process_before
            queued = waited_for_cpu() - queued_before
            if not running[0] and not ended[0]:
                running[0] = gc.get_freeze_count() > 0
            if not running[0]:
                if not ended[0]:
                    startup_stall[:] = max(startup_stall[0], late), max(startup_stall[1], cpu)
                continue
            lateness.append(late)
            if late > 0.05:  # with the loop thread's own CPU time in it: low means the machine, not us, held it
                stalls.append((before - started, late, cpu, process_cpu - cpu, queued))
            beats += 1
            if args.profile and beats == 4000:
                objs = gc.get_objects()
                print(
                    "objects",
                    len(objs),
                    collections.Counter(type(o).__name__ for o in objs).most_common(25),
                    file=sys.stderr,
                )
                del objs
            if last_beat[0] - started >= 10 * len(resident):
                resident.append((last_beat[0] - started, resident_mb()))
            if beats % 25 == 0:  # every quarter second: how many sandboxes are up at once
                live_peak = max(live_peak, sum(1 for sandbox in fake.sandboxes if not sandbox.terminated))

    last_beat = [time.monotonic()]
    stall_stacks: collections.Counter = collections.Counter()

    def watchdog(loop_thread: int) -> None:
        """--profile: while the loop is 40 ms late, sample its thread's stack every 5 ms (what holds it)."""
        while True:
            time.sleep(0.005)
            if time.monotonic() - last_beat[0] > 0.04:
                frame = sys._current_frames().get(loop_thread)
                if frame is not None:
                    stack = traceback.extract_stack(frame)[-12:]
                    stall_stacks[" <- ".join(f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in stack[::-1])] += 1

    if args.profile:
        threading.Thread(target=watchdog, args=(threading.get_ident(),), daemon=True).start()

    async def run(config, prompts):
        stop = asyncio.Event()
        beat = asyncio.ensure_future(heartbeat(stop))
        try:
            return await mini_swe_runner.run_batch(config, prompts)
        finally:
            running[0], ended[0] = False, True  # what comes after (the restored collector's work) is not the run's
            stop.set()
            await beat

    with tempfile.TemporaryDirectory() as tmp:
        output = f"{tmp}/out.jsonl"
        config = mini_swe_runner.RunConfig(
            model="bench",
            base_url=args.base_url,
            api_key="bench-key",
            output_file=output,
            workers=args.tasks,
            quiet=False,  # plain progress lines (stderr is a pipe): their cost is in the loop, as in a real run
            progress_interval=5.0,
            max_iterations=args.commands + 2,
            env=EnvSettings(env_type="modal", startup_timeout=120.0),
        )
        prompts = [mini_swe_runner.Prompt(index=i, text=f"task {i}", task_id=f"t{i}") for i in range(args.tasks)]
        started = time.monotonic()
        asyncio.run(run(config, prompts))
        wall = time.monotonic() - started
        peak_rss_mb = (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )  # the run's, before its records are read
        with open(output, encoding="utf-8") as file:
            records = [json.loads(line) for line in file]
    if args.profile:
        for stack, count in stall_stacks.most_common(15):
            print(f"{count:5d} {stack}", file=sys.stderr)
    env_errors = [r["error"] for r in records if r["exit_reason"] == "env_error"]
    distinct = len({r["task_id"] for r in records})
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "wall": wall,
                "records": len(records),
                "distinct_tasks": distinct,
                "completed": sum(1 for r in records if r["completed"]),
                "exit_reasons": sorted({r["exit_reason"] for r in records}),
                "creations": len(fake.created_at),
                "max_creations_1s": max_in_window(fake.created_at),
                "creation_span": max(fake.created_at) - min(fake.created_at) if fake.created_at else 0.0,
                "refused": fake.refused,
                "env_errors": len(env_errors),
                "env_errors_rate_limit": sum(1 for e in env_errors if "rate limit" in e),
                "env_error_sample": env_errors[:3],
                "live_peak": live_peak,
                "stall_max_ms": max(lateness) * 1000,
                "stall_p99_ms": percentile(lateness, 0.99) * 1000,
                "beats": len(lateness),
                "late_over_100ms": sum(1 for _, late, *_ in stalls if late > 0.1),
                "busy_over_100ms": sum(1 for _, _, cpu, *_ in stalls if cpu > 0.1),
                "ours_over_100ms": sum(1 for _, late, _, _, queued in stalls if late - queued > 0.1),
                "startup_stall_ms": [round(startup_stall[0] * 1000, 1), round(startup_stall[1] * 1000, 1)],
                "stalls_over_50ms": [beat_row(stall) for stall in sorted(stalls, key=lambda stall: -stall[2])[:12]],
                "latest_beats": [beat_row(stall) for stall in sorted(stalls, key=lambda stall: -stall[1])[:8]],
                "young_long": sorted(young_long, reverse=True)[:10],
                "young_over_10ms": len(young_long),
                "gc2_max_ms": max((wall for wall, _ in gc_pauses), default=0.0) * 1000,
                "gc2_max_cpu_ms": max((cpu for _, cpu in gc_pauses), default=0.0) * 1000,
                "gc2_count": len(gc_pauses),
                "gc2_run_count": len(gc_during_run),
                "gc2_run_max_cpu_ms": max((cpu for _, _, cpu, _ in gc_during_run), default=0.0) * 1000,
                "young_max_cpu_ms": young_longest[0] * 1000,
                "callback_max_cpu_ms": max((cpu for cpu, *_ in long_callbacks), default=0.0) * 1000,
                "callbacks_over_100ms": sum(1 for cpu, *_ in long_callbacks if cpu > 0.1),
                "callbacks_over_50ms": sum(1 for cpu, *_ in long_callbacks if cpu > 0.05),
                "long_callbacks": [
                    (round(cpu * 1000, 1), round(wall * 1000, 1), round(at, 1), what)
                    for cpu, wall, at, what in sorted(long_callbacks, reverse=True)[:8]
                ],
                "resident_mb": [(round(at), round(mb)) for at, mb in resident],
                "resident_growth_mb": resident_growth(resident, live_until=max(fake.created_at, default=0) - started),
                "gc2_run": [
                    (round(at, 1), round(wall * 1000, 1), round(cpu * 1000, 1), found)
                    for at, wall, cpu, found in gc_during_run
                ][:20],
                "loop_cpu_s": time.thread_time(),
                "load_average": os.getloadavg()[0],
                "busy_max_ms": max((cpu for _, _, cpu, *_ in stalls), default=0.0) * 1000,
                "ours_max_ms": max((late - queued for _, late, _, _, queued in stalls), default=0.0) * 1000,
                "peak_rss_mb": peak_rss_mb,
                "bash_peak_rss_mb": children,
                "gc_collections": [s["collections"] for s in gc.get_stats()],
            }
        )
    )


TARGETS = (
    # (label, key, target text, met?)
    ("records written / distinct tasks", None, "= tasks", lambda m, n: m["records"] == m["distinct_tasks"] == n),
    ("env_errors from the rate limit", "env_errors_rate_limit", "0", lambda m, n: m["env_errors_rate_limit"] == 0),
    ("most creations in any 1 s window", "max_creations_1s", "<= 30", lambda m, n: m["max_creations_1s"] <= 30),
    ("longest event-loop stall, wall ms", "stall_max_ms", "<= 100", lambda m, n: m["stall_max_ms"] <= 100),
    ("  of it the loop's own work, ms", "busy_max_ms", "<= 100", lambda m, n: m["busy_max_ms"] <= 100),
    (
        "  less the time it waited for a CPU, ms",
        "ours_max_ms",
        "<= 100",
        lambda m, n: m["ours_max_ms"] <= 100,
    ),
    (
        "longest single callback, loop CPU ms",
        "callback_max_cpu_ms",
        "<= 100",
        lambda m, n: m["callback_max_cpu_ms"] <= 100,
    ),
    ("  callbacks over 50 ms of CPU", "callbacks_over_50ms", "", None),
    ("full collections while tasks run", "gc2_run_count", "", None),
    ("longest full collection while tasks run, CPU ms", "gc2_run_max_cpu_ms", "<= 100", None),
    ("longest young collection while tasks run, CPU ms", "young_max_cpu_ms", "<= 100", None),
    ("resident memory growth while in flight, MB", "resident_growth_mb", "flat: no leak", None),
    ("peak RSS of the runner, MB", "peak_rss_mb", "<= 1536", lambda m, n: m["peak_rss_mb"] <= 1536),
)


def measure(args: argparse.Namespace, tasks: int) -> dict:
    from model_server import ScriptedModelServer, delayed, per_conversation, reply, tool_call

    rng = random.Random(3)

    def after_latency(step):
        return lambda: delayed(rng.uniform(*args.latency), step)

    commands = [f"echo step {n} && ls" for n in range(args.commands)]
    script = per_conversation(
        [after_latency(reply(None, [tool_call(c)])) for c in commands] + [after_latency(reply("done"))]
    )
    with ScriptedModelServer(script) as server:
        command = [sys.executable, __file__, "--child", "--base_url", server.base_url, "--tasks", str(tasks)]
        command += ["--commands", str(args.commands)] + (["--real_bash"] if args.real_bash else [])
        command += ["--profile"] if args.profile else []
        command += ["--runner_root", args.runner_root] if args.runner_root else []
        result = subprocess.run(command, capture_output=True, text=True)
    sys.stderr.write(result.stderr if args.profile else result.stderr[-2000:])
    if result.returncode != 0:
        sys.exit(f"the runner's process failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def report(args: argparse.Namespace, tasks: int, m: dict) -> None:
    execs = "real bash" if args.real_bash else "answered from a script"
    print(
        f"\n{tasks} tasks in flight (workers {tasks}), {args.commands} commands each, model "
        f"{args.latency[0]:g}-{args.latency[1]:g} s per call; fake Modal: creation limit 30/s burst 30, "
        f"create latency median 1 s p99 20 s, exec latency median 80 ms p99 300 ms, execs {execs}; "
        f"load average {m['load_average']:.1f} at the end"
    )
    print(
        f"wall {m['wall']:.1f} s; records {m['records']} ({m['distinct_tasks']} distinct tasks), completed "
        f"{m['completed']}, exit reasons {m['exit_reasons']}; the loop thread's CPU {m['loop_cpu_s']:.1f} s"
    )
    print(f"sandboxes live at once, peak: {m['live_peak']}")
    print(
        f"creations: {m['creations']} over {m['creation_span']:.1f} s, most in any 1 s window: "
        f"{m['max_creations_1s']} (limit 30/s sustained)"
    )
    print(
        f"rate-limit refusals from the fake: {m['refused']}; env_errors: {m['env_errors']}, "
        f"of them for the rate limit: {m['env_errors_rate_limit']} (target 0)"
    )
    if m["stalls_over_50ms"]:
        print(
            f"  beats over 100 ms late: {m['late_over_100ms']}, with over 100 ms of loop CPU: {m['busy_over_100ms']}; "
            f"late less the time the loop's thread waited for a CPU (the machine's) over 100 ms: "
            f"{m['ours_over_100ms']}; those later than 50 ms with the most loop CPU (s since start, ms late, ms of "
            f"loop CPU, ms of the process's other threads' CPU, ms the loop's thread waited for a CPU): "
            f"{m['stalls_over_50ms']}; the latest: {m['latest_beats']}"
        )
    if m["env_error_sample"]:
        print(f"  e.g. {m['env_error_sample']}")
    print(
        f"start-up, before the tasks run (the SDK imported, the client made): longest beat "
        f"{m['startup_stall_ms'][0]:.0f} ms late, {m['startup_stall_ms'][1]:.0f} ms of loop CPU (no task waits then)"
    )
    print(
        f"event-loop stall once the tasks run (heartbeat {HEARTBEAT * 1000:g} ms, {m['beats']} beats): "
        f"longest {m['stall_max_ms']:.1f} ms, p99 {m['stall_p99_ms']:.1f} ms (target longest <= 100 ms)"
    )
    print(
        f"  of which the loop's own work (its thread's CPU time in the late beat; the rest is the machine's other "
        f"load): longest {m['busy_max_ms']:.1f} ms; full garbage collections: {m['gc2_count']}, longest "
        f"{m['gc2_max_ms']:.1f} ms ({m['gc2_max_cpu_ms']:.1f} ms CPU)"
    )
    print(
        f"  full collections once the tasks run (after the start-up freeze): {m['gc2_run_count']}, "
        f"(s since start, ms wall, ms CPU, objects freed): {m['gc2_run']}"
    )
    print(
        f"  longest young collection (generation 0 or 1) once the tasks run: {m['young_max_cpu_ms']:.1f} ms CPU; "
        f"{m['young_over_10ms']} over 10 ms (ms CPU, generation, objects in the generations it walks, objects "
        f"freed): {m['young_long']}"
    )
    print(
        f"longest single callback of the loop once the tasks run: {m['callback_max_cpu_ms']:.1f} ms CPU "
        f"(target <= 100; over 100 ms: {m['callbacks_over_100ms']}, over 50 ms: {m['callbacks_over_50ms']}); "
        f"the longest (ms CPU, ms wall, s since start, what): {m['long_callbacks']}"
    )
    print(
        f"resident memory (s since start, MB) every 10 s: {m['resident_mb']}; growth from a quarter of the way to the "
        f"last creation up to it: {m['resident_growth_mb']:+.0f} MB (flat: cyclic garbage does not build up)"
    )
    print(f"peak RSS of the runner process: {m['peak_rss_mb']:.0f} MB (target <= 1.5 GB)", end="")
    print(
        f"; bash runs in processes of its own (ru_maxrss of children: {m['bash_peak_rss_mb']:.0f} MB, which counts "
        "the forked copy of the runner before exec)"
        if args.real_bash
        else ""
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--base_url")
    parser.add_argument(
        "--tasks",
        type=int,
        nargs="+",
        default=[1000],
        help="tasks, all in flight at once (workers = tasks); "
        "several numbers run one after another and end in one table",
    )
    parser.add_argument("--commands", type=int, default=5, help="commands per task (then a final answer)")
    parser.add_argument("--latency", type=float, nargs=2, default=[2.0, 5.0], help="model latency range, seconds")
    parser.add_argument("--runner_root", help="run mini_swe_runner.py/environments.py of this checkout instead")
    parser.add_argument("--profile", action="store_true", help="sample the loop's stack while it stalls (stderr)")
    parser.add_argument("--real_bash", action="store_true", help="run every command in a real bash process")
    args = parser.parse_args()
    if args.child:
        args.tasks = args.tasks[0]
        return child(args)
    if args.runner_root:
        print(f"runner code from {args.runner_root}")
    results = {}
    for tasks in args.tasks:
        results[tasks] = measure(args, tasks)
        report(args, tasks, results[tasks])
    print("\nfigure" + "".join(f" | {tasks} in flight" for tasks in results) + " | target")
    for label, key, target, met in TARGETS:
        cells = []
        for tasks, m in results.items():
            value = f"{m['records']} / {m['distinct_tasks']}" if key is None else f"{m[key]:.0f}"
            verdict = "" if met is None else (" met" if met(m, tasks) else " MISSED")
            cells.append(f" | {value}{verdict}")
        print(label + "".join(cells) + f" | {target}")


if __name__ == "__main__":
    main()
