"""--return_tokens on a long trajectory: bytes per record and runner CPU per step, with tokens against without.

Every task is 40 model calls (39 `seq 1 450` commands, then a final answer) whose token sequence grows to 29,710
tokens: a 600-token first prompt, 250 sampled tokens a call, 490 tokens of tool output and template between calls.
Ids are drawn from Qwen's 151,936-token vocabulary, logprobs are float32 values, as vLLM sends them. The scripted
server answers at once, in this (parent) process, with the ids only when the request asks for them (vLLM's layout);
each variant runs in a child process that reports its own CPU time. Two task counts are run and subtracted, so
start-up cancels (see bench_harness.py):

    per step = (cpu(LARGE tasks) - cpu(SMALL tasks)) / ((LARGE - SMALL) * 40)

Storage: the ``tokens`` object's bytes in the record line, against the int32 size of the ids it stores (and of the
ids plus float32 logprobs).

Export: ``--export_records`` such records (their text kept short) exported as the real CLI in a child process,
``--format tokens`` and ``--format steps``, each child's peak RSS read with os.wait4: one record at a time is the
bound, whatever the file's size.

    python bench/bench_tokens.py                  # 8 vs 2 tasks, 4 workers; 60 records exported
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

CALLS, FIRST_PROMPT, SAMPLED, BETWEEN, VOCABULARY = 40, 600, 250, 490, 151_936


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(args: argparse.Namespace) -> dict:
    import mini_swe_runner
    from environments import EnvSettings

    with tempfile.TemporaryDirectory() as tmp:
        output = f"{tmp}/out.jsonl"
        config = mini_swe_runner.RunConfig(
            model="bench",
            base_url=args.base_url,
            api_key="bench-key",
            output_file=output,
            workers=args.workers,
            quiet=True,
            max_iterations=CALLS,
            env=EnvSettings(),
            return_tokens=args.child == "tokens",
        )
        prompts = [mini_swe_runner.Prompt(index=i, text=f"task {i}", task_id=f"t{i}") for i in range(args.tasks)]
        cpu, wall = cpu_seconds(), time.perf_counter()
        outcome = asyncio.run(mini_swe_runner.run_batch(config, prompts))
        cpu = cpu_seconds() - cpu
        lines = Path(output).read_bytes().splitlines()
        record = json.loads(lines[0])
        tokens_bytes = len(json.dumps(record["tokens"], ensure_ascii=False)) if record["tokens"] else 0
        ids = logprobs = 0
        if record["tokens"]:
            import trajectory

            for call in trajectory.token_calls(record["tokens"]):
                logprobs += len(call.logprobs)
            tokens = record["tokens"]
            ids = sum(
                len(trajectory.unpack_ids(call[key], tokens["id_bits"]))
                for call in tokens["calls"]
                for key in ("prompt_ids", "completion_ids")
            )
        return {
            "cpu": cpu,
            "wall": time.perf_counter() - wall,
            "steps": outcome.summary["totals"]["api_calls"],
            "record_bytes": len(lines[0]) + 1,
            "tokens_bytes": tokens_bytes,
            "ids": ids,
            "logprobs": logprobs,
            "exit_reasons": sorted({json.loads(line)["exit_reason"] for line in lines}),
        }


def measure(variant: str, base_url: str, tasks: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--base_url", base_url, "--tasks", str(tasks)]
    command += ["--workers", str(args.workers)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def script():
    """(request) -> Step: call N of a conversation, with vLLM's token fields when the request asks for them."""
    from model_server import Step, completion_body

    rng = random.Random(0)
    total = FIRST_PROMPT + (CALLS - 1) * (SAMPLED + BETWEEN) + SAMPLED
    sequence = [rng.randrange(VOCABULARY) for _ in range(total)]
    as_float32 = struct.Struct("f")
    text_bodies, token_bodies = [], []
    for call in range(CALLS):
        start = FIRST_PROMPT + call * (SAMPLED + BETWEEN)
        last = call == CALLS - 1
        content = " ".join(f"word{i}" for i in range(200))  # ~1,000 characters, about what 250 tokens say
        calls = [] if last else [{"id": f"c{call}", "type": "function", "function": {
            "name": "terminal", "arguments": json.dumps({"command": "seq 1 450"})}}]  # fmt: skip
        message = {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}
        body = completion_body(message, finish_reason="stop" if last else "tool_calls")
        text_bodies.append(json.dumps(body).encode())
        completion = sequence[start : start + SAMPLED]
        logprobs = [as_float32.unpack(as_float32.pack(-rng.expovariate(2.0)))[0] for _ in completion]
        body["prompt_token_ids"] = sequence[:start]
        body["choices"][0]["token_ids"] = completion
        body["choices"][0]["logprobs"] = {
            "content": [{"token": f"token_id:{t}", "logprob": v, "bytes": None, "top_logprobs": []}
                        for t, v in zip(completion, logprobs, strict=True)]
        }  # fmt: skip
        token_bodies.append(json.dumps(body, separators=(",", ":")).encode())  # compact, as vLLM writes it

    def choose(request: dict) -> Step:
        turn = min(sum(1 for m in request["messages"] if m["role"] == "assistant"), CALLS - 1)
        return Step(body=(token_bodies if request.get("return_token_ids") else text_bodies)[turn])

    return choose


