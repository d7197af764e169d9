"""The run report: `mini-swe-runner view` (one self-contained HTML file) and `mini-swe-runner stats` (a table).

Both read record files with trajectory.last_records (the last record of each task and sample wins, two streaming
passes) and share one summary, so the page and the terminal always agree.

The HTML file carries everything it needs: no network, no server, it works from file://. It stays small and
quick for large runs because every trajectory is embedded separately, gzip + base64, in a non-executable
<script> element and decoded by the page (DecompressionStream) only when it is opened; the summary and the task
list come from one small compressed index ahead of them. Base64 has no "<", so no data can close the element
that carries it, and the page puts every piece of record text into the DOM as text (textContent), never as HTML.
Writing streams: trajectories go to a temporary file as they are read, the index (one small row per record) is
kept in memory and written first, then the trajectories are copied after it. The page groups the rows by task_id:
the k samples of a task are one list row (passes out of k) and open side by side.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import zlib
from array import array
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

import trajectory

TRUNCATION_MARKER = re.compile(r"\[\.\.\. (\d+) characters omitted \.\.\.\]")
"""What environments.truncate_text puts where it cut a long output."""
VERIFICATION_STATES = ("passed", "failed", "error", "none")
"""passed/failed: the verifier ran; error: it could not run; none: the task has no verifier."""
DISTRIBUTIONS = (
    ("turns", "turns"),
    ("tokens", "tokens"),
    ("duration_s", "duration (s)"),
    ("output_chars", "output (chars)"),
)
GZIP_LEVEL = 5  # on the bench records: level 6 took 1.5x the time for 0.7% smaller output, level 9 3.6x for 1.4%


# ---------------------------------------------------------------------------------------------------------------
# Reading one record: the few figures the summary and the task list need
# ---------------------------------------------------------------------------------------------------------------


def tool_outputs(record: dict) -> list[str]:
    """The text of every tool result in a record (terminal results: their ``output``)."""
    outputs = []
    for turn in _turns(record):
        if turn.get("from") != "tool" or not isinstance(turn.get("value"), str):
            continue
        for payload in trajectory.parse_tool_value(turn["value"], lenient=True):
            content = payload.get("content") if isinstance(payload, dict) else None
            if isinstance(content, dict):
                content = content.get("output")
            if isinstance(content, str):
                outputs.append(content)
    return outputs


def _turns(record: dict) -> list[dict]:
    turns = record.get("conversations")
    return [turn for turn in turns if isinstance(turn, dict)] if isinstance(turns, list) else []


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0
    return value


def _cost(value: object) -> float | None:
    """A record's cost when it is a number (a foreign or damaged record's anything else: unknown)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _text(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else json.dumps(value, ensure_ascii=False)


@dataclass
class RecordFacts:
    """What the summary and the task list know of one record (the trajectory itself is not kept)."""

    task_id: str
    sample_index: int
    prompt_index: int
    exit_reason: str
    completed: bool
    verification: str
    """One of VERIFICATION_STATES."""
    model: str
    image: str
    env_type: str
    turns: int
    """Model replies in the trajectory (gpt turns)."""
    api_calls: int
    tokens: int
    duration_s: float
    output_chars: int
    """Characters of tool output the model was shown, summed over the trajectory."""
    tool_calls: int
    tool_failures: int
    truncated_outputs: int
    """Tool outputs cut by the runner's head+tail rule (they carry its marker)."""
    error: str
    prompt: str
    cost: float | None = None
    """USD, as the record says (null in records without a known cost, and in those written before cost was)."""
    cost_source: str = "unknown"
    usage: dict = field(default_factory=dict)
    """The record's token counts by kind (prompt, completion, reasoning, cached, ...), numbers only."""
    timestamp: str = ""
    """metadata.timestamp (ISO 8601), empty when the record has none."""
    baseline_flagged: bool = False
    """--verify_baseline found the prompt's verifier passing (or unable to judge) before the agent."""


def record_facts(record: dict) -> RecordFacts:
    """The facts of one record, whatever its shape: a damaged or foreign record gives zeros, never an exception."""
    turns = _turns(record)
    metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    usage = record.get("usage") if isinstance(record.get("usage"), dict) else {}
    terminal = (record.get("tool_stats") or {}).get("terminal") if isinstance(record.get("tool_stats"), dict) else {}
    terminal = terminal if isinstance(terminal, dict) else {}
    verification = record.get("verification")
    if not isinstance(verification, dict):
        state = "none"
    elif verification.get("error") is not None:
        state = "error"
    else:
        state = "passed" if verification.get("passed") is True else "failed"
    outputs = tool_outputs(record)
    prompt = next((turn.get("value") for turn in turns if turn.get("from") == "human"), "")
    sample_index = trajectory.record_key(record)[1]
    return RecordFacts(
        task_id=str(record.get("task_id")),
        sample_index=sample_index,
        prompt_index=int(_number(record.get("prompt_index"))),
        exit_reason=_text(record.get("exit_reason")) or "unknown",
        completed=record.get("completed") is True,
        verification=state,
        model=_text(metadata.get("model")) or "unknown",
        image=_text(metadata.get("image")) or "(none)",
        env_type=_text(metadata.get("env_type")) or "unknown",
        turns=sum(1 for turn in turns if turn.get("from") == "gpt"),
        api_calls=int(_number(record.get("api_calls"))),
        tokens=int(_number(usage.get("total_tokens"))),
        duration_s=float(_number(record.get("duration_s"))),
        output_chars=sum(len(output) for output in outputs),
        tool_calls=int(_number(terminal.get("count"))),
        tool_failures=int(_number(terminal.get("failure"))),
        truncated_outputs=sum(1 for output in outputs if TRUNCATION_MARKER.search(output)),
        error=_text(record.get("error")),
        prompt=_text(prompt),
        cost=_cost(record.get("cost")),
        cost_source=_text(record.get("cost_source")) or "unknown",
        usage={key: int(_number(value)) for key, value in usage.items() if isinstance(key, str)},
        timestamp=_text(metadata.get("timestamp")),
        baseline_flagged=trajectory.baseline_teaches_nothing(record),
    )


# ---------------------------------------------------------------------------------------------------------------
# The summary: one place computes it, `stats` prints it, `view` embeds it
# ---------------------------------------------------------------------------------------------------------------


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0
    rank = fraction * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "min": ordered[0] if ordered else 0,
        "p50": _percentile(ordered, 0.5),
        "p90": _percentile(ordered, 0.9),
        "max": ordered[-1] if ordered else 0,
        "mean": sum(ordered) / len(ordered) if ordered else 0,
    }


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of the chance that at least one of k samples passes, from n samples of which c
    passed (Chen et al., 2021): 1 - C(n-c, k) / C(n, k). Needs n >= k."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def verification_summary(
    rewards, verified_ids, k: int, until_passed: int | None, verifier_errors: int, baseline_flagged=()
) -> dict:
    """Pass figures over the prompts that have a verifier, from ``rewards`` ((task_id, sample_index) -> reward of
    each final sample; a mapping). A sample counts in pass@k whatever its ending (one that timed out is a sample
    that did not pass); pass_rate counts only samples whose verifier ran.

    With --until_passed a prompt's sampling stops once it passed, so c/n and the unbiased estimator overstate
    prompts that failed first and drop those that passed early (n < k). What stays exact: pass@1 from each prompt's
    first sample (always drawn), and pass@k as the share of prompts solved within their k samples (stopping after
    a pass does not change whether one of the first k passed), over the prompts whose sampling finished."""
    per_prompt: dict[str, dict[int, float | None]] = {task_id: {} for task_id in verified_ids}
    for (task_id, sample_index), reward in rewards.items():
        if task_id in per_prompt:
            per_prompt[task_id][sample_index] = reward
    verified = sum(reward is not None for rewards in per_prompt.values() for reward in rewards.values())
    passed = sum(reward == 1.0 for rewards in per_prompt.values() for reward in rewards.values())
    counts = [(len(rewards), sum(r == 1.0 for r in rewards.values())) for rewards in per_prompt.values() if rewards]
    if until_passed is None:
        at_1 = [c / n for n, c in counts]
        at_k = [pass_at_k(n, c, k) for n, c in counts if n >= k]
        method = "unbiased estimate from c of n samples per prompt"
    else:
        at_1 = [float(rewards[0] == 1.0) for rewards in per_prompt.values() if 0 in rewards]
        at_k = [float(c > 0) for n, c in counts if n >= k or c >= until_passed]
        method = "--until_passed: pass@1 from each prompt's first sample, pass@k as prompts solved within k samples"
    return {
        "prompts": len(per_prompt),
        "verified": verified,
        "passed": passed,
        "pass_rate": round(passed / verified, 4) if verified else None,
        "pass_at_1": round(sum(at_1) / len(at_1), 4) if at_1 else None,
        "k": k,
        "pass_at_k": round(sum(at_k) / len(at_k), 4) if at_k else None,
        "pass_at_k_prompts": len(at_k),
        "pass_at_k_method": method,
        "prompts_solved": sum(c > 0 for _, c in counts),
        "verifier_errors": verifier_errors,
        "baseline_flagged": sorted(baseline_flagged),
    }


