"""Adaptive sampling benchmark: --samples K --until_passed 1, measured against its ideal (no pass/fail).

PROMPTS prompts, half of which pass at their first sample (the agent's one command creates solved.txt, and the
verifier `test -f solved.txt` decides); the other half never pass, so they use all K samples. Every sample is
two model calls (the command, then a final answer) at LATENCY seconds each, in the local environment.

How "ideal" is computed: only model latency is unavoidable. The work that --until_passed 1 must do is
P/2 samples for the passing prompts plus P/2 * K for the failing ones; it may not start a failing prompt's
next sample before the previous one has failed (it could have passed), so each prompt's samples form a chain.
With W workers the shortest possible schedule is then
    ideal = max(ceil(samples / W), K) * 2 * LATENCY
(rounds of W samples, and never shorter than one failing prompt's chain of K samples). Efficiency = ideal /
measured wall, where the wall time is that of run_batch alone (imports and server start-up are excluded), the
best of --repeat runs. Bash, the verifier, temp directories, JSONL writes and the client's own CPU are the
overhead being measured. For comparison the same batch runs with all K samples of every prompt (no --until_passed).

Each batch runs in a child process of its own, importing the runner of this checkout or, with --before ROOT, of
another checkout too: the runs of the two alternate (before, after, before, after...) so both see the same
machine load. The model server (in this process) notes when each request came; the timeline printed for each
variant is made from those times (an answer leaves its request's time plus LATENCY later):
    answer -> command's request  the agent's command ran (and, before the first one, the environment's start
                                 was waited for if it had not finished)
    sample's end -> next sample  a sample's last answer to the first request of the sample its worker takes next
                                 (the i-th to end against the (i+W)-th to start): the verifier, the close, the
                                 record, the schedule and the next sample's start
    run start -> first request   the first sample's start
    last answer -> run's end     the last sample's verifier, close and record, and the run's own close

    python bench/bench_samples.py                            # 64 prompts x 4 samples at 0.25 s, 32 workers
    python bench/bench_samples.py --before /tmp/main-copy    # the figures of another checkout, interleaved
    python bench/bench_samples.py --prompts 128 --workers 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tree_cpu import tree_cgroup

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.9
"""Issue 25 target 3: efficiency of --samples 4 --until_passed 1 at 32 workers."""
VERIFY = "test -f solved.txt"


def prompt_text(index: int) -> str:
    return f"{'pass' if index % 2 == 0 else 'fail'} task {index}"


def child(args) -> None:
    """One batch, in this process, with the runner found first on sys.path; prints its wall time as JSON."""
    sys.path[:0] = [str(Path(args.root).resolve())]
    import mini_swe_runner
    from environments import EnvSettings

    prompts = [mini_swe_runner.Prompt(index=i, text=prompt_text(i), task_id=f"t{i}") for i in range(args.prompts)]
    until_passed = 1 if args.mode == "until_passed" else None

    def run(batch: list, until: int | None) -> tuple[float, dict]:
        with tempfile.TemporaryDirectory() as tmp:
            config = mini_swe_runner.RunConfig(
                model="bench",
                base_url=args.base_url,
                api_key="bench-key",
                output_file=f"{tmp}/out.jsonl",
                workers=args.workers,
                quiet=True,
                env=EnvSettings(),
                verify=VERIFY,
                samples=args.samples,
                until_passed=until,
            )
            started = time.perf_counter()
            outcome = asyncio.run(mini_swe_runner.run_batch(config, batch))
            return time.perf_counter() - started, outcome.summary

    run(prompts[:1], None)  # one-time start-up (the openai SDK's import alone is most of a second), not timed
    print("READY", flush=True)
    sys.stdin.readline()  # the parent marks the timed run's start in its request log, then says go
    started, own_cpu = time.time(), time.process_time()
    wall, summary = run(prompts, until_passed)
    own_cpu = time.process_time() - own_cpu
    print(json.dumps({"wall": wall, "started": started, "records": summary["records"], "own_cpu": own_cpu,
                      "pass_at_1": summary["verification"]["pass_at_1"]}), flush=True)  # fmt: skip


class RequestLog:
    """What the server saw: (time.time() of the request, prompt index, model answers before it), per labelled run."""

    def __init__(self) -> None:
        self.runs: dict[str, list[list[tuple[float, int, int]]]] = {}
        self.current: list | None = None
        """The timed run's requests; None while a child warms up."""
        self._lock = threading.Lock()

    def begin(self, label: str) -> list:
        with self._lock:
            requests: list = []
            self.runs.setdefault(label, []).append(requests)
            self.current = requests
            return requests

    def add(self, prompt: int, turns: int) -> None:
        with self._lock:
            if self.current is not None:
                self.current.append((time.time(), prompt, turns))

    def end(self) -> None:
        with self._lock:
            self.current = None