def token_record(index: int, sequence: list[int], logprob: float) -> dict:
    import trajectory

    log = trajectory.TokenLog("vllm")
    for call in range(CALLS):
        start = FIRST_PROMPT + call * (SAMPLED + BETWEEN)
        completion = sequence[start : start + SAMPLED]
        log.add(trajectory.TokenCall(sequence[:start], completion, [logprob] * SAMPLED, "tool_calls"))
    return trajectory.build_record(
        prompt_index=index,
        task_id=f"t{index}",
        conversations=[{"from": "system", "value": ""}, {"from": "human", "value": f"task {index}"}],
        completed=True,
        exit_reason="completed",
        api_calls=CALLS,
        tool_stats=trajectory.empty_tool_stats(),
        usage=trajectory.empty_usage(),
        duration_s=1.0,
        error=None,
        metadata={"model": "bench"},
        tokens=log.record(),
    )


def export_peaks(records: int) -> None:
    """Peak RSS of `export --format tokens|steps` over ``records`` 30k-token records, in a child process each."""
    total = FIRST_PROMPT + (CALLS - 1) * (SAMPLED + BETWEEN) + SAMPLED
    rng = random.Random(2)
    sequence = [rng.randrange(VOCABULARY) for _ in range(total)]
    logprob = struct.unpack("f", struct.pack("f", -0.3))[0]
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "records.jsonl"
        import trajectory

        with open(source, "wb") as handle:
            for index in range(records):
                handle.write(trajectory.record_line(token_record(index, sequence, logprob)))
        print(f"export of {records} records of {total:,} tokens ({source.stat().st_size / 1e6:.0f} MB):")
        for format in ("tokens", "steps"):
            out = Path(tmp) / f"{format}.jsonl"
            started = time.perf_counter()
            child = subprocess.Popen(
                [sys.executable, str(ROOT / "mini_swe_runner.py"), "export", str(source), "--output_file", str(out),
                 "--format", format],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            _, status, usage = os.wait4(child.pid, 0)
            child.stderr.close()
            assert status == 0, f"export --format {format} failed"
            size = out.stat().st_size / 1e6
            wall = time.perf_counter() - started
            print(
                f"  --format {format:6}: peak RSS {usage.ru_maxrss / 1024:.0f} MB, {size:.0f} MB written, {wall:.1f} s"
            )
            out.unlink()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=["text", "tokens", "export"])
    parser.add_argument("--base_url")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--small", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--export_records", type=int, default=60)
    args = parser.parse_args()
    if args.child == "export":
        export_peaks(args.export_records)
        return
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.export_records:
        # First, from a small process: a child's peak RSS (wait4) counts the pages of the process it was forked
        # from, and this one grows to hold the server's answers.
        command = [sys.executable, __file__, "--child", "export", "--export_records", str(args.export_records)]
        exports = subprocess.run(command, capture_output=True, text=True, check=True).stdout

    from model_server import ScriptedModelServer

    total = FIRST_PROMPT + (CALLS - 1) * (SAMPLED + BETWEEN) + SAMPLED
    print(f"{args.tasks} vs {args.small} tasks x {CALLS} calls ({total:,} tokens a trajectory), {args.workers} workers")
    per_step: dict[str, list[float]] = {"text": [], "tokens": []}
    sizes: dict[str, dict] = {}
    with ScriptedModelServer(script()) as server:
        for _ in range(args.repeat):
            for variant in ("text", "tokens"):  # interleaved, so load on the machine hits both alike
                large = measure(variant, server.base_url, args.tasks, args)
                small = measure(variant, server.base_url, args.small, args)
                assert large["exit_reasons"] == ["completed"], large["exit_reasons"]
                per_step[variant].append((large["cpu"] - small["cpu"]) / (large["steps"] - small["steps"]) * 1000)
                sizes[variant] = large
    text, tokens = min(per_step["text"]), min(per_step["tokens"])
    for name in ("text", "tokens"):
        runs = ", ".join(f"{value:.2f}" for value in per_step[name])
        print(f"CPU per step, {name:6}: {min(per_step[name]):.2f} ms  (runs: {runs})")
    print(f"CPU per step, tokens / text: {tokens / text:.2f}  (target <= 1.5)")
    with_tokens = sizes["tokens"]
    ids, logprobs, stored = with_tokens["ids"], with_tokens["logprobs"], with_tokens["tokens_bytes"]
    print(f"record bytes: text {sizes['text']['record_bytes']:,}, with tokens {with_tokens['record_bytes']:,}")
    print(f"tokens object: {stored:,} bytes for {ids:,} ids and {logprobs:,} logprobs")
    print(f"  / int32 size of the ids ({4 * ids:,} bytes): {stored / (4 * ids):.2f}  (target <= 1.3)")
    print(f"  / int32 ids + float32 logprobs ({4 * (ids + logprobs):,} bytes): {stored / (4 * (ids + logprobs)):.2f}")
    as_json = len(json.dumps([random.Random(1).randrange(VOCABULARY) for _ in range(ids)]))
    print(f"  (a JSON list of as many ids from this vocabulary: {as_json:,} bytes, {as_json / (4 * ids):.2f})")
    if args.export_records:
        print(exports, end="")


if __name__ == "__main__":
    main()
