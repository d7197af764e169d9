"""Messages -> Hermes turns -> records -> JSONL.

Pure functions for the conversion (see the record spec in the README), plus the output file's whole life
(:class:`OutputFile`: lock, resume, writer, resume index, compaction, --overwrite's commit). The writer appends
whole lines only, flushed and synced, so a crash loses at most the tasks in flight; the reader tolerates the torn
last line such a crash can leave. Imports nothing of ours: the runner hands the output file plain values.
"""

from __future__ import annotations

import base64
import bisect
import collections
import contextlib
import functools
import hashlib
import itertools
import json
import json.scanner
import math
import operator
import os
import re
import stat
import struct
import sys
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

# ---------------------------------------------------------------------------------------------------------------
# The record's vocabulary: its keys, exit reasons, and text safe to show on a terminal
# ---------------------------------------------------------------------------------------------------------------

EXIT_REASONS = (
    "completed",
    "max_iterations",
    "api_error",
    "context_length",
    "env_error",
    "timeout",
    "interrupted",
    "cost_limit",
)
RETRYABLE_EXIT_REASONS = frozenset({"api_error", "env_error", "interrupted"})
"""Records with these endings are dropped and their tasks run again when a run resumes."""


def is_retryable(record: dict) -> bool:
    """Whether resume drops this record and runs its sample again: an infrastructure ending (api_error,
    env_error, interrupted), or a verifier that could not run (``verification.error`` set): neither says
    anything about the model."""
    if record.get("exit_reason") in RETRYABLE_EXIT_REASONS:
        return True
    verification = record.get("verification")
    return isinstance(verification, dict) and verification.get("error") is not None


_TERMINAL_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0))}
"""C0 (but tab and newline), DEL and C1 characters, each as its visible escape: ESC starts CSI and OSC sequences
(colours, window titles, clipboard writes), and C1 holds their one-byte forms (CSI is U+009B)."""


def terminal_safe(text: str) -> str:
    """``text`` (a record's fields among it) fit for a terminal: every control character that could move the cursor,
    recolour, retitle or otherwise drive the terminal shows as ``\\xNN``. Tab and newline stay."""
    return text.translate(_TERMINAL_CONTROLS)


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
    "patch",
    "cost",
    "cost_source",
    "tokens",
    "metadata",
)
COST_SOURCES = ("provider", "price_table", "mixed")
"""Where a record's ``cost`` came from: the provider's measured figure for every call, a price table for every
call, or some calls each way."""
ADDED_KEYS = {"patch": None, "cost": None, "cost_source": None, "tokens": None}
"""Keys records gained after the first release, with the value an older record has for them (see current_record)."""
SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "reasoning_effort")
"""The sampling settings every record's ``metadata.sampling`` carries (null where the provider default was used)."""


# ---------------------------------------------------------------------------------------------------------------
# Messages -> Hermes turns: the conversation in the from/value trajectory format
# ---------------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------------
# Building a record: counters, prompt hashes, verification, and the record's one JSON line
# ---------------------------------------------------------------------------------------------------------------


def empty_usage() -> dict:
    return {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "reasoning_tokens": 0,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
    }


def current_record(record: dict) -> dict:
    """``record`` with the keys an older version did not write yet (cost, cost_source, the cache counts in usage)
    at their null or zero values, in the current key order: every exported row keeps one schema."""
    usage = record.get("usage")
    usage_missing = isinstance(usage, dict) and any(key not in usage for key in empty_usage())
    if not usage_missing and all(key in record for key in ADDED_KEYS):
        return record
    ordered = {key: record.get(key, ADDED_KEYS.get(key)) for key in RECORD_KEYS if key in record or key in ADDED_KEYS}
    ordered.update((key, value) for key, value in record.items() if key not in ordered)
    if usage_missing:
        ordered["usage"] = {**empty_usage(), **usage}
    return ordered


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
    patch: str | None = None,
    cost: float | None = None,
    cost_source: str | None = None,
    tokens: dict | None = None,
) -> dict:
    """A record with every key, always of the same JSON type, so all rows share one schema.

    ``reward`` follows from ``verification``: 1.0 passed, 0.0 ran and failed, null when there is no verifier or
    it could not run (its ``error`` is set).
    """
    if exit_reason not in EXIT_REASONS:
        raise ValueError(f"unknown exit_reason {exit_reason!r}")
    if cost_source not in (None, *COST_SOURCES) or (cost is None) != (cost_source is None):
        raise ValueError(f"cost {cost!r} from {cost_source!r}: a cost needs its source, and the source a cost")
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
        "patch": None if patch is None else str(patch),
        "cost": _float_or_none(cost),
        "cost_source": cost_source,
        "tokens": tokens,
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
            "prompt_hash": str(metadata.get("prompt_hash") or ""),
            "prompt_fields": prompt_fields if isinstance(prompt_fields, str) else _fields_text(prompt_fields),
        },
    }


PROMPT_PARTS = ("prompt text", "image", "cwd", "verifier")
"""What ``metadata.prompt_hash`` identifies, part by part, in its order."""


def prompt_hash(text: str, image: str | None, cwd: str | None, verify: str | None) -> str:
    """``metadata.prompt_hash``: what a record was made for, as one hash per part of :data:`PROMPT_PARTS` joined by
    "-" (16 hex digits for the text, 8 for the others), so resume can say which part changed. A missing part (no
    image, no cwd, no verifier) hashes apart from any text, the empty one included."""
    return f"{_part_hash(text, 16)}-{_setting_hash(image)}-{_setting_hash(cwd)}-{_setting_hash(verify)}"


def _part_hash(value: str | None, digits: int = 8) -> str:
    data = b"\0" if value is None else b"\1" + value.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:digits]


@functools.lru_cache(maxsize=1024)
def _setting_hash(value: str | None) -> str:
    """An image, cwd or verifier's hash: few distinct values in a run, each hashed once."""
    return _part_hash(value)


def prompt_difference(record: dict, expected: str) -> str | None:
    """What differs between the prompt ``record`` was made for and the one whose :func:`prompt_hash` is ``expected``
    (e.g. "prompt text and verifier"), None when nothing that can be told differs.

    A record of an older version has no prompt_hash: it is compared on what it holds, its first human turn (the
    prompt text), ``metadata.image`` and whether it was verified; its cwd and the verifier's command cannot be
    told, so a change of those alone is not seen in such a record."""
    metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    recorded = metadata.get("prompt_hash")
    if recorded == expected:
        return None
    wanted = expected.split("-")
    if isinstance(recorded, str) and recorded:
        parts = recorded.split("-")
        if len(parts) != len(PROMPT_PARTS):
            return "prompt hash"
        changed = [name for name, old, new in zip(PROMPT_PARTS, parts, wanted, strict=True) if old != new]
    else:
        changed = []
        conversations = record.get("conversations")
        human = next(
            (t.get("value") for t in conversations or () if isinstance(t, dict) and t.get("from") == "human"), None
        )
        if isinstance(human, str) and _part_hash(human, 16) != wanted[0]:
            changed.append("prompt text")
        image = metadata.get("image")
        if (image is None or isinstance(image, str)) and _part_hash(image) != wanted[1]:
            changed.append("image")
        verified = record.get("verification") is not None
        no_verifier = wanted[3] == _part_hash(None)
        if (verified and no_verifier) or (
            not verified and not no_verifier and record.get("exit_reason") in ("completed", "max_iterations")
        ):
            changed.append("verifier")
    return " and ".join(changed) or None


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
        "baseline": _normalize_baseline(verification.get("baseline")),
    }


def _normalize_baseline(baseline: object) -> dict | None:
    """``verification.baseline``: the verifier's result before any agent worked on the prompt, or null."""
    if not isinstance(baseline, dict):
        return None
    exit_code, error = baseline.get("exit_code"), baseline.get("error")
    return {
        "passed": bool(baseline.get("passed")) and error is None,
        "exit_code": None if exit_code is None else int(exit_code),
        "duration_s": round(float(baseline.get("duration_s") or 0.0), 3),
        "error": None if error is None else str(error),
    }


def baseline_teaches_nothing(record: dict) -> bool:
    """Whether the record's prompt was flagged by --verify_baseline: its verifier passed, or could not judge,
    before any agent worked on it."""
    verification = record.get("verification")
    baseline = verification.get("baseline") if isinstance(verification, dict) else None
    return isinstance(baseline, dict) and (baseline.get("passed") is True or baseline.get("error") is not None)


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


# ---------------------------------------------------------------------------------------------------------------
# The output file, its whole life: lock, leftovers, checks, writer, --overwrite's commit (resume: the next section)
# ---------------------------------------------------------------------------------------------------------------
# The runner sees :class:`OutputFile` only: ``open`` (lock, leftovers, settings and prompt checks, the samples already
# done), ``start`` (the compaction, once every check of the run passed), ``writer``, ``commit`` and ``close``. It gives
# plain values (the path, the flags, the metadata its records carry, its prompts as a :class:`PromptsSource`), never
# its configuration. Beside an output NAME, hidden, live: ``.NAME.lock`` (one runner at a time) and ``.NAME.index``
# (the resume index); while a run writes them: ``.NAME.new-PID`` (--overwrite's new file) and ``.NAME.compact-PID``
# (a compaction), each with its ``.index``, and ``.NAME.prompts-PID`` (the prompts' check kept for the next run, see
# prompts_check_path). A killed run's new-, compact- and prompts- files are removed by the next run.

_LOCK = "lock"
_INDEX = "index"
_NEW = "new"
_COMPACT = "compact"
_PROMPTS = "prompts"
_EXPORT = "export"
"""An export's temporary beside the file it becomes (any file: not one of the output's leftover kinds)."""
_TEMPORARY_KINDS = (_NEW, _COMPACT, _PROMPTS)
"""Files a run writes beside the output and renames over it (or its index) when whole: leftovers once it died."""


def _beside(path: str, kind: str) -> str:
    """The hidden file ``.NAME.kind`` beside the output ``path``."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.{kind}")


def _temporary(path: str, kind: str) -> str:
    """This process's ``.NAME.kind-PID`` beside ``path``: no other run writes it (see _remove_leftovers)."""
    return _beside(path, f"{kind}-{os.getpid()}")


def _index_of_temporary(temp: str) -> str:
    """The index written with a temporary file, renamed with it."""
    return f"{temp}.{_INDEX}"


class OutputFileError(Exception):
    """An output file this run cannot use as it is, told in one line that names the fix (a usage error)."""