@dataclass
class SampleOutcomes:
    """Every final sample of the prompts a summary covers. `stats` and `view` take them from the records they read;
    a run passes its own (earlier runs' samples of its prompts included, and prompts not sampled yet)."""

    rewards: object
    """(task_id, sample_index) -> reward of each final sample (a mapping)."""
    prompt_count: int
    """The prompts (a run's, after --shard; the distinct task ids for `stats`)."""
    verified_ids: object
    """The task_ids that have a verifier (an iterable, true when there is any; for `stats`: a verifier judged)."""
    k: int
    """The k of pass@k: --samples for a run, the most samples of one task for `stats`."""
    until_passed: int | None = None
    """--until_passed: a prompt's sampling stopped at its passes, so pass@k cannot be estimated from c of n."""


@dataclass
class SummaryBuilder:
    """THE summary (`--stats_file`, the runner's stderr lines, `stats`, `view`), accumulated one record at a time
    (memory: a few numbers per record)."""

    files: list[str]
    records: int = 0
    task_ids: set[str] = field(default_factory=set)
    completed: int = 0
    verification: Counter = field(default_factory=Counter)
    exit_reasons: Counter = field(default_factory=Counter)
    models: Counter = field(default_factory=Counter)
    images: Counter = field(default_factory=Counter)
    env_types: Counter = field(default_factory=Counter)
    totals: Counter = field(default_factory=Counter)
    usage: Counter = field(default_factory=Counter)
    values: dict[str, array] = field(
        default_factory=lambda: {key: array("d" if key == "duration_s" else "q") for key, _ in DISTRIBUTIONS}
    )
    """Each record's figure per distribution, 8 bytes each: a run's summary is built while it writes 1,000,000."""
    rewards: dict[tuple[str, int], float | None] | None = field(default_factory=dict)
    """(task_id, sample_index) -> reward, for pass@k; None when the caller brings its own SampleOutcomes."""
    verified_ids: set[str] = field(default_factory=set)
    baseline_flagged: set[str] = field(default_factory=set)
    first: str | None = None
    last: str | None = None
    cost: Decimal = Decimal(0)
    """The records' costs added as decimals: exactly the sum of the figures they carry."""
    costs: array = field(default_factory=lambda: array("d"))
    cost_sources: Counter = field(default_factory=Counter)

    def add(self, facts: RecordFacts) -> None:
        self.records += 1
        self.task_ids.add(facts.task_id)
        if self.rewards is not None:
            reward = {"passed": 1.0, "failed": 0.0}.get(facts.verification)
            self.rewards[(facts.task_id, facts.sample_index)] = reward
            if facts.verification in ("passed", "failed"):
                self.verified_ids.add(facts.task_id)
        self.completed += facts.completed
        self.verification[facts.verification] += 1
        self.exit_reasons[facts.exit_reason] += 1
        self.models[facts.model] += 1
        self.images[facts.image] += 1
        self.env_types[facts.env_type] += 1
        for key in ("api_calls", "tokens", "tool_calls", "tool_failures", "truncated_outputs"):
            self.totals[key] += getattr(facts, key)
        self.totals["duration_s"] += facts.duration_s
        self.usage.update(facts.usage)
        for key, _ in DISTRIBUTIONS:
            self.values[key].append(getattr(facts, key))
        if facts.baseline_flagged:
            self.baseline_flagged.add(facts.task_id)
        if facts.timestamp:
            self.first = facts.timestamp if self.first is None else min(self.first, facts.timestamp)
            self.last = facts.timestamp if self.last is None else max(self.last, facts.timestamp)
        if facts.cost is not None:
            self.cost += Decimal(repr(facts.cost))
            self.costs.append(facts.cost)
        self.cost_sources[facts.cost_source] += 1

    def summary(
        self,
        malformed_lines: int,
        command: list[str] | None = None,
        outcomes: SampleOutcomes | None = None,
        run: dict | None = None,
        spent_before: tuple[Decimal, int] | None = None,
    ) -> dict:
        """The one summary schema. ``run``: what only a run knows (null from `stats`/`view`)."""
        if outcomes is None:
            per_task = Counter(task_id for task_id, _ in self.rewards or {})
            k = max(per_task.values(), default=1)
            outcomes = SampleOutcomes(self.rewards or {}, len(self.task_ids), self.verified_ids, k)
        verifying = bool(outcomes.verified_ids) or bool(self.verification["error"])
        return {
            "command": command,
            "models": dict(self.models.most_common()),
            "time_range": {"first": self.first, "last": self.last},
            "files": self.files,
            "records": self.records,
            "malformed_lines": malformed_lines,
            "tasks": len(self.task_ids),
            "completed": self.completed,
            "completion_rate": round(self.completed / self.records, 4) if self.records else None,
            "exit_reasons": dict(self.exit_reasons.most_common()),
            "images": dict(self.images.most_common()),
            "env_types": dict(self.env_types.most_common()),
            "tokens": {**trajectory.empty_usage(), **self.usage},
            "totals": {key: self.totals[key] for key in sorted(self.totals)},
            "distributions": {key: distribution(self.values[key]) for key, _ in DISTRIBUTIONS},
            "verification": {
                **verification_summary(
                    outcomes.rewards,
                    outcomes.verified_ids,
                    outcomes.k,
                    outcomes.until_passed,
                    self.verification["error"],
                    self.baseline_flagged,
                ),
                "states": {state: self.verification[state] for state in VERIFICATION_STATES},
            }
            if verifying
            else None,
            "cost": self._cost(verifying, spent_before),
            "run": run,
        }

    def _cost(self, verifying: bool, before: tuple[Decimal, int] | None) -> dict:
        """USD over the records with a known cost; the total is the exact sum of their figures. Per completed task
        and per passed sample divide the same total (the money spent on the failures is what each success cost)."""
        known = len(self.costs)
        total = float(self.cost) if known else None
        ordered = sorted(self.costs)

        def per(count: int) -> float | None:
            return round(float(self.cost) / count, 10) if known and count else None

        return {
            "total": total,
            "records_with_cost": known,
            "records_without_cost": self.records - known,
            "sources": dict(self.cost_sources),
            "per_task": {key: round(value, 10) for key, value in distribution(ordered).items()} if known else None,
            "per_completed_task": per(self.completed),
            "per_passed_sample": per(self.verification["passed"]) if verifying else None,
            "output_before_run": None if before is None else float(before[0]),
            "output_tokens_before_run": None if before is None else before[1],
        }


def summarize(paths: list[str], command: list[str] | None = None) -> dict:
    """The summary of the last record of each task and sample in ``paths``."""
    builder = SummaryBuilder(files=list(paths))
    malformed = [0]
    for record in trajectory.last_records(paths, malformed):
        builder.add(record_facts(record))
    return builder.summary(malformed[0], command)


def _count(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 100 else f"{value:,.2f}"


def _usd(value: float) -> str:
    value = float(value)
    if value >= 1 or value == 0:
        return f"${value:,.2f}"
    whole, _, fraction = f"{value:.8f}".rstrip("0").partition(".")
    return f"${whole}.{fraction:0<2}"


def _counts(counter: dict) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in counter.items()) or "none"


_JSON_C1 = {code: f"\\u{code:04x}" for code in range(0x7F, 0xA0)}


def summary_json(summary: dict) -> str:
    """The summary as `stats --json` prints it. Record fields (models, images, exit reasons) reach the terminal with
    their control characters escaped: json escapes C0 itself; DEL and C1 (U+009B is CSI) become \\u escapes, the
    same JSON."""
    return json.dumps(summary, indent=2, ensure_ascii=False).translate(_JSON_C1)


