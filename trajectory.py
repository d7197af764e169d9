"""Messages -> Hermes turns -> records -> JSONL.

Pure functions for the conversion (see the record spec in the README), plus the writer and reader of the
output file. The writer appends whole lines only, flushed and synced, so a crash loses at most the tasks in
flight; the reader tolerates the torn last line such a crash can leave. Imports nothing of ours.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

EXIT_REASONS = ("completed", "max_iterations", "api_error", "context_length", "env_error", "timeout", "interrupted")
RETRYABLE_EXIT_REASONS = frozenset({"api_error", "env_error", "interrupted"})
"""Records with these endings are dropped and their tasks run again when a run resumes."""

RECORD_KEYS = (
    "prompt_index",
    "task_id",
    "sample_index",
    "conversations",
    "completed",
    "exit_reason",
    "api_calls",
    "tool_stats",
    "usage",
    "duration_s",
    "verification",
    "reward",
    "error",
    "metadata",
)
SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "reasoning_effort")
"""The sampling settings every record's ``metadata.sampling`` carries (null where the provider default was used)."""

HERMES_SYSTEM_TEMPLATE = (
    "You are a function calling AI model. You are provided with function signatures within <tools> </tools> XML "
    "tags. You may call one or more functions to assist with the user query. If available tools are not relevant "
    "in assisting with user query, just respond in natural conversational language. Don't make assumptions about "
    "what values to plug into functions. After calling & executing the functions, you will be provided with "
    "function results within <tool_response> </tool_response> XML tags. Here are the available tools:\n"
    "<tools>\n"
    "{tools}\n"
    "</tools>\n"
    "For each function call return a JSON object, with the following pydantic model json schema for each:\n"
    "{{'title': 'FunctionCall', 'type': 'object', 'properties': {{'name': {{'title': 'Name', 'type': 'string'}}, "
    "'arguments': {{'title': 'Arguments', 'type': 'object'}}}}, 'required': ['name', 'arguments']}}\n"
    "Each function call should be enclosed within <tool_call> </tool_call> XML tags.\n"
    "Example:\n"
    "<tool_call>\n"
    "{{'name': <function-name>,'arguments': <args-dict>}}\n"
    "</tool_call>"
)


def hermes_system_value(tools: list[dict]) -> str:
    """The Hermes function-calling system turn for the OpenAI-style ``tools`` sent to the model."""
    described = [
        {
            "name": tool["function"]["name"],
            "description": tool["function"].get("description", ""),
            "parameters": tool["function"].get("parameters", {}),
            "required": None,
        }
        for tool in tools
    ]
    return HERMES_SYSTEM_TEMPLATE.format(tools=json.dumps(described, ensure_ascii=False))


def parse_arguments(raw: str | dict | None) -> dict | None:
    """Tool-call arguments as an object, or None when they are not a valid JSON object."""
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "")
    except (TypeError, ValueError, RecursionError):  # RecursionError: a model can send 100,000-deep nesting
        return None
    return value if isinstance(value, dict) else None


def reasoning_text(message: dict) -> str | None:
    """The reasoning a provider returned with an assistant message (``reasoning`` or ``reasoning_content``)."""
    for key in ("reasoning", "reasoning_content"):
        value = message.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def gpt_value(message: dict) -> str:
    """One assistant message as a Hermes ``gpt`` value: <think>, content, then <tool_call> blocks."""
    parts = []
    reasoning = reasoning_text(message)
    if reasoning is not None:
        parts.append(f"<think>\n{reasoning}\n</think>\n")
    content = message.get("content") or ""
    tool_calls = message.get("tool_calls") or []
    parts.append(content + ("\n" if tool_calls and content else ""))
    for call in tool_calls:
        function = call.get("function") or {}
        raw = function.get("arguments")
        parsed = parse_arguments(raw)
        # Arguments that are not a JSON object are kept exactly as the model sent them: the data shows what the
        # model really did, never a silent {}.
        arguments = parsed if parsed is not None else ("" if raw is None else raw)
        payload = {"name": function.get("name"), "arguments": arguments}
        parts.append(f"<tool_call>\n{json.dumps(payload, ensure_ascii=False)}\n</tool_call>\n")
    return "".join(parts).rstrip()


def tool_response_block(message: dict, name: str | None) -> str:
    """One tool result as a <tool_response> block; a JSON object content stays an object."""
    content = message.get("content")
    if isinstance(content, str):
        try:
            parsed = json.loads(content)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            content = parsed
    payload = {"tool_call_id": message.get("tool_call_id"), "name": name, "content": content}
    return f"<tool_response>\n{json.dumps(payload, ensure_ascii=False)}\n</tool_response>"


