"""Harness CPU per step: the runner against a bare loop that sends the same requests with the same SDK.

A step is one model call plus one `true` command (the last call of a task is the final answer). The scripted
server answers at once and runs in this (parent) process; each measured variant runs in a child process. Two CPU
figures per variant: the child's own (user + system, RUSAGE_SELF) and its whole process tree's (supervisors,
zygote and bash included, reaped by whoever), read from a cgroup made for that child (bench/tree_cpu.py). Beside
them, bash itself: `bash -c true` spawned N times in a cgroup of its own, so the tree's figure minus bash is
what the runner's machinery costs. Two task counts are run and subtracted, so start-up (imports, pool warm-up)
cancels:

    per step = (cpu(LARGE tasks) - cpu(SMALL tasks)) / ((LARGE - SMALL) * calls)

    python bench/bench_harness.py                  # 256 vs 64 tasks x 4 calls, 32 workers
    python bench/bench_harness.py --repeat 3
    python bench/bench_harness.py --cost           # every answer reports a cost; a price and both budgets set
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tree_cpu import tree_cgroup, where  # noqa: E402  (bench/, beside this file)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_runner(args: argparse.Namespace) -> dict:
    import mini_swe_runner
    from environments import EnvSettings

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
        if args.cost:  # the cost bookkeeping at work on every call: provider cost, price, both budgets checked
            from decimal import Decimal

            config.price = mini_swe_runner.parse_price("input=0.15,output=0.60,cached_input=0.075")
            config.max_cost = config.max_task_cost = Decimal(10**9)
        prompts = [mini_swe_runner.Prompt(index=i, text=f"task {i}", task_id=f"t{i}") for i in range(args.tasks)]
        cpu, wall = cpu_seconds(), time.perf_counter()
        outcome = asyncio.run(mini_swe_runner.run_batch(config, prompts))
        steps = outcome.summary["totals"]["api_calls"]
        return {"cpu": cpu_seconds() - cpu, "wall": time.perf_counter() - wall, "steps": steps}


def child_bare(args: argparse.Namespace) -> dict:
    """The floor: the same SDK, transport and request bodies, no sandbox, no records."""
    import openai

    import mini_swe_runner

    try:
        from httpx2 import Limits, Response
    except ImportError:
        from httpx import Limits, Response

    config = mini_swe_runner.RunConfig(model="bench", base_url=args.base_url, workers=args.workers)
    tools = [mini_swe_runner.terminal_tool(config)]
    system = mini_swe_runner.render_system_prompt(mini_swe_runner.DEFAULT_SYSTEM_PROMPT, "local")
    result = json.dumps({"output": "", "exit_code": 0, "error": None})

    async def run() -> int:
        pool = Limits(max_connections=args.workers + 4, max_keepalive_connections=args.workers + 4)
        http = mini_swe_runner._http_client(openai, pool, 600)  # the runner's transport (aiohttp when installed)
        client = openai.AsyncOpenAI(api_key="bench-key", base_url=args.base_url, max_retries=0, http_client=http)
        gate = asyncio.Semaphore(args.workers)
        steps = 0

        async def task(index: int) -> None:
            nonlocal steps
            messages = [{"role": "system", "content": system}, {"role": "user", "content": f"task {index}"}]
            async with gate:
                for _ in range(args.calls):
                    body = {"model": "bench", "messages": messages, "tools": tools}
                    response = await client.post("/chat/completions", body=body, cast_to=Response)
                    message = response.json()["choices"][0]["message"]
                    steps += 1
                    messages.append(message)
                    for call in message.get("tool_calls") or []:
                        messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
                    if not message.get("tool_calls"):
                        return

        await asyncio.gather(*(task(i) for i in range(args.tasks)))
        await client.close()
        return steps

    cpu, wall = cpu_seconds(), time.perf_counter()
    steps = asyncio.run(run())
    return {"cpu": cpu_seconds() - cpu, "wall": time.perf_counter() - wall, "steps": steps}


def measure(variant: str, base_url: str, tasks: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--base_url", base_url, "--tasks", str(tasks)]
    command += ["--workers", str(args.workers), "--calls", str(args.calls)] + (["--cost"] if args.cost else [])
    command += ["--runner_root", args.runner_root] if args.runner_root else []
    with tree_cgroup("bench-harness") as group:
        enter = group.enter if group else None
        result = subprocess.run(command, capture_output=True, text=True, check=True, preexec_fn=enter)
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        measured["tree"] = group.seconds() if group else None
    return measured


def bash_cpu_per_command(n: int = 300) -> float | None:
    """Whole-tree CPU of one `bash -c true` spawned bare (seconds), or None without a cgroup."""
    with tree_cgroup("bench-bash") as group:
        if group is None:
            return None
        script = f"import subprocess\nfor _ in range({n}): subprocess.run(['bash', '-c', 'true'])"
        small = "import subprocess"
        subprocess.run([sys.executable, "-c", script], check=True, preexec_fn=group.enter)
        spent = group.seconds()
    with tree_cgroup("bench-bash") as group:
        subprocess.run([sys.executable, "-c", small], check=True, preexec_fn=group.enter)
        spent -= group.seconds()  # the python that spawned them
    return spent / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=["runner", "bare"])
    parser.add_argument("--base_url")
    parser.add_argument("--tasks", type=int, default=256)
    parser.add_argument("--small", type=int, default=64)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--cost", action="store_true", help="answers report usage.cost; a price and budgets are set")
    parser.add_argument("--runner_root", help="measure mini_swe_runner.py/environments.py of this checkout instead")
    args = parser.parse_args()
    if args.runner_root:  # the runner of another checkout (the figures before a change)
        sys.path.insert(0, str(Path(args.runner_root).resolve()))
    if args.child:
        print(json.dumps((child_runner if args.child == "runner" else child_bare)(args)))
        return

    from model_server import ScriptedModelServer, per_conversation, reply, tool_call

    usage: dict | bool = True
    if args.cost:
        usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120, "cost": 0.0000273}
        usage["prompt_tokens_details"] = {"cached_tokens": 64, "cache_write_tokens": 0}
    script = per_conversation(
        [reply(None, [tool_call("true")], usage=usage)] * (args.calls - 1) + [reply("done", usage=usage)]
    )
    print(f"{args.tasks} vs {args.small} tasks x {args.calls} calls, {args.workers} workers, zero model latency")
    print(f"{where()}; load average {os.getloadavg()[0]:.1f} at the start")
    if args.runner_root:
        print(f"runner code from {args.runner_root}")
    per_step: dict[str, list[float]] = {"runner": [], "bare": [], "runner tree": []}
    with ScriptedModelServer(script) as server:
        for _ in range(args.repeat):
            for variant in ("runner", "bare"):  # interleaved, so load on the machine hits both alike
                large = measure(variant, server.base_url, args.tasks, args)
                small = measure(variant, server.base_url, args.small, args)
                steps = large["steps"] - small["steps"]
                per_step[variant].append((large["cpu"] - small["cpu"]) / steps * 1000)
                if variant == "runner" and large["tree"] is not None:
                    per_step["runner tree"].append((large["tree"] - small["tree"]) / steps * 1000)
    runner, bare = min(per_step["runner"]), min(per_step["bare"])
    for name, label in (("runner", "runner CPU per step:       "), ("bare", "bare SDK loop CPU per step:")):
        runs = ", ".join(f"{value:.2f}" for value in per_step[name])
        print(f"{label} {min(per_step[name]):.2f} ms  (runs: {runs}; RUSAGE_SELF of that process only)")
    print(f"ours above the SDK floor:       {runner - bare:.2f} ms per step; runner/bare = {runner / bare:.2f}")
    bash = bash_cpu_per_command()
    if per_step["runner tree"] and bash is not None:
        tree = min(per_step["runner tree"])
        commands_per_step = (args.calls - 1) / args.calls  # the last call of a task is the answer, no command
        runs = ", ".join(f"{value:.2f}" for value in per_step["runner tree"])
        print(f"whole-tree CPU per step:    {tree:.2f} ms  (runs: {runs}; runner, zygote, supervisors, bash)")
        print(f"bash alone per command:     {bash * 1000:.2f} ms  (`bash -c true` spawned bare, whole tree)")
        print(
            f"whole tree minus bash:      {tree - bash * 1000 * commands_per_step:.2f} ms per step (target <= 1.0 ms)"
        )
    else:
        print("whole-tree CPU: unavailable (no writable cgroup); target: tree minus bash <= 1.0 ms per step")


if __name__ == "__main__":
    main()
