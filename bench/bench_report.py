"""The HTML report at scale: 10,000 records (about 300 MB of JSONL) through `mini-swe-runner view`, then the
report opened in headless Chromium.

Prints, measured side by side in one run:
- the report's size against the input's (target: at most half);
- the time and peak memory of writing it (streaming: memory must not grow with the input);
- in the browser, the time until the summary and the task list are on screen, read from the page's own
  performance marks (target: under 2 s), and the time to open one trajectory (target: under 200 ms), for a
  sample of trajectories including the largest and the longest.

The records are realistic in shape and in compressibility: built with trajectory's own functions, their
prompts, reasoning and command outputs are slices of the Python standard library's sources, documentation
and directory listings, some outputs cut with the runner's truncation marker.

    python bench/bench_report.py [--records 10000] [--mean_kb 30] [--keep DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mini_swe_runner  # noqa: E402
import trajectory  # noqa: E402

# The tool the runner really sends, so the generated records carry its real system turn.
TOOLS = [mini_swe_runner.terminal_tool(mini_swe_runner.RunConfig(model="bench"))]
EXIT_MIX = (
    ["completed"] * 70
    + ["max_iterations"] * 15
    + ["timeout"] * 5
    + ["context_length"] * 4
    + ["api_error"] * 3
    + ["env_error"] * 3
)
MODELS = ["openai/gpt-4.1-mini", "qwen/qwen3-coder", "deepseek/deepseek-r1"]
IMAGES = ["python:3.12-slim", "swebench/django:4.2", "swebench/sympy:1.12", "node:22-bookworm", None]


def corpus() -> tuple[list[str], list[str]]:
    """Source texts and file paths from the standard library: real code and prose compress like real outputs."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.stat().st_size > 4000)[:400]
    return [p.read_text(encoding="utf-8", errors="replace") for p in files], [str(p) for p in files]


def make_record(rng: random.Random, number: int, texts: list[str], paths: list[str], mean_chars: int) -> dict:
    def piece(size: int) -> str:
        source = rng.choice(texts)
        start = rng.randrange(max(len(source) - size, 1))
        return source[start : start + size]

    steps = rng.randint(3, 18)
    output_budget = mean_chars * rng.uniform(0.3, 1.7)
    messages: list[dict] = [
        {"role": "user", "content": f"Task {number}: fix the bug described below.\n\n" + piece(rng.randint(200, 1500))}
    ]
    for step in range(steps):
        path = rng.choice(paths)
        command = rng.choice(
            [
                f"cat {path}",
                f"grep -n 'def ' {path} | head -50",
                "python -m pytest -q -x",
                f"sed -n '{step * 20},{step * 20 + 80}p' {path}",
                f"ls -la {os.path.dirname(path)}",
            ]
        )
        call_id = f"call_{number}_{step}"
        messages.append(
            {
                "role": "assistant",
                "content": piece(rng.randint(40, 400)) if rng.random() < 0.6 else None,
                "reasoning": piece(rng.randint(100, 1200)) if rng.random() < 0.5 else None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "terminal", "arguments": json.dumps({"command": command})},
                    }
                ],
            }
        )
        size = int(rng.expovariate(steps / output_budget))
        output = piece(min(size, 50_000))
        if size > 20_000:  # what the runner's head+tail rule leaves of a long output
            output = f"{output[:10_000]}\n\n[... {size - 20_000} characters omitted ...]\n\n{output[-10_000:]}"
        code = 0 if rng.random() < 0.8 else rng.choice([1, 2, 124])
        messages.append(
            {
                "role": "tool",
                "tool_call_id": call_id,
                "content": json.dumps({"output": output, "exit_code": code, "error": None}),
            }
        )
    exit_reason = rng.choice(EXIT_MIX)
    completed = exit_reason == "completed"
    if completed:
        messages.append({"role": "assistant", "content": "Done: " + piece(200)})
    verification = None
    if rng.random() < 0.8:
        passed = completed and rng.random() < 0.6
        verification = {"passed": passed, "exit_code": 0 if passed else 1, "output": piece(600), "duration_s": 2.5}
    prompt_tokens = rng.randint(2_000, 60_000)
    return trajectory.build_record(
        prompt_index=number,
        task_id=f"bench-{number:05d}",
        conversations=trajectory.to_hermes(messages, TOOLS),
        completed=completed,
        exit_reason=exit_reason,
        api_calls=steps + completed,
        tool_stats={"terminal": {"count": steps, "success": steps - 1, "failure": 1}},
        usage={
            "prompt_tokens": prompt_tokens,
            "completion_tokens": prompt_tokens // 10,
            "total_tokens": prompt_tokens * 11 // 10,
            "reasoning_tokens": prompt_tokens // 40,
        },
        duration_s=rng.lognormvariate(3.5, 0.8),
        error=None if completed else f"stopped: {exit_reason}",
        metadata={
            "model": rng.choice(MODELS),
            "env_type": "docker",
            "image": rng.choice(IMAGES),
            "timestamp": "2026-11-24T10:15:03+00:00",
            "config_hash": "3f1c9a0b",
        },
        verification=verification,
        sample_index=0,
    )