def timeline(
    requests: list[tuple[float, int, int]], started: float, ended: float, latency: float, workers: int
) -> dict[str, list[float]]:
    """The gaps named in the module's docstring, in seconds, from one run's requests."""
    by_prompt: dict[int, list[tuple[float, int]]] = {}
    for at, prompt, turns in sorted(requests):
        by_prompt.setdefault(prompt, []).append((at, turns))
    gaps: dict[str, list[float]] = {"answer -> command's request": []}
    starts, ends = [], []
    for calls in by_prompt.values():
        for (at, turns), (next_at, next_turns) in zip(calls, calls[1:], strict=False):
            if next_turns == turns + 1:
                gaps["answer -> command's request"].append(next_at - at - latency)
        starts += [at for at, turns in calls if turns == 0]
        ends += [at + latency for at, turns in calls if turns == 1]  # every sample's last answer is its second
    # The i-th sample to end frees a worker, which starts the (i + workers)-th sample to start (the schedule never
    # leaves a worker idle while a sample may start, and in this batch one always may until the last round).
    starts.sort()
    ends.sort()
    gaps["sample's end -> next sample"] = [start - end for start, end in zip(starts[workers:], ends, strict=False)]
    gaps["run start -> first request"] = [starts[0] - started]
    gaps["last answer -> run's end"] = [ended - ends[-1]]
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.25)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each batch; the best wall time counts")
    parser.add_argument("--before", help="also run the runner of this checkout (the figures before a change)")
    parser.add_argument("--all_samples", action="store_true", help="also run every sample (no --until_passed)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="until_passed", help=argparse.SUPPRESS)
    parser.add_argument("--base_url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    sys.path[:0] = [str(ROOT / "tests")]
    from model_server import ScriptedModelServer, assistant_turns, reply, tool_call

    log = RequestLog()

    def script(request: dict):
        text = request["messages"][1]["content"]
        turns = assistant_turns(request)
        log.add(int(text.rsplit(" ", 1)[1]), turns)
        if turns == 0:
            return reply(None, [tool_call("touch solved.txt" if text.startswith("pass") else "true")])
        return reply("done")

    passing = sum(prompt_text(i).startswith("pass") for i in range(args.prompts))
    needed = {"until_passed": passing + (args.prompts - passing) * args.samples, "all": args.prompts * args.samples}
    chain = {"until_passed": args.samples, "all": 1}
    ideal = {mode: max(math.ceil(needed[mode] / args.workers), chain[mode]) * 2 * args.latency for mode in needed}
    variants = [("before", args.before), ("after", str(ROOT))] if args.before else [("after", str(ROOT))]
    modes = ["until_passed", "all"] if args.all_samples else ["until_passed"]
    print(
        f"{args.prompts} prompts x --samples {args.samples}, half pass at sample 0; {args.workers} workers; "
        f"2 model calls per sample at {args.latency:g} s; load average {os.getloadavg()[0]:.1f} at the start"
    )
    walls: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with ScriptedModelServer(script, latency=args.latency) as server:
        for attempt in range(args.repeat):
            for mode in modes:
                for name, root in variants:  # alternating: each variant sees the machine's load of the moment
                    command = [sys.executable, __file__, "--child", "--root", root, "--mode", mode,
                               "--base_url", server.base_url, "--prompts", str(args.prompts),
                               "--samples", str(args.samples), "--workers", str(args.workers)]  # fmt: skip
                    with tree_cgroup("bench-samples") as group:
                        process = subprocess.Popen(
                            command,
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE,
                            text=True,
                            preexec_fn=group.enter if group else None,
                        )
                        assert process.stdout.readline().strip() == "READY"
                        requests = log.begin(f"{name} {mode}")
                        cpu_before, server_before = group.seconds() if group else 0.0, time.process_time()
                        process.stdin.write("\n")
                        process.stdin.flush()
                        result = json.loads(process.stdout.readline())
                        cpu = group.seconds() - cpu_before if group else float("nan")
                        server_cpu = time.process_time() - server_before
                        log.end()
                        process.wait()
                    cpus.setdefault((name, mode), []).append((cpu, server_cpu))
                    assert result["records"] == needed[mode], f"{name} {mode}: {result['records']} samples ran"
                    walls.setdefault((name, mode), []).append(result["wall"])
                    requests.append(("started", result["started"], result["started"] + result["wall"]))
                    print(
                        f"  run {attempt + 1}: {name:>6} {mode:>12}  wall {result['wall']:.2f} s  "
                        f"efficiency {ideal[mode] / result['wall']:.3f}  pass@1 {result['pass_at_1']:.3f}  "
                        f"CPU: runner's tree {cpu:.2f} s (its process {result['own_cpu']:.2f})"
                        f", server {server_cpu:.2f} s  "
                        f"(load {os.getloadavg()[0]:.1f})",
                        flush=True,
                    )
    print(
        f"\n{'variant':>20} {'samples':>8} {'best wall s':>11} {'ideal s':>8} {'efficiency':>10} "
        f"{'tree CPU ms/sample':>18}   walls"
    )
    for mode in modes:
        for name, _ in variants:
            runs = walls[(name, mode)]
            per_sample = 1000 * min(cpu for cpu, _ in cpus[(name, mode)]) / needed[mode]
            print(
                f"{name + ' ' + mode:>20} {needed[mode]:>8} {min(runs):>11.2f} {ideal[mode]:>8.2f} "
                f"{ideal[mode] / min(runs):>10.3f} {per_sample:>18.1f}   {', '.join(f'{w:.2f}' for w in runs)}"
            )
    print("\ntimeline of --until_passed 1 (all runs of each variant; seconds: median / p90 / max)")
    for name, _ in variants:
        gaps: dict[str, list[float]] = {}
        for requests in log.runs[f"{name} until_passed"]:
            (_, started, ended), *_ = [entry for entry in requests if entry[0] == "started"]
            seen = [entry for entry in requests if entry[0] != "started"]
            for key, values in timeline(seen, started, ended, args.latency, args.workers).items():
                gaps.setdefault(key, []).extend(values)
        for key, values in gaps.items():
            values.sort()
            p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
            print(
                f"  {name:>6}  {key:<30} {statistics.median(values):7.3f} / {p90:7.3f} / {values[-1]:7.3f}"
                f"   ({len(values)} gaps)"
            )
    for name, _ in variants:
        runs = walls[(name, "until_passed")]
        efficiency = ideal["until_passed"] / min(runs)
        met = "met" if efficiency >= TARGET else "MISSED"
        print(
            f"efficiency of --until_passed 1 at {args.workers} workers, {name}: {efficiency:.3f} best run, "
            f"{ideal['until_passed'] / statistics.median(runs):.3f} median run (target >= {TARGET}: {met})"
        )


if __name__ == "__main__":
    main()
