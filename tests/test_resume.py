"""Resume: a rerun over an existing output skips what is done, runs again what failed, refuses records made with
other settings, prompts or verifiers, and survives damaged lines.

First the resume index (.NAME.index beside an output): written by the writer, trusted by resume only while it
provably describes the file, and never a way to lose a record or to let a damaged line pass as one. Each case
compares what resume found with what a full parse of the file says (read_records), and checks through
CompactResult's counters which way the file was read: ``indexed_lines`` (placed from the index, not parsed) and
``parsed_lines``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    check_exactly_once,
    make_config,
    one_line_error,
    quick_script,
    read_jsonl,
    run_cli,
    small_tmpfs,
    write_prompts,
)
from model_server import ScriptedModelServer, http_error, reply

import mini_swe_runner
import trajectory
from trajectory import JsonlWriter, PromptsSource, build_record, compact_for_resume, index_path, read_records

TAG = 0x5EED_0F_1D
ROWS = 50


def record(row: int, sample: int = 0, exit_reason: str = "completed", reward: float | None = None, **metadata):
    verification = None
    if reward is not None:
        verification = {"passed": reward == 1.0, "exit_code": 0, "output": "", "duration_s": 0.1, "error": None}
    return build_record(
        prompt_index=row,
        task_id=f"task-{row}",
        sample_index=sample,
        conversations=[{"from": "human", "value": f"do {row}"}],
        completed=exit_reason == "completed",
        exit_reason=exit_reason,
        api_calls=1,
        tool_stats=trajectory.empty_tool_stats(),
        usage=trajectory.empty_usage(),
        duration_s=1.0,
        error=None,
        verification=verification,
        metadata={"model": "m", "env_type": "local", "image": None, "timestamp": "2026-01-01", **metadata},
    )


def source() -> PromptsSource:
    ids = {f"task-{row}": row for row in range(ROWS)}
    return PromptsSource(TAG, ROWS, ids.get)


def write(path: Path, records: list[dict], tag: int = TAG) -> None:
    with JsonlWriter(str(path), sync=False, index_source=tag) as writer:
        for one in records:
            writer.write(one)


def found(result: trajectory.CompactResult) -> dict[tuple[str, int], float | None]:
    """What resume found, as the mapping (task_id, sample_index) -> reward."""
    done = dict(result.done)
    for sample, rows in result.by_row.items():
        for row in range(ROWS):
            if rows.entries[row] >= 0:
                done[(f"task-{row}", sample)] = rows.reward(row)
    return done


def expected(path: Path) -> dict[tuple[str, int], float | None]:
    """The last final record of each key, by a full parse (the reference resume must agree with)."""
    done = {}
    for one in read_records(str(path)).records:
        key = trajectory.record_key(one)
        if trajectory.is_retryable(one):
            continue
        done[key] = one["reward"]
    return done


def later(path: Path, than: Path) -> None:
    """Make ``path``'s mtime later than ``than``'s (a hand edit happens after the run; file times can be coarse)."""
    when = than.stat().st_mtime_ns + 2_000_000_000
    os.utime(path, ns=(when, when))


def test_the_writer_indexes_every_line_and_resume_trusts_it_without_parsing(tmp_path):
    out = tmp_path / "out.jsonl"
    records = [record(row, reward=1.0 if row % 3 == 0 else 0.0) for row in range(10)]
    records.append(record(3, sample=1, reward=None))
    write(out, records)
    elsewhere = record(0)
    elsewhere.update(task_id="elsewhere", prompt_index=99)
    write(out, [elsewhere], tag=TAG + 1)  # a run of other prompts appended to the same output
    records.append(elsewhere)
    assert os.path.getsize(index_path(str(out))) == 64 + 48 * len(records)

    result = compact_for_resume(str(out), source=source(), index=True)
    assert result.indexed_lines == len(records) - 1  # "elsewhere" is no prompt's task: its line is read for its key
    assert result.parsed_lines == 1 + 1  # that line, and the one record whose settings resume compares
    assert found(result) == expected(out)
    assert result.done == {("elsewhere", 0): None}  # kept, but not the prompts' (the run ignores it)
    assert (
        result.by_row[0].reward(3) == 1.0 and result.by_row[0].reward(4) == 0.0 and result.by_row[1].reward(3) is None
    )
    assert result.settings == {"": records[0]["metadata"]}


def test_a_file_without_index_is_parsed_whole_then_indexed_for_next_time(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(trajectory.record_line(record(row)) for row in range(5)))  # an older version's file
    first = compact_for_resume(str(out), source=source(), index=True)
    assert (first.parsed_lines, first.indexed_lines) == (5, 0)
    second = compact_for_resume(str(out), source=source(), index=True)
    assert (second.parsed_lines, second.indexed_lines) == (1, 5)
    assert found(first) == found(second) == expected(out)


def test_compaction_rewrites_the_index_with_the_file(tmp_path):
    out = tmp_path / "out.jsonl"
    write(
        out,
        [
            record(0, reward=0.0),
            record(1, exit_reason="api_error"),
            record(2),
            record(0, reward=1.0),  # supersedes the first
            record(1, exit_reason="env_error"),
        ],
    )
    inode = out.stat().st_ino
    result = compact_for_resume(str(out), source=source(), index=True)
    assert (result.dropped_retryable, result.dropped_duplicates, result.indexed_lines) == (2, 1, 5)
    assert out.stat().st_ino != inode  # rewritten
    assert [json.loads(line)["task_id"] for line in out.read_bytes().splitlines()] == ["task-2", "task-0"]
    assert found(result) == expected(out) == {("task-0", 0): 1.0, ("task-2", 0): None}
    # The new index describes the new file: trusted as it is, and the writer goes on appending to both.
    again = compact_for_resume(str(out), source=source(), index=True)
    assert (again.indexed_lines, again.dropped_duplicates, again.dropped_retryable) == (2, 0, 0)
    write(out, [record(5)])
    third = compact_for_resume(str(out), source=source(), index=True)
    assert third.indexed_lines == 3 and found(third) == expected(out)
    assert sorted(os.listdir(tmp_path)) == [".out.jsonl.index", "out.jsonl"]


def test_records_written_against_other_prompts_are_matched_by_task_id(tmp_path):
    out = tmp_path / "out.jsonl"
    write(out, [record(row) for row in range(4)], tag=TAG + 1)  # another prompts file (or the same one, changed)
    result = compact_for_resume(str(out), source=source(), index=True)
    assert (result.indexed_lines, result.parsed_lines) == (0, 4 + 1)
    assert found(result) == expected(out) and result.done == {}


def _stale_by_hand_edit(out: Path, index: Path) -> None:
    data = out.read_bytes().replace(b'"reward": null', b'"reward": 1.0 ', 1)  # same length, in place
    with out.open("r+b") as handle:
        handle.write(data)
    later(out, index)


def _stale_by_grep(out: Path, index: Path) -> None:
    subprocess.run(["bash", "-c", f"grep -v '\"task-2\"' {out} > {out}.tmp && mv {out}.tmp {out}"], check=True)


def _stale_by_concatenation(out: Path, index: Path) -> None:
    other = out.parent / "other.jsonl"
    other.write_bytes(trajectory.record_line(record(7)) + trajectory.record_line(record(1, sample=1)))
    subprocess.run(["bash", "-c", f"cat {other} >> {out}"], check=True)
    other.unlink()
    # Even with its mtime set back, the file now has bytes no entry covers.
    stamp = index.stat().st_mtime_ns
    os.utime(out, ns=(stamp, stamp))


def _stale_by_moved_newline(out: Path, index: Path) -> None:
    # A line's newline moved into the line, its mtime set back: the file's length and time are as the index says,
    # its newlines are not.
    lines = out.read_bytes().splitlines(keepends=True)
    stamp = index.stat().st_mtime_ns
    with out.open("r+b") as handle:
        handle.seek(len(lines[0]))
        handle.write(lines[1][:20] + b"\n" + lines[1][20:-1])
    os.utime(out, ns=(stamp, stamp))


def _stale_by_same_length_edit_with_mtime_restored(out: Path, index: Path) -> None:
    # Issue 19 item 8: an edit in place, of the same length, its mtime set back as `touch -r` does: a completed
    # record is an api_error now, and resume must run its task again. Only the ctime tells (no tool sets it back).
    before = out.stat()
    time.sleep(0.05)  # an edit by hand comes after the run's last write
    data = out.read_bytes().replace(b'"exit_reason": "completed"', b'"exit_reason": "api_error"', 1)
    with out.open("r+b") as handle:
        handle.write(data)
    os.utime(out, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert out.stat().st_mtime_ns == before.st_mtime_ns and out.stat().st_size == before.st_size


def _stale_by_truncated_index(out: Path, index: Path) -> None:
    os.truncate(index, index.stat().st_size - 10)


def _stale_by_index_of_another_file(out: Path, index: Path) -> None:
    other = out.parent / "other.jsonl"
    write(other, [record(row) for row in range(5)])
    shutil.copyfile(index_path(str(other)), index)
    os.unlink(index_path(str(other)))
    other.unlink()


@pytest.mark.parametrize(
    "make_stale",
    [
        _stale_by_hand_edit,
        _stale_by_grep,
        _stale_by_concatenation,
        _stale_by_moved_newline,
        _stale_by_same_length_edit_with_mtime_restored,
        _stale_by_truncated_index,
        _stale_by_index_of_another_file,
    ],
)
def test_an_index_that_no_longer_describes_the_file_is_not_trusted(tmp_path, make_stale):
    out = tmp_path / "out.jsonl"
    index = Path(index_path(str(out)))
    write(out, [record(row) for row in range(5)])
    make_stale(out, index)
    lines = [line for line in out.read_bytes().splitlines() if line.strip()]
    result = compact_for_resume(str(out), source=source(), index=True)
    assert result.indexed_lines == 0 and result.parsed_lines == len(lines)
    assert found(result) == expected(out)
    # and the index written for the file as it is now is trusted next time
    again = compact_for_resume(str(out), source=source(), index=True)
    assert again.indexed_lines == len(read_records(str(out)).records) and found(again) == found(result)


def test_a_line_without_its_entry_after_a_crash_is_parsed_with_the_rest(tmp_path):
    # What a kill -9 between a record's line and its entry leaves: the line, and no entry.
    out = tmp_path / "out.jsonl"
    write(out, [record(row) for row in range(3)])
    with out.open("ab") as handle:
        handle.write(trajectory.record_line(record(3, reward=1.0)))
    later(out, Path(index_path(str(out))))
    result = compact_for_resume(str(out), source=source(), index=True)
    assert result.parsed_lines == 4 and found(result) == expected(out)
    assert found(result)[("task-3", 0)] == 1.0


def test_kill_9_while_writing_never_loses_or_invents_a_record(tmp_path):
    out = tmp_path / "out.jsonl"
    script = (
        "import sys, itertools\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from test_resume import record, TAG, ROWS\n"
        "from trajectory import JsonlWriter\n"
        f"writer = JsonlWriter({str(out)!r}, sync=False, index_source=TAG)\n"
        "print('ready', flush=True)\n"
        "for n in itertools.count():\n"
        "    writer.write(record(n % ROWS, sample=n // ROWS % 3))\n"
    )
    for delay in (0.05, 0.11, 0.23):
        child = subprocess.Popen([sys.executable, "-P", "-c", script], stdout=subprocess.PIPE)
        assert child.stdout.readline() == b"ready\n"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        reference = expected(out)
        result = compact_for_resume(str(out), source=source(), index=True)
        assert found(result) == reference and reference
        assert read_records(str(out)).bad_lines == 0


def test_an_empty_index_for_a_non_empty_file_is_not_continued(tmp_path):
    # The writer never starts entries in the middle of a file it has no index for: they would not tile it.
    out = tmp_path / "out.jsonl"
    out.write_bytes(trajectory.record_line(record(0)))
    write(out, [record(1)])
    assert os.path.getsize(index_path(str(out))) == 0
    result = compact_for_resume(str(out), source=source(), index=True)
    assert result.parsed_lines == 2 and found(result) == expected(out)


# -- through the CLI: what the runner writes, --overwrite, and the lock --------------------------------------------


def _resume_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if "taken from its index" in line)


def test_the_cli_resumes_from_its_index_and_overwrite_replaces_it_with_the_file(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say {n}", "id": f"t{n}"}) + "\n" for n in range(6)))
    out = tmp_path / "out.jsonl"
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        base = ["--prompts_file", str(prompts), "--base_url", server.base_url, "--output_file", str(out), "--quiet"]
        assert run_cli([*base, "--limit", "4"], cwd=tmp_path).returncode == 0
        resumed = run_cli([*base, "--verbose"], cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert "resume: 4 line(s)" in _resume_line(resumed.stderr) and "1 parsed" in _resume_line(resumed.stderr)
        assert len(server.requests) == 6  # the 4 done were skipped
        assert sorted(r["task_id"] for r in read_jsonl(out)) == [f"t{n}" for n in range(6)]

        overwritten = run_cli([*base, "--overwrite", "--limit", "2"], cwd=tmp_path)
        assert overwritten.returncode == 0, overwritten.stderr
        assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".out.jsonl.prompts") == [
            ".out.jsonl.index",
            ".out.jsonl.lock",
            "out.jsonl",
            "p.jsonl",
        ]
        again = run_cli([*base, "--verbose"], cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert "resume: 2 line(s)" in _resume_line(again.stderr)
        assert len(server.requests) == 6 + 2 + 4
    assert sorted(r["task_id"] for r in read_jsonl(out)) == [f"t{n}" for n in range(6)]


def test_a_changed_prompts_file_is_matched_by_task_id_not_by_row(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say {n}", "id": f"t{n}"}) + "\n" for n in range(4)))
    out = tmp_path / "out.jsonl"
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        base = ["--prompts_file", str(prompts), "--base_url", server.base_url, "--output_file", str(out), "--quiet"]
        assert run_cli(base, cwd=tmp_path).returncode == 0
        # New prompts in front: every done task is on another row now, and the file is another file.
        prompts.write_text(
            "".join(json.dumps({"prompt": f"say {n}", "id": f"t{n}"}) + "\n" for n in [9, 8, 3, 2, 1, 0])
        )
        resumed = run_cli([*base, "--verbose"], cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert "resume: 0 line(s)" in _resume_line(resumed.stderr)
        assert len(server.requests) == 4 + 2
        # Placed by task_id (and their prompts compared) once: their entries now carry the new file's tag (the one
        # line parsed is the settings check's).
        again = run_cli([*base, "--verbose"], cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert "resume: 6 line(s)" in _resume_line(again.stderr) and "1 parsed" in _resume_line(again.stderr)
    assert sorted(r["task_id"] for r in read_jsonl(out)) == ["t0", "t1", "t2", "t3", "t8", "t9"]


def test_a_second_runner_is_refused_and_leaves_the_index_alone(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("a\nb\nc\n")
    out = tmp_path / "out.jsonl"
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        base = ["--prompts_file", str(prompts), "--base_url", server.base_url, "--output_file", str(out), "--quiet"]
        assert run_cli([*base, "--limit", "2"], cwd=tmp_path).returncode == 0
        index = Path(index_path(str(out)))
        before = (out.read_bytes(), index.read_bytes())
        import fcntl

        with open(tmp_path / ".out.jsonl.lock", "a+") as lock:  # another runner holds the output
            fcntl.flock(lock, fcntl.LOCK_EX)
            refused = run_cli(base, cwd=tmp_path)
        assert refused.returncode == 2 and "in use by another mini-swe-runner" in refused.stderr
        assert (out.read_bytes(), index.read_bytes()) == before


def test_an_index_path_that_is_a_fifo_never_blocks_the_run_or_resume(tmp_path):
    """Issue 19 item 8: a FIFO where the index goes is not an index: neither read nor written (both would block)."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("a\nb\nc\n")
    out = tmp_path / "out.jsonl"
    index = Path(index_path(str(out)))
    os.mkfifo(index)
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        base = ["--prompts_file", str(prompts), "--base_url", server.base_url, "--output_file", str(out), "--quiet"]
        first = run_cli([*base, "--limit", "2"], cwd=tmp_path, timeout=60)  # a block would time out here
        assert first.returncode == 0, first.stderr
        assert stat.S_ISFIFO(index.stat().st_mode)  # the writer left it alone
        resumed = run_cli(base, cwd=tmp_path, timeout=60)
        assert resumed.returncode == 0, resumed.stderr
        assert len(server.requests) == 3
    assert sorted(r["prompt_index"] for r in read_jsonl(out)) == [0, 1, 2]