class OutputFile:
    """The run's output file: one runner at a time, resumed only by the same settings and prompts, replaced by
    --overwrite only once the run is known to work, written through a symlink to its target.

    ``open()`` locks and checks it and returns the samples already finished (resume); ``start()`` writes the
    compaction it planned; ``writer`` appends records; ``commit()`` marks the run as working (--overwrite's new file
    replaces the old one); ``close(keep)`` releases everything. Errors a user can fix raise :class:`OutputFileError`.
    """

    def __init__(
        self, path: str, settings: dict, overwrite: bool = False, resume_any: bool = False, read_spend: bool = False
    ):
        """``settings``: what the run's records carry in their metadata that resume compares: ``model``,
        ``sampling`` and ``config_hash`` (of every setting that shapes the data). ``overwrite``, ``resume_any``: the
        flags. ``read_spend``: read what the records already in the file cost (a budget is set): see ``spent``."""
        self.path = path
        self.settings = settings
        self.overwrite = overwrite
        self.resume_any = resume_any
        self.read_spend = read_spend
        self.shown = "stdout" if path == "-" else path
        self.target = path
        self.writer: JsonlWriter | None = None
        self._source: PromptsSource | None = None
        self._prompt_hash_of: Callable[[str], str | None] | None = None
        self._index_source = 0
        self._lock_fd: int | None = None
        self._file_lock_fds: list[int] = []
        """Locks on the output itself (see _lock_file), one per inode it had during the run."""
        self._pending_replacement: str | None = None  # --overwrite: the new file, renamed over target at commit
        self.spent: tuple[Decimal, int] | None = None
        """What the records already in the file cost (USD, tokens), read with ``read_spend`` only (see open)."""
        self.lines_read: tuple[int, int] | None = None
        """Resume: (lines taken from the index, lines parsed), once the file was read."""
        self._created = False  # this run created the file: removed at close if it is still empty
        self._pending_compaction: Callable[[], None] | None = None  # resume: written by start(), once all checks passed
        self._dropped: list[str] = []  # what the compaction drops, told once it is done

    def open(
        self, source: PromptsSource | None = None, prompt_hash_of: Callable[[str], str | None] | None = None
    ) -> dict[tuple[str, int], float | None] | DoneSamples:
        """Lock and check the file, and plan its compaction (:meth:`start` writes it: a run refused before that
        changed nothing); returns the samples already finished in it: (task_id, sample_index) -> reward, or with a
        ``source`` that has ``run_rows``, :class:`DoneSamples` (by row: the records the index places on their row are
        not parsed).

        ``source``: the run's prompts, when they can be named (the records written now are indexed under its tag).
        ``prompt_hash_of``: a task_id -> the prompt_hash its records must carry (see :func:`compact_for_resume`)."""
        path = self.path
        self._source = source
        self._prompt_hash_of = prompt_hash_of
        self._index_source = source.tag if source is not None else 0
        if path == "-":
            self.writer = JsonlWriter("-")
            return {}
        try:
            return self._open_file(path)
        except PermissionError:
            self.close(keep=False)
            raise OutputFileError(f"--output_file {path} is not writable") from None
        except OSError as exc:
            self.close(keep=False)
            raise OutputFileError(f"--output_file {path}: {exc.strerror or exc}") from None
        except BaseException:
            self.close(keep=False)
            raise

    def _open_file(self, path: str) -> dict[tuple[str, int], float | None] | DoneSamples:
        if os.path.isdir(path):
            raise OutputFileError(f"--output_file {path} is a directory")
        if os.path.exists(path) and not os.path.isfile(path):  # a pipe or a device: appended to as it is
            self.writer = JsonlWriter(path)
            return {}
        self.target = os.path.realpath(path)  # a symlink is written through to its target, never replaced
        directory = os.path.dirname(self.target)
        if not os.path.isdir(directory):
            raise OutputFileError(f"--output_file {path}: directory {directory} does not exist")
        self._lock()
        if os.path.exists(self.target):
            self._lock_file(self.target)
        self._remove_leftovers(directory)
        if self.overwrite and os.path.exists(self.target):
            if not os.access(self.target, os.W_OK):
                raise PermissionError(path)
            # The old records stay where they are until the run is known to work (commit).
            self._pending_replacement = _temporary(self.target, _NEW)
            self.writer = JsonlWriter(
                self._pending_replacement,
                index_source=self._index_source,
                index_file=_index_of_temporary(self._pending_replacement),
            )
            self._lock_file(self._pending_replacement)  # the output's inode once committed
            return {}
        if not os.path.exists(self.target):
            self.writer = JsonlWriter(self.target, index_source=self._index_source)
            self._created = True
            self._lock_file(self.target)
            return {}
        if not os.access(self.target, os.W_OK):
            raise PermissionError(path)
        if self.read_spend:  # before compaction drops retryable records: they were billed too
            self.spent = output_spend(self.target)
        source = self._source
        compacted = compact_for_resume(
            self.target,
            compaction_path=_temporary(self.target, _COMPACT),
            source=source,
            index=True,
            prompt_hash_of=self._prompt_hash_of,
            write=False,
        )
        self.lines_read = (compacted.indexed_lines, compacted.parsed_lines)
        self._check_prompts(compacted.prompt_changed)
        self._check_settings(compacted.settings)
        dropped = []
        if compacted.prompt_changed:
            dropped.append(f"{len(compacted.prompt_changed)} record(s) made for another prompt (--resume_any)")
        if compacted.dropped_retryable:
            dropped.append(
                f"{compacted.dropped_retryable} retryable record(s) (api_error/env_error/interrupted/verifier error)"
            )
        if compacted.dropped_bad_lines:
            dropped.append(f"{compacted.dropped_bad_lines} torn or invalid line(s)")
        if compacted.dropped_duplicates:
            dropped.append(f"{compacted.dropped_duplicates} duplicate record(s)")
        self._pending_compaction = compacted.write
        self._dropped = dropped
        if source is not None and source.run_rows is not None:
            return DoneSamples(source, compacted.by_row)  # records of tasks not among the prompts: kept, not the run's
        if source is not None and source.task_id_of_row is not None:  # placed by row without parsing: keyed again
            task_id_of_row = source.task_id_of_row
            for sample, samples in compacted.by_row.items():
                for row, entry in enumerate(samples.entries):
                    if entry >= 0:
                        compacted.done[(task_id_of_row(row), sample)] = samples.reward(row)
        return compacted.done

    def start(self) -> list[str]:
        """Every check passed (settings, prompts, backend, endpoint): write the compaction :meth:`open` planned and
        open the writer. Until then the output and its index are as the run found them. Returns what the compaction
        dropped, for the run to tell (those samples run again)."""
        write, self._pending_compaction = self._pending_compaction, None
        if write is None:
            return []
        try:
            write()
            self.writer = JsonlWriter(self.target, index_source=self._index_source)
            self._lock_file(self.target)  # a compaction made a new file: lock it too
        except OSError as exc:
            self.close(keep=False)
            raise OutputFileError(f"--output_file {self.shown}: {exc.strerror or exc}") from None
        return self._dropped

    def _check_prompts(self, changed: list[tuple[tuple[str, int], str]]) -> None:
        """Refuse to reuse records made for another prompt (text, image, cwd or verifier) than their task's now."""
        if not changed or self.resume_any:
            return
        (task_id, sample), difference = changed[0]
        others = f" and {len(changed) - 1} other record(s)" if len(changed) > 1 else ""
        raise OutputFileError(
            f"--output_file {self.shown} holds records made for other prompts: task {task_id!r} (sample {sample}) "
            f"has another {difference} now{others}; use --overwrite to replace them, another --output_file, or "
            "--resume_any to drop those records and run their tasks again"
        )

    def _lock(self) -> None:
        """One runner per output file: a second one is refused at once (the lock dies with its process)."""
        import fcntl

        fd = os.open(_beside(self.target, _LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputFileError(
                f"--output_file {self.shown} is in use by another mini-swe-runner (pid {holder}): "
                "wait for it to finish, or write to another --output_file"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _lock_file(self, path: str) -> None:
        """The output itself, by its inode: a runner writing the same file under another name (a hard link) is
        refused too. The name's lock (see _lock) covers an output not created yet, or replaced since."""
        import fcntl

        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        status = os.fstat(fd)
        held = {(held.st_dev, held.st_ino) for held in map(os.fstat, self._file_lock_fds)}
        if not stat.S_ISREG(status.st_mode) or (status.st_dev, status.st_ino) in held:
            os.close(fd)  # a device is shared as it is; an inode locked already is ours (a second flock would fail)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputFileError(
                f"--output_file {self.shown} is in use by another mini-swe-runner writing it under another name "
                "(a hard link to the same file): wait for it to finish, or write to another --output_file"
            ) from None
        self._file_lock_fds.append(fd)

    def _remove_leftovers(self, directory: str) -> None:
        """Files a killed run left beside the output (an unfinished compaction or --overwrite): with the lock
        held, nothing else can be writing them."""
        prefix = f".{os.path.basename(self.target)}."
        kinds = tuple(f"{kind}-" for kind in _TEMPORARY_KINDS)
        for name in os.listdir(directory):
            if name.startswith(prefix) and name[len(prefix) :].startswith(kinds):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))

    def _check_settings(self, seen: dict[str, dict]) -> None:
        """Refuse to add this run's records to a file written with other data-shaping settings."""
        ours = self.settings
        other = next((meta for value, meta in seen.items() if value != ours["config_hash"]), None)
        if other is None or self.resume_any:
            return
        if other.get("model") != ours["model"]:
            difference = f"model {other.get('model')!r} there, {ours['model']!r} now"
        elif other.get("sampling") != ours["sampling"]:
            difference = f"sampling {other.get('sampling')} there, {ours['sampling']} now"
        elif not other.get("config_hash"):
            difference = "its records carry no settings hash (written by an older version)"
        else:
            difference = (
                f"settings hash {other.get('config_hash')} there, {ours['config_hash']} now: the endpoint host, system "
                "prompt, tool description, --extra_body, --return_tokens, limits (--max_iterations, --timeout, "
                "--max_timeout, --max_output_chars, --max_task_cost) or how prompts are built and verified "
                "(--prompt_template, --image_template, --verify_template, --verify, --verify_timeout, --verify_in, "
                "--verify_failure_codes, --verify_baseline, --collect_patch) differ"
            )
        raise OutputFileError(
            f"--output_file {self.shown} holds records of a run with other settings ({difference}); "
            "use --overwrite to replace them, another --output_file, or --resume_any to mix them anyway"
        )

    def _remove_if_empty(self) -> None:
        """A run that created the output and wrote nothing (it failed before its first record) leaves no empty file
        behind. Only while the lock is held, and only a file of 0 bytes: a file that holds a record is never removed."""
        with contextlib.suppress(OSError):
            if os.stat(self.target).st_size == 0:
                os.unlink(self.target)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(index_path(self.target))

    def commit(self) -> None:
        """The run works (a model answered): --overwrite's new file replaces the old one, atomically."""
        pending, self._pending_replacement = self._pending_replacement, None
        if pending is None:
            return
        os.replace(pending, self.target)  # the writer's descriptor follows the file: appends continue in it
        # Then its index (the writer's descriptor follows it too). A crash between the two leaves the old index
        # beside the new file: it names the old file (st_ino), so resume parses every line instead of trusting it.
        index = _index_of_temporary(pending)
        if os.path.exists(index):
            os.replace(index, index_path(self.target))
            # The rename set the file's ctime; the index still describes it (its content did not change).
            with contextlib.suppress(OSError):
                os.utime(index_path(self.target))
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(index_path(self.target))
        sync_directory(os.path.dirname(self.target))

    def close(self, keep: bool) -> None:
        """``keep``: the run got far enough that what it wrote replaces the old file (--overwrite)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._pending_replacement is not None:
            if keep:
                self.commit()
            else:
                for leftover in (self._pending_replacement, _index_of_temporary(self._pending_replacement)):
                    with contextlib.suppress(OSError):
                        os.unlink(leftover)
                self._pending_replacement = None
        self._pending_compaction = None
        if self._created:  # while the locks are held: no other runner can have started writing to it
            self._created = False
            self._remove_if_empty()
        while self._file_lock_fds:
            os.close(self._file_lock_fds.pop())
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the lock file stays: removing it would race with a runner opening it
            self._lock_fd = None


@dataclass
class PromptsSource:
    """The prompts a resumed run matches the output's records against (the runner's prompts)."""

    tag: int
    """What the writer named them by in the index (``index_source``): its entries with this tag were written
    against these very prompts, so their ``row`` is their task's row here."""
    rows: int
    locate: Callable[[str], int | None]
    """The row of a task_id among the prompts, or None: for the records the index does not place."""
    run_rows: range | None = None
    """The rows of the run's own prompts (all, a shard or a --limit of them) when the runner reads its prompts back
    by row (a prompts file): resume then answers with :class:`DoneSamples`, no record keyed by its task_id."""
    task_ids: Callable[[], Iterable[str]] | None = None
    """With ``run_rows``: the task_ids of the run's prompts, in order (read only when DoneSamples is iterated)."""
    task_id_of_row: Callable[[int], str] | None = None
    """Without ``run_rows``: the task_id of a row, to key the records placed by row."""


class DoneSamples:
    """The samples of a prompts file's prompts already finished in the output, by row, as resume found them (see
    compact_for_resume), plus those this run finishes: what the schedule skips and the summary counts.

    Read like the mapping (task_id, sample_index) -> reward it stands for, without holding one: an output of
    1,000,000 records took 354 MB as a dict of tuples (bench/bench_input.py), here 4 bytes a row for each sample
    and 8 a record (its reward).
    Iterating it reads the prompts' ids back from the file (the summary's pass figures and --until_passed only)."""

    def __init__(self, source: PromptsSource, by_row: dict[int, RowSamples]):
        self.rows = rows = source.run_rows
        """Position among the run's prompts -> row among the source's."""
        self._task_ids = source.task_ids
        self._by_position = {
            sample: (samples.entries[rows.start : rows.stop : rows.step], samples) for sample, samples in by_row.items()
        }
        """sample_index -> (the record of each position of the run's prompts: -1 none, its place in the rewards)."""
        self.added: dict[tuple[str, int], float | None] = {}
        """This run's final samples."""

    def pending_positions(self, sample_index: int) -> array:
        """Positions of the run's prompts with no final record of ``sample_index``, last first."""
        last = len(self.rows) - 1
        if sample_index not in self._by_position:
            return array("q", range(last, -1, -1))
        entries = self._by_position[sample_index][0]
        missing = map(operator.lt, reversed(entries), itertools.repeat(0))
        return array("q", itertools.compress(range(last, -1, -1), missing))

    def count_below(self, samples: int) -> int:
        """The samples found at resume with a sample_index below ``samples``."""
        return sum(
            len(entries) - entries.count(-1) for sample, (entries, _) in self._by_position.items() if sample < samples
        )

    def __len__(self) -> int:
        return self.count_below(1 << 62) + len(self.added)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __setitem__(self, key: tuple[str, int], reward: float | None) -> None:
        self.added[key] = reward

    def items(self) -> Iterator[tuple[tuple[str, int], float | None]]:
        if self._by_position:
            for position, task_id in enumerate(self._task_ids()):
                for sample, (entries, samples) in self._by_position.items():
                    if entries[position] >= 0:
                        yield (task_id, sample), samples.reward(self.rows[position])
        yield from self.added.items()

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return (key for key, _ in self.items())


# -- the writer: whole lines, each with its entry in the resume index -------------------------------------------


class JsonlWriter:
    """Appends whole records, one ``write`` per line, flushed and synced, safe to share between threads.

    ``path`` "-" writes to stdout (no sync: a pipe has nothing to sync). With ``index_source`` (a regular file only),
    every line also gets an entry in the resume index beside it (see :func:`index_path`): what resume needs of the
    record without parsing it. ``index_source`` is the tag of the prompts the records come from (0: none known).
    """

    def __init__(self, path: str, sync: bool = True, index_source: int | None = None, index_file: str | None = None):
        self.path = path
        self._lock = threading.Lock()
        self._index_fd = -1
        self._index_source = index_source or 0
        if path == "-":
            self._fd = os.dup(1)
            self._sync = False
        else:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            # Only a regular file can be synced: a FIFO or a device (/dev/null) answers fsync with EINVAL.
            regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
            self._sync = sync and regular
            if index_source is not None and regular:
                with contextlib.suppress(OSError):  # the index only saves work: without it, resume parses
                    self._index_fd = _open_index_for_append(index_file or index_path(path), self._fd)
        self.written = 0

    def write(self, record: dict) -> None:
        data = record_line(record)
        entry = _index_entry(record, len(data), self._index_source) if self._index_fd >= 0 else None
        with self._lock:
            view = memoryview(data)
            while view:  # O_APPEND + one buffer: a line is never interleaved with another writer's bytes
                written = os.write(self._fd, view)
                view = view[written:]
            if entry is not None and self._index_fd >= 0:  # (another thread may have dropped the index since)
                # Where the line landed: the file's end after it (O_APPEND) less its length.
                end = os.lseek(self._fd, 0, os.SEEK_CUR)
                try:
                    os.write(self._index_fd, _pack_entry(end - len(data), *entry))
                except OSError:  # a full disk, a quota: the index only saves work, the run goes on without it
                    self._drop_index()
            if self._sync:  # the line only: an entry lost with the machine costs the next resume a full parse, and
                os.fsync(self._fd)  # one that outlives its line points past the file's end, so it is not trusted
            self.written += 1

    def _drop_index(self) -> None:
        """Stop indexing: the entries written so far end before the file does, so no resume trusts them; emptied
        when it can be, to free what it held."""
        fd, self._index_fd = self._index_fd, -1
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._index_fd >= 0:
                os.close(self._index_fd)
                self._index_fd = -1

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------------
# Resume: the index beside the output, the records read back and placed on their rows, compaction
# ---------------------------------------------------------------------------------------------------------------
# Parsing a 677-byte record takes 5.6 us with json's scanner, and an output of 1,000,000 records took 16 s and 351 MB
# to resume (bench/bench_input.py). The writer appends one fixed-size entry per line to ``.NAME.index`` beside the
# output; resume trusts it only when it provably describes the file as it is (see _trusted_index), and parses every
# line as before otherwise. A record is never lost through the index: it only ever decides which lines need not be
# parsed, and compaction copies lines byte for byte whichever way they were read.

