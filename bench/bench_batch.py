"""Batch scaling benchmark: prints ratios measured side by side in one run (no pass/fail).

The scripted model server answers every call after a fixed latency; each task makes CALLS model calls
(CALLS-1 `true` commands in the local environment, then a final answer). For each worker count the runner
runs in a child process, so its peak RSS is its own.

    python bench/bench_batch.py                     # 128 tasks x 4 calls at 0.25 s, workers 1/8/32/64
    python bench/bench_batch.py --latency 0.1 --tasks 64
    python bench/bench_batch.py --targets           # the two efficiency targets: 32 x 256 at 0.25 s, 128 x 1024 at 1 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def child(args: argparse.Namespace) -> None:
    # One-time start-up (imports; the openai SDK alone is most of it) is measured on its own, so the
    # scaling figures compare the same thing at every worker count.
    started = time.perf_counter()
    import openai  # noqa: F401

    import mini_swe_runner
    from environments import EnvSettings

    startup = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        config = mini_swe_runner.RunConfig(
            model="bench",
            base_url=args.base_url,
            api_key="bench-key",
            output_file=f"{tmp}/out.jsonl",
            workers=args.workers,
            quiet=True,
            max_iterations=args.calls + 1,
            env=EnvSettings(),
        )
        prompts = [mini_swe_runner.Prompt(index=i, text=f"task {i}", task_id=f"t{i}") for i in range(args.tasks)]
        started = time.perf_counter()
        outcome = asyncio.run(mini_swe_runner.run_batch(config, prompts))
        wall = time.perf_counter() - started
        completed = outcome.summary["completed"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "wall": wall,
                "startup": startup,
                "peak_rss_mb": peak_mb,
                "completed": completed,
                "api_calls": outcome.summary["totals"]["api_calls"],
            }
        )
    )


def measure(base_url: str, workers: int, tasks: int, calls: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--base_url",
        base_url,
        "--workers",
        str(workers),
        "--tasks",
        str(tasks),
        "--calls",
        str(calls),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["completed"] == tasks, f"only {measured['completed']} of {tasks} tasks completed"
    return measured


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--base_url")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 8, 32, 64])
    parser.add_argument("--tasks", type=int, default=128)
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.25)
    parser.add_argument("--targets", action="store_true", help="run the two configurations of the efficiency target")
    args = parser.parse_args()
    if args.child:
        args.workers = args.workers[0]
        return child(args)

    from model_server import ScriptedModelServer, per_conversation, reply, tool_call

    script = per_conversation([reply(None, [tool_call("true")])] * (args.calls - 1) + [reply("done")])
    if args.targets:
        header = ("workers", 8), ("tasks", 6), ("latency s", 9), ("wall s", 8), ("ideal s", 8), ("efficiency", 10)
        print(" ".join(f"{name:>{width}}" for name, width in header), f"{'RSS MB':>7}")
        for workers, tasks, latency in ((32, 256, 0.25), (128, 1024, 1.0)):
            with ScriptedModelServer(script, latency=latency) as server:
                measured = measure(server.base_url, workers, tasks, args.calls)
            ideal = math.ceil(tasks / workers) * args.calls * latency
            print(
                f"{workers:>8} {tasks:>6} {latency:>9g} {measured['wall']:>8.2f} {ideal:>8.2f} "
                f"{ideal / measured['wall']:>10.3f} {measured['peak_rss_mb']:>7.1f}",
                flush=True,
            )
        print(f"target: efficiency >= 0.9 in both ({args.calls} calls per task, local environment, after start-up)")
        return
    rows = {}
    with ScriptedModelServer(script, latency=args.latency) as server:
        print(f"{args.tasks} tasks x {args.calls} model calls, {args.latency:g} s per call, local environment")
        print(f"{'workers':>8} {'wall s':>8} {'ideal s':>8} {'efficiency':>10} {'peak RSS MB':>12}")
        for workers in args.workers:
            measured = measure(server.base_url, workers, args.tasks, args.calls)
            ideal = math.ceil(args.tasks / workers) * args.calls * args.latency
            rows[workers] = measured
            print(
                f"{workers:>8} {measured['wall']:>8.2f} {ideal:>8.2f} {ideal / measured['wall']:>10.3f} "
                f"{measured['peak_rss_mb']:>12.1f}",
                flush=True,
            )
    with ScriptedModelServer(script, latency=0.0) as server:
        zero = measure(server.base_url, 32, args.tasks, args.calls)
    if 1 in rows and 32 in rows:
        print(f"speed-up of 32 workers over 1: {rows[1]['wall'] / rows[32]['wall']:.1f}x (target >= 28x)")
    if 32 in rows:
        ideal32 = math.ceil(args.tasks / 32) * args.calls * args.latency
        print(f"scaling efficiency at 32 workers: {ideal32 / rows[32]['wall']:.3f} (target >= 0.9)")
    if 64 in rows:
        print(f"peak RSS at 64 workers: {rows[64]['peak_rss_mb']:.1f} MB (target <= 200 MB)")
    print(f"one-time start-up (imports, not in the wall times above): {zero['startup']:.2f} s")
    steps = zero["api_calls"]
    print(
        f"harness cost at zero latency (32 workers, each step = one model call + one `true` command): "
        f"{steps / zero['wall']:.0f} steps/s, {zero['wall'] / steps * 1000:.2f} ms per step"
    )


if __name__ == "__main__":
    main()