def test_a_full_filesystem_for_the_index_alone_never_stops_the_run(tmp_path):
    """Issue 19 item 8: the index lives on a 4 KB tmpfs (through a symlink), full after about 84 entries; the output
    has room. Every task is still recorded, and the next resume, not trusting the short index, parses the file."""
    with small_tmpfs(tmp_path / "small", "4k") as small:
        prompts = tmp_path / "p.jsonl"
        prompts.write_text("".join(f"prompt {n}\n" for n in range(120)))
        out = tmp_path / "out.jsonl"
        os.symlink(small / "index", index_path(str(out)))
        with ScriptedModelServer(lambda request: reply("ok")) as server:
            base = ["--prompts_file", str(prompts), "--base_url", server.base_url, "--output_file", str(out)]
            result = run_cli([*base, "--quiet"], cwd=tmp_path)
            assert result.returncode == 0, result.stderr
            assert len(read_jsonl(out)) == 120 and len(server.requests) == 120
            assert os.path.getsize(small / "index") < 64 + 48 * 120  # it did run out of room
            resumed = run_cli([*base, "--verbose"], cwd=tmp_path)
            assert resumed.returncode == 0, resumed.stderr
            assert "resume: 0 line(s)" in _resume_line(resumed.stderr) and "120 parsed" in _resume_line(resumed.stderr)
            assert len(server.requests) == 120
    assert len(read_jsonl(out)) == 120


