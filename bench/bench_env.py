"""Per-command round trip of the local, bwrap and ssh backends, each against its own baseline, side by side.

    python bench/bench_env.py [--n 200] [--ssh_n 40] [--cpu_n 1000]

- local (commands spawned by the per-task supervisor) vs the plain Popen path it replaced (one Popen per command,
  its own process group, a pipe and a pidfd: what LocalEnvironment did before), same wrapper and collector;
- where the CPU of one local command goes, across every process: the runner (its RUSAGE_SELF), the supervisor
  (its own utime + stime in /proc/<pid>/stat) and its children (cutime + cstime: bash, reaped by the supervisor),
  beside the same bash spawned bare from this process (RUSAGE_CHILDREN); CPU, not wall time, is what limits a
  batch of many workers on few cores; and what a local task costs around its commands (start, close);
- bwrap vs local (target: bwrap <= 1.5x local);
- ssh vs a bare exec of the same command on the same asyncssh connection (target <= 1.2x). Starts the test suite's
  throwaway sshd on 127.0.0.1 (needs openssh-server and asyncssh); skipped with a line when it cannot.

Contenders run interleaved (so drift on the machine hits them alike) after a warm-up; medians are printed.
Prints numbers; never passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import environments  # noqa: E402
from environments import EnvSettings, OutputCollector, create_environment, new_cwd_marker, wrapped_argv  # noqa: E402

COMMAND = "true"


async def popen_round_trip(base: str, environ: dict[str, str], marker: str) -> int:
    """The former local path: Popen per command in its own process group, output on a pipe, exit via a pidfd."""
    loop = asyncio.get_running_loop()
    collector = OutputCollector(50_000, (), marker)
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    try:
        proc = subprocess.Popen(
            wrapped_argv(COMMAND, base, marker),
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=subprocess.STDOUT,
            cwd=base,
            env=environ,
            process_group=0,
        )
    finally:
        os.close(write_fd)
    output_done = environments._pump_pipe(loop, read_fd, collector)
    pidfd = os.pidfd_open(proc.pid)
    exited = loop.create_future()
    loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
    try:
        await exited
        await asyncio.wait_for(asyncio.shield(output_done), 0.2)
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        loop.remove_reader(read_fd)
        os.close(read_fd)
    collector.result()
    return proc.wait()


async def measure(contenders: dict, n: int, warmup: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for i in range(warmup + n):
        for name, run in contenders.items():
            started = time.perf_counter()
            await run()
            if i >= warmup:
                times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        print(f"  {name:14} median {median * 1000:8.2f} ms  (n={len(times[name])})")
    return medians


async def local_and_bwrap(n: int, warmup: int) -> None:
    local = create_environment(EnvSettings())
    await local.start()
    envs = [local]
    contenders = {}
    marker = new_cwd_marker()

    async def popen() -> None:
        assert await popen_round_trip(local.base, local._environ, marker) == 0

    async def ours_local() -> None:
        assert (await local.execute(COMMAND, 30)).exit_code == 0

    contenders["popen (before)"] = popen
    contenders["local"] = ours_local
    if shutil.which("bwrap"):
        bwrap = create_environment(EnvSettings(env_type="bwrap"))
        await bwrap.start()
        envs.append(bwrap)

        async def ours_bwrap() -> None:
            assert (await bwrap.execute(COMMAND, 30)).exit_code == 0

        contenders["bwrap"] = ours_bwrap
    try:
        print(f"local and bwrap: `{COMMAND}` round trip")
        medians = await measure(contenders, n, warmup)
    finally:
        for env in envs:
            await env.close()
    print(f"local/popen = {medians['local'] / medians['popen (before)']:.3f}  (the supervisor's cost per command)")
    if "bwrap" in medians:
        print(f"bwrap/local = {medians['bwrap'] / medians['local']:.3f}  (target <= 1.5)")
    else:
        print("bwrap: not installed, skipped")


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(own, reaped children's) user + system CPU of ``pid``, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    user, system, children_user, children_system = (int(value) for value in fields[11:15])
    return (user + system) / ticks, (children_user + children_system) / ticks


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def cpu_split(n: int, warmup: int) -> None:
    """CPU per local `true` command, per process, over ``n`` commands in a row (clock ticks are 10 ms: n >= 500)."""
    env = create_environment(EnvSettings())
    await env.start()
    try:
        for _ in range(warmup):
            await env.execute(COMMAND, 30)
        supervisor = env._supervisor.pid
        own_before, children_before = _cpu_seconds(supervisor)
        runner_before = _own_cpu()
        started = time.perf_counter()
        for _ in range(n):
            await env.execute(COMMAND, 30)
        wall = time.perf_counter() - started
        runner = _own_cpu() - runner_before
        own_after, children_after = _cpu_seconds(supervisor)
        argv = wrapped_argv(COMMAND, env.base, new_cwd_marker())
        bare_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        for _ in range(n):
            pid = os.posix_spawnp(
                "bash", argv, env._environ, file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]
            )
            os.waitpid(pid, 0)
        bare_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        await env.close()
    bare = (bare_after.ru_utime + bare_after.ru_stime) - (bare_before.ru_utime + bare_before.ru_stime)
    per = {
        "runner": runner,
        "supervisor": own_after - own_before,
        "supervisor's children (bash)": children_after - children_before,
    }
    print(f"local: CPU per `{COMMAND}` command, n={n} in a row ({wall / n * 1000:.2f} ms wall each)")
    for name, seconds in per.items():
        print(f"  {name:30} {seconds / n * 1000:6.3f} ms")
    total = sum(per.values())
    print(f"  {'total':30} {total / n * 1000:6.3f} ms")
    above = (total - bare) / n * 1000
    print(f"  {'bash spawned bare':30} {bare / n * 1000:6.3f} ms  (ours above bare bash: {above:.3f} ms)")


async def task_start_and_close(n: int, warmup: int) -> None:
    """Medians of a local task's start() (its supervisor forked by the zygote) and close() (which waits for the
    supervisor to clean up and exit), each task running one command between them."""
    starts, closes = [], []
    for i in range(warmup + n):
        env = create_environment(EnvSettings())
        started = time.perf_counter()
        await env.start()
        ready = time.perf_counter()
        await env.execute(COMMAND, 30)
        closing = time.perf_counter()
        await env.close()
        if i >= warmup:
            starts.append(ready - started)
            closes.append(time.perf_counter() - closing)
    print(
        f"local task around its commands, n={n}: start median {statistics.median(starts) * 1000:.2f} ms, "
        f"close median {statistics.median(closes) * 1000:.2f} ms"
    )


async def ssh(n: int, warmup: int, server) -> None:
    env = create_environment(server.settings())
    await env.start()
    connection = env._connection  # the run's one connection: the bare exec uses the very same one
    try:

        async def ours() -> None:
            assert (await env.execute(COMMAND, 30)).exit_code == 0

        async def bare() -> None:
            assert (await connection.run(COMMAND)).exit_status == 0

        print(f"ssh: `{COMMAND}` round trip on one connection to a throwaway sshd on 127.0.0.1")
        medians = await measure({"bare exec": bare, "ssh backend": ours}, n, warmup)
    finally:
        await env.close()
    print(f"ssh/bare = {medians['ssh backend'] / medians['bare exec']:.3f}  (target <= 1.2)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--ssh_n", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--cpu_n", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(local_and_bwrap(args.n, args.warmup))
    asyncio.run(cpu_split(args.cpu_n, args.warmup))
    asyncio.run(task_start_and_close(args.n, args.warmup))
    try:
        import ssh_support

        problem = ssh_support._problem()
    except ImportError as exc:
        problem = str(exc)
    if problem:
        print(f"ssh: skipped ({problem})")
        return
    server_fixture = ssh_support.sshd_fixture.__wrapped__()
    server = next(server_fixture)
    try:
        asyncio.run(ssh(args.ssh_n, 3, server))
    finally:
        server_fixture.close()


if __name__ == "__main__":
    main()