def generate(path: Path, count: int, mean_kb: float) -> int:
    rng = random.Random(20261124)
    texts, paths = corpus()
    mean_chars = int(mean_kb * 1000 * 0.58)  # outputs carry most of a record; the rest is prompt, reasoning, JSON
    with open(path, "wb") as handle:
        for number in range(count):
            handle.write(trajectory.record_line(make_record(rng, number, texts, paths, mean_chars)))
    return path.stat().st_size


def run_view(records: Path, report: Path) -> tuple[float, float]:
    """Wall time and peak RSS (MB) of the real CLI writing the report (wait4: this child's own peak)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "mini_swe_runner.py"), "view", str(records), "--output_file", str(report)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"view failed: {process.stderr.read().decode()}")
    process.stderr.close()
    return elapsed, usage.ru_maxrss / 1024


def head(source: Path, target: Path, lines: int) -> int:
    with open(source, "rb") as reader, open(target, "wb") as writer:
        writer.writelines(itertools.islice(reader, lines))
    return target.stat().st_size


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def measure_browser(report: Path, records: Path, samples: int) -> dict:
    driver = browser()
    try:
        driver.set_page_load_timeout(300)
        driver.get(report.as_uri())
        list_shown = driver.execute_script(
            "const m = performance.getEntriesByName('mswr:list-shown'); return m.length ? m[0].startTime : null"
        )
        deadline = time.monotonic() + 60
        while list_shown is None and time.monotonic() < deadline:
            time.sleep(0.05)
            list_shown = driver.execute_script(
                "const m = performance.getEntriesByName('mswr:list-shown'); return m.length ? m[0].startTime : null"
            )
        load_end = driver.execute_script("return performance.getEntriesByType('navigation')[0].loadEventEnd")
        rows = driver.execute_script("return document.getElementById('count').dataset.shown")
        # The trajectories to open: a random sample plus the largest and the longest records.
        sizes = []
        with open(records, "rb") as handle:
            for number, line in enumerate(handle):
                sizes.append((len(line), line.count(b'"from": "gpt"'), number))
        chosen = {max(sizes)[2], max(sizes, key=lambda s: s[1])[2]}
        chosen |= set(random.Random(7).sample(range(len(sizes)), samples - len(chosen)))
        timings = {}
        for number in sorted(chosen):
            driver.execute_script(
                "performance.clearMeasures('mswr:open'); location.hash = '#/t/' + arguments[0]", number
            )
            deadline = time.monotonic() + 30
            while driver.execute_script("return document.getElementById('t-body').dataset.shown") != str(number):
                if time.monotonic() > deadline:
                    raise SystemExit(f"trajectory {number} did not render")
                time.sleep(0.01)
            timings[number] = driver.execute_script("return performance.getEntriesByName('mswr:open').at(-1).duration")
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    finally:
        driver.quit()
    return {
        "list_shown_ms": list_shown,
        "load_end_ms": load_end,
        "rows": rows,
        "open_ms": timings,
        "largest": max(sizes)[2],
        "longest": max(sizes, key=lambda s: s[1])[2],
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--mean_kb", type=float, default=30)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--keep", help="write the files here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        where = Path(args.keep or temp)
        where.mkdir(parents=True, exist_ok=True)
        records, report = where / "records.jsonl", where / "report.html"
        started = time.perf_counter()
        input_bytes = generate(records, args.records, args.mean_kb)
        generated_s = time.perf_counter() - started
        print(f"generated {args.records:,} records, {input_bytes / 1e6:.1f} MB in {generated_s:.1f} s")
        quarter_bytes = head(records, where / "quarter.jsonl", args.records // 4)
        quarter_s, quarter_rss = run_view(where / "quarter.jsonl", where / "quarter.html")
        view_s, view_rss = run_view(records, report)
        report_bytes = report.stat().st_size
        figures = measure_browser(report, records, args.samples)
    opens = sorted(figures["open_ms"].values())
    print(
        f"view: {view_s:.1f} s ({input_bytes / 1e6 / view_s:.1f} MB/s), peak RSS {view_rss:.0f} MB; "
        f"a quarter of the records ({quarter_bytes / 1e6:.0f} MB): {quarter_s:.1f} s, peak RSS {quarter_rss:.0f} MB "
        f"(4x the input costs {view_rss / quarter_rss:.2f}x the memory)"
    )
    print(f"report: {report_bytes / 1e6:.1f} MB = {report_bytes / input_bytes:.3f} of the input (target <= 0.5)")
    print(
        f"browser: summary and list shown at {figures['list_shown_ms']:.0f} ms (target < 2000), "
        f"whole file parsed at {figures['load_end_ms']:.0f} ms, {figures['rows']} rows listed"
    )
    print(
        f"open a trajectory ({len(opens)} opened): median {statistics.median(opens):.0f} ms, "
        f"p90 {opens[int(0.9 * (len(opens) - 1))]:.0f} ms, max {opens[-1]:.0f} ms (target < 200); "
        f"largest record {figures['open_ms'][figures['largest']]:.0f} ms, "
        f"most turns {figures['open_ms'][figures['longest']]:.0f} ms"
    )
    print(f"console errors: {len(figures['errors'])}")
    for entry in figures["errors"][:5]:
        print("  ", entry["message"][:200])


if __name__ == "__main__":
    main()