def to_hermes(messages: list[dict], tools: list[dict]) -> list[dict]:
    """OpenAI-style chat messages (system message excluded or not) -> Hermes ``from``/``value`` turns.

    The model's own system message is not part of the trajectory; turn 0 is always the Hermes tool template.
    Consecutive tool messages (the results of one assistant turn) form one ``tool`` turn.
    """
    turns = [{"from": "system", "value": hermes_system_value(tools)}]
    call_names: dict[str, str | None] = {}
    call_positions: dict[str, int] = {}  # of the last assistant turn's calls: results are listed in call order
    pending_tool_blocks: list[tuple[int, str]] = []

    def flush_tools() -> None:
        if pending_tool_blocks:
            pending_tool_blocks.sort(key=lambda item: item[0])  # stable: unknown ids keep their place at the end
            turns.append({"from": "tool", "value": "\n".join(block for _, block in pending_tool_blocks)})
            pending_tool_blocks.clear()

    for message in messages:
        role = message.get("role")
        if role == "tool":
            call_id = message.get("tool_call_id")
            position = call_positions.get(call_id, len(call_positions))
            pending_tool_blocks.append((position, tool_response_block(message, call_names.get(call_id))))
            continue
        flush_tools()
        if role == "user":
            turns.append({"from": "human", "value": _text_content(message.get("content"))})
        elif role == "assistant":
            call_positions.clear()
            for position, call in enumerate(message.get("tool_calls") or []):
                call_names[call.get("id")] = (call.get("function") or {}).get("name")
                call_positions[call.get("id")] = position
            turns.append({"from": "gpt", "value": gpt_value(message)})
    flush_tools()
    return turns


def _text_content(content: str | list | None) -> str:
    if isinstance(content, list):  # multi-part content: keep the text parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def empty_usage() -> dict:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "reasoning_tokens": 0}


def empty_tool_stats() -> dict:
    return {"terminal": {"count": 0, "success": 0, "failure": 0}}


def build_record(
    *,
    prompt_index: int,
    task_id: str,
    conversations: list[dict],
    completed: bool,
    exit_reason: str,
    api_calls: int,
    tool_stats: dict,
    usage: dict,
    duration_s: float,
    error: str | None,
    metadata: dict,
    sample_index: int = 0,
    verification: dict | None = None,
) -> dict:
    """A record with every key, always of the same JSON type, so all rows share one schema.

    ``reward`` follows from ``verification``: 1.0 passed, 0.0 ran and failed, null when there is no verifier or
    it could not run (its ``error`` is set).
    """
    if exit_reason not in EXIT_REASONS:
        raise ValueError(f"unknown exit_reason {exit_reason!r}")
    verification = None if verification is None else normalize_verification(verification)
    sampling = metadata.get("sampling") or {}
    prompt_fields = metadata.get("prompt_fields")
    return {
        "prompt_index": int(prompt_index),
        "task_id": str(task_id),
        "sample_index": int(sample_index),
        "conversations": conversations,
        "completed": bool(completed),
        "exit_reason": exit_reason,
        "api_calls": int(api_calls),
        "tool_stats": {"terminal": {k: int(tool_stats["terminal"][k]) for k in ("count", "success", "failure")}},
        "usage": {k: int(usage.get(k) or 0) for k in empty_usage()},
        "duration_s": round(float(duration_s), 3),
        "verification": verification,
        "reward": reward_of(verification),
        "error": None if error is None else str(error),
        "metadata": {
            "model": str(metadata.get("model")),
            "env_type": str(metadata.get("env_type")),
            "image": None if metadata.get("image") is None else str(metadata.get("image")),
            "timestamp": str(metadata.get("timestamp")),
            "sampling": {
                "temperature": _float_or_none(sampling.get("temperature")),
                "top_p": _float_or_none(sampling.get("top_p")),
                "max_tokens": None if sampling.get("max_tokens") is None else int(sampling["max_tokens"]),
                "reasoning_effort": None
                if sampling.get("reasoning_effort") is None
                else str(sampling["reasoning_effort"]),
            },
            "config_hash": str(metadata.get("config_hash") or ""),
            "prompt_fields": prompt_fields if isinstance(prompt_fields, str) else _fields_text(prompt_fields),
        },
    }


def normalize_verification(verification: dict) -> dict:
    """The verification object with every key and type the spec gives it."""
    exit_code = verification.get("exit_code")
    error = verification.get("error")
    return {
        "passed": bool(verification.get("passed")) and error is None,
        "exit_code": None if exit_code is None else int(exit_code),
        "output": str(verification.get("output") or ""),
        "duration_s": round(float(verification.get("duration_s") or 0.0), 3),
        "error": None if error is None else str(error),
    }


def reward_of(verification: dict | None) -> float | None:
    if verification is None or verification.get("error") is not None:
        return None
    return 1.0 if verification.get("passed") else 0.0


def _float_or_none(value: object) -> float | None:
    return None if value is None else float(value)


def _fields_text(fields: dict | None) -> str:
    """Unconsumed input fields as JSON text: one string column whatever the input rows held."""
    return json.dumps(fields or {}, ensure_ascii=False, sort_keys=True, default=str)