INDEX_MAGIC = b"MSRINDX1"
_INDEX_HEADER = struct.Struct("<8sqq40x")
"""magic, the output's st_dev and st_ino (the file the entries describe); 64 bytes."""
_INDEX_ENTRY = struct.Struct("<qdqqIIII")
"""offset, reward (NaN for null), settings tag, source tag (8 bytes each), length, row, sample_index, flags (4 bytes
each); 48 bytes. ``row`` is the record's row in the prompts its source tag names (0: no prompts file known, the row
means nothing); the settings tag is :func:`settings_tag` of ``metadata.config_hash``. Read back a field at a time
over many entries (see _field): 8-byte fields at 8-byte places, 4-byte fields at 4-byte places."""
INDEX_RETRYABLE = 1
"""Flag: resume drops this record (see :func:`is_retryable`)."""
INDEX_PARSE = 2
"""Flag: the record's fields are not of the usual types: resume parses the line (as it does without an index)."""
_INDEX_CHUNK = 65536
"""Entries read at a time (3 MB): the index of 1,000,000 records (48 MB) is never held whole."""
_NEWLINE_WINDOW = 16 << 20
"""Bytes of the output mapped at a time to check the line ends: mapped pages count as the process's memory."""


def index_path(path: str) -> str:
    """The resume index beside an output (hidden, like the output's ``.NAME.lock``)."""
    return _beside(path, _INDEX)


def prompts_check_path(output_file: str) -> str | None:
    """Where a run keeps the check of its prompts file for the next run on the same output (hidden beside it, like
    its index; see mini_swe_runner.PromptFile._keep_check); None for stdout or a missing directory."""
    if output_file == "-":
        return None
    path = os.path.realpath(output_file)
    return _beside(path, _PROMPTS) if os.path.isdir(os.path.dirname(path)) else None


def prompts_check_temporary(check_path: str) -> str:
    """The file this process writes the kept check ``check_path`` (from :func:`prompts_check_path`) to before renaming
    it over: ``.NAME.prompts-PID`` beside the output, a leftover the next run removes if this one died writing it."""
    directory, name = os.path.split(check_path)
    return _temporary(os.path.join(directory, name[1 : -len(_PROMPTS) - 1]), _PROMPTS)


def stable_tag(text: str) -> int:
    """A 64-bit tag of ``text`` that is the same in every process (Python's hash() of a str is not), never 0."""
    value = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return (value - (1 << 64) if value >= 1 << 63 else value) or 1


def settings_tag(config_hash: str) -> int:
    return stable_tag("settings\0" + config_hash)


def _config_hash(record: dict) -> str:
    metadata = record.get("metadata")
    return str(metadata.get("config_hash") or "") if isinstance(metadata, dict) else ""


def _is_count(value: object) -> bool:
    return type(value) is int and 0 <= value < _COUNT_LIMIT


def _pack_entry(
    offset: int, length: int, row: int, sample: int, reward: float, settings: int, source: int, flags: int
) -> bytes:
    return _INDEX_ENTRY.pack(offset, reward, settings, source, length, row, sample, flags)


def _index_entry(record: dict, length: int, source: int) -> tuple:
    """The fields of a record's entry after its offset (known once the line is written), as _pack_entry takes them."""
    row, sample = record.get("prompt_index"), record.get("sample_index", 0)
    flags = INDEX_RETRYABLE if is_retryable(record) else 0
    if not (isinstance(record.get("task_id"), str) and _is_count(row) and _is_count(sample)):
        flags, row, sample = flags | INDEX_PARSE, 0, 0
    reward = _reward_value(record.get("reward"))
    return (
        length,
        row,
        sample,
        math.nan if reward is None else reward,
        settings_tag(_config_hash(record)),
        source,
        flags,
    )


def _index_header(status: os.stat_result) -> bytes:
    return _INDEX_HEADER.pack(INDEX_MAGIC, status.st_dev, status.st_ino)


def _open_index_for_append(path: str, output_fd: int) -> int:
    """The index at ``path``, ready for appending: continued when it describes the whole output as it is, started
    afresh for an empty output, else emptied and not written (the next resume parses every line, and writes it
    anew); -1 then."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK, 0o644)  # a FIFO there never blocks
    try:
        output = os.fstat(output_fd)
        index = os.fstat(fd)
        if not stat.S_ISREG(index.st_mode):  # a FIFO or a device is not an index: written to, it could block
            os.close(fd)
            return -1
        whole = _INDEX_HEADER.size + (index.st_size - _INDEX_HEADER.size) // _INDEX_ENTRY.size * _INDEX_ENTRY.size
        current = (
            index.st_size >= _INDEX_HEADER.size
            and os.pread(fd, _INDEX_HEADER.size, 0) == _index_header(output)
            and output.st_mtime_ns <= index.st_mtime_ns
            and output.st_ctime_ns <= index.st_mtime_ns
            and _covered_end(fd, whole) == output.st_size
        )
        if current:
            if whole != index.st_size:  # a torn last entry: its line is not covered
                os.ftruncate(fd, whole)
                current = _covered_end(fd, whole) == output.st_size
        if not current:
            os.ftruncate(fd, 0)
            if output.st_size != 0:
                os.close(fd)
                return -1
            os.write(fd, _index_header(output))
        return fd
    except BaseException:
        os.close(fd)
        raise


def _covered_end(fd: int, size: int) -> int:
    """Where the last whole entry of an index ends in its output (0 without entries)."""
    if size <= _INDEX_HEADER.size:
        return 0
    entry = _INDEX_ENTRY.unpack(os.pread(fd, _INDEX_ENTRY.size, size - _INDEX_ENTRY.size))
    return entry[0] + entry[4]


_OTHER_SOURCE = 4
"""Flag, in memory only: the entry was not written against the prompts resume matches against (or none are
known), so its row means nothing here: resume finds its row by its task_id."""
_COUNT_LIMIT = 1 << 32
"""Rows, sample indexes and line lengths are kept in 4 bytes each: beyond, the index is not used."""


@dataclass
class _IndexColumns:
    """What resume keeps of each valid line, one compact array per field, in file order: about 23 bytes a record
    (1,000,000 records: 26 MB; the entries themselves take 48 MB)."""

    lengths: array
    """"I": the line's length in bytes."""
    rows: array
    """"I": the row of its task among the prompts (meaningless with _OTHER_SOURCE or INDEX_PARSE)."""
    samples: array
    """"I": its sample_index."""
    rewards: array
    """"d": its reward, NaN for null."""
    settings: array
    """"H": its settings tag's place in ``tags``."""
    flags: array
    """"I": INDEX_RETRYABLE, INDEX_PARSE, _OTHER_SOURCE."""
    tags: list[int] = field(default_factory=list)
    tag_ids: dict[int, int] = field(default_factory=dict)

    @property
    def offsets(self) -> Iterator[int]:
        return itertools.accumulate(self.lengths, initial=0)

    def settings_id(self, tag: int) -> int:
        if (found := self.tag_ids.get(tag)) is None:
            found = self.tag_ids[tag] = len(self.tags)
            self.tags.append(tag)
        return found


def _empty_columns(count: int = 0) -> _IndexColumns:
    """Columns for ``count`` entries, allocated at once (grown by appends, an array may take twice its size)."""
    return _IndexColumns(*(array(code, bytes(count * array(code).itemsize)) for code in "IIIdHI"))


def _trusted_index(path: str, source_tag: int = 0) -> _IndexColumns | None:
    """The index of ``path`` when it provably describes the file as it is, else None (resume then parses).

    Provably: the index names this very file (st_dev, st_ino: a file replaced by a rewrite, a copy or ``grep -v >``
    is another), nothing was written to the file after the index's last entry (mtime: a hand edit, an append by an
    older version, a crash between a line and its entry; and ctime, which changes with any write and which no tool
    can set back: an in-place edit of the same length whose mtime was restored with ``touch -r``), its entries tile
    the file from its first byte to its last and every line ends with a newline where its entry says. A torn last
    entry (a crash mid-entry) leaves the file's end uncovered, so it is not trusted either. An index path that is
    not a regular file (a FIFO would block the read) is not an index. Read a chunk at a time: 1,000,000 entries in
    about 0.4 s."""
    try:
        index_fd = os.open(index_path(path), os.O_RDONLY | os.O_NONBLOCK)
        with open(index_fd, "rb") as index, open(path, "rb") as output:
            index_status, output_status = os.fstat(index.fileno()), os.fstat(output.fileno())
            if not stat.S_ISREG(index_status.st_mode):
                return None
            if index.read(_INDEX_HEADER.size) != _index_header(output_status):
                return None
            if max(output_status.st_mtime_ns, output_status.st_ctime_ns) > index_status.st_mtime_ns:
                return None
            if (index_status.st_size - _INDEX_HEADER.size) % _INDEX_ENTRY.size:
                return None
            count = (index_status.st_size - _INDEX_HEADER.size) // _INDEX_ENTRY.size
            columns = _empty_columns(count)
            first = end = 0
            while chunk := index.read(_INDEX_CHUNK * _INDEX_ENTRY.size):
                entries = memoryview(chunk)
                size = len(chunk) // _INDEX_ENTRY.size
                if len(chunk) % _INDEX_ENTRY.size or first + size > count:
                    return None  # the index grew while being read: not ours to judge
                lengths = _field(entries, 4)
                ends = array("q", itertools.accumulate(lengths, initial=end))
                if _field(entries, 0) != ends[:-1] or 0 in lengths:
                    return None
                if not _ends_are_newlines(output.fileno(), ends):
                    return None
                end = ends[-1]
                tags, sources, flags = _field(entries, 2), _field(entries, 3), _field(entries, 7)
                for tag in set(tags):
                    columns.settings_id(tag)
                if len(columns.tags) >= 1 << 16:
                    return None
                if sources.count(source_tag) != size or not source_tag:
                    other = map(operator.ne, sources, itertools.repeat(source_tag or None))
                    flags = array(
                        "I", map(operator.or_, flags, map(operator.mul, other, itertools.repeat(_OTHER_SOURCE)))
                    )
                part = slice(first, first + size)
                columns.lengths[part] = lengths
                columns.rows[part] = _field(entries, 5)
                columns.samples[part] = _field(entries, 6)
                columns.rewards[part] = _field(entries, 1)
                if len(columns.tags) == 1:
                    columns.settings[part] = array("H", [0]) * size
                else:
                    columns.settings[part] = array("H", map(columns.tag_ids.__getitem__, tags))
                columns.flags[part] = flags
                first += size
            if first != count or end != output_status.st_size:
                return None
            return columns
    except (OSError, ValueError):
        return None


def _ends_are_newlines(fd: int, ends: array) -> bool:
    """Whether the lines from ``ends[0]`` to ``ends[1]``, ``ends[1]`` to ``ends[2]``... each end with a newline, mapping
    the file a window at a time (the pages touched count as ours while mapped: all at once, 690 MB for 1,000,000
    records)."""
    import mmap

    first = 1
    start = ends[0] // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
    while first < len(ends):
        size = min(_NEWLINE_WINDOW, ends[-1] - start)
        last = bisect.bisect_right(ends, start + size, lo=first)
        if last == first:  # one line longer than the window: map up to its end
            size = ends[first] - start
            last = first + 1
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ, offset=start) as window:
            at = map(operator.sub, ends[first:last], itertools.repeat(start + 1))
            if bytes(map(window.__getitem__, at)).count(10) != last - first:
                return False
        # The next window starts on a page boundary at or before the next line's first byte.
        start = ends[last - 1] // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
        first = last
    return True


_FIELD_PLACES = ((0, "q"), (1, "d"), (2, "q"), (3, "q"), (8, "I"), (9, "I"), (10, "I"), (11, "I"))
"""Per field of _INDEX_ENTRY: its place in an entry counted in its own size, and its array type."""


