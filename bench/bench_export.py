"""Export of 100k generated records (about 1 GB): records/s and peak RSS per format, beside a plain read.

Each export runs as the real CLI in a child process and its peak RSS is that child's own (os.wait4), so the
generator's memory never counts. The baseline child reads the same file once with json.loads and nothing else:
the ratio says what the export costs over just reading its input. The generated files are deleted at the end.

    python bench/bench_export.py [--records 100000] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mini_swe_runner  # noqa: E402
import trajectory  # noqa: E402

# The tool the runner really sends, so the generated records carry its real system turn.
TOOLS = [mini_swe_runner.terminal_tool(mini_swe_runner.RunConfig(model="bench"))]
PLAIN_READ = "import json,sys\nn=0\nfor line in open(sys.argv[1],'rb'):\n    json.loads(line); n+=1\nprint(n)"


def sample_line(variant: int) -> str:
    """One realistic record (about 10 kB: reasoning, several calls, long outputs) with a task-id placeholder."""
    messages = [{"role": "user", "content": f"Fix the failing test in /repo (variant {variant}). " * 4}]
    for step in range(4 + variant % 3):
        calls = [
            {
                "id": f"call_{step}_{k}",
                "type": "function",
                "function": {"name": "terminal", "arguments": json.dumps({"command": f"grep -rn 'f{k}' src/ | head"})},
            }
            for k in range(1 + step % 2)
        ]
        messages.append(
            {
                "role": "assistant",
                "content": "Looking further.",
                "reasoning": "I should inspect the code. " * 8,
                "tool_calls": calls,
            }
        )
        for call in calls:
            output = "".join(f"src/module_{i}.py:{i}: def f{i}(x): return x * {i}\n" for i in range(12 + variant))
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": call["id"],
                    "content": json.dumps({"output": output, "exit_code": 0, "error": None}),
                }
            )
    finish = {"command": "echo MINI_SWE_AGENT_FINAL_OUTPUT && echo fixed"}
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_end",
                    "type": "function",
                    "function": {"name": "terminal", "arguments": json.dumps(finish)},
                }
            ],
        }
    )
    messages.append(
        {
            "role": "tool",
            "tool_call_id": "call_end",
            "content": json.dumps({"output": "MINI_SWE_AGENT_FINAL_OUTPUT\nfixed\n", "exit_code": 0, "error": None}),
        }
    )
    record = trajectory.build_record(
        prompt_index=variant,
        task_id="@TASK@",
        conversations=trajectory.to_hermes(messages, TOOLS),
        completed=True,
        exit_reason="completed",
        api_calls=6,
        tool_stats={"terminal": {"count": 8, "success": 8, "failure": 0}},
        usage={"prompt_tokens": 20000, "completion_tokens": 900, "total_tokens": 20900, "reasoning_tokens": 300},
        duration_s=12.5,
        error=None,
        metadata={"model": "bench-model", "env_type": "docker", "image": "python:3.11-slim", "timestamp": "t"},
    )
    return trajectory.record_line(record).decode()


def generate(path: Path, count: int) -> int:
    variants = [sample_line(v) for v in range(8)]
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            handle.write(variants[i % len(variants)].replace("@TASK@", f"task-{i:07d}", 1))
    return path.stat().st_size


def run_child(argv: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stderr) of one child process."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"child failed ({process.returncode}): {' '.join(argv)}\n{stderr}")
    return elapsed, usage.ru_maxrss / 1024, stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()

    need = args.records * 11_000 * 2.2  # the input and one output at a time, with room
    free = shutil.disk_usage(args.dir).free
    if free < need:
        raise SystemExit(f"need about {need / 1e9:.1f} GB free in {args.dir}, have {free / 1e9:.1f} GB")
    workdir = Path(tempfile.mkdtemp(prefix="bench-export-", dir=args.dir))
    try:
        source = workdir / "records.jsonl"
        started = time.perf_counter()
        size = generate(source, args.records)
        print(f"generated {args.records} records, {size / 1e9:.2f} GB, in {time.perf_counter() - started:.1f} s")
        print(f"free disk in {args.dir}: {free / 1e9:.1f} GB before generating")

        plain_s, plain_rss, _ = run_child([sys.executable, "-c", PLAIN_READ, str(source)])
        print(f"\n{'what':<28}{'records/s':>12}{'peak RSS MB':>14}{'time / plain read':>20}")
        print(f"{'plain read (json.loads)':<28}{args.records / plain_s:>12,.0f}{plain_rss:>14.1f}{1.0:>20.2f}")
        worst = 0.0
        for format, extra in (("hermes", []), ("openai", []), ("sharegpt", []), ("openai", ["--drop_final_echo"])):
            out = workdir / f"out-{format}.jsonl"
            argv = [
                sys.executable,
                str(ROOT / "mini_swe_runner.py"),
                "export",
                str(source),
                "--output_file",
                str(out),
                "--format",
                format,
                *extra,
            ]
            seconds, rss, stderr = run_child(argv)
            assert f"exported {args.records} of {args.records}" in stderr, stderr
            label = " ".join([format, *extra])
            print(f"{label:<28}{args.records / seconds:>12,.0f}{rss:>14.1f}{seconds / plain_s:>20.2f}")
            worst = max(worst, rss)
            out.unlink()
        print(f"\npeak RSS of the export, worst format: {worst:.1f} MB (target < 200 MB) for {size / 1e9:.2f} GB input")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
