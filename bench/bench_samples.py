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

    python bench/bench_samples.py                   # 64 prompts x 4 samples at 0.25 s, 32 workers
    python bench/bench_samples.py --prompts 128 --workers 64
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from model_server import ScriptedModelServer, assistant_turns, reply, tool_call  # noqa: E402

import mini_swe_runner  # noqa: E402
from environments import EnvSettings  # noqa: E402

VERIFY = "test -f solved.txt"


def script(request: dict):
    if assistant_turns(request) == 0:
        passes = request["messages"][1]["content"].startswith("pass")
        return reply(None, [tool_call("touch solved.txt" if passes else "true")])
    return reply("done")


def run(base_url: str, prompts: list[mini_swe_runner.Prompt], args, until_passed: int | None) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        config = mini_swe_runner.RunConfig(
            model="bench",
            base_url=base_url,
            api_key="bench-key",
            output_file=f"{tmp}/out.jsonl",
            workers=args.workers,
            quiet=True,
            env=EnvSettings(),
            verify=VERIFY,
            samples=args.samples,
            until_passed=until_passed,
        )
        started = time.perf_counter()
        outcome = asyncio.run(mini_swe_runner.run_batch(config, prompts))
        return time.perf_counter() - started, outcome.summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.25)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each batch; the best wall time counts")
    args = parser.parse_args()
    prompts = [
        mini_swe_runner.Prompt(index=i, text=f"{'pass' if i % 2 == 0 else 'fail'} task {i}", task_id=f"t{i}")
        for i in range(args.prompts)
    ]
    passing = sum(p.text.startswith("pass") for p in prompts)
    needed = passing + (args.prompts - passing) * args.samples
    sample_time = 2 * args.latency
    print(
        f"{args.prompts} prompts x --samples {args.samples}, half pass at sample 0; {args.workers} workers; "
        f"2 model calls per sample at {args.latency:g} s"
    )
    print(f"{'run':>24} {'samples':>8} {'wall s':>8} {'ideal s':>8} {'efficiency':>10} {'pass@1':>7}")
    with ScriptedModelServer(script, latency=args.latency) as server:
        # One-time start-up (the openai SDK's import alone is seconds) is paid here, outside the timed runs.
        run(server.base_url, prompts[:1], args, None)
        rows = []
        for label, until_passed, samples in (
            ("--until_passed 1", 1, needed),
            (f"all {args.samples} samples", None, args.prompts * args.samples),
        ):
            # Best of --repeat: on a shared machine other processes only ever add time.
            walls = []
            for _ in range(args.repeat):
                wall, summary = run(server.base_url, prompts, args, until_passed)
                walls.append(wall)
            wall = min(walls)
            assert summary["records"] == samples, f"{label}: {summary['records']} samples ran, expected {samples}"
            chain = args.samples if until_passed else 1
            ideal = max(math.ceil(samples / args.workers), chain) * sample_time
            rows.append((label, wall, ideal))
            print(
                f"{label:>24} {samples:>8} {wall:>8.2f} {ideal:>8.2f} {ideal / wall:>10.3f} "
                f"{summary['verification']['pass_at_1']:>7.3f}   (walls: {', '.join(f'{w:.2f}' for w in walls)})",
                flush=True,
            )
    (_, adaptive_wall, adaptive_ideal), (_, full_wall, _) = rows
    efficiency = adaptive_ideal / adaptive_wall
    print(f"efficiency of --until_passed 1 at {args.workers} workers: {efficiency:.3f} (target >= 0.85)")
    print(
        f"samples saved by --until_passed 1: {args.prompts * args.samples - needed} of {args.prompts * args.samples}; "
        f"wall time {adaptive_wall / full_wall:.2f}x that of running every sample"
    )


if __name__ == "__main__":
    main()