def _field(entries: memoryview, number: int) -> array:
    """One field of every entry in ``entries``, as an array (a strided copy: no Python code per entry)."""
    place, code = _FIELD_PLACES[number]
    column = array(code)
    view = entries.cast(code)
    column.frombytes(view[place :: _INDEX_ENTRY.size // view.itemsize].tobytes())
    return column


@dataclass
class ReadResult:
    records: list[dict]
    """Every complete, valid record, in file order."""
    bad_lines: int
    """Lines that were not a JSON object (a torn last line after a crash, or damage)."""


def read_records(path: str) -> ReadResult:
    """Read an output file, skipping torn or invalid lines (see :func:`_parse_record_line`) instead of failing."""
    bad = [0]
    records = [record for _, _, record in _valid_lines(path, bad)]
    return ReadResult(records, bad[0])


@dataclass
class RowSamples:
    """The final records of one sample_index kept in the file, by the row of their task among the prompts."""

    entries: array
    """row -> the record's place in ``rewards`` (-1: no final record of this sample)."""
    rewards: array
    """The records' rewards (NaN for null)."""

    def reward(self, row: int) -> float | None:
        value = self.rewards[self.entries[row]]
        return None if math.isnan(value) else value


@dataclass
class CompactResult:
    done: dict[tuple[str, int], float | None]
    """(task_id, sample_index) of every final record kept in the file, with its reward; with a ``source``, only
    those whose task is not among its prompts (the others are in ``by_row``)."""
    dropped_retryable: int
    dropped_bad_lines: int
    dropped_duplicates: int
    settings: dict[str, dict]
    """metadata.config_hash of the kept records -> the metadata of one of them (what resume compares)."""
    by_row: dict[int, RowSamples] = field(default_factory=dict)
    """With a ``source``: sample_index -> the final records kept whose task is among its prompts."""
    parsed_lines: int = 0
    """Lines parsed as JSON: every line without an index that describes the file; with one, those it could not place
    on a row, and the first record of each settings hash (for the settings check)."""
    indexed_lines: int = 0
    """Records taken from the index: placed on their row (or dropped as retryable) without parsing their line."""
    prompt_changed: list[tuple[tuple[str, int], str]] = field(default_factory=list)
    """(task_id, sample_index) and what differs, of the final records made for another prompt than their task's now
    (see compact_for_resume's ``prompt_hash_of``): left out of ``done``/``by_row`` and dropped by ``write()``."""
    write: Callable[[], None] = lambda: None
    """Writes the compaction planned (the rewritten file and its index); compact_for_resume's ``write`` calls it."""

    @property
    def done_ids(self) -> set[str]:
        """task_ids with at least one final record kept in the file (without a ``source``)."""
        return {task_id for task_id, _ in self.done}


def compact_for_resume(
    path: str,
    compaction_path: str | None = None,
    source: PromptsSource | None = None,
    index: bool = False,
    prompt_hash_of: Callable[[str], str | None] | None = None,
    write: bool = True,
) -> CompactResult:
    """Rewrite ``path`` atomically keeping one final record per (task_id, sample_index); retryable (see
    :func:`is_retryable`) and torn records are dropped.

    One streaming pass reads the file: memory holds per (task_id, sample_index) where its last final line is, its
    reward and its settings hash, never the records (an output of 1,000,000 records used to take 5 GB: see
    bench/bench_input.py). Only when something is dropped is the file rewritten, by copying the kept lines byte for
    byte to ``compaction_path`` (a temporary file beside it by default), synced, then renamed over the original, so
    a crash during compaction leaves either the old file or the new one, never a mix.

    ``index``: use and keep the resume index beside ``path`` (see :func:`_trusted_index`): lines it describes are
    not parsed, and when the file is rewritten or had to be parsed, the index is written anew for it. ``source``:
    records are matched to these prompts by row (``by_row``) instead of by key (``done``).

    ``prompt_hash_of``: a task_id -> the :func:`prompt_hash` its records must carry to be kept (None: the task is
    not among the run's prompts). A final record made for another prompt (see :func:`prompt_difference`) is left
    out of what is done, dropped from the file and listed in ``prompt_changed``. Records the index places by the
    source tag are not parsed, hence not compared: the tag names the prompts as they are (the caller makes it
    cover everything the hash covers). ``write``: False plans the compaction without writing anything (the file
    and its index stay as they are); ``CompactResult.write()`` does it later.
    """
    tag = source.tag if source is not None else 0
    check = None
    if prompt_hash_of is not None:

        def check(record: dict) -> str | None:
            expected = prompt_hash_of(record_key(record)[0])
            return None if expected is None else prompt_difference(record, expected)

    result = None
    if index and source is not None and (columns := _trusted_index(path, tag)) is not None:
        with contextlib.suppress(_IndexDisagrees):
            result = _compact(path, _IndexedLines(path, columns, check), compaction_path, source, index)
    if result is None:
        result = _compact(path, _ParsedLines(path, source, check), compaction_path, source, index)
    if write:
        result.write()
    return result


class _IndexDisagrees(Exception):
    """A line the index points at is not the record it describes: the index is not used."""


class _Lines:
    """The valid lines of an output, as columns (the index's fields), whichever way they were read."""

    columns: _IndexColumns
    bad: int = 0
    blank: bool = False
    ends_with_newline: bool = True
    prompt_changed: dict[int, tuple[tuple[str, int], str]]
    """Entry -> its (task_id, sample_index) and what differs, for the records read that were made for another prompt
    than their task's now."""

    def key(self, entry: int) -> tuple[str, int]:
        raise NotImplementedError

    def metadata(self, entry: int) -> tuple[str, dict]:
        raise NotImplementedError


class _IndexedLines(_Lines):
    def __init__(self, path: str, columns: _IndexColumns, check: Callable[[dict], str | None] | None = None):
        self.path, self.columns, self.check = path, columns, check
        self.prompt_changed = {}
        self.offsets: array | None = None
        self.parsed = 0
        self.keys_read = 0
        """Lines parsed because their entry could not place them (the others are not parsed, but one per settings
        hash, for the settings check)."""

    def _record(self, entry: int) -> dict:
        if self.offsets is not None:
            offset = self.offsets[entry]
        elif entry < 4096:  # the settings check reads the first record of each settings hash: usually the first
            offset = sum(itertools.islice(self.columns.lengths, entry))
        else:
            self.offsets = array("q", self.columns.offsets)
            offset = self.offsets[entry]
        with open(self.path, "rb") as handle:  # few lines are read this way: their entries cannot place them
            handle.seek(offset)
            record = _parse_record_line(handle.read(self.columns.lengths[entry]))
        self.parsed += 1
        if record is None:
            raise _IndexDisagrees
        return record

    def key(self, entry: int) -> tuple[str, int]:
        self.keys_read += 1
        record = self._record(entry)
        if self.check is not None and (difference := self.check(record)) is not None:
            self.prompt_changed[entry] = (record_key(record), difference)
        return record_key(record)

    def metadata(self, entry: int) -> tuple[str, dict]:
        record = self._record(entry)
        config_hash = _config_hash(record)
        if settings_tag(config_hash) != self.columns.tags[self.columns.settings[entry]]:
            raise _IndexDisagrees
        metadata = record.get("metadata")
        return config_hash, metadata if isinstance(metadata, dict) else {}


class _ParsedLines(_Lines):
    """Every line parsed (no index describes the file). A record whose task is among ``source``'s prompts is placed
    on its row here; the others keep their key, and the first record of each settings hash its metadata."""

    def __init__(self, path: str, source: PromptsSource | None, check: Callable[[dict], str | None] | None = None):
        self.columns = columns = _empty_columns()
        self.prompt_changed = {}
        self.keys: dict[int, tuple[str, int]] = {}
        self.first: dict[int, tuple[str, dict]] = {}
        self.starts = array("q")
        bad, blank = [0], [0]
        for start, length, record in _valid_lines(path, bad, blank):
            _, _, _, reward, tag, _, flags = _index_entry(record, length, 0)
            task_id, sample = key = record_key(record)
            if check is not None and not flags & INDEX_RETRYABLE and (difference := check(record)) is not None:
                self.prompt_changed[len(self.starts)] = (key, difference)
            row = source.locate(task_id) if source is not None and not flags & INDEX_PARSE else None
            if row is None or not _is_count(sample):
                row, sample, flags = 0, 0, flags | _OTHER_SOURCE
                self.keys[len(self.starts)] = key
            settings = columns.settings_id(tag)
            if settings not in self.first:
                metadata = record.get("metadata")
                self.first[settings] = (_config_hash(record), metadata if isinstance(metadata, dict) else {})
            self.starts.append(start)
            columns.lengths.append(length)
            columns.rows.append(row)
            columns.samples.append(sample)
            columns.rewards.append(reward)
            columns.settings.append(settings)
            columns.flags.append(flags)
        self.bad, self.blank = bad[0], blank[0] > 0
        self.parsed = len(self.starts) + self.bad  # every line that was not blank
        self.ends_with_newline = _ends_with_newline(path)

    def key(self, entry: int) -> tuple[str, int]:
        return self.keys[entry]

    def metadata(self, entry: int) -> tuple[str, dict]:
        return self.first[self.columns.settings[entry]]


def _compact(
    path: str, lines: _Lines, compaction_path: str | None, source: PromptsSource | None, index: bool
) -> CompactResult:
    columns = lines.columns
    count = len(columns.lengths)
    by_row, keyed, retryable, duplicates = _place(lines, source)
    prompt_changed = _drop_changed(lines, by_row, keyed)
    kept_entries: Iterable[int]
    if duplicates or retryable or prompt_changed:
        placed = (_kept_of(rows.entries) for rows in by_row.values())
        kept_entries = sorted(itertools.chain(keyed.values(), *placed))
    else:
        kept_entries = range(count)
    # The settings of the records kept, in file order (a superseded record's do not count).
    settings: dict[str, dict] = {}
    seen_tags: set[int] = set()
    for entry in kept_entries if (duplicates or retryable or prompt_changed) else _first_of_each(columns.settings):
        tag = columns.settings[entry]
        if tag not in seen_tags:
            seen_tags.add(tag)
            config_hash, metadata = lines.metadata(entry)
            settings.setdefault(config_hash, metadata)
    rewrite = bool(
        retryable or prompt_changed or lines.bad or duplicates or not lines.ends_with_newline or (index and lines.blank)
    )

    def write() -> None:
        newline_added = -1
        if rewrite:
            starts = lines.starts if isinstance(lines, _ParsedLines) else array("q", columns.offsets)
            if count and not lines.ends_with_newline and starts[-1] + columns.lengths[-1] == os.path.getsize(path):
                newline_added = count - 1  # the last line, cut before its newline: copied with one
            places = ((starts[entry], columns.lengths[entry]) for entry in kept_entries)
            _atomic_write(path, _kept_lines(path, places), compaction_path)
        # Anew too when lines had to be placed by their task_id (written against other prompts, or the same file
        # changed): placed now, their entries carry this source's tag, and the next resume need not parse them.
        if index and (rewrite or isinstance(lines, _ParsedLines) or getattr(lines, "keys_read", 0)):
            tag = source.tag if source is not None else 0
            with contextlib.suppress(OSError):  # a stale index beside the file names another file, or lies behind it
                _write_index(path, columns, kept_entries, newline_added, tag, compaction_path)

    rewards = columns.rewards
    done = {key: None if math.isnan(rewards[entry]) else rewards[entry] for key, entry in keyed.items()}
    result = CompactResult(done, retryable, lines.bad, duplicates, settings, by_row)
    result.parsed_lines = lines.parsed
    result.indexed_lines = count - lines.keys_read if isinstance(lines, _IndexedLines) else 0
    result.prompt_changed = prompt_changed
    result.write = write
    return result


def _drop_changed(
    lines: _Lines, by_row: dict[int, RowSamples], keyed: dict[tuple[str, int], int]
) -> list[tuple[tuple[str, int], str]]:
    """Take the final records made for another prompt out of what is kept; returns their keys and differences."""
    if not lines.prompt_changed:
        return []
    dropped = []
    for key, entry in list(keyed.items()):
        if entry in lines.prompt_changed:
            del keyed[key]
            dropped.append(lines.prompt_changed[entry])
    columns = lines.columns
    for entry, changed in lines.prompt_changed.items():
        samples = by_row.get(columns.samples[entry])
        if (
            samples is not None
            and columns.flags[entry] & _OTHER_SOURCE == 0
            and samples.entries[columns.rows[entry]] == entry
        ):
            samples.entries[columns.rows[entry]] = -1
            dropped.append(changed)
    return dropped


def _kept_of(entries: array) -> Iterator[int]:
    return itertools.compress(entries, map(operator.ge, entries, itertools.repeat(0)))


def _first_of_each(values: array) -> list[int]:
    """The first entry of each distinct value, in file order."""
    return sorted(values.index(value) for value in set(values))


def _place(lines: _Lines, source: PromptsSource | None) -> tuple[dict[int, RowSamples], dict, int, int]:
    """Which record of each sample is kept: by_row (records placed on the prompts' rows), keyed (the others), and
    the counts of retryable and superseded records. Later records supersede earlier ones of the same sample."""
    columns = lines.columns
    if source is not None and _placeable_by_tag(columns, source):
        return _place_by_tag(columns, source)
    by_row: dict[int, array] = {}
    keyed: dict[tuple[str, int], int] = {}
    retryable = duplicates = 0
    rows, samples, flags = columns.rows, columns.samples, columns.flags
    for entry in range(len(columns.lengths)):
        if flags[entry] & INDEX_RETRYABLE:
            retryable += 1
            continue
        if source is not None and not flags[entry] & (INDEX_PARSE | _OTHER_SOURCE):
            row, sample = rows[entry], samples[entry]
            if row >= source.rows:
                raise _IndexDisagrees  # written against these prompts, yet past their end
        else:
            key = lines.key(entry)
            row = source.locate(key[0]) if source is not None and not isinstance(lines, _ParsedLines) else None
            if row is None or not _is_count(key[1]):  # (a _ParsedLines has placed what it could already)
                duplicates += key in keyed
                keyed[key] = entry
                flags[entry] |= _OTHER_SOURCE
                continue
            sample = key[1]
            rows[entry], samples[entry], flags[entry] = row, sample, 0
        if (entries := by_row.get(sample)) is None:
            entries = by_row[sample] = array("i", [-1]) * source.rows
        duplicates += entries[row] >= 0
        entries[row] = entry
    placed = {sample: RowSamples(entries, columns.rewards) for sample, entries in by_row.items()}
    return placed, keyed, retryable, duplicates


_MAX_INDEXED_SAMPLES = 1 << 12
"""Sample indexes placed by the quick way (one array of rows each); a record beyond goes the general way."""


def _placeable_by_tag(columns: _IndexColumns, source: PromptsSource) -> bool:
    """Whether every entry was written against ``source`` with the usual fields (then :func:`_place_by_tag`)."""
    count = len(columns.lengths)
    return (
        count > 0
        and count < 1 << 31
        and columns.flags.count(0) + columns.flags.count(INDEX_RETRYABLE) == count
        and max(columns.rows) < source.rows
        and max(columns.samples) < _MAX_INDEXED_SAMPLES
    )


def _place_by_tag(columns: _IndexColumns, source: PromptsSource) -> tuple[dict[int, RowSamples], dict, int, int]:
    """:func:`_place` with no Python code per record (1,000,000 records: about 0.1 s instead of 1.5 s)."""
    count = len(columns.lengths)
    final_count = columns.flags.count(0)
    by_row: dict[int, RowSamples] = {}
    duplicates = 0
    sample_values = sorted(set(columns.samples))
    for sample in sample_values:
        if len(sample_values) == 1 and final_count == count:  # the usual file: every entry, in order
            chosen: Iterable[int] = range(count)
            rows: Iterable[int] = columns.rows
            size = count
        else:
            mask = map(operator.eq, columns.flags, itertools.repeat(0))
            if len(sample_values) > 1:
                mask = map(operator.and_, mask, map(operator.eq, columns.samples, itertools.repeat(sample)))
            chosen = array("i", itertools.compress(range(count), mask))
            rows = map(columns.rows.__getitem__, chosen)
            size = len(chosen)
        if not size:
            continue
        entries = array("i", [-1]) * source.rows
        # In file order: a later record of the same row and sample takes the place of an earlier one.
        collections.deque(map(entries.__setitem__, rows, chosen), maxlen=0)
        duplicates += size - (len(entries) - entries.count(-1))
        by_row[sample] = RowSamples(entries, columns.rewards)
    return by_row, {}, count - final_count, duplicates


def _write_index(
    path: str, columns: _IndexColumns, kept: Iterable[int], newline_added: int, source_tag: int, temp: str | None
) -> None:
    """A new index for ``path`` whose lines are the ``kept`` entries' lines, in order (after a rewrite, or for a file
    that was read without one), replacing the old one atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    temp = _index_of_temporary(temp or _temporary(os.path.abspath(path), _COMPACT))
    try:
        _write_index_file(path, columns, kept, newline_added, source_tag, temp)
    except BaseException:  # a full disk: no half-written index is left beside the output
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    os.replace(temp, index_path(path))
    sync_directory(directory)


def _write_index_file(
    path: str, columns: _IndexColumns, kept: Iterable[int], newline_added: int, source_tag: int, temp: str
) -> None:
    rows, samples, rewards, flags = columns.rows, columns.samples, columns.rewards, columns.flags
    with open(temp, "wb") as handle:
        handle.write(_index_header(os.stat(path)))
        offset, batch = 0, []
        for entry in kept:
            length = columns.lengths[entry] + (entry == newline_added)
            source = 0 if flags[entry] & (INDEX_PARSE | _OTHER_SOURCE) else source_tag
            settings = columns.tags[columns.settings[entry]]
            entry_flags = flags[entry] & INDEX_PARSE
            batch.append(
                _pack_entry(offset, length, rows[entry], samples[entry], rewards[entry], settings, source, entry_flags)
            )
            offset += length
            if len(batch) == _INDEX_CHUNK:
                handle.write(b"".join(batch))
                batch.clear()
        handle.write(b"".join(batch))
        handle.flush()
        os.fsync(handle.fileno())
        # Its time is its output's at least: a file whose mtime lies ahead (clock skew, a copy that kept a later
        # time) is described by this index all the same, since it was read whole under the lock just now.
        output = os.stat(path)
        output_time = max(output.st_mtime_ns, output.st_ctime_ns)
        if os.fstat(handle.fileno()).st_mtime_ns < output_time:
            os.utime(handle.fileno(), ns=(output_time, output_time))


def _valid_lines(
    path: str, bad_lines: list[int], blank_lines: list[int] | None = None
) -> Iterator[tuple[int, int, dict]]:
    """(byte offset, length, record) of every valid line of ``path``; torn or invalid ones are counted, and blank
    ones too when ``blank_lines`` is given."""
    offset = 0
    with open(path, "rb") as handle:
        for raw in handle:
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                if blank_lines is not None:
                    blank_lines[0] += 1
                continue
            record = _parse_record_line(raw)
            if record is None:
                bad_lines[0] += 1
            else:
                yield start, len(raw), record


def _kept_lines(path: str, places: Iterable[tuple[int, int]]) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        for offset, length in places:
            handle.seek(offset)
            line = handle.read(length)
            yield line if line.endswith(b"\n") else line + b"\n"


def _reward_value(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def iter_records(paths: Iterable[str], bad_lines: list[int] | None = None) -> Iterator[tuple[str, int, dict]]:
    """Every valid record of ``paths`` in order, as (path, byte offset of its line, record), streaming.

    Torn or invalid lines are skipped; their count is added to ``bad_lines[0]`` when a list is given."""
    counter = bad_lines if bad_lines is not None else [0]
    for path in paths:
        for offset, _, record in _valid_lines(path, counter):
            yield path, offset, record


_COST_FIELD = re.compile(rb'"cost": (-?[0-9][0-9.eE+-]*), "cost_source": ')
_TOTAL_TOKENS_FIELD = re.compile(rb'"usage": \{[^{}]*"total_tokens": ([0-9]+)')


def output_spend(path: str) -> tuple[Decimal, int]:
    """What the records in an output already cost: (USD, tokens), every line counted (superseded and retryable
    records too: they were billed), for the budgets of a resumed run. Read from the two fields' text on each line
    (a JSON string cannot hold an unescaped quote, so the pattern only ever matches the record's own keys); a line
    written in another layout is parsed. Costs add up as decimals, exactly as the records write them."""
    usd, tokens = Decimal(0), 0
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return usd, tokens
    with handle:
        for line in handle:
            cost, total = _COST_FIELD.search(line), _TOTAL_TOKENS_FIELD.search(line)
            if (cost is None and b'"cost"' in line) or total is None:
                record = _parse_record_line(line)
                if record is None:
                    continue
                usage = record.get("usage")
                value = usage.get("total_tokens") if isinstance(usage, dict) else None
                tokens += value if _is_count(value) else 0
                value = record.get("cost")
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    usd += Decimal(repr(value))
                continue
            tokens += int(total.group(1))
            if cost is not None:
                try:
                    usd += Decimal(cost.group(1).decode())
                except InvalidOperation:
                    pass
    return usd, tokens


def record_key(record: dict) -> tuple[str, int]:
    """What identifies a record across shards and resumed runs: (task_id, sample_index)."""
    sample = record.get("sample_index", 0)
    return str(record.get("task_id")), sample if isinstance(sample, int) and not isinstance(sample, bool) else 0


def last_records(
    paths: Iterable[str], bad_lines: list[int] | None = None, read: list[int] | None = None
) -> Iterator[dict]:
    """The last record of each (task_id, sample_index) across ``paths``, in the order they appear, in two
    streaming passes: memory holds one small entry per key, never the records themselves.

    The count of valid records read (superseded ones included) is added to ``read[0]`` when a list is given."""
    paths = list(paths)
    last: dict[tuple[str, int], tuple[str, int]] = {}
    for path, offset, record in iter_records(paths, bad_lines):
        last[record_key(record)] = (path, offset)
        if read is not None:
            read[0] += 1
    for path, offset, record in iter_records(paths):
        if last.get(record_key(record)) == (path, offset):
            yield record


def _parse_record_line(raw: bytes) -> dict | None:
    """A record from one output line, or None for a line that is not one: torn, not JSON, nested too deep to
    parse, or with a ``task_id`` or ``exit_reason`` that is not a string (a list there would break resume).

    Every line is parsed whole (a damaged line must never pass as a record), with json's scanner itself: a third
    cheaper than json.loads on our lines (bench/bench_input.py); anything it does not take whole goes to
    json.loads, which decides."""
    try:
        text = raw.decode("utf-8").rstrip(" \t\r\n")
        record, end = _SCAN_JSON(text, 0)
        if end != len(text):
            raise ValueError("extra data")
    except (ValueError, StopIteration, RecursionError):
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError):
            return None
    if not isinstance(record, dict) or not isinstance(record.get("task_id"), str):
        return None
    if not isinstance(record.get("exit_reason", ""), str):
        return None
    return record


_SCAN_JSON = json.scanner.make_scanner(json.JSONDecoder())


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as handle:
        if handle.seek(0, os.SEEK_END) == 0:
            return True
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def _atomic_write(path: str, lines: Iterable[bytes], temp: str | None = None) -> None:
    """Write ``lines`` to ``path`` through ``temp`` beside it (a compaction's hidden name unless given): synced, then
    renamed over ``path``, the rename synced. On any failure (a full disk, a signal) the temporary goes away at once,
    its space with it, and ``path`` is as it was."""
    directory = os.path.dirname(os.path.abspath(path))
    temp = temp or _temporary(os.path.abspath(path), _COMPACT)
    try:
        with open(temp, "wb") as handle:
            for line in lines:
                handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    sync_directory(directory)


def sync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------------------------------------------------------
# Tokens: the ids the server rendered and sampled, and their logprobs, stored once (see the README, Tokens for RL)
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class TokenCall:
    """One model call as the server saw it: its whole prompt, what it sampled, and the logprob of each sample."""

    prompt_ids: Sequence[int]
    completion_ids: Sequence[int]
    logprobs: Sequence[float]
    finish_reason: str | None = None


class TokenLog:
    """A task's calls, kept as the new tokens of each: when a call's prompt starts with the previous call's prompt
    and completion (the usual case: the template appends to what it rendered before), only the rest of it is
    kept, so memory and the record grow with the trajectory's tokens, not with turns x tokens. A prompt that does
    not (a template that re-renders history, e.g. dropping earlier reasoning) is kept whole and marks a break."""

    def __init__(self, api: str = ""):
        self.api = api
        self.sequence = array("I")
        """The last call's prompt + completion: what the next prompt should start with."""
        self.sequence_json = b""
        """``sequence`` as compact JSON list items ("1,2,3"): a server's next prompt_token_ids can be checked
        against it as bytes and only its new ids parsed (see mini_swe_runner.split_prompt_ids)."""
        self.calls: list[tuple[array, array, list[float], str | None, bool]] = []
        """(new prompt ids, completion ids, logprobs, finish_reason, break) per call."""

    def add(self, call: TokenCall, api: str = "") -> None:
        self.api = self.api or api
        prompt = array("I", call.prompt_ids)
        known = len(self.sequence)
        extends = bool(self.calls) and len(prompt) >= known and prompt[:known] == self.sequence
        new = prompt[known:] if extends else prompt
        completion = array("I", call.completion_ids)
        self.calls.append((new, completion, list(call.logprobs), call.finish_reason, bool(self.calls) and not extends))
        if not extends:
            self.sequence, self.sequence_json = array("I"), b""
        added = new + completion
        self.sequence.extend(added)  # a copy: ``new`` itself is kept in calls
        if added:
            items = json.dumps(added.tolist(), separators=(",", ":"))[1:-1].encode()
            self.sequence_json = self.sequence_json + b"," + items if self.sequence_json else items

    def record(self) -> dict | None:
        """The record's ``tokens`` object; None when no call returned tokens."""
        if not self.calls:
            return None
        id_bits = id_bits_for(max((max(ids) for call in self.calls for ids in call[:2] if ids), default=0))
        logprobs = [value for call in self.calls for value in call[2]]
        # float32 when that holds every value exactly (vLLM and SGLang compute logprobs in float32), else float64.
        logprob_bytes = 4 if array("f", logprobs).tolist() == logprobs else 8
        return {
            "api": self.api,
            "id_bits": id_bits,
            "logprob_bytes": logprob_bytes,
            "consistent": not any(call[4] for call in self.calls),
            "calls": [
                {
                    "prompt_ids": pack_ids(new, id_bits),
                    "completion_ids": pack_ids(completion, id_bits),
                    "logprobs": pack_logprobs(values, logprob_bytes),
                    "finish_reason": finish_reason,
                    "break": broke,
                }
                for new, completion, values, finish_reason, broke in self.calls
            ],
        }


ID_BITS = (16, 18, 20, 24, 32)
"""Widths an id is packed in: 16 bits for vocabularies under 65,536, 18 for Qwen's 151,936, Llama 3's 128,256 and
Gemma's 262,144, then 20, 24, 32."""


def id_bits_for(largest: int) -> int:
    return next(bits for bits in ID_BITS if largest < 1 << bits)


def pack_ids(ids: Iterable[int], bits: int) -> str:
    """Token ids as base64 of ``bits``-bit unsigned ints: the low 16 bits of every id (little-endian), then the
    rest of each id packed in (bits - 16) bits, 8 // (bits - 16) ids a byte. Qwen's and Llama's ids take 3 base64
    characters each, under the 4 bytes of an int32 (a JSON list spends 4-7 and parses ~10x slower). The packing
    is bytes slicing, translate tables and one big-int OR: C speed, no numpy."""
    raw = array("I", ids)
    if _BIG_ENDIAN:
        raw.byteswap()
    data = raw.tobytes()
    count = len(raw)
    low = bytearray(2 * count)
    low[0::2], low[1::2] = data[0::4], data[1::4]
    high_bits = bits - 16
    if high_bits == 16:
        high = bytearray(2 * count)
        high[0::2], high[1::2] = data[2::4], data[3::4]
    elif high_bits == 8:
        high = data[2::4]
    elif high_bits:
        per = 8 // high_bits
        third = data[2::4] + bytes(-count % per)
        value = 0
        for j in range(per):
            value |= int.from_bytes(third[j::per].translate(_SHIFT_UP[high_bits * j]), "little")
        high = value.to_bytes(len(third) // per, "little")
    else:
        high = b""
    return base64.b64encode(bytes(low) + bytes(high)).decode("ascii")


def unpack_ids(text: str, bits: int) -> list[int]:
    if bits not in ID_BITS:
        raise RecordFormatError(f"token ids of {bits} bits are not one of {ID_BITS}")
    data = base64.b64decode(text)
    high_bits = bits - 16
    count = _id_count(len(data), high_bits)
    low, high = data[: 2 * count], data[2 * count :]
    wide = bytearray(4 * count)
    wide[0::4], wide[1::4] = low[0::2], low[1::2]
    if high_bits == 16:
        wide[2::4], wide[3::4] = high[0::2], high[1::2]
    elif high_bits == 8:
        wide[2::4] = high
    elif high_bits:
        per = 8 // high_bits
        third = bytearray(len(high) * per)
        for j in range(per):
            third[j::per] = high.translate(_SHIFT_DOWN[high_bits][high_bits * j])
        wide[2::4] = third[:count]
    ids = array("I")
    ids.frombytes(bytes(wide))
    if _BIG_ENDIAN:
        ids.byteswap()
    return ids.tolist()


def _id_count(size: int, high_bits: int) -> int:
    """How many ids ``size`` packed bytes hold: the n with 2n + ceil(n * high_bits / 8) == size."""
    guess = 8 * size // (16 + high_bits)
    for count in (guess, guess - 1, guess + 1):
        if count >= 0 and 2 * count + -(-count * high_bits // 8) == size:
            return count
    raise RecordFormatError(f"{size} bytes are not a whole number of {16 + high_bits}-bit token ids")


_SHIFT_UP = {shift: bytes((value << shift) & 0xFF for value in range(256)) for shift in range(8)}
_SHIFT_DOWN = {
    width: {shift: bytes((value >> shift) & ((1 << width) - 1) for value in range(256)) for shift in range(8)}
    for width in (2, 4)
}


def pack_logprobs(values: Iterable[float], width: int) -> str:
    raw = array("f" if width == 4 else "d", values)
    if _BIG_ENDIAN:
        raw.byteswap()
    return base64.b64encode(raw.tobytes()).decode("ascii")


def unpack_logprobs(text: str, width: int) -> list[float]:
    if width not in (4, 8):
        raise RecordFormatError(f"logprobs of {width} bytes are neither float32 nor float64")
    values = array("f" if width == 4 else "d")
    values.frombytes(base64.b64decode(text))
    if _BIG_ENDIAN:
        values.byteswap()
    return values.tolist()


_BIG_ENDIAN = sys.byteorder == "big"


def token_calls(tokens: dict) -> Iterator[TokenCall]:
    """The calls of a record's ``tokens`` object, each with its whole prompt again, one at a time."""
    id_bits, logprob_bytes = tokens["id_bits"], tokens["logprob_bytes"]
    sequence: list[int] = []
    for call in tokens["calls"]:
        new = unpack_ids(call["prompt_ids"], id_bits)
        prompt = new if call["break"] or not sequence else sequence + new
        completion = unpack_ids(call["completion_ids"], id_bits)
        logprobs = unpack_logprobs(call["logprobs"], logprob_bytes)
        if len(logprobs) != len(completion):
            raise RecordFormatError(f"{len(completion)} completion ids but {len(logprobs)} logprobs")
        yield TokenCall(prompt, completion, logprobs, call.get("finish_reason"))
        sequence = prompt + completion


def stitched_tokens(tokens: dict) -> dict:
    """A consistent trajectory as one sequence, the form verl and SkyRL train on: the first prompt, then everything
    after it, masked 1 where the model sampled (logprob as returned) and 0 where the template or a tool put the
    tokens (logprob 0)."""
    if not tokens.get("consistent"):
        raise RecordFormatError("the prompts broke the token prefix: only the steps format holds this trajectory")
    id_bits, logprob_bytes = tokens["id_bits"], tokens["logprob_bytes"]
    prompt_ids: list[int] = []
    response_ids: list[int] = []
    mask: list[int] = []
    logprobs: list[float] = []
    for index, call in enumerate(tokens["calls"]):
        new = unpack_ids(call["prompt_ids"], id_bits)
        if index == 0:
            prompt_ids = new
        else:
            response_ids += new
            mask += [0] * len(new)
            logprobs += [0.0] * len(new)
        completion = unpack_ids(call["completion_ids"], id_bits)
        sampled = unpack_logprobs(call["logprobs"], logprob_bytes)
        if len(sampled) != len(completion):
            raise RecordFormatError(f"{len(completion)} completion ids but {len(sampled)} logprobs")
        response_ids += completion
        mask += [1] * len(completion)
        logprobs += sampled
    return {
        "prompt_ids": prompt_ids,
        "response_ids": response_ids,
        "response_mask": mask,
        "response_logprobs": logprobs,
    }


# ---------------------------------------------------------------------------------------------------------------
# From records to training sets: the dataset schema, Hermes text back to messages, and export
# ---------------------------------------------------------------------------------------------------------------

EXPORT_FORMATS = ("hermes", "openai", "sharegpt", "swebench", "tokens", "steps")
ARGUMENT_FORMS = ("object", "string")
"""How the openai export writes tool-call arguments: the object chat templates and trainers read (Qwen2.5 would
show a string escaped, Qwen3-Coder fails on one), or the JSON text the OpenAI API itself sends."""
TOKEN_FORMATS = ("tokens", "steps")
"""The formats made of the ids a server returned (records made with --return_tokens), not of the text."""
EMPTY_THINK = "<think>\n</think>\n"
"""What hermes-agent's batch_runner writes on a gpt turn without reasoning."""

_JSON = json.JSONDecoder()
_THINK_OPEN, _THINK_CLOSE = "<think>\n", "\n</think>"
_CALL_OPEN, _CALL_CLOSE = "<tool_call>\n", "\n</tool_call>"
_RESPONSE_OPEN, _RESPONSE_CLOSE = "<tool_response>\n", "\n</tool_response>"


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ImportError(
            "loading records needs Hugging Face datasets: pip install 'mini-swe-runner[datasets]'"
        ) from None
    return datasets


def record_features():
    """The ``datasets.Features`` of a record, so any mix of outputs loads in one schema.

    Without it, ``datasets`` infers each column from the first chunk it reads (10 MB): a column that is null
    there (``error``, ``metadata.image``, ``reward``) becomes type null and the first string later fails to cast.
    """
    datasets = _datasets()
    return datasets.Features(_record_schema(datasets.Value))


def _record_schema(value) -> dict:
    string, integer, number, boolean = value("string"), value("int64"), value("float64"), value("bool")
    return {
        "prompt_index": integer,
        "task_id": string,
        "sample_index": integer,
        "conversations": [{"from": string, "value": string}],
        "completed": boolean,
        "exit_reason": string,
        "api_calls": integer,
        "tool_stats": {"terminal": {"count": integer, "success": integer, "failure": integer}},
        "usage": {key: integer for key in empty_usage()},
        "duration_s": number,
        "verification": {  # the whole object is null when the prompt has no verifier
            "passed": boolean,
            "exit_code": integer,
            "output": string,
            "duration_s": number,
            "error": string,
            "baseline": {"passed": boolean, "exit_code": integer, "duration_s": number, "error": string},
        },
        "reward": number,
        "error": string,
        "patch": string,
        "cost": number,
        "cost_source": string,
        "tokens": _tokens_schema(value),  # null on records made without --return_tokens
        "metadata": _metadata_schema(value),
    }


def _tokens_schema(value) -> dict:
    string, integer, boolean = value("string"), value("int64"), value("bool")
    call = {
        "prompt_ids": string,
        "completion_ids": string,
        "logprobs": string,
        "finish_reason": string,
        "break": boolean,
    }
    return {"api": string, "id_bits": integer, "logprob_bytes": integer, "consistent": boolean, "calls": [call]}


def _metadata_schema(value) -> dict:
    string = value("string")
    return {
        "model": string,
        "env_type": string,
        "image": string,
        "timestamp": string,
        "sampling": {
            "temperature": value("float64"),
            "top_p": value("float64"),
            "max_tokens": value("int64"),
            "reasoning_effort": string,
        },
        "config_hash": string,
        "prompt_hash": string,
        "prompt_fields": string,
    }


def export_features(format: str, arguments: str = "object"):
    """The ``datasets.Features`` of an ``export`` output in ``format`` (see EXPORT_FORMATS); ``arguments`` is the
    openai export's form of tool-call arguments (see ARGUMENT_FORMS).

    Arguments are free-form objects (each tool, each call, its own keys): a struct would give every call the union
    of all keys, null where absent, and a template that walks the mapping (Qwen3-Coder) would render those nulls.
    ``datasets.Json`` keeps each object as written (Arrow stores it as JSON text and decodes it on access)."""
    datasets = _datasets()
    value = datasets.Value
    if arguments not in ARGUMENT_FORMS:
        raise ValueError(f"unknown arguments form {arguments!r}: one of {', '.join(ARGUMENT_FORMS)}")
    if format == "openai" and arguments == "object" and not hasattr(datasets, "Json"):
        raise ImportError("tool-call arguments as objects need a datasets with datasets.Json: pip install -U datasets")
    if format == "hermes":
        return datasets.Features(_record_schema(value))
    string = value("string")
    ids, logprobs = [value("int32")], [value("float64")]
    if format == "tokens":
        return datasets.Features(
            {
                "prompt_ids": ids,
                "response_ids": ids,
                "response_mask": [value("int8")],
                "response_logprobs": logprobs,
                "reward": value("float64"),
                "task_id": string,
                "sample_index": value("int64"),
            }
        )
    if format == "steps":
        return datasets.Features(
            {
                "prompt_ids": ids,
                "completion_ids": ids,
                "logprobs": logprobs,
                "finish_reason": string,
                "step_index": value("int64"),
                "is_last": value("bool"),
                "reward": value("float64"),
                "trajectory_id": string,
                "group": string,
                "task_id": string,
                "sample_index": value("int64"),
            }
        )
    common = {
        "task_id": string,
        "sample_index": value("int64"),
        "reward": value("float64"),
        "metadata": _metadata_schema(value),
    }
    if format == "swebench":
        return datasets.Features({key: string for key in SWEBENCH_KEYS})
    if format == "sharegpt":
        return datasets.Features(
            {"conversations": [{"from": string, "value": string}], "system": string, "tools": string, **common}
        )
    if format != "openai":
        raise ValueError(f"unknown export format {format!r}")
    arguments_feature = datasets.Json() if arguments == "object" else string
    tool_call = {"id": string, "type": string, "function": {"name": string, "arguments": arguments_feature}}
    message = {
        "role": string,
        "content": string,
        "reasoning_content": string,
        "tool_calls": [tool_call],
        "tool_call_id": string,
        "name": string,
    }
    # The terminal tool's JSON schema, as the runner sends it: a struct needs its keys spelled out
    # (tests/test_export.py loads a real run's export with these features, so a changed tool shows up there).
    described = {"type": string, "description": string}
    parameters = {
        "type": string,
        "properties": {"command": described, "timeout": described},
        "required": [string],
    }
    tool = {"type": string, "function": {"name": string, "description": string, "parameters": parameters}}
    return datasets.Features({"messages": [message], "tools": [tool], **common})


def load_jsonl(files: str | list[str], features, cache_dir: str | None = None):
    """JSONL files (records, or an export) as a ``datasets.Dataset`` with ``features``, every value as written.

    ``load_dataset("json", ...)`` reads through pyarrow's JSON reader, which turns text that looks like ISO-8601
    (``metadata.timestamp``, a date-like task id) into a timestamp before any cast to the features, so it comes
    back as ``2026-11-24 19:16:59``, not ``2026-11-24T19:16:59+00:00``. Here each line is parsed by Python's json
    and handed to ``datasets`` already typed. The cache key holds each file's size and mtime, so a file that
    changed is read again."""
    datasets = _datasets()
    paths = [files] if isinstance(files, str) else list(files)
    stamps = [(os.path.abspath(path), os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in paths]
    return datasets.Dataset.from_generator(
        _jsonl_rows, features=features, gen_kwargs={"stamps": stamps, "features": features}, cache_dir=cache_dir
    )


def _jsonl_rows(stamps: list[tuple[str, int, int]], features) -> Iterator[dict]:
    for path, _, _ in stamps:
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError):
                    row = None
                if not isinstance(row, dict):
                    raise ValueError(
                        f"{path} line {number} is not a JSON object (torn or damaged): "
                        "`mini-swe-runner export` writes a clean file from it (it skips such lines)"
                    )
                yield _json_encoded(row, features)


def _json_encoded(value, feature):
    """``value`` with the parts typed ``datasets.Json`` as JSON text: Json reads a string that is valid JSON as that
    JSON, so the raw arguments string ``"[1, 2]"`` would come back as a list."""
    if type(feature).__name__ == "Json":
        return None if value is None else json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict) and isinstance(feature, dict):
        return {key: _json_encoded(item, feature[key]) if key in feature else item for key, item in value.items()}
    inner = feature[0] if isinstance(feature, list) and len(feature) == 1 else getattr(feature, "feature", None)
    if isinstance(value, list) and inner is not None:
        return [_json_encoded(item, inner) for item in value]
    return value


class RecordFormatError(ValueError):
    """A record whose conversations cannot be read back (not written by the runner, or damaged)."""


@dataclass
class AssistantTurn:
    """One ``gpt`` value read back: reasoning, text content and tool calls ({"name", "arguments"})."""

    reasoning: str | None
    content: str
    calls: list[dict]


def parse_gpt_value(value: str, answered: int | None = None) -> AssistantTurn:
    """Read a ``gpt`` value back into reasoning, content and calls, exactly: ``gpt_value`` of the result gives
    ``value`` again.

    Markup is only markup where the writer puts it: the think block first, the <tool_call> blocks last, each
    block's JSON read with a JSON decoder from its opening tag on, so a command containing ``</tool_call>`` or
    ``<think>`` stays data. Text can read two ways only when the model wrote markup itself (content that looks
    like a tool call); all such readings give the same value back. ``answered`` (how many results the next tool
    turn holds, 0 when none follows) picks the reading with that many calls; otherwise the first reading is taken.
    """
    first = None
    reasoning, body = _split_think(value)
    readings = [(reasoning, body)] if reasoning is not None else []
    for reasoning, body in (*readings, (None, value)):
        for content, calls in (*_split_calls(body), (body, [])):
            turn = AssistantTurn(reasoning, content, calls)
            if _render_turn(turn) != value:
                continue
            if answered is None or len(calls) == answered:
                return turn
            first = first or turn
    return first or AssistantTurn(None, value, [])  # the last only for text the writer cannot write (trailing space)


def _split_think(value: str) -> tuple[str | None, str]:
    if not value.startswith(_THINK_OPEN):
        return None, value
    end = value.find(_THINK_CLOSE, len(_THINK_OPEN))
    while end != -1:
        after = end + len(_THINK_CLOSE)
        if after == len(value) or value[after] == "\n":
            return value[len(_THINK_OPEN) : end], value[after + 1 :]
        end = value.find(_THINK_CLOSE, end + 1)
    return None, value


def _split_calls(body: str) -> Iterator[tuple[str, list[dict]]]:
    """Every (content, calls) reading of ``body`` whose tool-call blocks run to its end, earliest first."""
    start = body.find(_CALL_OPEN)
    while start != -1:
        if start == 0 or body[start - 1] == "\n":
            calls = _parse_blocks(body, start, _CALL_OPEN, _CALL_CLOSE, "\n")
            if calls is not None and all(_is_call(call) for call in calls):
                yield body[: max(start - 1, 0)], calls
        start = body.find(_CALL_OPEN, start + 1)


def _is_call(payload: object) -> bool:
    return isinstance(payload, dict) and set(payload) == {"name", "arguments"}


def _parse_blocks(text: str, position: int, opening: str, closing: str, separator: str) -> list | None:
    """The JSON payloads of ``opening JSON closing`` blocks joined by ``separator`` from ``position`` to the end of
    ``text``, or None when the text there is anything else."""
    payloads = []
    while True:
        if not text.startswith(opening, position):
            return None
        try:
            payload, position = _JSON.raw_decode(text, position + len(opening))
        except ValueError:
            return None
        if not text.startswith(closing, position):
            return None
        payloads.append(payload)
        position += len(closing)
        if position == len(text):
            return payloads
        if not text.startswith(separator, position):
            return None
        position += len(separator)
        if separator == "\n" and position == len(text):  # a trailing newline cannot survive the writer's rstrip
            return None


def _scan_blocks(text: str, opening: str) -> list:
    """The JSON payload after each ``opening`` tag of ``text`` (leading whitespace skipped), None for one that does
    not decode; the search goes on after each decoded payload, so a tag inside one is not a block."""
    payloads = []
    position = text.find(opening)
    while position != -1:
        start = position + len(opening)
        while start < len(text) and text[start] in " \t\r\n":
            start += 1
        try:
            payload, end = _JSON.raw_decode(text, start)
        except (ValueError, RecursionError):
            payloads.append(None)
            position = text.find(opening, start)
            continue
        payloads.append(payload)
        position = text.find(opening, end)
    return payloads


def _render_turn(turn: AssistantTurn) -> str:
    message = {
        "content": turn.content,
        "reasoning_content": turn.reasoning,
        "tool_calls": [{"function": _openai_function(call)} for call in turn.calls],
    }
    return gpt_value(message)


def _openai_function(call: dict) -> dict:
    arguments = call["arguments"]
    if not isinstance(arguments, str):  # a parsed object: the string a model sends for it
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {"name": call["name"], "arguments": arguments}


def parse_tool_value(value: str, lenient: bool = False) -> list:
    """The ``{"tool_call_id", "name", "content"}`` payloads of a ``tool`` value, in order: the one reader of
    ``<tool_response>`` blocks (the export, the report and the tests use it).

    Strict by default: anything but the writer's blocks raises RecordFormatError. ``lenient=True`` reads a foreign
    or damaged value as far as it goes and never raises (the report): each block's JSON is decoded from its opening
    tag on (an output may itself contain ``</tool_response>``, so the closing tag is never searched for), a block
    whose JSON does not decode gives None, and the payloads are not checked."""
    if lenient:
        return _scan_blocks(value, _RESPONSE_OPEN.rstrip("\n"))
    payloads = _parse_blocks(value, 0, _RESPONSE_OPEN, _RESPONSE_CLOSE, "\n")
    if payloads is None or not all(isinstance(p, dict) and {"tool_call_id", "content"} <= set(p) for p in payloads):
        raise RecordFormatError("a tool turn is not a list of <tool_response> blocks")
    return payloads


def parse_system_tools(value: str) -> list[dict]:
    """The OpenAI-style ``tools`` that the Hermes system turn ``value`` describes."""
    return parse_system_turn(value)[0]


def parse_system_turn(value: str) -> tuple[list[dict], str]:
    """The Hermes system turn ``value`` read back: its ``tools``, and the text appended after the template, "" when
    none (hermes-agent's trajectory compressor appends a notice that turns were summarised: by default
    ``"\n\nSome of your previous tool responses may be summarized to preserve context."``)."""
    start = value.find("<tools>\n")
    try:
        described, _ = _JSON.raw_decode(value, start + len("<tools>\n")) if start != -1 else (None, 0)
    except ValueError:
        described = None
    if not isinstance(described, list) or not all(isinstance(t, dict) and "name" in t for t in described):
        raise RecordFormatError("the system turn does not list the tools")
    tools = [
        {
            "type": "function",
            "function": {
                "name": tool["name"],
                "description": tool.get("description", ""),
                "parameters": tool.get("parameters", {}),
            },
        }
        for tool in described
    ]
    template = hermes_system_value(tools)
    if not value.startswith(template):
        raise RecordFormatError("the system turn is not the Hermes function-calling template")
    return tools, value[len(template) :]


def tool_result_text(content: object) -> str:
    """A tool result as the text a chat template shows: an object as JSON, a string as it is."""
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)


def _call_id(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def to_openai(
    conversations: list[dict],
    arguments: str = "object",
    assistant: Callable[[AssistantTurn], AssistantTurn] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Hermes turns -> (OpenAI chat ``messages``, ``tools``), exactly: ``to_hermes(messages, tools)`` gives the
    same turns back (but for a compressed record's notice, below).

    Every message has every key (null where it does not apply) so the rows share one schema. The ids of the tool
    calls, which the Hermes text keeps only on the results, are restored from the tool turn that answers them.
    ``arguments`` "object" gives each call's arguments as the object chat templates read (arguments that were not
    a JSON object stay the string the model sent); "string" gives them as JSON text, as the OpenAI API sends them.
    ``assistant`` may rewrite each model turn once read (export escapes tool-call tags in its text with it). Text
    that hermes-agent's trajectory compressor appended to the system turn becomes a leading system message.
    """
    if not conversations or conversations[0].get("from") != "system":
        raise RecordFormatError("the conversation does not start with the system turn")
    if arguments not in ARGUMENT_FORMS:
        raise ValueError(f"unknown arguments form {arguments!r}: one of {', '.join(ARGUMENT_FORMS)}")
    tools, notice = parse_system_turn(conversations[0]["value"])
    messages: list[dict] = [_message("system", notice.lstrip("\n"))] if notice else []
    results: list[dict] = []  # of the tool turn after the current gpt turn, read once for both
    for index, turn in enumerate(conversations[1:], start=1):
        role, value = turn.get("from"), turn.get("value")
        if not isinstance(value, str):
            raise RecordFormatError(f"turn {index} has no text value")
        if role == "human":
            messages.append(_message("user", value))
        elif role == "gpt":
            following = conversations[index + 1] if index + 1 < len(conversations) else None
            results = parse_tool_value(following["value"]) if following and following.get("from") == "tool" else []
            parsed = parse_gpt_value(value, len(results))
            if assistant is not None:
                parsed = assistant(parsed)
            calls = [
                {
                    "id": _call_id(results[i]["tool_call_id"]) if i < len(results) else f"call_{index}_{i}",
                    "type": "function",
                    "function": _openai_function(call) if arguments == "string" else dict(call),
                }
                for i, call in enumerate(parsed.calls)
            ]
            message = _message("assistant", parsed.content)
            message["reasoning_content"] = parsed.reasoning
            message["tool_calls"] = calls or None
            messages.append(message)
        elif role == "tool":
            previous = conversations[index - 1].get("from")
            for result in results if previous == "gpt" else parse_tool_value(value):
                message = _message("tool", tool_result_text(result["content"]))
                message["tool_call_id"] = _call_id(result["tool_call_id"])
                message["name"] = result.get("name")
                messages.append(message)
        else:
            raise RecordFormatError(f"turn {index} has an unknown role {role!r}")
    return messages, tools


def _message(role: str, content: str) -> dict:
    return {
        "role": role,
        "content": content,
        "reasoning_content": None,
        "tool_calls": None,
        "tool_call_id": None,
        "name": None,
    }


def ends_with_final_echo(conversations: list[dict], marker: str) -> bool:
    """The trajectory ends with the tool turn of the completion command (a result whose output has ``marker``)."""
    if len(conversations) < 3 or conversations[-1].get("from") != "tool" or conversations[-2].get("from") != "gpt":
        return False
    try:
        results = parse_tool_value(conversations[-1]["value"])
    except RecordFormatError:
        return False
    for result in results:
        content = result["content"]
        output = content.get("output") if isinstance(content, dict) else content
        if isinstance(output, str) and marker in output:
            return True
    return False


@dataclass
class ExportOptions:
    format: str = "hermes"
    only: str | None = None
    """``completed`` (the agent finished) or ``passed`` (its verifier passed)."""
    exit_reasons: tuple[str, ...] = ()
    """Keep only records with one of these endings (all when empty)."""
    min_reward: float | None = None
    """Keep only records with a reward of at least this (a record without a reward is dropped)."""
    max_turns: int | None = None
    """Keep only records with at most this many model (``gpt``) turns."""
    empty_think: bool = False
    """Write an empty think block on assistant turns without reasoning (hermes and sharegpt)."""
    drop_final_echo: bool = False
    """End on the gpt turn that sent the completion command, without the tool turn of its echo."""
    final_output_marker: str = "MINI_SWE_AGENT_FINAL_OUTPUT"
    pick: str = "passed"
    """swebench: which sample of an instance: ``passed`` (the first that passed, else the first) or ``first``."""
    model_name: str | None = None
    """swebench: the predictions' ``model_name_or_path`` (default: the record's metadata.model)."""
    arguments: str = "object"
    """openai: tool-call arguments as objects or as JSON text (see ARGUMENT_FORMS)."""
    drop_invalid_arguments: bool = False
    """Leave out records with a tool call whose arguments are not a JSON object (kept as the model sent them)."""

    def __post_init__(self) -> None:
        if self.format not in EXPORT_FORMATS:
            raise ValueError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, not {self.format!r}")
        if self.pick not in SWEBENCH_PICKS:
            raise ValueError(f"--pick must be one of {', '.join(SWEBENCH_PICKS)}, not {self.pick!r}")
        if self.format != "swebench" and (self.pick != "passed" or self.model_name is not None):
            raise ValueError("--pick and --model_name apply to --format swebench")
        if self.format == "swebench" and (self.empty_think or self.drop_final_echo):
            raise ValueError("--empty_think and --drop_final_echo shape conversations; swebench writes patches")
        if self.model_name is not None and not self.model_name.strip():
            raise ValueError("--model_name must not be empty")
        if self.only not in (None, "completed", "passed"):
            raise ValueError(f"--only must be completed or passed, not {self.only!r}")
        unknown = [reason for reason in self.exit_reasons if reason not in EXIT_REASONS]
        if unknown:
            raise ValueError(f"unknown --exit_reason {unknown[0]!r}: one of {', '.join(EXIT_REASONS)}")
        if self.empty_think and self.format == "openai":
            raise ValueError("--empty_think applies to hermes and sharegpt (openai has reasoning_content)")
        if self.arguments not in ARGUMENT_FORMS:
            raise ValueError(f"--arguments must be one of {', '.join(ARGUMENT_FORMS)}, not {self.arguments!r}")
        if self.arguments != "object" and self.format != "openai":
            raise ValueError("--arguments applies to openai (hermes and sharegpt write arguments as objects)")
        if self.empty_think and self.format in TOKEN_FORMATS:
            raise ValueError(f"--empty_think applies to hermes and sharegpt ({self.format} holds the model's own ids)")

    def keeps(self, record: dict) -> bool:
        verification = record.get("verification")
        reward = record.get("reward")
        if self.only == "completed" and record.get("completed") is not True:
            return False
        if self.only == "passed" and not (isinstance(verification, dict) and verification.get("passed") is True):
            return False
        if self.exit_reasons and record.get("exit_reason") not in self.exit_reasons:
            return False
        if self.min_reward is not None and not (isinstance(reward, (int, float)) and reward >= self.min_reward):
            return False
        if self.max_turns is not None:
            turns = sum(1 for turn in record.get("conversations") or () if turn.get("from") == "gpt")
            if turns > self.max_turns:
                return False
        return True


TOOL_CALL_ESCAPES = (("<tool_call>", "&lt;tool_call&gt;"), ("</tool_call>", "&lt;/tool_call&gt;"))
"""How export writes tool-call tags that a model wrote in its text (content or reasoning): as HTML entities, visible
to a reader and never read as a call by a parser, a chat template or LLaMA-Factory's FunctionFormatter."""


def escape_tool_call_tags(text: str) -> str:
    for tag, escaped in TOOL_CALL_ESCAPES:
        text = text.replace(tag, escaped)
    return text


@dataclass
class RowNotes:
    """What exporting one record met, for the summary."""

    escaped_turns: int = 0
    """Model turns whose text held a tool-call tag, written escaped."""
    invalid_arguments: bool = False
    """A tool call's arguments were not a JSON object (kept as the model sent them)."""
    compressed: bool = False
    """hermes-agent's trajectory compressor had summarised turns of it."""
    cut: bool = False
    """sharegpt: the conversation ends early, before a turn that breaks LLaMA-Factory's alternation."""

    def assistant(self, turn: AssistantTurn) -> AssistantTurn:
        """``turn`` with the tool-call tags in its text escaped, noted."""
        reasoning = None if turn.reasoning is None else escape_tool_call_tags(turn.reasoning)
        content = escape_tool_call_tags(turn.content)
        self.escaped_turns += reasoning != turn.reasoning or content != turn.content
        self.invalid_arguments |= any(not isinstance(call["arguments"], dict) for call in turn.calls)
        return AssistantTurn(reasoning, content, turn.calls)


COMPRESSION_METRICS = "compression_metrics"
"""The key hermes-agent's trajectory compressor adds to a record it compressed; no export format has a column for it."""


def export_row(record: dict, options: ExportOptions, notes: RowNotes | None = None) -> dict | None:
    """One record in the export format, or None when the format cannot hold it (sharegpt: no model turn).

    In every text format, tool-call tags in a model turn's text are escaped (see TOOL_CALL_ESCAPES): text never
    poses as a call. ``notes`` collects what the summary reports. Raises RecordFormatError for a record whose
    conversations (or tokens) cannot be read back."""
    if options.format in TOKEN_FORMATS:
        return token_rows(record, options.format)
    notes = RowNotes() if notes is None else notes
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not all(isinstance(turn, dict) for turn in conversations):
        raise RecordFormatError("the record has no conversations list")
    notes.compressed = COMPRESSION_METRICS in record
    # The whole conversation is read before the echo is dropped: the tool turn tells how many calls its gpt turn made.
    drop_echo = options.drop_final_echo and ends_with_final_echo(conversations, options.final_output_marker)
    if options.format == "hermes":
        conversations = _hermes_escaped(conversations, notes)
        if options.empty_think:
            conversations = [_with_empty_think(turn) for turn in conversations]
        row = {key: value for key, value in current_record(record).items() if key != COMPRESSION_METRICS}
        return {**row, "conversations": conversations[:-1] if drop_echo else conversations}
    common = {
        "task_id": record.get("task_id"),
        "sample_index": record_key(record)[1],
        "reward": record.get("reward"),
        "metadata": record.get("metadata"),
    }
    if options.format == "openai":
        messages, tools = to_openai(conversations, options.arguments, notes.assistant)
        notes.compressed |= bool(messages) and messages[0]["role"] == "system"
        while drop_echo and messages and messages[-1]["role"] == "tool":
            messages.pop()
        return {"messages": messages, "tools": tools, **common}
    turns = sharegpt_turns(conversations, options.empty_think, notes)  # its trailing observation is always left out
    if turns is None:
        return None
    tools, notice = parse_system_turn(conversations[0]["value"])
    notes.compressed |= notice != ""
    tools_text = json.dumps([tool["function"] for tool in tools], ensure_ascii=False)
    return {"conversations": turns, "system": notice.lstrip("\n"), "tools": tools_text, **common}


def _hermes_escaped(conversations: list[dict], notes: RowNotes) -> list[dict]:
    """The turns with tool-call tags in the text of model turns escaped (each turn read once, exactly). The hermes
    format passes on records it cannot read back (another system prompt, a damaged tool turn) as they are."""
    result = list(conversations)
    for index, turn in enumerate(conversations):
        value = turn.get("value")
        if turn.get("from") != "gpt" or not isinstance(value, str):
            continue
        following = conversations[index + 1] if index + 1 < len(conversations) else {}
        following_value = following.get("value") if following.get("from") == "tool" else ""
        blocks = following_value.count(_RESPONSE_OPEN) if isinstance(following_value, str) else -1
        # Inside JSON a newline is always escaped, so each "<tool_response>\n" opens a result and each real call
        # writes one "<tool_call>" and one "</tool_call>": when the tags are exactly the calls' and no call's
        # arguments are a string, there is nothing to escape or count, and no need to read the turn.
        if value.count("<tool_call>") == value.count("</tool_call>") == blocks and '"arguments": "' not in value:
            continue
        try:
            answered = len(parse_tool_value(following_value)) if following_value else 0
        except RecordFormatError:
            answered = None
        parsed = parse_gpt_value(value, answered)
        escaped = notes.assistant(parsed)
        if escaped != parsed:
            result[index] = {**turn, "value": _render_turn(escaped)}
    return result


def token_rows(record: dict, format: str) -> dict | Iterator[dict] | None:
    """A record in ``tokens`` (one stitched row) or ``steps`` (its rows, one per model call, made one at a time:
    each holds its whole prompt) form; None when the record has no tokens. Raises RecordFormatError for a
    trajectory the tokens form cannot hold honestly (a break), or one whose tokens cannot be read."""
    tokens = record.get("tokens")
    if not isinstance(tokens, dict):
        return None
    task_id, sample_index = record_key(record)
    reward = record.get("reward")
    if format == "tokens":
        return {**stitched_tokens(tokens), "reward": reward, "task_id": task_id, "sample_index": sample_index}
    return _step_rows(tokens, reward, task_id, sample_index)


def _step_rows(tokens: dict, reward: float | None, task_id: str, sample_index: int) -> Iterator[dict]:
    last = len(tokens["calls"]) - 1
    for index, call in enumerate(token_calls(tokens)):
        yield {
            "prompt_ids": call.prompt_ids,
            "completion_ids": call.completion_ids,
            "logprobs": call.logprobs,
            "finish_reason": call.finish_reason,
            "step_index": index,
            "is_last": index == last,
            "reward": reward if index == last else None,
            "trajectory_id": f"{task_id}#{sample_index}",
            "group": task_id,
            "task_id": task_id,
            "sample_index": sample_index,
        }


def _with_empty_think(turn: dict) -> dict:
    if turn.get("from") != "gpt" or _split_think(turn["value"])[0] is not None:
        return turn
    return {"from": "gpt", "value": EMPTY_THINK + turn["value"]}


def sharegpt_turns(
    conversations: list[dict],
    empty_think: bool = False,
    notes: RowNotes | None = None,
) -> list[dict] | None:
    """Hermes turns -> LLaMA-Factory sharegpt turns (human/gpt/function_call/observation), or None when no
    assistant turn is left.

    Its loader (SharegptDatasetConverter) skips a conversation unless human/observation and gpt/function_call
    alternate, starting with the user side and ending on the assistant side, so a trailing observation (the
    echo of the completion command, or the last result of a task cut short) is left out. A function_call value
    is the JSON list of calls, which LLaMA-Factory's FunctionFormatter reads with json.loads; reasoning or text
    that came with the calls goes before it and the list is wrapped in <tool_call></tool_call>, the form that
    formatter keeps such text in. Every "<" inside that JSON is written as \\u003c, so a command containing
    </tool_call> or <think> cannot end its regex match early. The results of one model turn are one observation
    joined by "\\n</tool_response>\\n<tool_response>\\n", as LLaMA-Factory's own OpenAI-format converter joins them:
    its templates wrap an observation in one <tool_response> block, so each result gets its own block.
    A user turn right after a tool result (the summary turn of a record compressed by hermes-agent's trajectory
    compressor) breaks the alternation: the conversation ends before it, and ``notes.cut`` says so.
    """
    notes = RowNotes() if notes is None else notes
    if not conversations or conversations[0].get("from") != "system":
        raise RecordFormatError("the conversation does not start with the system turn")
    turns: list[dict] = []
    results: list[dict] = []
    for index, turn in enumerate(conversations[1:], start=1):
        role, value = turn.get("from"), turn.get("value")
        if role == "human":
            turns.append({"from": "human", "value": value})
        elif role == "tool":
            if conversations[index - 1].get("from") != "gpt":  # else read already, for the gpt turn it answers
                results = parse_tool_value(value)
            texts = [tool_result_text(result["content"]) for result in results]
            turns.append({"from": "observation", "value": OBSERVATION_SEPARATOR.join(texts)})
        elif role == "gpt":
            following = conversations[index + 1] if index + 1 < len(conversations) else {}
            results = parse_tool_value(following["value"]) if following.get("from") == "tool" else []
            parsed = parse_gpt_value(value, len(results))
            turns.append(_sharegpt_assistant(notes.assistant(parsed), empty_think))
        else:
            raise RecordFormatError(f"unknown role {role!r}")
    user_side = ("human", "observation")
    for position, turn in enumerate(turns):
        if (turn["from"] in user_side) != (position % 2 == 0):
            notes.cut = True
            del turns[position:]
            break
    if len(turns) % 2:
        turns.pop()
    return turns or None


OBSERVATION_SEPARATOR = "\n</tool_response>\n<tool_response>\n"


def _sharegpt_assistant(turn: AssistantTurn, empty_think: bool) -> dict:
    think = EMPTY_THINK if empty_think else ""
    if turn.reasoning is not None:
        think = f"<think>\n{turn.reasoning}\n</think>\n"
    if not turn.calls:
        return {"from": "gpt", "value": think + turn.content}
    calls = json.dumps(turn.calls, ensure_ascii=False).replace("<", "\\u003c")
    text = think + (turn.content + "\n" if turn.content else "")
    return {"from": "function_call", "value": f"{text}<tool_call>{calls}</tool_call>" if text else calls}


@dataclass
class ExportResult:
    written: int = 0
    read: int = 0
    """Valid records read, duplicates included."""
    superseded: int = 0
    """Earlier records of a (task_id, sample_index) that has a later one (resumed runs, repeated shards)."""
    filtered: int = 0
    unrepresentable: int = 0
    """Records the format cannot hold (sharegpt: no model turn to end on; tokens, steps: no token ids)."""
    token_breaks: int = 0
    """tokens: trajectories whose prompts broke the token prefix, left out rather than spliced (steps holds them)."""
    unreadable: int = 0
    """Records whose conversations could not be read back (not written by the runner, or damaged)."""
    bad_lines: int = 0
    first_unreadable: str | None = None
    """task_id and reason of the first unreadable record, for the message."""
    not_chosen: int = 0
    """swebench: samples of an instance other than the one exported."""
    without_patch: int = 0
    """swebench: instances left out because the chosen sample has no patch (null: none was recorded)."""
    cut_patch: int = 0
    """swebench: instances left out because the chosen sample's patch was truncated (not the whole diff)."""
    first_left_out: str | None = None
    """swebench: the instance_id of the first instance left out for its patch, for the message."""
    escaped_turns: int = 0
    """Model turns written with the tool-call tags of their text escaped (see TOOL_CALL_ESCAPES)."""
    invalid_arguments: int = 0
    """Records with a tool call whose arguments are not a JSON object (written, or left out by the option)."""
    compressed: int = 0
    """Records written that hermes-agent's trajectory compressor had compressed."""
    cut: int = 0
    """sharegpt rows that end before a turn that breaks LLaMA-Factory's alternation (see sharegpt_turns)."""


def export(paths: list[str], output_file: str, options: ExportOptions) -> ExportResult:
    """Stream the last record of each (task_id, sample_index) of ``paths`` through the filters into
    ``output_file`` in ``options.format``, in bounded memory.

    The output is written to a temporary file beside it and renamed into place at the end, so a failed export
    leaves no partial file (an existing file at that path stays as it was).
    """
    if options.format == "swebench":
        return export_swebench(paths, output_file, options)
    result = ExportResult()

    def rows() -> Iterator[bytes]:
        for record in kept_records(paths, options, result):
            if options.format == "tokens" and isinstance(record.get("tokens"), dict):
                if not record["tokens"].get("consistent"):
                    result.token_breaks += 1
                    continue
            notes = RowNotes()
            try:
                row = export_row(record, options, notes)
                if isinstance(row, Iterator):  # steps: a record's rows as text (a fifth of their ints' memory),
                    row = [record_line(step) for step in row]  # all or none of them written
            except (RecordFormatError, KeyError, TypeError, AttributeError, ValueError) as exc:
                result.unreadable += 1
                if result.first_unreadable is None:
                    result.first_unreadable = f"{record.get('task_id')}: {exc}"
                continue
            result.invalid_arguments += notes.invalid_arguments
            if notes.invalid_arguments and options.drop_invalid_arguments:
                continue
            if row is None:
                result.unrepresentable += 1
                continue
            result.escaped_turns += notes.escaped_turns
            result.compressed += notes.compressed
            result.cut += notes.cut
            for line in row if isinstance(row, list) else (record_line(row),):
                result.written += 1
                yield line

    _atomic_write(output_file, rows(), _temporary(os.path.abspath(output_file), _EXPORT))
    return result


def kept_records(paths: list[str], options: ExportOptions, result: ExportResult) -> Iterator[dict]:
    """The last record of each (task_id, sample_index) of ``paths`` that the filters keep, streamed; once the stream
    ends, ``result`` holds what was read, superseded, filtered out and not a record at all."""
    bad_lines, read, unique = [0], [0], 0
    for record in last_records(paths, bad_lines, read):
        unique += 1
        if options.keeps(record):
            yield record
        else:
            result.filtered += 1
    result.read, result.bad_lines, result.superseded = read[0], bad_lines[0], read[0] - unique


# SWE-bench predictions: what the official harness reads (swebench/harness/utils.py get_predictions_from_file and
# run_evaluation.py, August 2026). A path ending .json holds a JSON list (or an object of predictions), a path ending
# .jsonl one JSON object per line (every line is parsed: no blank line), nothing else is read. Predictions become a
# dict by instance_id, so a second prediction of an instance would silently replace the first: one per instance.
# A model_patch of "" or null is "an empty patch" (submitted, never resolved); model_name_or_path names the log dir.
SWEBENCH_KEYS = ("instance_id", "model_name_or_path", "model_patch")
SWEBENCH_PICKS = ("passed", "first")
PATCH_CUT_MARKER = re.compile(
    r"\[mini-swe-runner: patch cut at \d+ of \d+ bytes\]|\[\.\.\. \d+ characters omitted \.\.\.\]"
)
"""Where a patch was cut: the patch capture's size limit, or the one truncation rule of outputs (head + tail).
A patch carrying either is not the whole diff. The page (report.py) matches the same pattern."""


def record_patch(record: dict) -> str | None:
    """The record's ``patch``: its final git diff, or None (no repository, or a record from before patches)."""
    patch = record.get("patch")
    return patch if isinstance(patch, str) else None


def patch_is_cut(patch: str) -> bool:
    return PATCH_CUT_MARKER.search(patch) is not None


def swebench_instance_id(record: dict) -> str:
    """The input row's ``instance_id`` kept in metadata.prompt_fields (a row that also had an ``id``), else the
    task_id, which is the row's instance_id when that was its id."""
    metadata = record.get("metadata")
    fields = metadata.get("prompt_fields") if isinstance(metadata, dict) else None
    try:
        fields = json.loads(fields) if isinstance(fields, str) else None
    except ValueError:
        fields = None
    value = fields.get("instance_id") if isinstance(fields, dict) else None
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
        return str(value)
    return str(record.get("task_id"))


def _swebench_rank(record: dict, pick: str) -> tuple[int, int]:
    """Lower is chosen: by the sample index, passed samples first when ``pick`` is ``passed``."""
    verification = record.get("verification")
    passed = isinstance(verification, dict) and verification.get("passed") is True
    return (0 if passed or pick == "first" else 1), record_key(record)[1]


def export_swebench(paths: list[str], output_file: str, options: ExportOptions) -> ExportResult:
    """One prediction per instance, for the official SWE-bench harness: ``output_file`` ends .json (a list) or
    .jsonl. Of an instance's records (the last of each task and sample, through the filters) one is chosen by
    ``options.pick``; an instance whose chosen patch is null or truncated is left out and counted, never exported
    as if whole. Two streaming passes; memory holds one small entry per instance."""
    if not output_file.endswith((".json", ".jsonl")):
        raise ValueError(f"the SWE-bench harness reads predictions from a .json or .jsonl file, not {output_file}")
    as_list = output_file.endswith(".json")
    result = ExportResult()
    chosen: dict[str, tuple[tuple[int, int], tuple[str, int]]] = {}
    for record in kept_records(paths, options, result):
        instance, rank = swebench_instance_id(record), _swebench_rank(record, options.pick)
        if instance in chosen:
            result.not_chosen += 1
            if rank >= chosen[instance][0]:
                continue
        chosen[instance] = (rank, record_key(record))

    def predictions() -> Iterator[bytes]:
        yield b"[" if as_list else b""
        for record in last_records(paths):
            instance = swebench_instance_id(record)
            if instance not in chosen or chosen[instance][1] != record_key(record):
                continue
            patch = record_patch(record)
            if patch is None or patch_is_cut(patch):
                if patch is None:
                    result.without_patch += 1
                else:
                    result.cut_patch += 1
                result.first_left_out = result.first_left_out or instance
                continue
            metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
            model = options.model_name or (metadata.get("model") if isinstance(metadata.get("model"), str) else "")
            row = {"instance_id": instance, "model_name_or_path": model or "unknown", "model_patch": patch}
            # ASCII JSON: the harness opens the file without an encoding, so it must read the same in any locale.
            text = json.dumps(row, ensure_ascii=True)
            yield ((",\n" if result.written else "\n") + text if as_list else text + "\n").encode("ascii")
            result.written += 1
        yield b"\n]\n" if as_list else b""

    _atomic_write(output_file, predictions(), _temporary(os.path.abspath(output_file), _EXPORT))
    return result
