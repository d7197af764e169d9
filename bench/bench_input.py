"""Memory and time to the first task for large inputs: a prompts file of N lines, and a resume over N records.

The real CLI runs in a child process against the scripted server. We measure, side by side in one run:
- the time from starting the CLI to the first model request arriving at the server,
- the child's peak RSS up to that moment (VmHWM of its own memory, read just before it is stopped with SIGTERM:
  ru_maxrss from wait4 would carry this process's own peak into every child it starts),
for (a) a fresh run over a prompts file of N lines, (b) a resume over an output holding N - 1 finished records
of those prompts as the runner writes them, with its resume index (only the last prompt is left to run), (c) the
same resume over a copy of that output, which its index does not describe (every line is parsed, as for an output
written by an older version), and (d) the same with N/10, to show the growth.
Then the shell use: a single --task's time and RSS to its first request, and the wall time of --help and of an
argument error (neither imports the HTTP stack; tests/test_batch.py checks that).

    python bench/bench_input.py                  # N = 1,000,000
    python bench/bench_input.py --lines 200000
    python bench/bench_input.py --json_resume ../main   # a .json prompts file's resume, beside another checkout
    python bench/bench_input.py --resume_targets ../main --repeat 3   # issue 25 target 4, before and after

``--resume_targets``: the resumes of issue 25's target 4, this checkout and another (before a change) interleaved,
best of ``--repeat``: the same N prompts as a .jsonl file, a .json array, a .parquet file and a saved dataset
(--dataset), each with its own output of N - 1 records indexed against it; the prompts files also with the check of
their rows that the run which wrote the output kept beside it. The CLI starts as an installed one does
(its entry point, bytecode compiled ahead), and once as ``python mini_swe_runner.py`` from the checkout (the script
compiled on every start). The child is killed at the first request (SIGKILL: nothing is written), so the same output
serves every run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def write_inputs(directory: Path, lines: int) -> tuple[Path, Path]:
    """The prompts file, and an output of the N - 1 first tasks as the runner writes it, with its resume index."""
    prompts = directory / f"prompts-{lines}.jsonl"
    output = directory / f"done-{lines}.jsonl"
    import mini_swe_runner
    import trajectory

    with prompts.open("w") as p:
        for index in range(lines):
            p.write(json.dumps({"prompt": f"Solve task number {index} and report.", "id": f"task-{index}"}) + "\n")
    prompt_file = mini_swe_runner.PromptFile(str(prompts), mini_swe_runner.RowFormat())
    source = mini_swe_runner.index_source_tag(prompt_file, mini_swe_runner.RunConfig(model="bench"))
    with trajectory.JsonlWriter(str(output), sync=False, index_source=source) as o:
        for index in range(lines):
            if index < lines - 1:  # every task but the last is already done
                record = trajectory.build_record(
                    prompt_index=index,
                    task_id=f"task-{index}",
                    conversations=[{"from": "human", "value": f"Solve task number {index} and report."}],
                    completed=True,
                    exit_reason="completed",
                    api_calls=1,
                    tool_stats=trajectory.empty_tool_stats(),
                    usage=trajectory.empty_usage(),
                    duration_s=1.0,
                    error=None,
                    metadata={
                        "model": "bench",
                        "env_type": "local",
                        "image": None,
                        "timestamp": "2026-01-01",
                        "prompt_hash": trajectory.prompt_hash(
                            f"Solve task number {index} and report.", None, None, None
                        ),
                    },
                )
                o.write(record)
    return prompts, output


def write_json_inputs(directory: Path, lines: int) -> tuple[Path, Path]:
    """The same prompts as one .json list, and the output of its N - 1 first tasks, indexed against it."""
    prompts, output = directory / f"prompts-{lines}.json", directory / f"done-{lines}-json.jsonl"
    import mini_swe_runner

    rows = [{"prompt": f"Solve task number {index} and report.", "id": f"task-{index}"} for index in range(lines)]
    prompts.write_text(json.dumps(rows))
    del rows
    write_done(output, lines, mini_swe_runner._file_tag(str(prompts), mini_swe_runner.RowFormat()))
    return prompts, output


def write_table_inputs(directory: Path, lines: int) -> tuple[Path, Path, Path, Path]:
    """The same prompts as a .parquet file and as a dataset saved to disk (--dataset), each with the output of its
    N - 1 first tasks indexed against it."""
    import datasets
    import pyarrow
    import pyarrow.parquet

    import mini_swe_runner

    columns = {
        "prompt": [f"Solve task number {index} and report." for index in range(lines)],
        "id": [f"task-{index}" for index in range(lines)],
    }
    parquet, parquet_output = directory / f"prompts-{lines}.parquet", directory / f"done-{lines}-parquet.jsonl"
    pyarrow.parquet.write_table(pyarrow.table(columns), str(parquet))
    write_done(parquet_output, lines, mini_swe_runner._file_tag(str(parquet), mini_swe_runner.RowFormat()))
    dataset, dataset_output = directory / f"prompts-{lines}-dataset", directory / f"done-{lines}-dataset.jsonl"
    datasets.disable_progress_bars()
    datasets.Dataset.from_dict(columns).save_to_disk(str(dataset))
    del columns
    loaded = datasets.load_from_disk(str(dataset))
    write_done(dataset_output, lines, mini_swe_runner.dataset_tag(loaded, str(dataset), mini_swe_runner.RowFormat()))
    return parquet, parquet_output, dataset, dataset_output


def write_done(output: Path, lines: int, source_tag: int | None) -> None:
    """An output of the N - 1 first tasks, indexed against the prompts the runner names by ``source_tag`` (its
    PromptList's or PromptFile's; the index tag adds the run's settings, as the runner's does)."""
    import types

    import mini_swe_runner
    import trajectory

    named = types.SimpleNamespace(source_tag=source_tag)
    source = mini_swe_runner.index_source_tag(named, mini_swe_runner.RunConfig(model="bench"))
    with trajectory.JsonlWriter(str(output), sync=False, index_source=source) as o:
        for index in range(lines - 1):  # every task but the last is already done
            o.write(
                trajectory.build_record(
                    prompt_index=index,
                    task_id=f"task-{index}",
                    conversations=[{"from": "human", "value": f"Solve task number {index} and report."}],
                    completed=True,
                    exit_reason="completed",
                    api_calls=1,
                    tool_stats=trajectory.empty_tool_stats(),
                    usage=trajectory.empty_usage(),
                    duration_s=1.0,
                    error=None,
                    metadata={"model": "bench", "env_type": "local", "image": None, "timestamp": "2026-01-01"},
                )
            )


def first_task(server, prompts: Path | None, output: Path, resume: bool, index: bool = True, root: Path = ROOT) -> dict:
    """``prompts`` None: a single --task. ``index``: resume with the output's index (False: as an output written
    by an older version, or whose index no longer describes it: every line is parsed)."""
    from conftest import clean_environ

    work = Path(tempfile.mkdtemp(dir=output.parent))
    out = work / "out.jsonl"
    if resume and index:  # the very file the runner wrote: its index names it (st_ino), so it is moved, not copied
        output.rename(out)
        (output.parent / f".{output.name}.index").rename(work / ".out.jsonl.index")
        # A rename sets the file's ctime, which resume reads as a write after the index's last entry: the index is
        # touched as the runner's last entry would have, since the file was written in place by the runner.
        os.utime(work / ".out.jsonl.index")
    elif resume:
        shutil.copyfile(output, out)  # streamed: this process must not grow by the output's size
    seen = len(server.requests)
    command = [
        sys.executable,
        str(root / "mini_swe_runner.py"),
        *(["--task", "Solve one task and report."] if prompts is None else ["--prompts_file", str(prompts)]),
        "--base_url",
        server.base_url,
        "--output_file",
        str(out),
        "--quiet",
        "--resume_any",
        "--workers",
        "4",
    ]
    started = time.perf_counter()
    child = subprocess.Popen(command, env=clean_environ(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while len(server.requests) == seen and child.poll() is None:
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    peak_kb = peak_rss_kb(child.pid)
    child.send_signal(signal.SIGTERM)
    child.wait()
    if len(server.requests) == seen or peak_kb is None:
        raise SystemExit(f"the CLI ended before any request: {child.stderr.read().decode()[-500:]}")
    return {"seconds": elapsed, "peak_rss_mb": peak_kb / 1024}


def resume_to_first_request(
    server, root: Path, source: list[str], output: Path, kept: Path | None = None, script: bool = False
) -> dict:
    """Time and peak RSS to the first request of a resume over ``output`` (moved in with its index, and the prompts'
    kept check ``kept`` when given, then moved back as they were)."""
    from conftest import clean_environ

    work = Path(tempfile.mkdtemp(dir=output.parent))
    out = work / "out.jsonl"
    moves = [(output, out), (output.parent / f".{output.name}.index", work / ".out.jsonl.index")]
    if kept is not None:
        moves.append((kept, work / ".out.jsonl.prompts"))
    for there, here in moves:
        there.rename(here)
    os.utime(work / ".out.jsonl.index")  # the rename set the output's ctime: as the runner's last entry would be
    if script:
        start = [sys.executable, str(root / "mini_swe_runner.py")]
    else:  # what the installed entry point (mini-swe-runner = mini_swe_runner:cli) runs
        start = [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(root)!r}); import mini_swe_runner as m; m.cli()",
        ]
    command = [*start, *source, "--base_url", server.base_url, "--output_file", str(out), "--quiet", "--resume_any"]
    seen = len(server.requests)
    started = time.perf_counter()
    child = subprocess.Popen(
        [*command, "--workers", "4"], env=clean_environ(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    while len(server.requests) == seen and child.poll() is None:
        time.sleep(0.002)
    elapsed = time.perf_counter() - started
    peak_kb = peak_rss_kb(child.pid)
    child.kill()
    child.wait()
    for there, here in moves:
        here.rename(there)
    shutil.rmtree(work)
    if len(server.requests) == seen or peak_kb is None:
        raise SystemExit(f"the CLI ended before any request: {child.stderr.read().decode()[-500:]}")
    return {"seconds": elapsed, "peak_rss_mb": peak_kb / 1024}


def resume_targets(before_root: Path, lines: int, repeat: int) -> None:
    """Issue 25 target 4: resume over ``lines`` records, first request in < 2 s, before and after side by side."""
    import compileall

    from model_server import ScriptedModelServer, reply

    import mini_swe_runner

    for root in (ROOT, before_root):  # as pip installs them: each module's bytecode written once
        for module in ("mini_swe_runner", "environments", "trajectory", "report"):
            compileall.compile_file(str(root / f"{module}.py"), quiet=1)
    with tempfile.TemporaryDirectory() as tmp, ScriptedModelServer(lambda r: reply("ok"), latency=5) as server:
        directory = Path(tmp)
        prompts, output = write_inputs(directory, lines)
        json_prompts, json_output = write_json_inputs(directory, lines)
        parquet, parquet_output, dataset, dataset_output = write_table_inputs(directory, lines)
        # The checks the runs that wrote the outputs kept (their prompts files written 2 s before those runs started).
        newest = max(path.stat().st_ctime_ns for path in (prompts, json_prompts, parquet))
        time.sleep(max(0.0, (newest + 2_100_000_000 - time.time_ns()) / 1e9))
        kept, json_kept = directory / "kept.prompts", directory / "kept-json.prompts"
        parquet_kept = directory / "kept-parquet.prompts"
        mini_swe_runner.PromptFile(str(prompts), mini_swe_runner.RowFormat(), str(kept))
        mini_swe_runner.load_prompts(str(json_prompts), mini_swe_runner.RowFormat(), str(json_kept))
        mini_swe_runner.load_prompts(str(parquet), mini_swe_runner.RowFormat(), str(parquet_kept))
        if not kept.exists() or not json_kept.exists() or not parquet_kept.exists():
            raise SystemExit("this checkout kept no check of the prompts files")
        jsonl, json_source = ["--prompts_file", str(prompts)], ["--prompts_file", str(json_prompts)]
        parquet_source, dataset_source = ["--prompts_file", str(parquet)], ["--dataset", str(dataset)]
        variants = {
            ".jsonl, the check kept by the run: before": lambda: resume_to_first_request(
                server, before_root, jsonl, output
            ),
            ".jsonl, the check kept by the run: after": lambda: resume_to_first_request(
                server, ROOT, jsonl, output, kept
            ),
            ".jsonl, no check kept (a run of an older version): after": lambda: resume_to_first_request(
                server, ROOT, jsonl, output
            ),
            ".jsonl, kept check, as `python mini_swe_runner.py`: before": lambda: resume_to_first_request(
                server, before_root, jsonl, output, script=True
            ),
            ".jsonl, kept check, as `python mini_swe_runner.py`: after": lambda: resume_to_first_request(
                server, ROOT, jsonl, output, kept, script=True
            ),
            ".json: before": lambda: resume_to_first_request(server, before_root, json_source, json_output),
            ".json, the check kept by the run: after": lambda: resume_to_first_request(
                server, ROOT, json_source, json_output, json_kept
            ),
            ".json, no check kept (a run of an older version): after": lambda: resume_to_first_request(
                server, ROOT, json_source, json_output
            ),
            ".parquet: before": lambda: resume_to_first_request(server, before_root, parquet_source, parquet_output),
            ".parquet, the check kept by the run: after": lambda: resume_to_first_request(
                server, ROOT, parquet_source, parquet_output, parquet_kept
            ),
            ".parquet, no check kept (a run of an older version): after": lambda: resume_to_first_request(
                server, ROOT, parquet_source, parquet_output
            ),
            "--dataset (save_to_disk): before": lambda: resume_to_first_request(
                server, before_root, dataset_source, dataset_output
            ),
            "--dataset (save_to_disk): after": lambda: resume_to_first_request(
                server, ROOT, dataset_source, dataset_output
            ),
        }
        results: dict[str, list[dict]] = {name: [] for name in variants}
        for run in range(repeat):
            for name, measure in variants.items():  # interleaved: each round runs every variant once
                results[name].append(measure())
                print(f"  round {run + 1}: {name}: {results[name][-1]['seconds']:.2f} s", file=sys.stderr)
        load = os.getloadavg()
    print(f"resume over {lines - 1:,} of {lines:,} records to its first request, best of {repeat} (all runs listed)")
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (2 cores)")
    for name, runs in results.items():
        best = min(runs, key=lambda r: r["seconds"])
        every = ", ".join(f"{r['seconds']:.2f}" for r in runs)
        met = "met" if best["seconds"] < 2 else "MISSED"
        print(
            f"  {name:<60} {best['seconds']:6.2f} s ({every}); RSS {best['peak_rss_mb']:4.0f} MB  target < 2 s: {met}"
        )


def peak_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def wall_time(argv: list[str]) -> float:
    from conftest import clean_environ

    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "mini_swe_runner.py"), *argv], env=clean_environ(), capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument(
        "--json_resume",
        metavar="BEFORE_ROOT",
        help="only: resume over N records of a .json prompts file, this checkout (index, and without) beside the "
        "runner of BEFORE_ROOT (another checkout: the figures before a change)",
    )
    parser.add_argument(
        "--resume_targets",
        metavar="BEFORE_ROOT",
        help="only: issue 25 target 4's resumes, this checkout and BEFORE_ROOT's interleaved (see above)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from model_server import ScriptedModelServer, reply

    if args.resume_targets:
        resume_targets(Path(args.resume_targets).resolve(), args.lines, args.repeat)
        return

    if args.json_resume:
        with tempfile.TemporaryDirectory() as tmp, ScriptedModelServer(lambda r: reply("ok"), latency=5) as server:
            prompts, output = write_json_inputs(Path(tmp), args.lines)
            before = first_task(server, prompts, output, resume=True, index=False, root=Path(args.json_resume))
            parsed = first_task(server, prompts, output, resume=True, index=False)
            resumed = first_task(server, prompts, output, resume=True)
        print(f"resume over {args.lines:,} records of a .json prompts file: first request, peak RSS")
        print(f"  before ({args.json_resume}): {before['seconds']:.2f} s, {before['peak_rss_mb']:.0f} MB")
        print(f"  this checkout, through the index: {resumed['seconds']:.2f} s, {resumed['peak_rss_mb']:.0f} MB")
        print(f"  this checkout, without the index: {parsed['seconds']:.2f} s, {parsed['peak_rss_mb']:.0f} MB")
        print("  target: first request in < 2 s")
        return

    with tempfile.TemporaryDirectory() as tmp, ScriptedModelServer(lambda request: reply("ok"), latency=5) as server:
        rows = []
        for lines in (args.lines // 10, args.lines):
            prompts, output = write_inputs(Path(tmp), lines)
            size = prompts.stat().st_size / 1e6
            out_size = output.stat().st_size / 1e6
            fresh = first_task(server, prompts, output, resume=False)
            parsed = first_task(server, prompts, output, resume=True, index=False)
            resumed = first_task(server, prompts, output, resume=True)
            rows.append((lines, size, out_size, fresh, resumed, parsed))
        print(
            f"{'lines':>9} {'prompts MB':>10} {'fresh: s':>9} {'RSS MB':>7} {'output MB':>9} {'resume: s':>9} "
            f"{'RSS MB':>7} {'no index: s':>11} {'RSS MB':>7}"
        )
        for lines, size, out_size, fresh, resumed, parsed in rows:
            print(
                f"{lines:>9} {size:>10.0f} {fresh['seconds']:>9.2f} {fresh['peak_rss_mb']:>7.0f} {out_size:>9.0f} "
                f"{resumed['seconds']:>9.2f} {resumed['peak_rss_mb']:>7.0f} "
                f"{parsed['seconds']:>11.2f} {parsed['peak_rss_mb']:>7.0f}"
            )
        print(f"targets at {args.lines:,} lines: first task in < 3 s, peak RSS < 150 MB (fresh run and resume)")
        print("no index: the same resume over a copy of the output (its index names the original): every line parsed")
        single = first_task(server, None, Path(tmp) / "single.jsonl", resume=False)
        python = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"])
        python = time.perf_counter() - python
        print(
            f"single --task: first request after {single['seconds']:.2f} s, peak RSS {single['peak_rss_mb']:.0f} MB; "
            f"--help {wall_time(['--help']):.2f} s, "
            f"an argument error {wall_time(['--task', 'x', '--workers', '0']):.2f} s "
            f"(a bare python start: {python:.2f} s)"
        )


if __name__ == "__main__":
    main()