def summary_table(summary: dict) -> str:
    """The summary as the plain-text table `stats` prints."""
    records = summary["records"]
    verification = summary["verification"]
    totals = summary["totals"]
    time_range = summary["time_range"]
    rows = [
        ("files", ", ".join(summary["files"])),
        ("time range", f"{time_range['first']} .. {time_range['last']}" if time_range["first"] else "unknown"),
        (
            "records",
            f"{records:,}"
            + (f" ({summary['malformed_lines']:,} malformed lines skipped)" if summary["malformed_lines"] else ""),
        ),
        ("tasks", f"{summary['tasks']:,} distinct task ids"),
        ("completed", f"{summary['completed']:,} ({summary['completion_rate'] or 0:.1%})"),
    ]
    if verification:
        states = verification["states"]
        rate = "" if verification["pass_rate"] is None else f" (pass rate {verification['pass_rate']:.1%})"
        rows.append(
            (
                "verified",
                f"{states['passed']:,} passed, {states['failed']:,} failed{rate}, "
                f"{states['error']:,} verifier errors, {states['none']:,} without a verifier",
            )
        )
    if verification and verification["k"] > 1 and verification["prompts"]:  # prompts: a verifier judged one
        rows.append(
            (
                "pass@k",
                f"{verification['prompts_solved']:,} of {verification['prompts']:,} verified tasks have a sample "
                f"that passed ({verification['prompts_solved'] / verification['prompts']:.1%}), k up to "
                f"{verification['k']}",
            )
        )
        rows.append(
            (
                "pass@1, @k",
                f"{verification['pass_at_1']}, pass@{verification['k']} {verification['pass_at_k']} (unbiased "
                f"estimate over the {verification['pass_at_k_prompts']:,} tasks with {verification['k']} samples)",
            )
        )
    rows += [
        ("exit reasons", _counts(summary["exit_reasons"])),
        ("models", _counts(summary["models"])),
        ("images", _counts(summary["images"])),
        ("environments", _counts(summary["env_types"])),
        ("api calls", f"{totals.get('api_calls', 0):,}"),
        ("tokens", f"{totals.get('tokens', 0):,}"),
        (
            "tool calls",
            f"{totals.get('tool_calls', 0):,} ({totals.get('tool_failures', 0):,} failed, "
            f"{totals.get('truncated_outputs', 0):,} outputs truncated)",
        ),
        ("task time", f"{totals.get('duration_s', 0):,.1f} s summed"),
    ]
    cost = summary.get("cost")
    if cost and cost["total"] is not None:
        rows.append(
            (
                "cost",
                f"{_usd(cost['total'])} over {cost['records_with_cost']:,} records"
                + (f" ({cost['records_without_cost']:,} without a cost)" if cost["records_without_cost"] else "")
                + f"; per task p50 {_usd(cost['per_task']['p50'])}, max {_usd(cost['per_task']['max'])}"
                + ("" if cost["per_completed_task"] is None else f"; per completed {_usd(cost['per_completed_task'])}")
                + (
                    ""
                    if cost["per_passed_sample"] is None
                    else f"; per passed sample {_usd(cost['per_passed_sample'])}"
                ),
            )
        )
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    header = ("per task", "min", "p50", "p90", "max", "mean")
    table = [header] + [
        (label, *(_count(summary["distributions"][key][stat]) for stat in ("min", "p50", "p90", "max", "mean")))
        for key, label in DISTRIBUTIONS
    ]
    widths = [max(len(row[column]) for row in table) for column in range(len(header))]
    lines.append("")
    for row in table:
        lines.append(
            "  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)).rstrip()
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The HTML report
# ---------------------------------------------------------------------------------------------------------------


def _gzip_base64(data: bytes) -> bytes:
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    return base64.b64encode(compressor.compress(data) + compressor.flush())


def _json_bytes(value: object) -> bytes:
    return trajectory.record_line(value).rstrip(b"\n")  # lone surrogates become U+FFFD, never invalid UTF-8


class _Interned:
    """Repeated strings (models, images, system turns) stored once in the index and referred to by number."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self._numbers: dict[str, int] = {}

    def __contains__(self, value: str) -> bool:
        return value in self._numbers

    def number(self, value: str) -> int:
        if value not in self._numbers:
            self._numbers[value] = len(self.values)
            self.values.append(value)
        return self._numbers[value]


PROMPT_INDEX_CHARS = 4000
"""How much of each prompt the task list carries for its search: the index must stay small enough to load at once
(10,000 SWE-style issue texts in full would be tens of MB); the trajectory view always shows the whole prompt."""
MAX_SHARED_SYSTEM_TURNS = 64
"""Distinct system turns stored once for all records; every record of a run has the same one (the tool template),
so this only bounds a file that mixes many runs."""


@dataclass
class ReportResult:
    records: int
    malformed_lines: int
    input_bytes: int
    output_bytes: int


def _index_row(number: int, facts: RecordFacts, models: _Interned, images: _Interned, system: int) -> list:
    """One task-list row. The order is the page's ROW_* constants."""
    return [
        number,
        facts.task_id,
        facts.sample_index,
        facts.prompt_index,
        facts.exit_reason,
        int(facts.completed),
        facts.verification,
        models.number(facts.model),
        images.number(facts.image),
        facts.turns,
        facts.tokens,
        facts.duration_s,
        facts.output_chars,
        facts.tool_calls,
        facts.tool_failures,
        facts.truncated_outputs,
        facts.error[:300],
        facts.prompt[:PROMPT_INDEX_CHARS],
        system,
    ]


def write_report(paths: list[str], output_file: str) -> ReportResult:
    """Write the HTML report of ``paths`` to ``output_file`` (atomically: a temporary file, then a rename).

    Memory stays flat whatever the input: trajectories go to a temporary file as they are read, and each index row
    goes straight into the index's compressor, so only compressed bytes and a few numbers per record are held."""
    builder = SummaryBuilder(files=[os.path.basename(path) for path in paths])
    malformed = [0]
    models, images, systems = _Interned(), _Interned(), _Interned()
    index = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    index_parts = [index.compress(b'{"rows":[')]
    directory = os.path.dirname(os.path.abspath(output_file))
    with tempfile.TemporaryFile(dir=directory) as trajectories:
        for number, record in enumerate(trajectory.last_records(paths, malformed)):
            facts = record_facts(record)
            builder.add(facts)
            record, system = _share_system_turn(record, systems)
            row = _index_row(number, facts, models, images, system)
            index_parts.append(index.compress((b"," if number else b"") + _json_bytes(row)))
            trajectories.write(b'<script type="application/x-gzip-base64" id="r%d">' % number)
            trajectories.write(_gzip_base64(_json_bytes(record)))
            trajectories.write(b"</script>\n")
        summary = builder.summary(malformed[0])
        tables = {"summary": summary, "models": models.values, "images": images.values, "systems": systems.values}
        index_parts.append(index.compress(b"]," + _json_bytes(tables)[1:]))  # the tables' "{" is the rows' ","
        index_parts.append(index.flush())
        trajectories.seek(0)
        temp = tempfile.NamedTemporaryFile(dir=directory, prefix=".report-", suffix=".html", delete=False)
        try:
            with temp:
                temp.write(_page_head(base64.b64encode(b"".join(index_parts))))
                shutil.copyfileobj(trajectories, temp, 1 << 20)
                temp.write(b"</body>\n</html>\n")
            os.chmod(temp.name, 0o644)
            os.replace(temp.name, output_file)
        except BaseException:
            os.unlink(temp.name)
            raise
    return ReportResult(
        records=summary["records"],
        malformed_lines=malformed[0],
        input_bytes=sum(os.path.getsize(path) for path in paths),
        output_bytes=os.path.getsize(output_file),
    )


def _share_system_turn(record: dict, systems: _Interned) -> tuple[dict, int]:
    """The record without its system turn's text when that text is stored once in the index (every record of a run
    has the same tool template), and the text's number there (-1: kept in the record)."""
    turns = record.get("conversations")
    if not (turns and isinstance(turns, list) and isinstance(turns[0], dict) and turns[0].get("from") == "system"):
        return record, -1
    value = turns[0].get("value")
    if not isinstance(value, str) or (value not in systems and len(systems.values) >= MAX_SHARED_SYSTEM_TURNS):
        return record, -1
    # The page puts the text back; a shallow copy leaves the caller's record alone.
    return {**record, "conversations": [{**turns[0], "value": ""}, *turns[1:]]}, systems.number(value)


def _page_head(index_b64: bytes) -> bytes:
    script = PAGE_SCRIPT.encode()
    style = PAGE_STYLE.encode()
    # Only our own script and style may run: a hash-pinned policy, so even text that slipped into the page as
    # markup could execute nothing, and no request can leave the page (default-src 'none').
    policy = (
        "default-src 'none'; "
        f"script-src 'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'; "
        f"style-src 'sha256-{base64.b64encode(hashlib.sha256(style).digest()).decode()}'; "
        "img-src data:"
    )
    return b"".join(
        [
            b'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
            b'<meta http-equiv="Content-Security-Policy" content="',
            policy.encode(),
            b'">\n',
            b'<meta name="viewport" content="width=device-width, initial-scale=1">\n',
            b"<title>mini-swe-runner report</title>\n<style>",
            style,
            b"</style>\n</head>\n<body>\n",
            PAGE_BODY.encode(),
            b'<script type="application/x-gzip-base64" id="index">',
            index_b64,
            b"</script>\n",
            b"<script>",
            script,
            b"</script>\n",
        ]
    )


# ---------------------------------------------------------------------------------------------------------------
# The page: markup skeleton, style and script. Record text only ever enters the DOM through text nodes.
# ---------------------------------------------------------------------------------------------------------------
# Strings, so the report stays one file written by one module (the package ships modules, no data files); linted by
# tests/test_report.py's "page's own code" section: balanced markup, script parsed and run in Chromium without a
# console message, every style rule kept.

PAGE_BODY = """<link rel="icon" href="data:,">
<header><h1>mini-swe-runner report</h1><span id="files"></span><span id="status">Loading…</span></header>
<main>
<section id="overview">
<div id="cards" class="cards"></div>
<div id="breakdowns" class="breakdowns"></div>
<h2 id="charts-title">Per task</h2>
<div id="charts" class="charts"></div>
</section>
<section id="tasks">
<div id="filters" class="filters">
<label>Exit reason <select id="f-exit"></select></label>
<label>Outcome <select id="f-outcome"></select></label>
<label>Model <select id="f-model"></select></label>
<label>Image <select id="f-image"></select></label>
<label class="grow">Search prompts <input id="f-text" type="search"
  placeholder="words in the prompt, task id or error"></label>
<label>Sort <select id="f-sort"></select></label>
<button id="f-reset" type="button">Reset</button>
</div>
<div id="count" class="count"></div>
<div id="list-head" class="row head"></div>
<div id="list" class="list" tabindex="0"><div id="list-spacer"></div></div>
</section>
<section id="trajectory" hidden>
<nav class="trajnav"><a id="t-back" href="#/">← All tasks</a><button id="t-prev" type="button">↑ Previous</button>
<button id="t-next" type="button">↓ Next</button><span id="t-position"></span></nav>
<div id="t-body"></div>
</section>
</main>
"""

PAGE_STYLE = """
:root { --bg: #fff; --fg: #1d2329; --muted: #647080; --line: #dde2e8; --card: #f6f8fa; --accent: #2563eb;
  --good: #15803d; --bad: #b91c1c; --warn: #b45309; --bar: #93b4f0; --code: #f3f4f6; --mark: #fde68a; }
@media (prefers-color-scheme: dark) { :root { --bg: #14171b; --fg: #e3e7ec; --muted: #98a2ae; --line: #2c333b;
  --card: #1b2026; --accent: #7aa7ff; --good: #4ade80; --bad: #f87171; --warn: #fbbf24; --bar: #3d5f9e;
  --code: #1f252c; --mark: #6b5a12; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background: var(--bg);
  color: var(--fg); }
header { display: flex; gap: 1em; align-items: baseline; padding: 10px 18px; border-bottom: 1px solid var(--line); }
header h1 { font-size: 17px; margin: 0; }
#files { color: var(--muted); overflow: hidden; text-overflow: ellipsis; white-space: nowrap; flex: 1; }
#status { color: var(--muted); }
main { padding: 12px 18px 40px; max-width: 1500px; margin: 0 auto; }
h2 { font-size: 15px; margin: 16px 0 6px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px;
  min-width: 130px; }
.card .value { font-size: 21px; font-weight: 600; }
.card .label { color: var(--muted); font-size: 12px; }
.card.warn .value { color: var(--warn); }
.breakdowns { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 14px; margin-top: 12px; }
.breakdown h3 { font-size: 13px; margin: 0 0 4px; color: var(--muted); font-weight: 600; }
.bd-row { display: grid; grid-template-columns: minmax(90px, 42%) 1fr 60px; gap: 8px; align-items: center;
  cursor: pointer; padding: 1px 4px; border-radius: 4px; }
.bd-row:hover { background: var(--card); }
.bd-name { overflow-wrap: anywhere; }
.bd-bar { height: 10px; background: var(--bar); border-radius: 3px; }
.bd-count { text-align: right; font-variant-numeric: tabular-nums; color: var(--muted); }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 14px; }
.chart { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 8px 10px; }
.chart h3 { font-size: 13px; margin: 0; }
.chart .sub { color: var(--muted); font-size: 12px; }
.chart svg { width: 100%; height: 120px; display: block; }
.chart rect.b { fill: var(--accent); opacity: .75; }
.chart rect.b:hover { opacity: 1; }
.chart text { fill: var(--muted); font-size: 10px; }
.chart line { stroke: var(--line); }
.filters { display: flex; flex-wrap: wrap; gap: 10px; align-items: end; margin: 18px 0 8px; }
.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); gap: 2px; }
.filters .grow { flex: 1; min-width: 220px; }
select, input, button { font: inherit; color: var(--fg); background: var(--bg); border: 1px solid var(--line);
  border-radius: 6px; padding: 4px 6px; }
button { cursor: pointer; }
.count { color: var(--muted); margin-bottom: 4px; }
.row { display: grid; grid-template-columns: 220px 26px 52px 130px 150px 52px 70px 66px 70px 1fr; gap: 8px;
  align-items: center;
  height: 28px; padding: 0 8px; border-bottom: 1px solid var(--line); white-space: nowrap; overflow: hidden; }
.row > span { overflow: hidden; text-overflow: ellipsis; }
.row.head { font-weight: 600; color: var(--muted); font-size: 12px; border-bottom: 2px solid var(--line); }
.row .num { text-align: right; font-variant-numeric: tabular-nums; }
.list { height: 60vh; min-height: 280px; overflow-y: auto; position: relative; border: 1px solid var(--line);
  border-top: 0; }
#list-spacer { position: relative; }
a.row { position: absolute; left: 0; right: 0; color: inherit; text-decoration: none; }
a.row:hover, a.row:focus { background: var(--card); outline: none; }
.ok { color: var(--good); } .fail { color: var(--bad); } .muted { color: var(--muted); }
.badge { display: inline-block; border-radius: 10px; padding: 0 8px; font-size: 12px; border: 1px solid var(--line);
  margin-right: 6px; white-space: nowrap; }
.badge.ok { border-color: var(--good); } .badge.fail { border-color: var(--bad); }
.badge.warn { border-color: var(--warn); color: var(--warn); }
.trajnav { display: flex; gap: 10px; align-items: center; margin-bottom: 10px; position: sticky; top: 0;
  background: var(--bg); padding: 6px 0; z-index: 2; border-bottom: 1px solid var(--line); }
.trajnav a { color: var(--accent); }
#t-position { color: var(--muted); }
.t-title { font-size: 17px; margin: 4px 0 6px; word-break: break-all; }
.t-group { font-size: 17px; margin: 4px 0 8px; word-break: break-all; }
.samples { display: grid; grid-auto-flow: column; grid-auto-columns: minmax(440px, 1fr); gap: 14px; overflow-x: auto; }
.sample { min-width: 0; border-left: 2px solid var(--line); padding-left: 10px; }
pre.diff .d-add { color: var(--good); } pre.diff .d-del { color: var(--bad); }
pre.diff .d-hunk { color: var(--accent); } pre.diff .d-file { font-weight: 600; }
.errorbox { border: 1px solid var(--bad); background: color-mix(in srgb, var(--bad) 8%, var(--bg)); border-radius: 6px;
  padding: 6px 10px; margin: 8px 0; white-space: pre-wrap; word-break: break-word; }
.stats { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 2px 16px; margin: 8px 0; }
.stats div { overflow-wrap: anywhere; }
.stats .k { color: var(--muted); margin-right: 6px; }
.turn { border: 1px solid var(--line); border-radius: 8px; margin: 10px 0; overflow: hidden; }
.turn > .who { background: var(--card); padding: 4px 10px; font-weight: 600; font-size: 12px; color: var(--muted);
  border-bottom: 1px solid var(--line); }
.turn.human > .who { color: var(--accent); }
.turn > .body { padding: 6px 10px; }
.text { white-space: pre-wrap; word-break: break-word; margin: 4px 0; }
pre { background: var(--code); border-radius: 6px; padding: 6px 8px; margin: 4px 0; white-space: pre-wrap;
  word-break: break-all; font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; max-height: none; }
pre.cmd { border-left: 3px solid var(--accent); }
details > summary { cursor: pointer; color: var(--muted); margin: 2px 0; }
details.reasoning > pre { font-family: inherit; font-size: 13px; font-style: italic; }
.marker { background: var(--mark); border-radius: 3px; padding: 0 3px; font-weight: 600; }
.result { border-top: 1px dashed var(--line); padding: 4px 0; }
.result:first-child { border-top: 0; }
.note { color: var(--warn); font-size: 12px; }
"""

PAGE_SCRIPT = r"""
"use strict";
// Row layout of the index: report.py _index_row.
const R_NUM = 0, R_ID = 1, R_SAMPLE = 2, R_PINDEX = 3, R_EXIT = 4, R_COMPLETED = 5, R_VERIF = 6, R_MODEL = 7,
  R_IMAGE = 8, R_TURNS = 9, R_TOKENS = 10, R_DURATION = 11, R_OUTPUT = 12, R_TOOLS = 13, R_TFAIL = 14,
  R_TRUNC = 15, R_ERROR = 16, R_PROMPT = 17, R_SYSTEM = 18;
const ROW_HEIGHT = 28;
const FOLD_LINES = 30, FOLD_CHARS = 4000, PREVIEW_LINES = 12;
const MARKER = /\[\.\.\. (\d+) characters omitted \.\.\.\]/g;
const PATCH_CUT = /\[mini-swe-runner: patch cut at \d+ of \d+ bytes\]|\[\.\.\. \d+ characters omitted \.\.\.\]/;
// PATCH_CUT is trajectory.PATCH_CUT_MARKER (tests/test_report.py checks they are the same pattern).
const OUTCOMES = [["", "all"], ["completed", "completed"], ["incomplete", "not completed"],
  ["passed", "verifier passed"], ["failed", "verifier failed"], ["error", "verifier could not run"],
  ["none", "no verifier"]];
const SORTS = [["", "file order"],
  ["duration-desc", "duration, longest first"], ["duration-asc", "duration, shortest first"],
  ["turns-desc", "turns, most first"], ["turns-asc", "turns, fewest first"],
  ["tokens-desc", "tokens, most first"], ["tokens-asc", "tokens, fewest first"],
  ["output-desc", "output size, largest first"], ["output-asc", "output size, smallest first"]];
const SORT_COLUMN = {duration: R_DURATION, turns: R_TURNS, tokens: R_TOKENS, output: R_OUTPUT};

const state = {index: null, rows: [], order: [], searchText: null, cache: new Map(), openNum: null, groups: [],
  groupIndex: [], matched: []};
const $ = (id) => document.getElementById(id);

// ---- DOM helpers: every string becomes a text node, never markup ----
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  if (props) for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "title") node.title = value;
    else if (key === "href") node.href = value;
    else node.dataset[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
function svg(tag, attrs, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}
const int = (n) => Math.round(n).toLocaleString("en-US");
function compact(n) {
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (n / 1e3).toFixed(0) + "k";
  if (a >= 1e3) return (n / 1e3).toFixed(1) + "k";
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}
function seconds(s) {
  if (s >= 3600) return (s / 3600).toFixed(1) + " h";
  if (s >= 120) return (s / 60).toFixed(1) + " min";
  return s.toFixed(s >= 10 ? 0 : 1) + " s";
}
const percent = (part, whole) => whole ? (100 * part / whole).toFixed(1) + "%" : "–";

// ---- decoding: gzip + base64 from a non-executable script element ----
async function gunzipBase64(text) {
  const bytes = Uint8Array.fromBase64 ? Uint8Array.fromBase64(text.trim())
    : Uint8Array.from(atob(text.trim()), (c) => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return await new Response(stream).text();
}
function parsed() { return document.readyState !== "loading" ? Promise.resolve() :
  new Promise((resolve) => document.addEventListener("DOMContentLoaded", resolve, {once: true})); }
async function loadRecord(num) {
  if (state.cache.has(num)) return state.cache.get(num);
  let holder = $("r" + num);
  if (!holder) { await parsed(); holder = $("r" + num); }
  if (!holder) throw new Error("this report holds no trajectory number " + num);
  const record = JSON.parse(await gunzipBase64(holder.textContent));
  const row = state.rows[num];
  if (row && row[R_SYSTEM] >= 0 && Array.isArray(record.conversations) && record.conversations[0])
    record.conversations[0].value = state.index.systems[row[R_SYSTEM]];
  state.cache.set(num, record);
  if (state.cache.size > 8) state.cache.delete(state.cache.keys().next().value);
  return record;
}

// ---- Hermes turns: each block's JSON is decoded from its opening tag on, by scanning (a command or an output may
// itself contain the closing tag, so the closing tag is never searched for) ----
function skipSpace(text, at) { while (at < text.length && " \t\r\n".includes(text[at])) at++; return at; }
function jsonEnd(text, at) {
  // End (exclusive) of the JSON object or array starting at `at`, or -1.
  const open = text[at];
  if (open !== "{" && open !== "[") return -1;
  let depth = 0, inString = false;
  for (let i = at; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === "{" || c === "[") depth++;
    else if (c === "}" || c === "]") { depth--; if (depth === 0) return i + 1; }
  }
  return -1;
}
function readBlock(text, at, tag) {
  // One <tag> JSON </tag> block starting at `at` (after optional space): {payload, end} or null.
  at = skipSpace(text, at);
  const open = "<" + tag + ">", close = "</" + tag + ">";
  if (!text.startsWith(open, at)) return null;
  const start = skipSpace(text, at + open.length);
  const end = jsonEnd(text, start);
  if (end < 0) return null;
  let payload;
  try { payload = JSON.parse(text.slice(start, end)); } catch (e) { return null; }
  const after = skipSpace(text, end);
  if (!text.startsWith(close, after)) return null;
  return {payload, end: after + close.length};
}
function readBlocks(text, at, tag) {
  // Blocks from `at` to the end: {blocks, rest} where rest is the index of the first text that is not a block.
  const blocks = [];
  for (;;) {
    const block = readBlock(text, at, tag);
    if (!block) return {blocks, rest: skipSpace(text, at) >= text.length ? text.length : at};
    blocks.push(block.payload);
    at = block.end;
  }
}
function parseGpt(value) {
  // <think>reasoning</think> content <tool_call>...</tool_call>...: the calls are the earliest run of blocks
  // that reaches the end of the turn; text that merely mentions a tag stays text.
  let callsAt = value.length, calls = [];
  for (let at = value.indexOf("<tool_call>"); at !== -1; at = value.indexOf("<tool_call>", at + 1)) {
    const found = readBlocks(value, at, "tool_call");
    if (found.blocks.length && found.rest === value.length) { callsAt = at; calls = found.blocks; break; }
  }
  let head = value.slice(0, callsAt), reasoning = null;
  if (head.startsWith("<think>")) {
    const end = head.lastIndexOf("</think>");
    if (end !== -1) {
      reasoning = head.slice(7, end).replace(/^\n/, "").replace(/\n$/, "");
      head = head.slice(end + 8).replace(/^\n/, "");
    }
  }
  return {reasoning, content: head.replace(/\n$/, ""), calls};
}

// ---- rendering pieces of a trajectory ----
function textWithMarkers(parent, text) {
  // The runner's truncation marker is shown as a highlighted span, everything else as plain text.
  let last = 0;
  for (const match of text.matchAll(MARKER)) {
    if (match.index > last) parent.append(document.createTextNode(text.slice(last, match.index)));
    parent.append(el("span", {class: "marker", title: "the runner cut this output here"}, match[0]));
    last = match.index + match[0].length;
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
  return parent;
}
function foldedText(text, label, cls) {
  // Short text as it is; long text as a preview plus a fold that renders the whole only when opened.
  const lines = text.split("\n").length;
  const wrap = el("div", {class: "folded"});
  if (lines <= FOLD_LINES && text.length <= FOLD_CHARS) {
    wrap.append(textWithMarkers(el("pre", {class: cls}), text));
    return wrap;
  }
  const preview = text.split("\n", PREVIEW_LINES).join("\n").slice(0, 1500);
  const previewPre = textWithMarkers(el("pre", {class: cls + " preview"}), preview + "\n…");
  const details = el("details", {class: "fold"}, el("summary", null,
    `${label}: show all ${int(lines)} lines (${int(text.length)} characters)`));
  details.addEventListener("toggle", () => {
    if (details.open && !details.querySelector("pre")) details.append(textWithMarkers(el("pre", {class: cls}), text));
    previewPre.hidden = details.open;
  });
  wrap.append(previewPre, details);
  return wrap;
}
const asText = (v) => typeof v === "string" ? v : JSON.stringify(v, null, 2);
function renderCall(call) {
  const box = el("div", {class: "call"});
  if (!call || typeof call !== "object" || Array.isArray(call)) {
    box.append(el("pre", null, asText(call)));
    return box;
  }
  const args = call.arguments;
  const name = typeof call.name === "string" ? call.name : asText(call.name);
  if (args && typeof args === "object" && !Array.isArray(args) && typeof args.command === "string") {
    const extra = Object.fromEntries(Object.entries(args).filter(([k]) => k !== "command"));
    box.append(el("pre", {class: "cmd", title: name}, "$ " + args.command));
    if (Object.keys(extra).length) box.append(el("div", {class: "muted"}, name + " " +
      Object.entries(extra).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ")));
    if (name !== "terminal") box.prepend(el("div", {class: "muted"}, "tool: " + name));
  } else if (typeof args === "string") {
    box.append(el("div", {class: "note"},
      `${name}: arguments that are not a JSON object, exactly as the model sent them:`),
      el("pre", {class: "cmd"}, args));
  } else {
    box.append(el("div", {class: "muted"}, "tool: " + name), el("pre", {class: "cmd"}, asText(args)));
  }
  return box;
}
function renderResult(payload) {
  const box = el("div", {class: "result"});
  const content = payload && typeof payload === "object" ? payload.content : payload;
  if (content && typeof content === "object" && !Array.isArray(content) && "output" in content) {
    const code = content.exit_code;
    const head = el("div", null, el("span", {class: "badge " + (code === 0 && !content.error ? "ok" : "fail")},
      "exit " + (code === null || code === undefined ? "none" : code)));
    const output = typeof content.output === "string" ? content.output : asText(content.output);
    const cut = [...output.matchAll(MARKER)];
    if (cut.length) head.append(el("span", {class: "badge warn"}, "truncated: " +
      cut.map((m) => int(Number(m[1]))).join(" + ") + " characters omitted"));
    if (payload.name && payload.name !== "terminal") head.append(el("span", {class: "muted"}, String(payload.name)));
    box.append(head);
    if (content.error !== null && content.error !== undefined) box.append(el("div", {class: "errorbox"},
      "error: " + asText(content.error)));
    box.append(output ? foldedText(output, "output", "out") : el("div", {class: "muted"}, "(no output)"));
  } else {
    box.append(foldedText(asText(content), "result", "out"));
  }
  return box;
}
function turnBox(kind, label, ...children) {
  return el("div", {class: "turn " + kind}, el("div", {class: "who"}, label), el("div", {class: "body"}, ...children));
}
function renderTurn(turn, gptNumber) {
  const from = turn && typeof turn === "object" ? turn.from : undefined;
  const raw = turn && typeof turn === "object" ? turn.value : turn;
  const value = typeof raw === "string" ? raw : asText(raw ?? "");
  if (from === "system") {
    return turnBox("system", "system", el("details", null, el("summary", null,
      `tool definitions and calling template (${int(value.length)} characters)`), el("pre", null, value)));
  }
  if (from === "human") return turnBox("human", "prompt", el("div", {class: "text"}, value));
  if (from === "gpt") {
    const {reasoning, content, calls} = parseGpt(value);
    const body = [];
    if (reasoning !== null) body.push(el("details", {class: "reasoning"}, el("summary", null,
      `reasoning (${int(reasoning.length)} characters)`), el("pre", null, reasoning)));
    if (content) body.push(el("div", {class: "text"}, content));
    for (const call of calls) body.push(renderCall(call));
    if (!body.length) body.push(el("div", {class: "muted"}, "(empty reply)"));
    return turnBox("gpt", `model · turn ${gptNumber}`, ...body);
  }
  if (from === "tool") {
    const found = readBlocks(value, 0, "tool_response");
    const body = found.blocks.map(renderResult);
    if (found.rest < value.length) body.push(el("div", {class: "note"},
      "not a tool_response block; shown as stored:"), el("pre", null, value.slice(found.rest)));
    return turnBox("tool", found.blocks.length > 1 ? `tool results (${found.blocks.length})` : "tool result", ...body);
  }
  return turnBox("other", String(from), el("pre", null, value));
}
function renderPatch(patch) {
  // The task's final git diff: a summary line, the diff itself drawn only when opened (it can be long).
  let added = 0, removed = 0;
  for (const line of patch.split("\n")) {
    if (line.startsWith("+") && !line.startsWith("+++")) added++;
    else if (line.startsWith("-") && !line.startsWith("---")) removed++;
  }
  const files = (patch.match(/^diff --git /gm) || []).length;
  const summary = el("summary", null, patch ? `patch: ${int(files)} file(s), +${int(added)} −${int(removed)}` :
    "patch: empty (the agent changed nothing)");
  if (PATCH_CUT.test(patch)) {
    summary.append(" ", el("span", {class: "badge warn"}, "truncated: not the whole diff"));
  }
  const box = el("details", {class: "patch"}, summary);
  box.addEventListener("toggle", () => {
    if (!box.open || box.querySelector("pre")) return;
    const pre = el("pre", {class: "diff"}), lines = patch.split("\n");
    lines.forEach((line, i) => {
      const kind = /^(diff |\+\+\+ |--- )/.test(line) ? "d-file" : line.startsWith("@@") ? "d-hunk"
        : line.startsWith("+") ? "d-add" : line.startsWith("-") ? "d-del" : "";
      pre.append(textWithMarkers(el("span", kind ? {class: kind} : null), i < lines.length - 1 ? line + "\n" : line));
    });
    box.append(pre);
  });
  return box;
}
function stat(key, value) {
  return el("div", {title: `${key}: ${value}`}, el("span", {class: "k"}, key), String(value));
}
function renderRecord(record, row) {
  const body = [];
  const sample = row[R_SAMPLE] ? ` · sample ${row[R_SAMPLE]}` : "";
  body.push(el("div", {class: "t-title"}, String(record.task_id) + sample));
  const badges = el("div");
  badges.append(el("span", {class: "badge " + (record.completed === true ? "ok" : "fail")},
    String(record.exit_reason)));
  if (record.completed !== true) badges.append(el("span", {class: "badge fail"}, "not completed"));
  const v = record.verification;
  if (v && typeof v === "object") {
    const kind = v.error !== null && v.error !== undefined ? "warn" : v.passed ? "ok" : "fail";
    const label = kind === "warn" ? "verifier could not run" : v.passed ? "verifier passed" : "verifier failed";
    badges.append(el("span", {class: "badge " + kind}, label));
  }
  body.push(badges);
  if (record.error !== null && record.error !== undefined) body.push(el("div", {class: "errorbox"},
    "error: " + asText(record.error)));
  const usage = record.usage || {}, tools = (record.tool_stats || {}).terminal || {}, meta = record.metadata || {};
  const sampling = meta.sampling && typeof meta.sampling === "object"
    ? Object.entries(meta.sampling).filter(([, x]) => x !== null).map(([k, x]) => `${k}=${x}`).join(" ") : "";
  const stats = el("div", {class: "stats"},
    stat("model", meta.model), stat("environment", meta.env_type), stat("image", meta.image ?? "(none)"),
    stat("prompt index", record.prompt_index), stat("api calls", record.api_calls), stat("turns", row[R_TURNS]),
    stat("tool calls", `${tools.count ?? 0} (${tools.failure ?? 0} failed)`),
    stat("tokens",
      `${int(usage.total_tokens || 0)} (prompt ${int(usage.prompt_tokens || 0)}, ` +
      `completion ${int(usage.completion_tokens || 0)}, reasoning ${int(usage.reasoning_tokens || 0)})`),
    stat("duration", seconds(Number(record.duration_s) || 0)), stat("output",
      `${int(row[R_OUTPUT])} characters (${row[R_TRUNC]} truncated)`),
    stat("reward", record.reward ?? "none"), stat("timestamp", meta.timestamp), stat("sampling", sampling ||
      "provider defaults"),
    stat("config hash", meta.config_hash || "–"));
  body.push(stats);
  if (typeof meta.prompt_fields === "string" && meta.prompt_fields !== "{}") body.push(el("details", null,
    el("summary", null, "prompt fields"), el("pre", null, meta.prompt_fields)));
  if (v && typeof v === "object") {
    const parts = [`exit code ${v.exit_code ?? "none"}, ${v.duration_s ?? 0} s`];
    const box = el("details", {class: "verification"}, el("summary", null, "verification: " + parts.join("")));
    if (v.error !== null && v.error !== undefined) box.append(el("div", {class: "errorbox"},
      "verifier error: " + asText(v.error)));
    box.append(foldedText(asText(v.output ?? ""), "verifier output", "out"));
    body.push(box);
  }
  if (typeof record.patch === "string") body.push(renderPatch(record.patch));
  let gptNumber = 0;
  const turns = Array.isArray(record.conversations) ? record.conversations : [];
  if (!turns.length) body.push(el("div", {class: "note"}, "this record has no conversation"));
  for (const turn of turns) body.push(renderTurn(turn, turn && turn.from === "gpt" ? ++gptNumber : gptNumber));
  return body;
}

// ---- the overview ----
function card(value, label, cls) {
  const box = el("div", {class: "card" + (cls ? " " + cls : "")});
  box.append(el("div", {class: "value"}, value), el("div", {class: "label"}, label));
  return box;
}
function shortNames(names) {
  // Names that share a long prefix (registry/org/sweb.eval.x86_64.django__django-11099:latest) are shown from the
  // separator before the part that differs, so the part that tells them apart is never the part that is cut.
  const labels = new Map(names.map((name) => [name, name]));
  const real = names.filter((name) => name !== "(none)");
  if (real.length < 2) return labels;
  let prefix = real[0];
  for (const name of real) {
    let i = 0;
    while (i < prefix.length && prefix[i] === name[i]) i++;
    prefix = prefix.slice(0, i);
  }
  const cut = Math.max(...Array.from("/:._-", (c) => prefix.lastIndexOf(c))) + 1;
  if (cut >= 16) for (const name of real) labels.set(name, "…" + name.slice(cut));
  return labels;
}
function renderOverview(summary) {
  $("files").textContent = summary.files.join(", ");
  const v = summary.verification ? summary.verification.states : {passed: 0, failed: 0, error: 0};
  const cards = [card(int(summary.records), "records"), card(int(summary.tasks), "distinct tasks"),
    card(percent(summary.completed, summary.records), `completed (${int(summary.completed)})`)];
  if (v.passed + v.failed) cards.push(card(percent(v.passed, v.passed + v.failed),
    `passed (${int(v.passed)} of ${int(v.passed + v.failed)} verified)`));
  if (v.error) cards.push(card(int(v.error), "verifier could not run", "warn"));
  const k = summary.verification;
  if (k && k.k > 1 && k.prompts) cards.push(card(percent(k.prompts_solved, k.prompts),
    `pass@k: tasks with a passing sample (${int(k.prompts_solved)} of ${int(k.prompts)}, k up to ${k.k})`));
  const t = summary.totals;
  cards.push(card(compact(t.tokens || 0), "tokens"), card(int(t.tool_calls || 0),
    `tool calls (${int(t.tool_failures || 0)} failed)`),
    card(int(t.truncated_outputs || 0), "outputs truncated", t.truncated_outputs ? "warn" : ""));
  const c = summary.cost;
  if (c && c.total !== null) cards.push(card("$" + c.total.toFixed(c.total >= 1 ? 2 : 6), c.per_passed_sample === null
    ? "cost" : `cost ($${c.per_passed_sample.toFixed(6)} per passed sample)`));
  if (summary.malformed_lines) cards.push(card(int(summary.malformed_lines), "malformed lines skipped", "warn"));
  $("cards").replaceChildren(...cards);
  const images = shortNames(Object.keys(summary.images));
  const groups = [["exit reasons", summary.exit_reasons, "f-exit"], ["models", summary.models, "f-model"],
    ["images", summary.images, "f-image", images]];
  $("breakdowns").replaceChildren(...groups.map(([title, counts, filter, labels]) => {
    const max = Math.max(1, ...Object.values(counts));
    const box = el("div", {class: "breakdown"}, el("h3", null, title));
    for (const [name, count] of Object.entries(counts)) {
      const bar = el("div", {class: "bd-bar"}); bar.style.width = (100 * count / max) + "%";
      const line = el("div", {class: "bd-row", title: `show only ${name}`}, el("span", {class: "bd-name"},
        labels ? labels.get(name) : name),
        el("div", null, bar), el("span", {class: "bd-count"}, int(count)));
      line.addEventListener("click", () => { $(filter).value = name; applyFilters(); $("tasks").scrollIntoView(); });
      box.append(line);
    }
    return box;
  }));
}
function histogram(title, values, format) {
  const box = el("div", {class: "chart"}, el("h3", null, title));
  const sorted = Float64Array.from(values).sort();
  const n = sorted.length;
  const at = (q) => n ? sorted[Math.min(n - 1, Math.floor(q * (n - 1)))] : 0;
  box.append(el("div", {class: "sub"}, n ?
    `median ${format(at(0.5))} · p90 ${format(at(0.9))} · max ${format(sorted[n - 1])}` : "no tasks"));
  const W = 300, H = 120, left = 4, bottom = 16, bins = 24;
  const chart = svg("svg", {viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img"});
  chart.append(svg("title", {}, `${title}: distribution over ${n} tasks`));
  if (n) {
    const lo = sorted[0], hi = sorted[n - 1], width = (hi - lo) / bins || 1;
    const counts = new Array(bins).fill(0);
    for (const x of sorted) counts[Math.min(bins - 1, Math.floor((x - lo) / width))]++;
    const top = Math.max(...counts), bw = (W - left) / bins;
    counts.forEach((count, i) => {
      const h = count ? Math.max(1, (H - bottom - 14) * count / top) : 0;  // 14: room for the count label
      const rect = svg("rect", {class: "b", x: left + i * bw + 0.5, y: H - bottom - h, width: Math.max(bw - 1, 1),
        height: h});
      rect.append(svg("title", {}, `${format(lo + i * width)} – ${format(lo + (i + 1) * width)}: ${count} tasks`));
      chart.append(rect);
    });
    chart.append(svg("line", {x1: left, x2: W, y1: H - bottom + 0.5, y2: H - bottom + 0.5}));
    chart.append(svg("text", {x: left, y: H - 3}, format(lo)), svg("text", {x: W - 2, y: H - 3, "text-anchor": "end"},
      format(hi)));
    chart.append(svg("text", {x: left + 2, y: 10}, `${top} tasks`));
  }
  box.append(chart);
  return box;
}
function renderCharts() {
  const pick = (column) => state.matched.map((num) => state.rows[num][column]);
  const samples = state.matched.length !== state.order.length ? `, ${int(state.matched.length)} samples` : "";
  $("charts-title").textContent = `Per task (${int(state.order.length)} shown${samples})`;
  $("charts").replaceChildren(histogram("turns", pick(R_TURNS), compact), histogram("tokens", pick(R_TOKENS), compact),
    histogram("duration", pick(R_DURATION), seconds), histogram("output size (characters)", pick(R_OUTPUT), compact));
}

// ---- the task list: filters, sorting, counts, a virtual list (only the visible rows exist) ----
function filterValues() {
  return {exit: $("f-exit").value, outcome: $("f-outcome").value, model: $("f-model").value, image: $("f-image").value,
    terms: $("f-text").value.toLowerCase().split(/\s+/).filter(Boolean), sort: $("f-sort").value};
}
function outcomeMatches(row, outcome) {
  if (!outcome) return true;
  if (outcome === "completed") return row[R_COMPLETED] === 1;
  if (outcome === "incomplete") return row[R_COMPLETED] !== 1;
  return row[R_VERIF] === outcome;
}
function searchText(num) {
  if (!state.searchText) {
    state.searchText = state.rows.map((row) => (row[R_ID] + "\n" + row[R_PROMPT] + "\n" + row[R_ERROR]).toLowerCase());
  }
  return state.searchText[num];
}
function matches(row, f, skip) {
  if (skip !== "exit" && f.exit && row[R_EXIT] !== f.exit) return false;
  if (skip !== "outcome" && !outcomeMatches(row, f.outcome)) return false;
  if (skip !== "model" && f.model && state.index.models[row[R_MODEL]] !== f.model) return false;
  if (skip !== "image" && f.image && state.index.images[row[R_IMAGE]] !== f.image) return false;
  if (f.terms.length) {
    const text = searchText(row[R_NUM]);
    for (const term of f.terms) if (!text.includes(term)) return false;
  }
  return true;
}
function fillSelect(select, options, current) {
  // options: [value, label]; the selection survives a refill.
  select.replaceChildren(...options.map(([value, label]) => {
    const option = el("option", null, label);
    option.value = value;
    return option;
  }));
  select.value = options.some(([value]) => value === current) ? current : "";
}
function refreshFacets(f) {
  // Each menu counts the tasks that the other filters let through, so its numbers always add up to what you see.
  const facets = {exit: new Map(), outcome: new Map(), model: new Map(), image: new Map()};
  const base = {exit: 0, outcome: 0, model: 0, image: 0};
  for (const row of state.rows) {
    for (const facet of Object.keys(facets)) {
      if (!matches(row, f, facet)) continue;
      base[facet]++;
      const key = facet === "exit" ? row[R_EXIT] : facet === "model" ? state.index.models[row[R_MODEL]]
        : facet === "image" ? state.index.images[row[R_IMAGE]] : null;
      if (key !== null) facets[facet].set(key, (facets[facet].get(key) || 0) + 1);
      else for (const [value] of OUTCOMES) {
        if (value && outcomeMatches(row, value)) facets.outcome.set(value, (facets.outcome.get(value) || 0) + 1);
      }
    }
  }
  const menu = (facet, names) => [["", `all (${int(base[facet])})`], ...names.map((name) => [name,
    `${name} (${int(facets[facet].get(name) || 0)})`])];
  fillSelect($("f-exit"), menu("exit", Object.keys(state.index.summary.exit_reasons)), f.exit);
  fillSelect($("f-model"), menu("model", state.index.models), f.model);
  const images = shortNames(state.index.images);
  fillSelect($("f-image"), menu("image", state.index.images).map(([value, label]) => [value, value ?
    images.get(value) + label.slice(value.length) : label]), f.image);
  fillSelect($("f-outcome"), OUTCOMES.map(([value, label]) => [value, value ?
    `${label} (${int(facets.outcome.get(value) || 0)})` : `all (${int(base.outcome)})`]), f.outcome);
}
function applyFilters() {
  const f = filterValues();
  // A task is listed (as one row, its first record's number) when any of its samples passes the filters.
  const order = [], matched = [], listed = new Set();
  for (const row of state.rows) {
    if (!matches(row, f)) continue;
    matched.push(row[R_NUM]);
    const group = groupOf(row[R_NUM]);
    if (!listed.has(group)) { listed.add(group); order.push(group.lead); }
  }
  const [key, direction] = f.sort ? f.sort.split("-") : [], column = SORT_COLUMN[key];
  const sign = direction === "asc" ? 1 : -1;
  order.sort((a, b) => (f.sort ? sign * (groupMean(groupOf(a), column) - groupMean(groupOf(b), column)) : 0) || a - b);
  state.order = order; state.matched = matched;
  refreshFacets(f);
  const total = state.groups.length;
  const samples = state.rows.length > total ? ` (${int(matched.length)} samples)` : "";
  $("count").textContent = (order.length === total ? `${int(total)} tasks` :
    `${int(order.length)} of ${int(total)} tasks match`) + samples;
  $("count").dataset.shown = String(order.length);
  $("count").dataset.query = $("f-text").value;
  $("list-spacer").style.height = (order.length * ROW_HEIGHT) + "px";
  $("list").scrollTop = 0;
  renderRows();
  renderCharts();
}
function statusCell(row) {
  const v = row[R_VERIF];
  if (v === "passed") return el("span", {class: "ok", title: "verifier passed"}, "✔");
  if (v === "failed") return el("span", {class: "fail", title: "verifier failed"}, "✘");
  if (v === "error") return el("span", {class: "note", title: "verifier could not run"}, "?");
  if (row[R_COMPLETED]) return el("span", {class: "ok", title: "completed"}, "●");
  return el("span", {class: "fail", title: "not completed"}, "○");
}
function groupOf(num) { return state.groups[state.groupIndex[num]]; }
function groupMean(group, column) {
  return group.nums.reduce((sum, num) => sum + state.rows[num][column], 0) / group.nums.length;
}
function buildGroups() {
  // The k samples of a task (one task_id) are one group, in sample order; groups keep the file order.
  const byId = new Map();
  for (const row of state.rows) {
    let group = byId.get(row[R_ID]);
    if (!group) {
      group = {index: state.groups.length, lead: row[R_NUM], nums: [], passed: 0, verified: 0};
      byId.set(row[R_ID], group);
      state.groups.push(group);
    }
    state.groupIndex[row[R_NUM]] = group.index;
    group.nums.push(row[R_NUM]);
    group.passed += row[R_VERIF] === "passed";
    group.verified += row[R_VERIF] === "passed" || row[R_VERIF] === "failed";
  }
  const bySample = (a, b) => state.rows[a][R_SAMPLE] - state.rows[b][R_SAMPLE] || a - b;
  for (const group of state.groups) group.nums.sort(bySample);
}
function passText(group) {
  const k = group.nums.length;
  return group.verified ? `pass@${k} = ${group.passed ? 1 : 0}: ${group.passed} of ${k} samples passed` :
    "no sample was judged by a verifier";
}
function groupStatus(group) {
  const rows = group.nums.map((num) => state.rows[num]);
  if (group.passed) return el("span", {class: "ok", title: passText(group)}, "✔");
  if (group.verified) return el("span", {class: "fail", title: passText(group)}, "✘");
  if (rows.some((row) => row[R_VERIF] === "error")) return el("span", {class: "note", title: "verifier could not run"},
    "?");
  if (rows.every((row) => row[R_COMPLETED])) return el("span", {class: "ok", title: "all completed"}, "●");
  return el("span", {class: "fail", title: "not all completed"}, "○");
}
function listRow(num) {
  const group = groupOf(num), row = state.rows[num], k = group.nums.length;
  const rows = group.nums.map((n) => state.rows[n]);
  const prompt = row[R_PROMPT].slice(0, 300).replace(/\s+/g, " ");
  const distinct = (values) => [...new Set(values)].join(", ");
  const mean = (column) => k === 1 ? row[column] : groupMean(group, column);
  const a = el("a", {class: "row", href: "#/t/" + num, num: String(num), title: row[R_ID]},
    el("span", null, row[R_ID] + (k > 1 ? ` ×${k}` : row[R_SAMPLE] ? ` ·${row[R_SAMPLE]}` : "")),
    k > 1 ? groupStatus(group) : statusCell(row),
    el("span", {class: "pk", title: passText(group)}, group.verified ? `${group.passed}/${k}` : "–"),
    el("span", {class: rows.every((r) => r[R_COMPLETED]) ? "" : "fail"}, distinct(rows.map((r) => r[R_EXIT]))),
    el("span", null, distinct(rows.map((r) => state.index.models[r[R_MODEL]]))),
    el("span", {class: "num"}, k === 1 ? row[R_TURNS] : compact(mean(R_TURNS))),
    el("span", {class: "num"}, compact(mean(R_TOKENS))),
    el("span", {class: "num"}, seconds(mean(R_DURATION))), el("span", {class: "num"}, compact(mean(R_OUTPUT))),
    el("span", {class: "muted"}, prompt));
  if (k > 1) a.title = `${row[R_ID]}: ${k} samples (figures are their means); ${passText(group)}`;
  return a;
}
function renderRows() {
  const list = $("list"), first = Math.max(0, Math.floor(list.scrollTop / ROW_HEIGHT) - 10);
  const last = Math.min(state.order.length, first + Math.ceil((list.clientHeight || 600) / ROW_HEIGHT) + 20);
  const rows = [];
  for (let i = first; i < last; i++) {
    const row = listRow(state.order[i]);
    row.style.top = (i * ROW_HEIGHT) + "px";
    rows.push(row);
  }
  $("list-spacer").replaceChildren(...rows);
}

// ---- one trajectory ----
async function openTrajectory(num) {
  performance.mark("mswr:open-start");
  $("overview").hidden = true; $("tasks").hidden = true; $("trajectory").hidden = false;
  const group = groupOf(num), lead = group ? group.lead : num;
  const position = state.order.indexOf(lead);
  $("t-position").textContent = position >= 0 ? `${int(position + 1)} of ${int(state.order.length)} tasks` : "";
  $("t-prev").disabled = position <= 0; $("t-next").disabled = position < 0 || position >= state.order.length - 1;
  const body = $("t-body");
  state.openNum = lead;
  body.dataset.shown = "";
  body.replaceChildren(el("div", {class: "muted"}, "decoding…"));
  try {
    if (!group) throw new Error("no task number " + num + " in this report");
    const records = await Promise.all(group.nums.map(loadRecord));
    if (state.openNum !== lead) return;
    if (records.length === 1) body.replaceChildren(...renderRecord(records[0], state.rows[lead]));
    else body.replaceChildren(el("div", {class: "t-group"}, `${state.rows[lead][R_ID]} · ${records.length} samples · `
      + passText(group)), el("div", {class: "samples"}, ...records.map((record, i) => el("div",
      {class: "sample", num: String(group.nums[i])}, ...renderRecord(record, state.rows[group.nums[i]])))));
  } catch (error) {
    body.replaceChildren(el("div", {class: "errorbox"}, "cannot show this trajectory: " + error.message));
  }
  window.scrollTo(0, 0);
  await frame();
  body.dataset.shown = String(num);
  performance.measure("mswr:open", "mswr:open-start");
}
function frame() { return new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0))); }
function showList() {
  state.openNum = null;
  $("trajectory").hidden = true; $("overview").hidden = false; $("tasks").hidden = false;
  renderRows();
}
function route() {
  const match = /^#\/t\/(\d+)$/.exec(location.hash);
  if (match) openTrajectory(Number(match[1])); else showList();
}
function step(delta) {
  const position = state.order.indexOf(state.openNum);
  const next = state.order[position + delta];
  if (position >= 0 && next !== undefined) location.hash = "#/t/" + next;
}

// ---- start ----
async function start() {
  const index = JSON.parse(await gunzipBase64($("index").textContent));
  state.index = index; state.rows = index.rows;
  buildGroups();
  renderOverview(index.summary);
  fillSelect($("f-sort"), SORTS, "");
  const columns = ["task", "", "passed", "exit reason", "model", "turns", "tokens", "duration", "output", "prompt"];
  $("list-head").replaceChildren(...columns
    .map((name, i) => el("span", {class: i >= 5 && i <= 8 ? "num" : ""}, name)));
  const menus = ["f-exit", "f-outcome", "f-model", "f-image", "f-sort"];
  for (const id of menus) $(id).addEventListener("change", applyFilters);
  let timer = 0;
  $("f-text").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(applyFilters, 120); });
  $("f-reset").addEventListener("click", () => {
    for (const id of menus) $(id).value = "";
    $("f-text").value = "";
    applyFilters();
  });
  $("list").addEventListener("scroll", () => requestAnimationFrame(renderRows), {passive: true});
  $("t-prev").addEventListener("click", () => step(-1));
  $("t-next").addEventListener("click", () => step(1));
  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
    if ($("trajectory").hidden) return;
    if (event.key === "Escape") location.hash = "#/";
    else if (event.key === "j" || event.key === "ArrowDown" && event.altKey) step(1);
    else if (event.key === "k" || event.key === "ArrowUp" && event.altKey) step(-1);
  });
  window.addEventListener("hashchange", route);
  applyFilters();
  $("status").textContent = "";
  route();
  await frame();
  performance.mark("mswr:list-shown");
  document.body.dataset.ready = "1";
}
start().catch((error) => {
  $("status").textContent = "cannot read this report: " + error.message;
  console.error(error);
});
"""