def record_line(record: dict) -> bytes:
    """One record as one UTF-8 JSONL line. Lone surrogates a model may emit become U+FFFD, never invalid UTF-8."""
    text = json.dumps(record, ensure_ascii=False) + "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # encode(errors="replace") would give "?"; a UTF-16 round trip gives U+FFFD
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace").encode("utf-8")


class JsonlWriter:
    """Appends whole records, one ``write`` per line, flushed and synced, safe to share between threads.

    ``path`` "-" writes to stdout (no sync: a pipe has nothing to sync).
    """

    def __init__(self, path: str, sync: bool = True):
        self.path = path
        self._lock = threading.Lock()
        if path == "-":
            self._fd = os.dup(1)
            self._sync = False
        else:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            # Only a regular file can be synced: a FIFO or a device (/dev/null) answers fsync with EINVAL.
            self._sync = sync and stat.S_ISREG(os.fstat(self._fd).st_mode)
        self.written = 0

    def write(self, record: dict) -> None:
        data = record_line(record)
        with self._lock:
            view = memoryview(data)
            while view:  # O_APPEND + one buffer: a line is never interleaved with another writer's bytes
                written = os.write(self._fd, view)
                view = view[written:]
            if self._sync:
                os.fsync(self._fd)
            self.written += 1

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class ReadResult:
    records: list[dict]
    """Every complete, valid record, in file order."""
    bad_lines: int
    """Lines that were not a JSON object (a torn last line after a crash, or damage)."""


def read_records(path: str) -> ReadResult:
    """Read an output file, skipping torn or invalid lines (see :func:`_parse_record_line`) instead of failing."""
    records, bad = [], 0
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.strip():
                continue
            record = _parse_record_line(raw)
            if record is None:
                bad += 1
            else:
                records.append(record)
    return ReadResult(records, bad)


@dataclass
class CompactResult:
    done_ids: set[str]
    """task_ids with a final record kept in the file."""
    dropped_retryable: int
    dropped_bad_lines: int
    dropped_duplicates: int


def compact_for_resume(path: str) -> CompactResult:
    """Rewrite ``path`` atomically keeping one final record per task; retryable and torn records are dropped.

    The new content goes to a temporary file beside it, synced, then renamed over the original, so a crash
    during compaction leaves either the old file or the new one, never a mix.
    """
    result = read_records(path)
    kept: dict[str, dict] = {}
    retryable = duplicates = 0
    for record in result.records:
        if record.get("exit_reason") in RETRYABLE_EXIT_REASONS:
            retryable += 1
            continue
        if record["task_id"] in kept:
            duplicates += 1
        kept[record["task_id"]] = record
    # A last line cut just before its newline still parses; rewrite it whole, or the next append would join it.
    if retryable or result.bad_lines or duplicates or not _ends_with_newline(path):
        _atomic_write(path, (record_line(r) for r in kept.values()))
    return CompactResult(set(kept), retryable, result.bad_lines, duplicates)


def iter_records(paths: Iterable[str], bad_lines: list[int] | None = None) -> Iterator[tuple[str, int, dict]]:
    """Every valid record of ``paths`` in order, as (path, byte offset of its line, record), streaming.

    Torn or invalid lines are skipped; their count is added to ``bad_lines[0]`` when a list is given."""
    for path in paths:
        offset = 0
        with open(path, "rb") as handle:
            for raw in handle:
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                record = _parse_record_line(raw)
                if record is None:
                    if bad_lines is not None:
                        bad_lines[0] += 1
                    continue
                yield path, start, record


def record_key(record: dict) -> tuple[str, int]:
    """What identifies a record across shards and resumed runs: (task_id, sample_index)."""
    sample = record.get("sample_index", 0)
    return str(record.get("task_id")), sample if isinstance(sample, int) and not isinstance(sample, bool) else 0


def last_records(paths: Iterable[str], bad_lines: list[int] | None = None) -> Iterator[dict]:
    """The last record of each (task_id, sample_index) across ``paths``, in the order they appear, in two
    streaming passes: memory holds one small entry per key, never the records themselves."""
    paths = list(paths)
    last: dict[tuple[str, int], tuple[str, int]] = {}
    for path, offset, record in iter_records(paths, bad_lines):
        last[record_key(record)] = (path, offset)
    for path, offset, record in iter_records(paths):
        if last.get(record_key(record)) == (path, offset):
            yield record


def _parse_record_line(raw: bytes) -> dict | None:
    """A record from one output line, or None for a line that is not one: torn, not JSON, nested too deep to
    parse, or with a ``task_id`` or ``exit_reason`` that is not a string (a list there would break resume)."""
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("task_id"), str):
        return None
    if not isinstance(record.get("exit_reason", ""), str):
        return None
    return record


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as handle:
        if handle.seek(0, os.SEEK_END) == 0:
            return True
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def _atomic_write(path: str, lines: Iterable[bytes]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    temp = os.path.join(directory, f".{os.path.basename(path)}.compact-{os.getpid()}")
    with open(temp, "wb") as handle:
        for line in lines:
            handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