def _write_rows(kind: str, directory: Path, rows: list[dict]) -> list[str]:
    """The prompts as a .json file, a .parquet file or a dataset folder; the CLI flags that read them."""
    if kind == "json":
        path = directory / "p.json"
        path.write_text(json.dumps(rows))
        return ["--prompts_file", str(path)]
    if kind == "parquet":
        import pyarrow
        import pyarrow.parquet

        path = directory / "p.parquet"
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), str(path))
        return ["--prompts_file", str(path)]
    import datasets

    path = directory / "p-dataset"
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return ["--dataset", str(path)]


@pytest.mark.parametrize("kind", ["json", "parquet", "dataset"])
def test_prompts_loaded_whole_are_resumed_from_the_index_too(tmp_path, kind):
    rows = [{"prompt": f"say {n}", "id": f"t{n}"} for n in range(6)]
    source = _write_rows(kind, tmp_path, rows)
    out = tmp_path / "out.jsonl"
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        base = [*source, "--base_url", server.base_url, "--output_file", str(out), "--quiet"]
        assert run_cli([*base, "--limit", "4"], cwd=tmp_path).returncode == 0
        resumed = run_cli([*base, "--verbose"], cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        # 4 placed on their rows from the index; 1 parsed: the first record of its settings hash (the settings check)
        assert "resume: 4 line(s)" in _resume_line(resumed.stderr) and "1 parsed" in _resume_line(resumed.stderr)
        assert len(server.requests) == 6  # the 4 done were skipped
        assert sorted(r["task_id"] for r in read_jsonl(out)) == [f"t{n}" for n in range(6)]
        if kind == "json":  # the file changed: another input, so its records are matched by task_id, parsed
            (tmp_path / "p.json").write_text(json.dumps(rows[::-1] + [{"prompt": "say 9", "id": "t9"}]))
            again = run_cli([*base, "--verbose"], cwd=tmp_path)
            assert again.returncode == 0, again.stderr
            assert "resume: 0 line(s)" in _resume_line(again.stderr)
            assert len(server.requests) == 7  # only t9 ran
    assert sorted(r["task_id"] for r in read_jsonl(out)) == sorted(
        [f"t{n}" for n in range(6)] + (["t9"] if kind == "json" else [])
    )


def test_a_shard_of_a_json_file_is_resumed_by_its_rows_in_the_whole_file(tmp_path):
    rows = [{"prompt": f"say {n}", "id": f"t{n}"} for n in range(8)]
    source = _write_rows("json", tmp_path, rows)
    out = tmp_path / "out.jsonl"
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        base = [*source, "--base_url", server.base_url, "--output_file", str(out), "--quiet", "--shard", "2/2"]
        assert run_cli([*base, "--limit", "2"], cwd=tmp_path).returncode == 0  # t1 and t3
        resumed = run_cli([*base, "--verbose"], cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert "resume: 2 line(s)" in _resume_line(resumed.stderr)
        assert len(server.requests) == 4  # then t5 and t7 only
    assert sorted(r["task_id"] for r in read_jsonl(out)) == ["t1", "t3", "t5", "t7"]
    assert sorted(r["prompt_index"] for r in read_jsonl(out)) == [1, 3, 5, 7]


# -- the prompts' check kept beside the output (.NAME.prompts) -------------------------------------------------------


def _settled(*paths: Path) -> None:
    """Wait until each file last changed long enough ago for its check to be kept (mini_swe_runner.SETTLED_NS):
    no tool can set a file's ctime back, so the test waits it out."""
    newest = max(path.stat().st_ctime_ns for path in paths)
    time.sleep(max(0.0, (newest + 2_100_000_000 - time.time_ns()) / 1e9))


PROMPT_ROWS = [
    json.dumps({"prompt": "say 0", "id": "t0"}),
    "plain text, «non-ASCII» and a tab\there",
    '{"prompt": "say \u2028 2 \\ud83d\\ude00", "id": "t2"}',  # U+2028 as it is, an emoji as JSON escapes
    json.dumps({"prompt": "say 3", "id": "t3", "repo": "r"}),
    json.dumps({"task": "  say 4  "}),
]


def _rows_file(tmp_path: Path, kind: str = "jsonl") -> tuple[Path, Path]:
    """PROMPT_ROWS as a prompts file (a .jsonl file, or a .json array of the same rows: the plain-text line as a JSON
    string, one element a line after the "["), and the output path the kept-check tests run into."""
    prompts = tmp_path / f"p.{kind}"
    if kind == "parquet":  # one table: a key a row lacks is null there
        import pyarrow
        import pyarrow.parquet

        rows = [json.loads(row) if row.startswith("{") else {"prompt": row} for row in PROMPT_ROWS]
        columns = {key: [row.get(key) for row in rows] for key in ("prompt", "id", "repo", "task")}
        pyarrow.parquet.write_table(pyarrow.table(columns), str(prompts))
    elif kind == "json":
        elements = [row if row.startswith("{") else json.dumps(row, ensure_ascii=False) for row in PROMPT_ROWS]
        prompts.write_text("[" + ",\n".join(elements) + "]\n", encoding="utf-8")
    else:
        prompts.write_text("".join(row + "\n" for row in PROMPT_ROWS), encoding="utf-8")
    return prompts, tmp_path / "out.jsonl"


KINDS = ["jsonl", "json", "parquet"]
"""The prompts files whose check is kept: JSONL (rows are lines), .json (the array's elements), .parquet (a table)."""


def _in_order(prompts: Path, out: Path, server: ScriptedModelServer) -> list[str]:
    """The CLI arguments of a quiet run of ``prompts`` into ``out``, one worker: the prompts in order."""
    return ["--prompts_file", str(prompts), "--base_url", server.base_url, "--output_file", str(out), "--quiet",
            "--workers", "1"]  # fmt: skip


def _texts(server: ScriptedModelServer) -> list[str]:
    """The prompt each request carried, as the model got it (its first user message)."""
    return [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in server.requests]


@pytest.mark.parametrize("kind", KINDS)
def test_a_resume_takes_the_kept_check_and_reads_only_the_rows_it_runs(tmp_path, kind):
    prompts, out = _rows_file(tmp_path, kind)
    kept = tmp_path / ".out.jsonl.prompts"
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        base = _in_order(prompts, out, server)
        assert run_cli([*base, "--limit", "1"], cwd=tmp_path).returncode == 0
        assert not kept.exists()  # the file had just been written: its times do not prove its content yet
        _settled(prompts)
        assert run_cli([*base, "--limit", "2", "--verbose"], cwd=tmp_path).returncode == 0
        assert kept.exists() and b"say" not in kept.read_bytes()  # offsets and flags, never a prompt's text
        resumed = run_cli([*base, "--verbose"], cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert "taken as checked by an earlier run" in resumed.stderr
        # each prompt once, byte for byte, in order
        assert _texts(server) == ["say 0", PROMPT_ROWS[1], "say \u2028 2 \U0001f600", "say 3", "  say 4  "]
    records = read_records(str(out)).records
    assert sorted(r["prompt_index"] for r in records) == [0, 1, 2, 3, 4]
    fields = {"repo": "r", **({"task": None} if kind == "parquet" else {})}  # a table's row has every column
    assert json.loads(records[3]["metadata"]["prompt_fields"]) == fields


def _edited_in_place(prompts: Path) -> None:
    """Row 2 broken, the file's size and mtime as they were (only its ctime tells)."""
    status = prompts.stat()
    with prompts.open("r+b") as handle:
        if prompts.suffix == ".parquet":
            handle.seek(-4, os.SEEK_END)
            handle.write(b"PAR2")  # its closing magic
        else:
            handle.seek(len(PROMPT_ROWS[0].encode()) + (3 if prompts.suffix == ".json" else 1))  # after "[" and ",\n"
            handle.write(b"{")
    os.utime(prompts, ns=(status.st_atime_ns, status.st_mtime_ns))


def _edited_and_touched(prompts: Path) -> None:
    _edited_in_place(prompts)
    os.utime(prompts)


def _replaced(prompts: Path) -> None:
    """Another file of the same size and mtime renamed over it (another inode)."""
    status = prompts.stat()
    other = prompts.with_name(f"other{prompts.suffix}")
    other.write_bytes(prompts.read_bytes())
    _edited_in_place(other)
    os.utime(other, ns=(status.st_atime_ns, status.st_mtime_ns))
    os.replace(other, prompts)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("change", [_edited_in_place, _edited_and_touched, _replaced])
def test_a_kept_check_is_not_taken_for_a_changed_prompts_file(tmp_path, change, kind):
    prompts, out = _rows_file(tmp_path, kind)
    _settled(prompts)
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        base = _in_order(prompts, out, server)
        assert run_cli([*base, "--limit", "1"], cwd=tmp_path).returncode == 0
        assert (tmp_path / ".out.jsonl.prompts").exists()
        change(prompts)
        # --overwrite: no record of the output is matched to a row (which would read every row again)
        again = run_cli([*base, "--overwrite"], cwd=tmp_path)
        broken = {
            "jsonl": "p.jsonl:2: not valid JSON",
            "json": "p.json: not valid JSON (Expecting property name enclosed in double quotes, line 2)",
            "parquet": "p.parquet is not a readable parquet file",
        }[kind]
        one_line_error(again, 2, broken)
        assert len(server.requests) == 1  # nothing was sent after the first run


def _offsets_start(data: bytes) -> int:
    """Where the kept offsets start: after the magic line, the digest line and the header line."""
    return data.index(b"\n", data.index(b"\n", len(b"mini-swe-runner checked prompts\n")) + 1) + 1


def _flipped(kept: Path) -> None:
    """Row 3's offset one byte off, the rest as it was: only the digest tells."""
    data = bytearray(kept.read_bytes())
    data[_offsets_start(data) + 8 * 3] ^= 0x01
    kept.write_bytes(bytes(data))


def _swapped_offsets(kept: Path) -> None:
    """Rows 2 and 3 exchanged in the kept offsets, the rest as it was: only the digest tells."""
    data = bytearray(kept.read_bytes())
    second, third = _offsets_start(data) + 8 * 2, _offsets_start(data) + 8 * 3
    data[second : second + 8], data[third : third + 8] = data[third : third + 8], data[second : second + 8]
    kept.write_bytes(bytes(data))


def _truncated(kept: Path) -> None:
    kept.write_bytes(kept.read_bytes()[:-7])


def _garbage(kept: Path) -> None:
    kept.write_bytes(b"\x00" * 100)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("damage", [_flipped, _swapped_offsets, _truncated, _garbage])
def test_a_damaged_kept_check_is_not_taken(tmp_path, damage, kind):
    prompts, out = _rows_file(tmp_path, kind)
    _settled(prompts)
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        base = _in_order(prompts, out, server)
        assert run_cli([*base, "--limit", "2"], cwd=tmp_path).returncode == 0
        damage(tmp_path / ".out.jsonl.prompts")
        resumed = run_cli([*base, "--verbose"], cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert "taken as checked" not in resumed.stderr
        assert _texts(server)[2:] == ["say \u2028 2 \U0001f600", "say 3", "  say 4  "]
    assert sorted(r["prompt_index"] for r in read_records(str(out)).records) == [0, 1, 2, 3, 4]
    again = run_cli([*base, "--verbose"], cwd=tmp_path)  # checked again, and kept whole again
    assert again.returncode == 0 and "taken as checked by an earlier run" in again.stderr


def test_a_bad_prompts_file_keeps_no_check(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}\n')
    _settled(prompts)
    result = run_cli(
        ["--prompts_file", str(prompts), "--base_url", "http://127.0.0.1:9/v1", "--output_file", str(tmp_path / "o")],
        cwd=tmp_path,
    )
    one_line_error(result, 2, "p.jsonl:2: id 'x' already used on line 1")
    assert not (tmp_path / ".o.prompts").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_records_the_index_does_not_place_are_matched_by_task_id_with_a_kept_check(tmp_path, kind):
    prompts, out = _rows_file(tmp_path, kind)
    _settled(prompts)
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        base = _in_order(prompts, out, server)
        assert run_cli([*base, "--limit", "3"], cwd=tmp_path).returncode == 0
        copy = tmp_path / "copy.jsonl"
        shutil.copyfile(out, copy)
        os.replace(copy, out)  # another inode: its index does not describe it, every record is parsed and located
        resumed = run_cli([*base, "--verbose"], cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert "taken as checked by an earlier run" in resumed.stderr and "resume: 0 line(s)" in resumed.stderr
        assert len(server.requests) == 5  # the 3 done were found by their task_ids and skipped
    assert sorted(r["prompt_index"] for r in read_records(str(out)).records) == [0, 1, 2, 3, 4]


def test_a_kept_check_left_half_written_by_a_killed_run_is_removed(tmp_path):
    prompts, out = _rows_file(tmp_path)
    ours = trajectory.prompts_check_temporary(trajectory.prompts_check_path(str(out)))
    assert Path(ours).name == f".out.jsonl.prompts-{os.getpid()}"  # this process's, named like the other leftovers
    leftover = tmp_path / ".out.jsonl.prompts-999999"  # a run killed while it wrote its check
    leftover.write_bytes(mini_swe_runner.CHECKED_PROMPTS_MAGIC)
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        assert run_cli([*_in_order(prompts, out, server), "--limit", "1"], cwd=tmp_path).returncode == 0
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.jsonl.index", ".out.jsonl.lock", "out.jsonl", "p.jsonl"]


# ---------------------------------------------------------------------------------------------------------------
# Resume through the batch driver: what is done is skipped, what failed runs again
# ---------------------------------------------------------------------------------------------------------------


def test_resume_skips_done_tasks_and_retries_failed_ones(out, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 6, duplicate_every=3)  # prompts 0 and 3 are duplicates

    def first_pass(request):
        text = request["messages"][1]["content"]
        return http_error(500, "down") if text.endswith(("1", "4")) else reply("ok")

    loaded = mini_swe_runner.load_prompts(str(prompts))
    with ScriptedModelServer(first_pass) as server:
        asyncio.run(mini_swe_runner.run_batch(make_config(server, out, max_retries=0), loaded))
    first = read_jsonl(out)
    assert sorted(r["exit_reason"] for r in first) == ["api_error"] * 2 + ["completed"] * 4
    with out.open("ab") as handle:  # a crash left a torn line behind
        handle.write(b'{"prompt_index": 9, "task_id": "torn", "conv')
    with ScriptedModelServer(lambda request: reply("second pass")) as server:
        outcome = asyncio.run(mini_swe_runner.run_batch(make_config(server, out), loaded))
        assert len(server.requests) == 2  # only the two failed tasks ran again
    records = read_jsonl(out)
    check_exactly_once(records, prompts)
    assert all(r["completed"] for r in records)
    assert outcome.summary["run"]["skipped_already_done"] == 4
    duplicates = [r for r in records if r["conversations"][1]["value"] == "duplicate prompt"]
    assert len(duplicates) == 2


def test_resume_over_a_prompt_file_skips_the_finished_samples(tmp_path):
    path = write_prompts(tmp_path / "p.jsonl", 6, duplicate_every=3)
    out = tmp_path / "out.jsonl"
    with ScriptedModelServer(quick_script()) as server:
        prompts = mini_swe_runner.load_prompts(str(path))
        first = asyncio.run(mini_swe_runner.run_batch(make_config(server, out), prompts[:4]))
        again = asyncio.run(mini_swe_runner.run_batch(make_config(server, out), prompts))
    assert first.summary["tasks"] == 4 and again.summary["tasks"] == 2
    assert again.summary["run"]["skipped_already_done"] == 4
    expected = {p.task_id for p in mini_swe_runner.parse_prompt_lines(path.read_text().splitlines(), "p")}
    assert {r["task_id"] for r in read_jsonl(out)} == expected and len(read_jsonl(out)) == 6


# ---------------------------------------------------------------------------------------------------------------
# Resume through the CLI: a record is reused only for the settings, prompt and verifier it was made for
# ---------------------------------------------------------------------------------------------------------------


def test_resume_refuses_records_of_other_settings(tmp_path):
    out = tmp_path / "out.jsonl"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("a\nb\n")
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        base = ["--prompts_file", str(prompts), "--base_url", server.base_url, "--output_file", str(out), "--quiet"]
        assert run_cli([*base, "--model", "model-a", "--limit", "1"], cwd=tmp_path).returncode == 0
        line = one_line_error(run_cli([*base, "--model", "model-b"], cwd=tmp_path), 2, "'model-a'", "--overwrite")
        assert "--resume_any" in line
        one_line_error(run_cli([*base, "--model", "model-a", "--temperature", "0.7"], cwd=tmp_path), 2, "sampling")
        one_line_error(
            run_cli([*base, "--model", "model-a", "--system_prompt", "Be brief."], cwd=tmp_path), 2, "system prompt"
        )
        assert len(read_jsonl(out)) == 1
        assert run_cli([*base, "--model", "model-a"], cwd=tmp_path).returncode == 0  # same settings: resumes
        assert len(read_jsonl(out)) == 2
        assert run_cli([*base, "--model", "model-b", "--resume_any", "--overwrite"], cwd=tmp_path).returncode == 0
    records = read_jsonl(out)
    assert {r["metadata"]["model"] for r in records} == {"model-b"}
    assert len({r["metadata"]["config_hash"] for r in records}) == 1


def _rows(*rows: dict) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _model_requests(server: ScriptedModelServer) -> int:
    return len(server.requests)


def test_resume_reuses_a_record_only_for_the_same_prompt_and_verifier(tmp_path):
    prompts = tmp_path / "p.jsonl"
    rows = [{"id": f"t{n}", "prompt": f"say {n}"} for n in range(3)]
    prompts.write_text(_rows(*rows))
    out = tmp_path / "out.jsonl"
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        base = ["--prompts_file", str(prompts), "--base_url", server.base_url, "--output_file", str(out), "--quiet"]
        assert run_cli([*base, "--verify", "true"], cwd=tmp_path).returncode == 0
        first = read_jsonl(out)
        hashes = {r["task_id"]: r["metadata"]["prompt_hash"] for r in first}
        assert len(set(hashes.values())) == 3 and all(len(h.split("-")) == 4 for h in hashes.values())
        assert run_cli([*base, "--verify", "true"], cwd=tmp_path).returncode == 0  # the same: all skipped
        assert _model_requests(server) == 3
        before = out.read_bytes()

        line = one_line_error(run_cli([*base, "--verify", "false"], cwd=tmp_path), 2, "verifier", "--overwrite")
        assert "--resume_any" in line
        template = ["--verify", "true", "--prompt_template", "Please {prompt}"]
        one_line_error(run_cli([*base, *template], cwd=tmp_path), 2, "prompt text")
        prompts.write_text(_rows(rows[0], {"id": "t1", "prompt": "say 1, louder"}, rows[2]))
        one_line_error(run_cli([*base, "--verify", "true"], cwd=tmp_path), 2, "'t1'", "prompt text")
        prompts.write_text(_rows(rows[0], {**rows[1], "cwd": str(tmp_path)}, rows[2]))
        one_line_error(run_cli([*base, "--verify", "true"], cwd=tmp_path), 2, "'t1'", "cwd")
        assert out.read_bytes() == before and _model_requests(server) == 3

        # --resume_any: the records of changed prompts are dropped and their tasks run again; the others are kept.
        prompts.write_text(_rows(rows[0], {"id": "t1", "prompt": "say 1, louder"}, rows[2]))
        resumed = run_cli([*base[:-1], "--verify", "true", "--resume_any"], cwd=tmp_path)  # without --quiet
        assert resumed.returncode == 0, resumed.stderr
        assert "1 record(s) made for another prompt" in resumed.stderr
        assert _model_requests(server) == 4 and server.requests[-1]["messages"][1]["content"] == "say 1, louder"
    records = {r["task_id"]: r for r in read_jsonl(out)}
    assert len(read_jsonl(out)) == 3
    assert records["t1"]["conversations"][1]["value"] == "say 1, louder"
    assert records["t1"]["metadata"]["prompt_hash"] != hashes["t1"]
    assert records["t0"]["metadata"]["prompt_hash"] == hashes["t0"]


def test_a_single_task_is_not_resumed_for_another_verifier(tmp_path):
    out = tmp_path / "out.jsonl"
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        base = ["--task", "say hi", "--base_url", server.base_url, "--output_file", str(out), "--quiet"]
        assert run_cli([*base, "--verify", "true"], cwd=tmp_path).returncode == 0
        one_line_error(run_cli([*base, "--verify", "exit 1"], cwd=tmp_path), 2, "verifier")
        assert run_cli([*base, "--verify", "true"], cwd=tmp_path).returncode == 0
        assert _model_requests(server) == 1


def test_records_of_an_older_version_resume_and_are_compared_on_what_they_hold(tmp_path):
    """Records without prompt_hash: their prompt text (the human turn), image and whether they were verified are
    compared; the same prompt resumes, another is refused."""
    prompts = tmp_path / "p.jsonl"
    rows = [{"id": f"t{n}", "prompt": f"say {n}"} for n in range(2)]
    prompts.write_text(_rows(*rows))
    out = tmp_path / "out.jsonl"
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        base = ["--prompts_file", str(prompts), "--base_url", server.base_url, "--output_file", str(out), "--quiet"]
        assert run_cli(base, cwd=tmp_path).returncode == 0
        old = []
        for one in read_jsonl(out):
            del one["metadata"]["prompt_hash"]
            old.append(json.dumps(one) + "\n")
        out.write_text("".join(old))
        assert run_cli(base, cwd=tmp_path).returncode == 0 and _model_requests(server) == 2  # resumed
        assert out.read_text() == "".join(old)  # kept as they were
        one_line_error(run_cli([*base, "--verify", "true"], cwd=tmp_path), 2, "verifier")
        prompts.write_text(_rows(rows[0], {"id": "t1", "prompt": "say 1, louder"}))
        one_line_error(run_cli(base, cwd=tmp_path), 2, "'t1'", "prompt text")
        assert _model_requests(server) == 2


def test_the_settings_hash_covers_templates_and_the_verifier(tmp_path):
    """Records whose prompts cannot be compared (an older version) are still refused for other templates: the
    settings hash covers them, and is unchanged for a run that uses none."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(_rows({"id": "t0", "prompt": "say 0", "verify": "true"}))
    out = tmp_path / "out.jsonl"
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        base = ["--prompts_file", str(prompts), "--base_url", server.base_url, "--output_file", str(out), "--quiet"]
        assert run_cli(base, cwd=tmp_path).returncode == 0
        plain_hash = read_jsonl(out)[0]["metadata"]["config_hash"]
        assert run_cli([*base, "--overwrite", "--verify_timeout", "30"], cwd=tmp_path).returncode == 0
        assert read_jsonl(out)[0]["metadata"]["config_hash"] != plain_hash
        line = one_line_error(run_cli(base, cwd=tmp_path), 2, "settings hash", "--verify_timeout")
        assert "--prompt_template" in line
        assert run_cli([*base, "--overwrite", "--prompt_template", "{prompt}"], cwd=tmp_path).returncode == 0
        assert read_jsonl(out)[0]["metadata"]["config_hash"] != plain_hash
        assert run_cli([*base, "--overwrite"], cwd=tmp_path).returncode == 0
        assert read_jsonl(out)[0]["metadata"]["config_hash"] == plain_hash


@pytest.mark.parametrize(
    "flags",
    [["--verify_in", "fresh"], ["--verify_failure_codes", "4"], ["--verify_baseline"], ["--collect_patch"]],
    ids=["verify_in", "failure_codes", "baseline", "collect_patch"],
)
def test_how_rewards_are_judged_is_part_of_the_settings_hash(tmp_path, flags):
    """A reward judged in a fresh sandbox is not one judged in the agent's (the attacks), and a record without its
    patch is not one with it: an output made one way is not resumed the other way, and a run without these flags
    keeps its hash."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(_rows({"id": "t0", "prompt": "say 0", "verify": "true"}))
    out = tmp_path / "out.jsonl"
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        base = ["--prompts_file", str(prompts), "--base_url", server.base_url, "--output_file", str(out), "--quiet"]
        assert run_cli(base, cwd=tmp_path).returncode == 0
        plain_hash = read_jsonl(out)[0]["metadata"]["config_hash"]
        one_line_error(run_cli([*base, *flags], cwd=tmp_path), 2, "settings hash", flags[0])
        assert run_cli([*base, *flags, "--overwrite"], cwd=tmp_path).returncode == 0
        assert read_jsonl(out)[0]["metadata"]["config_hash"] != plain_hash


def test_a_refused_run_changes_nothing_in_the_output(tmp_path):
    """An env_error record would be dropped by compaction: a run refused for its settings, or because its endpoint
    cannot be reached, leaves the output and its index byte for byte as they were."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(_rows({"id": "ok", "prompt": "a"}, {"id": "bad", "prompt": "b", "cwd": str(tmp_path / "no")}))
    out = tmp_path / "out.jsonl"
    index = tmp_path / ".out.jsonl.index"
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        base = ["--prompts_file", str(prompts), "--output_file", str(out), "--quiet"]
        assert run_cli([*base, "--base_url", server.base_url], cwd=tmp_path).returncode == 0
        assert sorted(r["exit_reason"] for r in read_jsonl(out)) == ["completed", "env_error"]
        before = (out.read_bytes(), index.read_bytes(), out.stat().st_ino)
        one_line_error(run_cli([*base, "--base_url", server.base_url, "--model", "other"], cwd=tmp_path), 2, "model")
        assert (out.read_bytes(), index.read_bytes(), out.stat().st_ino) == before
    unreachable = run_cli([*base, "--base_url", "http://127.0.0.1:9/v1"], cwd=tmp_path)
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr
    assert (out.read_bytes(), index.read_bytes(), out.stat().st_ino) == before
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        resumed = run_cli([*base[:-1], "--base_url", server.base_url], cwd=tmp_path)  # without --quiet
        assert "dropped 1 retryable" in resumed.stderr, resumed.stderr  # told once done (its task fails again)
    assert sorted(r["exit_reason"] for r in read_jsonl(out)) == ["completed", "env_error"]  # "bad" ran again


# ---------------------------------------------------------------------------------------------------------------
# Resume over damaged lines
# ---------------------------------------------------------------------------------------------------------------


def test_resume_skips_damaged_lines_with_one_warning(tmp_path):
    output = tmp_path / "o.jsonl"
    with ScriptedModelServer(lambda request: reply("ok")) as server:
        args = ["--task", "kept", "--output_file", str(output), "--base_url", server.base_url, "--model", "m"]
        assert run_cli(args, cwd=tmp_path).returncode == 0
        [good] = read_jsonl(output)
        damaged = [
            {**good, "task_id": ["a", "list"]},
            {**good, "task_id": "other", "exit_reason": ["api_error"]},
            {**good, "task_id": "again", "exit_reason": {"x": 1}},
        ]
        with output.open("a", encoding="utf-8") as handle:
            for record in damaged:
                handle.write(json.dumps(record) + "\n")
            handle.write("[" * 100_000 + "]" * 100_000 + "\n")
            handle.write('{"task_id": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
        result = run_cli(args, cwd=tmp_path)
        assert server.requests[1:] == []  # the good record was kept: nothing ran again
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if "torn or invalid" in line]
    assert len(warnings) == 1 and "5 torn or invalid line(s)" in warnings[0]
    assert read_jsonl(output) == [good]
