"""Where the agent's commands run: one small base class, one class per backend, one registry.

Every backend runs each command as a fresh ``bash -c`` and carries only the working directory from one
command to the next. :class:`Environment` owns the per-command path that every backend shares (collector,
run, timed out?, cwd update, :class:`ExecResult`); a backend implements only four things: ``_start``,
``_run`` (run one argv, streaming its merged output into a collector), ``_close`` and ``abandon``.

    env = create_environment(settings, image, cwd, task_id)  # nothing started yet; image already resolved
    await env.start()                           # create the sandbox / temp dir
    result = await env.execute("ls", timeout=60)  # -> ExecResult, never raises for a failing command
    await env.close()                           # idempotent; removes everything the task created
    env.abandon()                               # sync best-effort cleanup when the user insists on exiting now

``BACKENDS`` maps each ``--env`` name to its class; the class says whether it uses an image, declares each flag
it uses once (a Flag: the CLI, --help, the check and the EnvSettings field come from it), and brings its own
preflight and leftover cleanup. Heavy SDKs (docker, modal, asyncssh) are imported
lazily so ``--help`` and the local backend stay fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

TIMEOUT_EXIT_CODE = 124
"""Exit code reported for a command that hit its timeout (the same as coreutils ``timeout``)."""

KILL_GRACE = 2.0
"""Seconds between the SIGTERM at a command's timeout and the SIGKILL that follows, in every sandbox backend."""

READ_CHUNK = 64 * 1024

SECRET_NAME_PATTERN = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE", re.IGNORECASE)
"""Environment variable names that never reach the agent's commands unless passed through by name."""

REDACTED = "[REDACTED]"


class EnvError(Exception):
    """A backend could not be prepared or used; the message is one line that names the fix."""


class SettingsError(ValueError):
    """An EnvSettings value no backend could use; the message is one line naming the flag (a usage error)."""


class CommandError(Exception):
    """One command could not be run (the environment itself is still usable): becomes that command's result."""


@dataclass
class ExecResult:
    """What one command produced."""

    output: str
    """stdout and stderr merged, decoded with replacement, truncated head+tail, secrets redacted."""
    exit_code: int
    """The command's exit status; 124 after a timeout; -1 when it could not be run at all."""
    error: str | None = None
    """Why the command did not finish normally (timeout, backend failure); None when it ran to its end."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.error is None

    def to_dict(self) -> dict:
        return {"output": self.output, "exit_code": self.exit_code, "error": self.error}


# ---------------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------------
# A backend declares each of its flags once, as a Flag in its class's ``flags``; a flag several backends share is
# declared here. Everything else derives from those declarations (see the registry at the end of this module): the
# EnvSettings field, the check of its value, the command line's --name and its --help line, and the usage error
# for a flag given with a backend that does not use it.

DEFAULT_IMAGE = "python:3.11-slim"
"""The image docker and modal tasks run in when neither the prompt nor --image names one."""

PULL_POLICIES = ("missing", "always", "never")


@dataclass(frozen=True)
class Flag:
    """One environment flag: the command line's --name, the EnvSettings field it sets, and that field's rule."""

    name: str
    """--name on the command line; the EnvSettings field is named alike unless ``field`` says otherwise."""
    type: type
    """What the flag takes: str, int, float, bool, or tuple (comma-separated names)."""
    default: object
    """The EnvSettings field's default; None means not set."""
    help: str
    """What --help says of it; the backends it applies to and its default are added there."""
    check: Callable[[str, Any], Any] | None = None
    """``check(name, value)`` for every value that is not None: raises SettingsError naming --name, or returns the
    value to keep (a normalised one: a size in bytes)."""
    field: str = ""
    """The EnvSettings field, when it is not named like the flag (--volume sets volumes)."""
    negated: bool = False
    """The flag turns its field off (--no_hardening sets hardening=False)."""

    @property
    def setting(self) -> str:
        """The EnvSettings field this flag sets."""
        return self.field or self.name


def at_least(minimum: float) -> Callable[[str, Any], Any]:
    """A Flag check: a finite number of at least ``minimum``."""

    def check(name: str, value: Any) -> Any:
        _at_least(name, value, minimum)
        return value

    return check


def one_of(choices: tuple[str, ...]) -> Callable[[str, Any], Any]:
    """A Flag check: one of ``choices``."""

    def check(name: str, value: Any) -> Any:
        if value not in choices:
            raise SettingsError(f"--{name} must be {', '.join(choices[:-1])} or {choices[-1]}, not {value!r}")
        return value

    return check


def _size_in_bytes(name: str, value: Any) -> int:
    size = parse_size(value, f"--{name}") if isinstance(value, str) else value
    _at_least(name, size, 1)
    return size


def _volumes(name: str, value: tuple[str, ...]) -> tuple[str, ...]:
    for volume in value:
        parse_volume(volume)
    return value


def _network(name: str, value: str) -> str:
    if not value:
        raise SettingsError(f"--{name} needs a value (bridge or none)")
    return value


def _existing_file(name: str, path: str) -> str:
    if not os.path.isfile(os.path.expanduser(path)):
        raise SettingsError(f"--{name} {path}: no such file")
    return path


IMAGE = Flag("image", str, None, 'default image (a prompt\'s "image"/"docker_image" overrides it)')
CWD = Flag("cwd", str, None, "directory commands start in (local/bwrap/ssh: a fresh temporary directory per task)")
NETWORK = Flag("network", str, "bridge", "bridge or none; with bwrap, bridge is the host's network", check=_network)
MEMORY = Flag("memory", str, None, "memory limit, e.g. 4g")
CPUS = Flag("cpus", float, None, "CPU limit, e.g. 2", check=at_least(0.01))
VOLUME = Flag(
    "volume", tuple, (), "comma-separated host:sandbox[:ro] mounts (none by default)", _volumes, field="volumes"
)
ENV_VAR = Flag(
    "env_var", tuple, (), "comma-separated host variables passed to commands (none by default)", field="env_vars"
)
STARTUP_TIMEOUT = Flag(
    "startup_timeout", float, 120.0, "longest wait for a sandbox or connection; past it env_error", at_least(0.1)
)
# modal counts the startup from the app lookup on, rate-limit retries included; a task's wait for its turn under
# MODAL_CREATE_RATE is not counted.


@dataclass
class CommonSettings:
    """How environments are made for a run; one object shared by every task of the run.

    Built once from the flags; ``__post_init__`` checks every value (each backend flag's rule is its Flag's check,
    a backend's own rules are its ``check_settings``) and raises :class:`SettingsError` with one line naming the flag.
    EnvSettings is this plus one field per backend flag; it is made at the registry, once every backend is known.
    """

    env_type: str = "local"
    """A name in BACKENDS (the registry, at the end of this module)."""
    max_output_chars: int = 50_000
    """Output beyond this keeps its head and tail with a marker saying how much was left out."""
    secret_values: tuple[str, ...] = ()
    """Literal secrets (API keys...) that are replaced by [REDACTED] wherever they would appear in output."""
    run_id: str = field(default_factory=lambda: secrets.token_hex(6))
    """Identifies this run; backends label what they create with it."""
    concurrency: int = 8
    """How many tasks run at once (--workers): sizes shared connection pools."""

    def __post_init__(self) -> None:
        backend = BACKENDS.get(self.env_type)
        if backend is None:
            raise SettingsError(f"--env must be one of {', '.join(BACKENDS)}, not {self.env_type!r}")
        _at_least("max_output_chars", self.max_output_chars, 100)
        _at_least("workers", self.concurrency, 1)
        for flag in ENV_FLAGS.values():
            value = getattr(self, flag.setting)
            if value is not None and flag.check is not None:
                setattr(self, flag.setting, flag.check(flag.name, value))
        backend.check_settings(self)

    @functools.cached_property
    def command_environ(self) -> dict[str, str]:
        """What the local and bwrap backends' commands get: the runner's environment at the run's first task, without
        its secrets. Once per run, not per task: filtering os.environ cost about 0.8 ms of the runner's CPU per
        task (bench/bench_harness.py)."""
        return command_environ(self.pass_env)


def _at_least(flag: str, value: float, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < minimum:
        raise SettingsError(f"--{flag} must be a finite number of at least {minimum:g}, not {value!r}")


def parse_volume(volume: str) -> tuple[str, str, str]:
    """``host:sandbox[:ro|rw]`` -> (absolute host path, sandbox path, mode); SettingsError when malformed."""
    host, _, rest = volume.partition(":")
    target, _, mode = rest.partition(":")
    if not host or not target.startswith("/") or mode not in ("", "ro", "rw"):
        raise SettingsError(f"--volume {volume!r} is not host:sandbox[:ro] with an absolute sandbox path")
    return os.path.abspath(os.path.expanduser(host)), target, mode or "rw"


def _existing_volumes(settings: EnvSettings) -> list[tuple[str, str, str]]:
    mounts = [parse_volume(volume) for volume in settings.volumes]
    for (host, _, _), volume in zip(mounts, settings.volumes, strict=True):
        if not os.path.exists(host):
            raise EnvError(f"--volume {volume!r}: {host} does not exist on this machine")
    return mounts


def task_image(settings: EnvSettings, prompt_image: str | None = None) -> str | None:
    """The image a task runs in: the prompt's, else --image, else the default; None for backends without images."""
    if not BACKENDS[settings.env_type].uses_image:
        return None
    return prompt_image or settings.image or DEFAULT_IMAGE


def flag_users(name: str) -> list[str]:
    """The backends that use --name, in the registry's order."""
    return [backend for backend, cls in BACKENDS.items() if any(flag.name == name for flag in cls.flags)]


def flags_not_applicable(env_type: str, given_flags: set[str]) -> str | None:
    """One line naming the first flag the chosen backend would ignore, and the backends it applies to."""
    for flag in sorted(given_flags):
        users = flag_users(flag)
        if not users or env_type in users:
            continue  # not an environment flag at all, or one of this backend's
        names = ", ".join(users[:-1]) + " or " + users[-1] if len(users) > 1 else users[0]
        return f"--{flag} does nothing with --env {env_type}: it applies to --env {names} only"
    return None


# ---------------------------------------------------------------------------------------------------------------
# The shared output path
# ---------------------------------------------------------------------------------------------------------------

# UTF-8 continuation bytes (0b10xxxxxx): deleting them from a chunk leaves one byte per character.
_CONTINUATION_BYTES = bytes(range(0x80, 0xC0))


class OutputCollector:
    """Keeps the head and the tail of a byte stream of any length in bounded memory.

    Feed it chunks as they arrive; memory stays around ``2 * limit`` bytes whatever the stream's size. It knows
    the limit, the secrets to redact and the cwd marker from the start; :meth:`result` takes the wrapper's cwd
    report out of the stream and returns the final text.
    """

    def __init__(self, limit_chars: int, secret_values: tuple[str, ...] = (), cwd_marker: str | None = None):
        # A character is at most 4 bytes in UTF-8; keeping 4x the limit on each side is always enough.
        self.keep_bytes = max(limit_chars, 1) * 4
        self.limit_chars = limit_chars
        self.secret_values = secret_values
        self.cwd_marker = cwd_marker.encode() if cwd_marker else None
        self.head = bytearray()
        self.tail = bytearray()
        self.total_bytes = 0
        self.total_chars = 0

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.total_bytes += len(chunk)
        self.total_chars += len(chunk.translate(None, _CONTINUATION_BYTES))
        room = self.keep_bytes - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > 2 * self.keep_bytes:
                del self.tail[: len(self.tail) - self.keep_bytes]

    def text(self) -> str:
        """The decoded output, secrets redacted, truncated to the limit with a marker counting what was left out."""
        dropped_bytes = self.total_bytes - len(self.head) - len(self.tail)
        if dropped_bytes == 0:
            text = bytes(self.head + self.tail).decode("utf-8", errors="replace")
            return truncate_text(text, self.limit_chars, self.secret_values)
        head = bytes(self.head).decode("utf-8", errors="replace")
        tail = bytes(self.tail).decode("utf-8", errors="replace")
        return _join_head_tail(head, tail, self.limit_chars, self.total_chars, self.secret_values)

    def result(self) -> tuple[str, str | None]:
        """The final text and the cwd the wrapper reported (None when it did not get to report one)."""
        new_cwd = self._take_cwd_report() if self.cwd_marker else None
        return self.text(), new_cwd

    def _take_cwd_report(self) -> str | None:
        # The wrapper prints "\n<marker><pwd>\n" last. When nothing was dropped, head and tail are one contiguous
        # stream and the line may straddle them: join them first. Otherwise the tail holds at least the last
        # keep_bytes of output, so the short line lies wholly inside it.
        marker = self.cwd_marker
        if self.tail and self.total_bytes == len(self.head) + len(self.tail):
            self.head += self.tail
            self.tail.clear()
        for buf in (self.tail, self.head):
            start = buf.rfind(b"\n" + marker)
            if start < 0:
                continue
            end = buf.find(b"\n", start + 1 + len(marker))
            if end < 0:
                return None
            path = bytes(buf[start + 1 + len(marker) : end]).decode("utf-8", errors="replace")
            removed = end + 1 - start
            del buf[start : end + 1]
            self.total_bytes -= removed
            self.total_chars -= removed - (len(path.encode()) - len(path))
            return path or None
        return None


def _join_head_tail(head: str, tail: str, limit: int, total_chars: int, secret_values: tuple[str, ...]) -> str:
    head_end = _clear_of_secrets(head, limit // 2, secret_values, keep="before")
    tail_start = _clear_of_secrets(tail, max(len(tail) - (limit - head_end), 0), secret_values, keep="after")
    omitted = max(total_chars - head_end - (len(tail) - tail_start), 0)
    head_part, tail_part = redact(head[:head_end], secret_values), redact(tail[tail_start:], secret_values)
    return f"{head_part}\n\n[... {omitted} characters omitted ...]\n\n{tail_part}"


def _clear_of_secrets(text: str, cut: int, secret_values: tuple[str, ...], keep: str) -> int:
    """Move a cut so that no secret straddles it (which would show part of it): the secret goes to the dropped side."""
    moved = True
    while moved:
        moved = False
        for value in secret_values:
            if not value:
                continue
            start = text.find(value, max(cut - len(value) + 1, 0))
            if start != -1 and start < cut < start + len(value):
                cut, moved = (start if keep == "before" else start + len(value)), True
    return cut


def truncate_text(text: str, limit: int, secret_values: tuple[str, ...] = ()) -> str:
    """Head + tail of ``text`` when it is longer than ``limit`` characters: the one truncation rule."""
    if len(text) <= limit:
        return redact(text, secret_values)
    return _join_head_tail(text, text, limit, len(text), secret_values)


def redact(text: str, secret_values: tuple[str, ...]) -> str:
    """Replace every known secret value in ``text``: the one secret filter for outputs, errors and logs."""
    for value in secret_values:
        if value and value in text:
            text = text.replace(value, REDACTED)
    return text


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME_PATTERN.search(name))


def secret_values_from_environ(extra: tuple[str, ...] = (), environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """Values of the runner's secret-looking variables long enough to be worth redacting, plus ``extra`` (the API
    key), longest first so a secret containing another is replaced whole."""
    environ = os.environ if environ is None else environ
    found = {v for k, v in environ.items() if is_secret_name(k) and len(v) >= 8} | set(extra)
    return tuple(sorted(found - {""}, key=len, reverse=True))


def hide_process_memory() -> None:
    """Make this process's memory unreadable to its commands: PR_SET_DUMPABLE 0 turns /proc/<pid>/mem, environ and
    maps root's and refuses ptrace (and process_vm_readv) to any process without CAP_SYS_PTRACE; a local command
    run by root has none (SUPERVISOR_SCRIPT drops it). Without it a command read the API key out of the runner's
    memory, where no redaction can follow (issue 19). For every process of ours that holds a secret; exec undoes it."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE


# Variables that keep agents' commands non-interactive and their output plain, in every backend.
AGENT_ENV_DEFAULTS = {
    "PAGER": "cat",
    "MANPAGER": "cat",
    "GIT_PAGER": "cat",
    "LESS": "-R",
    "PIP_PROGRESS_BAR": "off",
    "TQDM_DISABLE": "1",
    "DEBIAN_FRONTEND": "noninteractive",
}


def command_environ(pass_env: tuple[str, ...] = (), environ: dict[str, str] | None = None) -> dict[str, str]:
    """The runner's environment without its secrets, for the local and bwrap backends' commands (computed once per
    run: see :meth:`EnvSettings.command_environ`)."""
    environ = dict(os.environ if environ is None else environ)
    keep = {k: v for k, v in environ.items() if not is_secret_name(k) or k in pass_env}
    keep.update(AGENT_ENV_DEFAULTS)
    return keep


def sandbox_environ(env_vars: tuple[str, ...]) -> dict[str, str]:
    """What a sandbox's commands see: the agent defaults plus only the host variables named by the user."""
    environ = dict(AGENT_ENV_DEFAULTS)
    environ.update({name: os.environ[name] for name in env_vars if name in os.environ})
    return environ


TASK_VARIABLE = "MSR_TASK"
"""Carries the task's own token (``Environment._task_token``) in the environment of everything its commands start,
inherited through setsid, nohup and double forks, which a process group misses: how a backend without a better
handle (Modal, the ssh remote) finds what the agent left running, through /proc/<pid>/environ."""


# The wrapper every backend runs: a fresh bash that starts in the task's cwd, runs the command through eval
# (so the command text is data, never spliced into a script), and on exit reports its $PWD on the original
# stdout, so the next command can start where this one ended. $1 = marker, $2 = cwd, $3 = command.
_WRAPPER_SCRIPT = (
    f'export {TASK_VARIABLE}="$4"; '
    'exec 9>&1; trap \'printf "\\n%s%s\\n" "$1" "$PWD" >&9 2>/dev/null\' EXIT; cd -- "$2" || exit 1; eval "$3"'
)


def new_cwd_marker() -> str:
    return f"__MSR_CWD_{secrets.token_hex(8)}__:"


def wrapped_argv(command: str, cwd: str, marker: str, task_token: str = "") -> list[str]:
    """argv that runs ``command`` with ``bash -c`` in ``cwd`` and reports the final cwd after ``marker``."""
    return ["bash", "-c", _WRAPPER_SCRIPT, "bash", marker, cwd, command, task_token]


_END_TASK_PROCESSES_SCRIPT = rf"""
for round in $(seq 500); do
  found=0
  for entry in /proc/[0-9]*; do
    if grep -qzx "{TASK_VARIABLE}=$1" "$entry/environ" 2>/dev/null; then
      kill -9 "${{entry#/proc/}}" 2>/dev/null; found=1
    fi
  done
  [ "$found" = 0 ] && exit 0
  sleep 0.01
done
exit 1
"""
"""Kills, until none is left, every process whose environment carries the task's token (TASK_VARIABLE). It runs without
the token itself (env -u), so it never matches itself."""


def sandbox_timeout_argv(argv: list[str], timeout: float) -> list[str]:
    """``argv`` under coreutils ``timeout`` inside a sandbox, stderr merged into stdout: the one such argv.

    ``sh`` merges the streams in the sandbox (the engines carry them on two pipes, which would lose their order);
    ``timeout`` puts the command in its own process group and signals the whole group, TERM then KILL after
    KILL_GRACE: the command's tree dies inside the sandbox, and the sandbox stays usable.
    """
    limits = ["-k", f"{KILL_GRACE:g}", f"{max(timeout, 0.01):.3f}"]
    return ["sh", "-c", 'exec "$@" 2>&1', "sh", "timeout", *limits, *argv]


SANDBOX_TIMEOUT_CODES = (-1, 124, 137)
"""How a command the in-sandbox ``timeout`` stopped comes back: TERM (124), KILL (137), or the engine gave up (-1)."""


def timeout_notice(timeout: float) -> str:
    return f"Command timed out after {timeout:g} s; its processes were killed."


def timed_out_result(output: str, timeout: float) -> ExecResult:
    """The one shape of a timed-out command, whatever the backend."""
    notice = timeout_notice(timeout)
    text = f"{output}\n[{notice}]" if output else f"[{notice}]"
    return ExecResult(output=text, exit_code=TIMEOUT_EXIT_CODE, error=notice)


# ---------------------------------------------------------------------------------------------------------------
# The base every backend shares
# ---------------------------------------------------------------------------------------------------------------


class Environment:
    """One task's environment. Owns the image, the requested and current cwd, the cwd marker and ``execute``.

    A backend sets the class attributes and implements ``_start``, ``_run``, ``_close`` and ``abandon``
    (and optionally ``preflight``, ``check_settings`` and ``cleanup_leftovers``).
    """

    name: ClassVar[str] = ""
    uses_image: ClassVar[bool] = False
    """Whether tasks run in an image (the record's ``image``, the --image flag, per-prompt images)."""
    flags: ClassVar[tuple[Flag, ...]] = ()
    """The flags this backend uses, each declared once (see Flag); another backend's flag given with it is a usage
    error."""
    needs_absolute_cwd: ClassVar[bool] = False

    def __init__(self, settings: EnvSettings, image: str | None = None, cwd: str | None = None, task_id: str = ""):
        self.settings = settings
        self.image = image if image is not None else task_image(settings)
        self.requested_cwd = cwd or settings.cwd
        self.task_id = task_id
        self.cwd: str | None = None
        """Where the next command starts; set by _start, then by each command's cwd report."""
        self.closed = False
        self._marker = new_cwd_marker()
        self._task_token = secrets.token_hex(12)
        self._started = False

    async def start(self) -> None:
        if self._started:
            return
        if self.closed:
            raise EnvError(f"this {self.name} environment was closed; create a new one")
        if self.needs_absolute_cwd and self.requested_cwd and not self.requested_cwd.startswith("/"):
            raise EnvError(f"cwd {self.requested_cwd!r} must be an absolute path inside the {self.name} sandbox")
        await self._start()
        self._started = True

    async def execute(self, command: str, timeout: float, output_limit: int | None = None) -> ExecResult:
        """Run one bash command; ``output_limit`` replaces --max_output_chars for this command (the runner's own
        commands that read a file back whole, such as the patch)."""
        if not self._started:
            await self.start()
        if self.closed:
            raise EnvError(f"this {self.name} environment was closed; create a new one")
        settings = self.settings
        limit = settings.max_output_chars if output_limit is None else output_limit
        collector = OutputCollector(limit, settings.secret_values, self._marker)
        started = time.monotonic()
        error = None
        try:
            argv = wrapped_argv(command, self.cwd or ".", self._marker, self._task_token)
            exit_code = await self._run(argv, collector, timeout)
        except CommandError as exc:
            exit_code, error = -1, str(exc)
        text, new_cwd = collector.result()
        if error:
            return ExecResult(output=text or f"[{error}]", exit_code=-1, error=redact(error, settings.secret_values))
        # None: the backend knows the command ran out of time. A sandbox's `timeout` answers 124/137 instead, which
        # a quick `exit 124` also does: only the time taken tells them apart.
        if exit_code is None or (exit_code in SANDBOX_TIMEOUT_CODES and time.monotonic() - started >= timeout):
            return timed_out_result(text, timeout)
        if new_cwd:
            self.cwd = new_cwd
        return ExecResult(output=text, exit_code=exit_code)

    async def close(self) -> None:
        """Idempotent; removes everything the task created."""
        already, self.closed = self.closed, True
        if not already:
            await self._close()

    # What a backend implements -------------------------------------------------------------------------------

    async def _start(self) -> None:
        raise NotImplementedError

    async def _run(self, argv: list[str], collector: OutputCollector, timeout: float) -> int | None:
        """Run ``argv`` (already wrapped) feeding its merged output to ``collector``; kill its whole tree at
        ``timeout``. Returns the exit code, or None when the command ran out of time. Raises CommandError when
        this one command could not run, EnvError when the environment is broken."""
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    def abandon(self) -> None:
        """Synchronous, best-effort, quick cleanup for a second Ctrl-C, when the event loop is not waited on."""
        raise NotImplementedError

    async def end_processes(self) -> None:
        """End every process the task's commands left running; the sandbox and its files stay. Called before a
        verifier runs in the task's own sandbox, so nothing of the agent (a loop rewriting the tests) runs beside it.
        Raises EnvError when it cannot be done, since the verifier's result could then not be trusted.

        This default finds them by the task's token (TASK_VARIABLE) in their environment: a process that dropped it
        (env -i) escapes, which is why a backend with a better handle (a supervisor, a container) overrides it."""
        reaper = shlex.quote(_END_TASK_PROCESSES_SCRIPT)
        script = f"exec env -u {TASK_VARIABLE} bash -c {reaper} bash {self._task_token}"
        result = await self.execute(script, 60)
        if result.exit_code != 0:
            raise EnvError(f"could not end the task's processes in its {self.name} sandbox: {result.output[-300:]}")

    # What a backend class brings -----------------------------------------------------------------------------

    @classmethod
    def check_settings(cls, settings: EnvSettings) -> None:
        """Raise SettingsError for a value this backend cannot use (checked when the settings are built)."""

    @classmethod
    async def preflight(cls, settings: EnvSettings, images: set[str]) -> None:
        """Before any task starts: raise EnvError in one line when this backend cannot run at all."""

    @classmethod
    async def start_turn(cls, settings: EnvSettings) -> None:
        """Before each task starts (and holds anything): wait for this backend's turn to take another one. Most
        backends take every task at once; Modal's creations are paced (see CreationPacer.admit)."""

    @classmethod
    def cleanup_leftovers(cls) -> str | None:
        """Remove what runs that died left behind; a line saying what was removed, or None if nothing can be left."""
        return None

    @classmethod
    def image_store(cls, settings: EnvSettings) -> ImageStore | None:
        """Where this backend's images are checked, pulled and removed (see ImageSupply); None when it has none."""
        return None


# ---------------------------------------------------------------------------------------------------------------
# Local backend: commands spawned by a per-task supervisor
# ---------------------------------------------------------------------------------------------------------------

# The per-task supervisor (run with `python -I -S -c`). Commands are never the runner's children: the runner asks
# the supervisor over a socket, and the supervisor spawns bash itself (posix_spawn, bash in its own process
# group). The supervisor is a child subreaper, so whatever a command starts - `setsid`, `nohup`, `set -m`, double
# forks - stays its descendant (orphans are re-parented to the nearest subreaper). Each command's bash gets
# MSR_COMMAND_ID=<id> in its environment, which its descendants inherit: a timeout kills the command's bash with
# its tree and every other descendant of the supervisor that carries the command's id, or that carries no id at
# all (`env -i`) and started after the command did (start time, field 22 of /proc/<pid>/stat; so a process an
# earlier command's daemon starts with a cleared environment during this command would go too). What earlier
# commands left running (a server started in the background) lives on until the task ends. A per-command Python
# "keeper" forked for this cost 1.3 ms of CPU per command, the supervisor now 0.2 ms (bench_env). The supervisor
# ignores TERM/INT/HUP/QUIT (a command's `kill $PPID`); a command that kills it otherwise (`kill -KILL $PPID`)
# gets an error result, the runner starts a new supervisor for the next command, and the zygote (a subreaper too)
# kills what the dead one left. When the runner's end of the socket closes - close(), abandon(), or the runner
# dying however it dies - the supervisor kills every descendant, removes the task's directory and closes its end,
# which is how close() knows the task is clean. Then a bwrap supervisor exits; one the zygote forked tells the zygote
# it is idle and serves the next task the zygote hands it (it exits when the zygote ends).
#
# Protocol, runner -> supervisor: frames of a 4-byte length + JSON. {"run": id, "argv": [...], "cwd": dir} carries
# one fd (SCM_RIGHTS), the write end of the command's output pipe; {"kill": id} kills a command's processes.
# Supervisor -> runner: "R" once (ready), then 12 bytes per command when its bash ends: id, exit code (as
# os.waitstatus_to_exitcode gives it) and an errno (not 0: bash could not be started).
# Kept as a string because it is shipped as text (to the zygote, into bwrap); tests/test_embedded_code.py compiles it
# and runs ruff on it, like every Python source kept in a string here.
SUPERVISOR_SCRIPT = r"""
import array, ctypes, json, os, select, signal, socket, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
# Run as root, commands keep root's powers except those that read another process's memory (the runner's keys):
# ptrace and /proc/<pid>/mem of a non-dumpable process (SYS_PTRACE), bpf/perf probes (SYS_ADMIN, BPF, PERFMON),
# kernel modules and raw memory (SYS_MODULE, SYS_RAWIO). Dropped from the bounding set: no exec gets them back.
# (Not root, or in bwrap where every capability is gone already: these calls fail, and change nothing.)
for cap in (16, 17, 19, 21, 38, 39):
    libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
# And from the supervisor's own sets, so that its commands may still read its (secret-free) /proc files: a
# process with capabilities its reader lacks is out of the reader's reach.
header, sets = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()  # v3: effective, permitted, inheritable
if libc.capget(header, sets) == 0:
    for index in (0, 1, 3, 4):
        sets[index] &= ~((1 << 16 | 1 << 17 | 1 << 19 | 1 << 21) if index < 3 else (1 << 6 | 1 << 7))
    libc.capset(header, sets)

def deny_unix_sockets():
    # bwrap --network none: no AF_UNIX socket can be made (nor io_uring, which could make one), so no socket of the
    # host's file system can be reached, whatever is mounted where. socketpair() and inherited sockets still work.
    machine = os.uname().machine
    arch, socket_nr = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}.get(machine, (None, None))
    if arch is None:
        sys.stderr.write("--network none with bwrap filters sockets on x86_64 and aarch64 only, not %s\n" % machine)
        os._exit(1)
    ld, jeq, jgt, jge, ret = 0x20, 0x15, 0x25, 0x35, 0x06
    deny, allow = 0x00050000 | 13, 0x7FFF0000  # SECCOMP_RET_ERRNO | EACCES, SECCOMP_RET_ALLOW
    program = [
        (ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, deny),  # another ABI (i386's socketcall): nothing runs
        (ld, 0, 0, 0), (jge, 0, 1, 0x40000000), (ret, 0, 0, deny),  # x32 system calls
        (jge, 0, 2, 425), (jgt, 1, 0, 427), (ret, 0, 0, deny),  # io_uring_setup, _enter, _register
        (jeq, 0, 3, socket_nr), (ld, 0, 0, 16), (jeq, 0, 1, 1), (ret, 0, 0, deny),  # socket(AF_UNIX, ...)
        (ret, 0, 0, allow),
    ]
    filters = b"".join(struct.pack("HBBI", *op) for op in program)
    buffer = ctypes.create_string_buffer(filters)
    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    if libc.prctl(22, 2, ctypes.byref(Program(len(program), ctypes.addressof(buffer))), 0, 0) != 0:
        sys.stderr.write("seccomp refused the socket filter: %s\n" % os.strerror(ctypes.get_errno()))
        os._exit(1)

if sys.argv[3:4] == ["deny-unix-sockets"]:
    deny_unix_sockets()
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(s, signal.SIG_IGN)
SPAWN_DEFAULT_SIGNALS = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}
TICKS = os.sysconf("SC_CLK_TCK")
MARK = b"MSR_COMMAND_ID="
# Forked by the zygote, a supervisor has a link to it (argv[4]) and serves one task after another: when a task ends
# and everything it started is killed, it tells the zygote it is idle and waits there for the next task's socket. A
# fork per task cost the zygote and the supervisor about 2 ms of CPU (copy-on-write faults of two Pythons).
link = socket.socket(fileno=int(sys.argv[4])) if sys.argv[4:5] not in ([], [""]) else None
# SIGCHLD wakes the poll below through this pipe (the handler itself does nothing: reaping happens in the loop).
wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
signal.signal(signal.SIGCHLD, lambda signum, frame: None)
poller = select.poll()
poller.register(wake_read, select.POLLIN)
running = {}  # bash pid -> command id
started = {}  # command id -> clock tick (as in /proc/<pid>/stat) just before its bash was spawned

def processes():
    # pid -> (parent pid, start tick) of every live process in sight
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name, "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2:].split()
            if fields[0] != b"Z":
                table[int(name)] = (int(fields[1]), int(fields[19]))
    return table

def subtrees(table, roots):
    children = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, stack = set(), list(roots)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found

def command_processes(table, command_id):
    # The command's bash and its tree, plus every orphan of ours that carries the command's id, or no id and
    # started after the command did, with their trees.
    bash = [pid for pid, owner in running.items() if owner == command_id]
    mine = subtrees(table, bash) | {pid for pid in bash if pid in table}
    since = started.get(command_id, float("inf"))
    own_id = b"\0" + MARK + b"%d\0" % command_id
    roots = []
    for pid in subtrees(table, [os.getpid()]) - mine:
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                environ = b"\0" + f.read()
        except OSError:
            continue
        if own_id in environ or (b"\0" + MARK not in environ and table[pid][1] >= since):
            roots.append(pid)
    return mine | set(roots) | subtrees(table, roots)

def kill_until_gone(find):
    for _ in range(500):  # again until nothing is left: a process may fork while we look
        pids = find(processes())
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        reap()
        time.sleep(0.002)

def report(command_id, exit_code, error=0):
    try:
        sock.sendall(struct.pack("!Iii", command_id, exit_code, error))
    except OSError:
        pass  # the runner is gone: the loop sees its end of the socket closed

def reap():
    # The only place that waits: a command's bash is reaped here like any orphan, and its status goes to the runner.
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        command_id = running.pop(pid, None)
        if command_id is not None:
            report(command_id, os.waitstatus_to_exitcode(status))

def spawn(command_id, argv, cwd, out_fd):
    environ = base_environ.copy()
    environ[MARK[:-1]] = b"%d" % command_id
    started[command_id] = int(time.clock_gettime(time.CLOCK_BOOTTIME) * TICKS)
    try:
        os.chdir(cwd)  # by name each time: the task's directory may have been removed (or made again) since
        # posix_spawn (vfork underneath): no copy of this process per command.
        bash = os.posix_spawnp(
            argv[0], argv, environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out_fd, 1),
                (os.POSIX_SPAWN_DUP2, out_fd, 2),
            ],
            setpgroup=0,
            setsigdef=SPAWN_DEFAULT_SIGNALS,
            setsigmask=(),
        )
    except OSError as exc:
        report(command_id, -1, exc.errno or 1)
    except ValueError:  # a NUL byte in an argument
        report(command_id, -1, 22)
    else:
        running[bash] = command_id
    finally:
        os.close(out_fd)

def read_exact(size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data

def next_task():
    # The zygote's next request for this idle supervisor: a 4-byte length + JSON (cwd, environ, owned_dir) and the
    # task's socket. None when the zygote is gone (the runner ended): nothing is left to serve.
    try:
        link.sendall(b"I")
        fds = array.array("i")
        header, ancillary, _, _ = link.recvmsg(4, socket.CMSG_SPACE(fds.itemsize), socket.MSG_CMSG_CLOEXEC)
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        body = b""
        size = struct.unpack("!I", header)[0] if len(header) == 4 else 0
        while len(body) < size:
            chunk = link.recv(size - len(body))
            if not chunk:
                break
            body += chunk
    except OSError:
        return None
    if len(header) < 4 or len(body) < size or not fds:  # short frames never happen on a socketpair this small
        return None
    return json.loads(body), fds[0]

def serve(task_fd, owned_dir):
    # One task, from its ready byte to the end of its socket; returns once nothing it started is left.
    global sock, base_environ
    base_environ = dict(os.environb)  # the task's variables (set by the zygote, or after next_task), read once
    sock = socket.socket(fileno=task_fd)
    sock.set_inheritable(False)
    poller.register(sock, select.POLLIN)
    # ready: the runner waits for this byte (or for the sandbox's error on stderr); after the pid when forked
    try:
        sock.sendall((struct.pack("!i", os.getpid()) if link is not None else b"") + b"R")
    except OSError:
        pass  # the runner gave up on the task already: the loop sees its end of the socket closed
    try:
        while handle(owned_dir):
            pass
    finally:
        poller.unregister(sock)
        sock.close()
        running.clear()
        started.clear()

def handle(owned_dir):
    # One wake-up of the task's loop; False once the runner's end of the socket closed and the task is cleaned up.
    ready = [fd for fd, _ in poller.poll()]
    if wake_read in ready:
        try:
            while os.read(wake_read, 512):
                pass
        except BlockingIOError:
            pass
        reap()
    if sock.fileno() not in ready:
        return True
    fds = array.array("i")
    # MSG_CMSG_CLOEXEC: bash gets the output pipe on 1 and 2 only (a stray copy would keep the pipe open, and the
    # runner waiting for its end, as long as anything the command left in the background runs)
    header, ancillary, _, _ = sock.recvmsg(4, socket.CMSG_SPACE(fds.itemsize), socket.MSG_CMSG_CLOEXEC)
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if header and len(header) < 4:
        rest = read_exact(4 - len(header))
        header = header + rest if rest else b""
    body = read_exact(struct.unpack("!I", header)[0]) if len(header) == 4 else None
    if body is None:  # the runner closed its end (close, abandon) or died: nothing of the task may outlive it
        me = os.getpid()
        with open("/proc/%d/task/%d/children" % (me, me), "rb") as f:
            left = f.read().split()  # orphans are re-parented to us: no child, no descendant
        if left:  # walking /proc costs about 1 ms per 70 processes on the machine
            kill_until_gone(lambda table, me=me: subtrees(table, [me]))
        if owned_dir:  # the task's temporary directory (the runner removes it too, unless it died)
            import shutil  # imported by the zygote already (about 4 ms of CPU per task otherwise)
            shutil.rmtree(owned_dir, ignore_errors=True)
        return False  # closing the socket tells the runner the task is clean (it waits for that end of file)
    request = json.loads(body)
    if "run" in request:
        spawn(request["run"], request["argv"], request["cwd"], fds[0])
    elif "kill" in request:
        command_id = request["kill"]
        kill_until_gone(lambda table, command_id=command_id: command_processes(table, command_id))
    elif "kill_all" in request:  # before a verifier: nothing the task's commands started may still run
        me = os.getpid()
        kill_until_gone(lambda table, me=me: subtrees(table, [me]))
    return True

task_fd, owned_dir = int(sys.argv[1]), sys.argv[2]
while True:
    serve(task_fd, owned_dir)
    task = next_task() if link is not None else None
    if task is None:
        os._exit(0)
    request, task_fd = task
    os.environ.clear()  # posix_spawnp looks bash up on this process's PATH: the task's
    os.environ.update(request["environ"])
    os.chdir(request["cwd"])
    owned_dir = request["owned_dir"]
"""

SUPERVISOR_START_WAIT = 30.0
"""Longest wait for a task's supervisor (and its sandbox) to come up; it takes about 20 ms."""
SUPERVISOR_EXIT_WAIT = 5.0
"""How long close() waits for the supervisor to kill a task's processes and exit before it kills the supervisor
(and a timed-out command for its exit status after the kill)."""
_NO_ANSWER = (None, None)
"""A command's outcome when its supervisor did not answer a kill within SUPERVISOR_EXIT_WAIT."""


# How the zygote and a bwrap supervisor start: a short `-c` stub that reads the real source from stdin (a pipe the
# runner writes and closes), so `ps` shows a name and not kilobytes of source. The first argument is that name;
# the stub drops "-c" from sys.argv, so the source sees [name, args...]. stdin becomes /dev/null again after.
# (Linted, like the scripts, by tests/test_embedded_code.py.)
CODE_FROM_STDIN = (
    "import os,sys;s=sys.stdin.buffer.read();os.dup2(os.open(os.devnull,os.O_RDONLY),0);"
    "del sys.argv[0];exec(compile(s,sys.argv[0],'exec'))"
)


def _start_from_stdin(argv: list[str], source: str, **popen) -> subprocess.Popen:
    """Popen ``argv`` (ending in ``-c CODE_FROM_STDIN name args...``) and hand it ``source`` through its stdin."""
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, **popen)
    try:
        process.stdin.write(source.encode())  # a few KB: fits the pipe whether or not the reader is up yet
        process.stdin.close()
    except OSError:  # it died at once (bwrap refused): its stderr or exit status tells why
        pass
    return process


ZYGOTE_SCRIPT = r"""
# Gives each task a supervisor on request: an idle one (done with an earlier task) when there is one, else a fork of
# this small process (about 1 ms) instead of a Python start-up (about 25 ms of CPU). Its first argument is its
# control socket; the runner puts the supervisor's source in SUPERVISOR_SOURCE ahead of this script. It is a child
# subreaper: when a supervisor dies before its time (a command may kill its parent), what the supervisor ran is
# re-parented here, and killed. It ends when the runner's end of the control socket closes (the runner ended or
# died); its idle supervisors then see their links close, and exit.
# The supervisor's imports too, done once here instead of in every supervisor (shutil is only the supervisor's).
import array, ctypes, json, os, select, shutil, signal, socket, struct, sys, time  # noqa: F401
code = compile(SUPERVISOR_SOURCE, "<supervisor>", "exec")
control = socket.socket(fileno=int(sys.argv[1]))
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # its children (supervisors, orphans it kills) are reaped by the kernel
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(s, signal.SIG_IGN)
poller = select.epoll()
poller.register(control.fileno(), select.EPOLLIN)
supervisors = {}  # pidfd -> pid of a live supervisor
links = {}  # fd of the zygote's end of a supervisor's link -> (that socket, the supervisor's pidfd)
idle = []  # the links of the supervisors waiting for a task, the last one idle first
IDLE_LIMIT = 64  # more idle supervisors than this are told to exit (their link closes)

def read_exact(size, fds):
    data = b""
    while len(data) < size:
        chunk, ancillary, _, _ = control.recvmsg(size - len(data), socket.CMSG_SPACE(array.array("i").itemsize))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        if not chunk:
            kill_orphans()
            os._exit(0)
        data += chunk
    return data

def kill_orphans():
    # Every child that is not a live supervisor was left by a dead one: kill it, then what it leaves, level by level.
    me, live = os.getpid(), set(supervisors.values())
    for _ in range(500):
        with open("/proc/%d/task/%d/children" % (me, me), "rb") as f:
            orphans = [pid for pid in map(int, f.read().split()) if pid not in live]
        if not orphans:
            return
        for pid in orphans:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.002)

def fork_supervisor():
    fds = array.array("i")
    size = read_exact(4, fds)
    body = read_exact(struct.unpack("!I", size)[0], fds)
    task_fd = fds[0]
    while idle:  # an idle supervisor takes the task: no fork
        link = idle.pop()
        try:
            link.sendmsg([size + body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", task_fd))])
        except OSError:  # it died meanwhile: its pidfd says so next
            continue
        os.close(task_fd)
        return
    request = json.loads(body)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        control.close()
        poller.close()
        ours.close()
        for pidfd in supervisors:
            os.close(pidfd)
        for other, _ in links.values():  # a sibling holding a link would keep it open past the zygote's end
            other.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        try:
            os.setsid()
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["environ"])
            sys.argv = ["supervisor", str(task_fd), request["owned_dir"], "", str(theirs.detach())]
            exec(code, {"__name__": "__main__"})
        finally:
            os._exit(1)
    os.close(task_fd)
    theirs.close()
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # gone already
        ours.close()
        kill_orphans()
        return
    supervisors[pidfd] = pid
    links[ours.fileno()] = (ours, pidfd)
    poller.register(pidfd, select.EPOLLIN)
    poller.register(ours.fileno(), select.EPOLLIN)

def drop_link(fd):
    link, _ = links.pop(fd)
    poller.unregister(fd)
    if link in idle:
        idle.remove(link)
    link.close()  # an idle supervisor exits when its link closes

while True:
    for fd, _ in poller.poll():
        if fd == control.fileno():
            fork_supervisor()
        elif fd in supervisors:  # a supervisor ended: normally nothing is left, but it may have been killed
            poller.unregister(fd)
            os.close(fd)
            del supervisors[fd]
            for link_fd in [link_fd for link_fd, (_, pidfd) in links.items() if pidfd == fd]:
                drop_link(link_fd)
            kill_orphans()
        elif fd in links:  # a supervisor is done with its task (b"I"), or going (end of file)
            link = links[fd][0]
            try:
                said = link.recv(1)
            except OSError:
                said = b""
            if said == b"I" and len(idle) < IDLE_LIMIT:
                idle.append(link)
            else:
                drop_link(fd)
"""
ZYGOTE_SOURCE = f"SUPERVISOR_SOURCE = {SUPERVISOR_SCRIPT!r}\n{ZYGOTE_SCRIPT}"
"""What the zygote runs: its script with the supervisor's source ahead of it (tests/test_embedded_code.py lints
this text, the one shipped)."""


class _Zygote:
    """The runner's one zygote process (see ZYGOTE_SCRIPT), started at the first local task. Its environment is
    empty: a forked supervisor shows it in /proc/<pid>/environ, and the task's variables come with each request."""

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = _start_from_stdin(
                [sys.executable, "-I", "-S", "-c", CODE_FROM_STDIN, "mini-swe-runner-zygote", str(theirs.fileno())],
                ZYGOTE_SOURCE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
                env={},
                pass_fds=[theirs.fileno()],
                start_new_session=True,
            )
        finally:
            theirs.close()
        self.sock = ours
        self.lock = threading.Lock()
        _adopt_orphans()

    def fork(self, task_socket: socket.socket, cwd: str, environ: dict[str, str], owned_dir: str | None) -> None:
        body = json.dumps({"cwd": cwd, "environ": environ, "owned_dir": owned_dir or ""}).encode()
        frame = struct.pack("!I", len(body)) + body
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", task_socket.fileno()))]
        with self.lock:
            sent = self.sock.sendmsg([frame], ancillary)
            if sent < len(frame):
                self.sock.sendall(frame[sent:])

    @classmethod
    def fork_supervisor(cls, task_socket: socket.socket, cwd: str, environ: dict[str, str], owned_dir: str | None):
        """Fork a supervisor for ``task_socket``; a zygote that died is replaced once."""
        for attempt in range(2):
            with _ZYGOTE_LOCK:
                zygote = _ZYGOTES.get(os.getpid())  # a forked runner (multiprocessing) gets its own
                if zygote is None or zygote.process.poll() is not None:
                    zygote = _ZYGOTES[os.getpid()] = cls()
            try:
                return zygote.fork(task_socket, cwd, environ, owned_dir)
            except OSError:
                if attempt:
                    raise
                with _ZYGOTE_LOCK:
                    _ZYGOTES.pop(os.getpid(), None)


_ZYGOTES: dict[int, _Zygote] = {}
_ZYGOTE_LOCK = threading.Lock()


# SIGKILL the zygote, then a supervisor (a command can: they are its ancestors, of its user) and what the supervisor
# ran is re-parented past both dead subreapers: to PID 1, where a `setsid sleep` outlived the run (issue 19). So
# the runner is a child subreaper too, from its first local task on: such orphans come to it, and it kills them when
# it exits. (Zombies of those that end first wait there for that; a runner killed with SIGKILL as well cannot.)
_ADOPTING: set[int] = set()
"""The pids of the processes (runners, forks of one) that adopt orphans and kill them at exit."""


def _adopt_orphans() -> None:
    if os.getpid() in _ADOPTING or not sys.platform.startswith("linux"):
        return
    import atexit
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0:  # PR_SET_CHILD_SUBREAPER
        _ADOPTING.add(os.getpid())
        atexit.register(kill_adopted_orphans)


def _children(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for thread in os.listdir(f"/proc/{pid}/task"):  # an orphan goes to any thread of its subreaper
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{thread}/children", "rb") as children:
                found += map(int, children.read().split())
    return found


def kill_adopted_orphans() -> int:
    """Kill every process re-parented to this runner, with what it started, leaving the zygotes (they end with the
    runner and clean up after their own supervisors) alone; returns how many were killed. Run at exit."""
    me = os.getpid()
    if me not in _ADOPTING:
        return 0
    ours = {zygote.process.pid for zygote in _ZYGOTES.values()}
    killed: set[int] = set()
    for _ in range(500):  # again until nothing is left: a process may fork while we look
        found, stack = set(), [pid for pid in _children(me) if pid not in ours]
        while stack:
            pid = stack.pop()
            if pid not in found:
                found.add(pid)
                stack += _children(pid)
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in _children(me):  # reap those that were re-parented to us
            if pid not in ours:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
        if not found:
            break
        killed |= found
        time.sleep(0.002)
    return len(killed)


class Supervisor:
    """The runner's end of one task's supervisor process (see SUPERVISOR_SCRIPT).

    With a prefix (bwrap's sandbox) it is a new process of its own; without one it is forked by the zygote."""

    def __init__(
        self,
        prefix: list[str],
        cwd: str,
        environ: dict[str, str],
        owned_dir: str | None = None,
        deny_unix_sockets: bool = False,
    ):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.process: subprocess.Popen | None = None
        self.pid: int | None = None
        self._pidfd: int | None = None
        """Opened once the supervisor answered (so it is ours, not a recycled pid); close waits on it."""
        try:
            if prefix:
                self.process = _start_from_stdin(
                    [*prefix, sys.executable, "-I", "-S", "-c", CODE_FROM_STDIN, "mini-swe-runner-supervisor",
                     str(theirs.fileno()), owned_dir or "", "deny-unix-sockets" if deny_unix_sockets else ""],
                    SUPERVISOR_SCRIPT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,  # read only if it does not come up (bwrap's own error, say)
                    cwd=cwd,
                    env=environ,
                    pass_fds=[theirs.fileno()],
                    start_new_session=True,  # out of the terminal's group: Ctrl-C reaches the runner only
                )  # fmt: skip
                self.pid = self.process.pid
            else:
                _Zygote.fork_supervisor(theirs, cwd, environ, owned_dir)
        except OSError as exc:
            ours.close()
            raise EnvError(f"could not start the task's supervisor ({exc})") from None
        finally:
            theirs.close()
        self.sock = ours
        self._next_id = 0
        self._exits: dict[int, asyncio.Future] = {}
        """Commands waiting for their bash to end, by id."""
        self._received = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.gone = False
        """The supervisor's end of the socket closed: it died (a command may kill it) or was stopped."""
        self._released = False
        """The task let the supervisor go (a zygote's serves the next task then): never signal it after that."""

    async def ready(self, timeout: float, what: str) -> None:
        """Wait for the supervisor's first byte (after its pid, when the zygote forked it); EnvError with its
        stderr when it exits instead."""
        loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        expected = 1 if self.process is not None else 5
        received = b""
        try:
            async with asyncio.timeout(timeout):
                while len(received) < expected:
                    chunk = await loop.sock_recv(self.sock, expected - len(received))
                    if not chunk:
                        break
                    received += chunk
        except (TimeoutError, OSError):
            pass
        finally:
            self.sock.setblocking(True)
        if self.process is None and len(received) >= 4:
            self.pid = struct.unpack("!i", received[:4])[0]
        if received[-1:] == b"R" and len(received) == expected:
            if self.process is not None:
                self.process.stderr.close()
            with contextlib.suppress(OSError):
                self._pidfd = os.pidfd_open(self.pid)
            self._listen(loop)
            return
        await asyncio.to_thread(self.stop, 1.0)
        if self.process is None:
            raise EnvError(f"{what} did not start (its supervisor did not answer)")
        why = " ".join(self.process.stderr.read(4096).decode(errors="replace").split())
        self.process.stderr.close()
        raise EnvError(f"{what} did not start ({why or f'exit code {self.process.returncode}'})")

    def run(self, argv: list[str], cwd: str, out_fd: int) -> tuple[int, asyncio.Future]:
        """Start ``argv`` in ``cwd`` with ``out_fd`` as its stdout and stderr: (command id, future of its exit).

        The future's result is (exit code, errno), errno not 0 when bash could not be started; or None when the
        supervisor died before it could say."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # started under another event loop (asyncio.run per call)
            self._listen(loop)
        self._next_id += 1
        command_id = self._next_id
        exited = self._exits[command_id] = loop.create_future()
        try:
            self.send({"run": command_id, "argv": argv, "cwd": cwd}, [out_fd])
        except EnvError:
            del self._exits[command_id]
            raise
        return command_id, exited

    def forget(self, command_id: int) -> None:
        """Stop waiting for a command's exit (it was given up: the task was cancelled)."""
        self._exits.pop(command_id, None)

    def _on_readable(self) -> None:
        try:
            chunk = self.sock.recv(READ_CHUNK, socket.MSG_DONTWAIT)  # the socket blocks for sends, not here
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.stop_listening()
            for exited in self._exits.values():
                if not exited.done():
                    exited.set_result(None)
            self._exits.clear()
            return
        received = self._received
        received += chunk
        while len(received) >= 12:
            command_id, exit_code, error = struct.unpack_from("!Iii", received)
            del received[:12]
            exited = self._exits.pop(command_id, None)
            if exited is not None and not exited.done():
                exited.set_result((exit_code, error))

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        # Exit statuses come back on the socket: one reader for the task's life, not a pipe per command.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.sock.fileno())
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._on_readable)

    def stop_listening(self) -> None:
        """No more exit statuses: call it in the event loop's thread, before the socket closes."""
        self.gone = True
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self.sock.fileno())

    def send(self, request: dict, fds: list[int] = ()) -> None:
        body = json.dumps(request).encode()
        frame = struct.pack("!I", len(body)) + body
        try:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
            sent = self.sock.sendmsg([frame], ancillary)
            if sent < len(frame):
                self.sock.sendall(frame[sent:])
        except OSError as exc:
            raise EnvError(f"the task's supervisor is gone ({exc.strerror or exc})") from None

    def kill(self, command_id: int) -> None:
        with contextlib.suppress(EnvError):
            self.send({"kill": command_id})

    async def finish(self, wait: float = SUPERVISOR_EXIT_WAIT) -> None:
        """End of the task, as :meth:`stop` does it, but waiting in the event loop: a thread per task (stop in
        asyncio.to_thread) cost about 0.3 ms of the runner's CPU per task. Call ``stop_listening`` first."""
        self.gone = True
        pidfd, self._pidfd = self._pidfd, None
        if pidfd is None:  # it never answered: the blocking path knows every case
            await asyncio.to_thread(self.stop, wait)
            return
        loop = asyncio.get_running_loop()
        clean = loop.create_future()
        if self.process is None:  # the zygote's: it closes the task's socket once the task is clean, and lives on
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)

            def on_readable() -> None:
                if self._drained() and not clean.done():
                    clean.set_result(None)

            watched = [self.sock.fileno(), pidfd]  # the socket's end, or the supervisor's (a command killed it)
        else:  # bwrap's: it exits
            with contextlib.suppress(OSError):
                self.sock.close()

            def on_readable() -> None:
                if not clean.done():
                    clean.set_result(None)

            watched = [pidfd]
        for fd in watched:
            loop.add_reader(fd, on_readable if fd != pidfd else lambda: clean.done() or clean.set_result(None))
        try:
            await asyncio.wait_for(clean, wait)
        except TimeoutError:
            if not self._drained():
                self._kill(pidfd)
        finally:
            for fd in watched:
                loop.remove_reader(fd)
            os.close(pidfd)
            with contextlib.suppress(OSError):
                self.sock.close()
        if self.process is not None and self.process.poll() is None:  # our child (bwrap): reap it once it is gone
            await asyncio.to_thread(self.process.wait)

    def _drained(self) -> bool:
        """Whether the supervisor's end of the socket is closed: read what is left (exit statuses nobody waits for
        any more) up to the end of file."""
        while True:
            try:
                chunk = self.sock.recv(READ_CHUNK, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            except OSError:
                return True
            if not chunk:
                return True

    def _kill(self, pidfd: int) -> None:
        # Only while the task holds it: once the supervisor closed the task's socket it may serve another task (a
        # kill between that close and the check just before this call would need the zygote to hand it a new task
        # within those microseconds).
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)

    def stop(self, wait: float = SUPERVISOR_EXIT_WAIT) -> None:
        """End of the task: the supervisor kills every process the task left (blocking, bounded by ``wait``, then it is
        killed). From the event loop, call ``stop_listening`` first (this may run in a thread: the loop's reader goes
        first)."""
        self.gone = True
        pidfd, self._pidfd = self._pidfd, None
        if self.process is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            if pidfd is not None:
                os.close(pidfd)
            try:
                self.process.wait(wait)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            return
        # The zygote's: wait for the end of the task's socket (the task is clean) or of the supervisor, else kill it.
        if pidfd is None and self.pid is not None and not self._released:  # it did not answer in time
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(self.pid)
        self._released = True
        if pidfd is None:  # gone already, or released before: nothing of the task's to wait for
            with contextlib.suppress(OSError):
                self.sock.close()
            return
        try:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + wait
            while not self._drained():
                left = deadline - time.monotonic()
                if left <= 0 or pidfd in select.select([self.sock, pidfd], [], [], left)[0]:
                    if not self._drained():
                        self._kill(pidfd)
                    break
        finally:
            os.close(pidfd)
            with contextlib.suppress(OSError):
                self.sock.close()


class LocalEnvironment(Environment):
    """Commands run on this machine, in a fresh temporary directory per task unless a cwd is given.

    Not a sandbox: commands run as the runner's user with full access to the machine and network. What it
    does guarantee: no secret-looking variable reaches them, they are not the runner's children, and nothing
    they start outlives the task; what a command starts dies at its timeout (found by the MSR_COMMAND_ID in its
    environment, see SUPERVISOR_SCRIPT), while what earlier commands left running lives on.
    """

    name = "local"
    flags = (
        CWD,
        Flag("pass_env", tuple, (), "comma-separated variables passed to commands even though they look secret"),
    )

    def __init__(self, settings: EnvSettings, image: str | None = None, cwd: str | None = None, task_id: str = ""):
        super().__init__(settings, image, cwd, task_id)
        self.base: str | None = None
        self._temp_dir: str | None = None
        self._supervisor: Supervisor | None = None
        self._environ = settings.command_environ

    def _supervisor_prefix(self) -> list[str]:
        """argv the supervisor runs under (bwrap puts its sandbox here)."""
        return []

    def _denies_unix_sockets(self) -> bool:
        """Whether the supervisor forbids its commands to make AF_UNIX sockets (bwrap --network none)."""
        return False

    async def _start(self) -> None:
        if self.requested_cwd:
            base = os.path.abspath(os.path.expanduser(self.requested_cwd))
            if not os.path.isdir(base):
                raise EnvError(f"working directory {base} does not exist (check --cwd or the prompt's cwd)")
        else:
            base = self._temp_dir = tempfile.mkdtemp(prefix="mini-swe-task-")
        self.base = self.cwd = base
        try:
            await self._start_supervisor()
        except BaseException:
            self._remove_temp_dir()
            raise

    async def _start_supervisor(self) -> None:
        self._supervisor = None
        supervisor = Supervisor(
            self._supervisor_prefix(), self.base, self._environ, self._temp_dir, self._denies_unix_sockets()
        )
        await supervisor.ready(SUPERVISOR_START_WAIT, f"the {self.name} environment")
        self._supervisor = supervisor

    async def _run(self, argv: list[str], collector: OutputCollector, timeout: float) -> int | None:
        loop = asyncio.get_running_loop()
        if self._supervisor is None or self._supervisor.gone:  # a command killed its parent: this one gets a new one
            if self._supervisor is not None:
                await asyncio.to_thread(self._supervisor.stop, 0)
            await self._start_supervisor()
        supervisor = self._supervisor
        out_read, out_write = os.pipe()
        os.set_blocking(out_read, False)
        try:
            command_id, exited = supervisor.run(argv, self.base, out_write)
        except EnvError:
            os.close(out_read)
            raise
        finally:
            os.close(out_write)
        output_done = _pump_pipe(loop, out_read, collector)
        timed_out = False

        # Timers instead of wait_for(shield(...)): the awaited future is never cancelled by a timeout, and its
        # result reaches this task in one hop of the event loop instead of four (bench_env: runner CPU per command).
        def on_deadline() -> None:
            nonlocal timed_out, deadline
            timed_out = True
            supervisor.kill(command_id)
            deadline = loop.call_later(SUPERVISOR_EXIT_WAIT, on_no_answer)

        def on_no_answer() -> None:
            if not exited.done():
                exited.set_result(_NO_ANSWER)

        deadline = loop.call_later(timeout, on_deadline)
        try:
            outcome = await exited
            if outcome is None or outcome is _NO_ANSWER:  # the supervisor died, or does not answer (stopped?)
                supervisor.stop_listening()  # it goes now, with whatever it left running
                await asyncio.to_thread(supervisor.stop, 0)
            if not output_done.done():  # bash is gone; drain what is left, briefly if a background child holds it
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0 if timed_out else 0.2):
                        await output_done
        finally:
            deadline.cancel()
            if exited.cancelled() or not exited.done():  # cancelled mid-command (task timeout, Ctrl-C)
                supervisor.kill(command_id)  # leave nothing running
                supervisor.forget(command_id)
            loop.remove_reader(out_read)
            os.close(out_read)
        if timed_out:
            return None
        if outcome is None:  # the command killed the supervisor, its parent; the zygote killed what it left
            raise CommandError("the command killed the process that ran it; no exit code")
        exit_code, error = outcome
        if error:
            raise CommandError(f"could not start bash in {self.base} ({os.strerror(error)})")
        return exit_code

    async def _close(self) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.stop_listening()
            await supervisor.finish()
        if self._temp_dir and not os.path.lexists(self._temp_dir):  # the supervisor removed it on its way out
            self._temp_dir = None
        if self._temp_dir:
            await asyncio.to_thread(self._remove_temp_dir)

    def abandon(self) -> None:
        self.closed = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.stop(wait=2.0)
        self._remove_temp_dir()

    async def end_processes(self) -> None:
        # Orphans are re-parented to the supervisor (a subreaper): its subtree is all the task started. It handles
        # requests in order, so the kill is done before the next command it is sent starts.
        if self._supervisor is not None and not self._supervisor.gone:
            self._supervisor.send({"kill_all": True})

    def _remove_temp_dir(self) -> None:
        temp_dir, self._temp_dir = self._temp_dir, None
        if temp_dir:
            shutil.rmtree(temp_dir, True)

    @classmethod
    async def preflight(cls, settings: EnvSettings, images: set[str]) -> None:
        if settings.cwd and not os.path.isdir(os.path.expanduser(settings.cwd)):
            raise EnvError(f"--cwd {settings.cwd} is not a directory")
        if shutil.which("bash") is None:
            raise EnvError(f"bash was not found on PATH; the {cls.name} environment needs it")


def _pump_pipe(loop: asyncio.AbstractEventLoop, read_fd: int, collector: OutputCollector) -> asyncio.Future:
    """Feed everything readable on ``read_fd`` to ``collector``; the future is done at end of file."""
    done = loop.create_future()

    def on_readable() -> None:
        for _ in range(2):
            try:
                chunk = os.read(read_fd, READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                break
            collector.feed(chunk)
            if len(chunk) == READ_CHUNK:
                return  # more is coming: let other tasks run first
            # A short read: most often the writer is done, and the end of file is taken now, not one loop later.
        else:
            return
        loop.remove_reader(read_fd)
        if not done.done():
            done.set_result(None)

    loop.add_reader(read_fd, on_readable)
    return done


# ---------------------------------------------------------------------------------------------------------------
# bwrap backend: the local supervisor inside a bubblewrap sandbox
# ---------------------------------------------------------------------------------------------------------------


def _tmp_size(name: str, value: str) -> str:
    if 0 < parse_size(value, f"--{name}") < 1024**2:
        raise SettingsError(f"--{name} {value!r} is below 1m (give 0 for no bound)")
    return value


class BwrapEnvironment(LocalEnvironment):
    """The local backend inside bubblewrap: the host's filesystem read-only, the task's directory the only
    writable place (plus a private /tmp), its own PID namespace (when the supervisor goes, everything goes) and,
    with --network none, no network. The sandbox starts once per task; each command costs what a local one does.
    """

    name = "bwrap"
    flags = (
        *LocalEnvironment.flags,
        NETWORK,
        VOLUME,
        Flag("tmp_size", str, "1g", "size bound of each sandbox's private /tmp, held in memory; 0 for none", _tmp_size),
    )

    @classmethod
    def check_settings(cls, settings: EnvSettings) -> None:
        if settings.network not in ("bridge", "host", "none"):
            raise SettingsError(f"--network {settings.network!r} with --env bwrap: use none (or the default, host's)")

    def _supervisor_prefix(self) -> list[str]:
        argv = bwrap_argv(self.settings, self.base)
        if not self._temp_dir:
            return argv
        # The sandbox cannot remove its task directory (a mount point in there), and a runner killed with SIGKILL
        # does not: left empty, they piled up (issue 19). This shell outside the sandbox removes it once the sandbox
        # ends, if the runner is gone (re-parented: a runner still there may start a new sandbox on the directory).
        return ["sh", "-c", _BWRAP_OWNER_SCRIPT, self._temp_dir, *argv[1:]]

    def _denies_unix_sockets(self) -> bool:
        return self.settings.network == "none"

    @classmethod
    async def preflight(cls, settings: EnvSettings, images: set[str]) -> None:
        await super().preflight(settings, images)
        for _, target, _ in _existing_volumes(settings):
            # The sandbox's root is the host's, read-only: bwrap can make a mount point only in its private /tmp.
            if not os.path.exists(target) and not target.startswith("/tmp/"):
                raise EnvError(
                    f"--volume target {target} must exist on this machine or lie under /tmp with --env bwrap "
                    "(the sandbox sees the host's file system, read-only)"
                )
        if shutil.which("bwrap") is None:
            raise EnvError("bwrap was not found on PATH: install bubblewrap (apt-get install bubblewrap)")
        probe = await asyncio.create_subprocess_exec(
            *bwrap_argv(settings, tempfile.gettempdir()),
            "true",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, stderr = await probe.communicate()
        if probe.returncode != 0:
            why = " ".join(stderr.decode(errors="replace").split()) or f"exit code {probe.returncode}"
            if "Unknown option" in why:
                raise EnvError(f"bwrap is too old ({why}): --env bwrap needs bubblewrap 0.8 or newer")
            raise EnvError(
                f"bwrap cannot create its sandbox here ({why}): the kernel or container must allow user namespaces "
                "(sysctl kernel.unprivileged_userns_clone=1, or kernel.apparmor_restrict_unprivileged_userns=0)"
            )


_BWRAP_OWNER_SCRIPT = (
    'bwrap "$@"; status=$?; read -r _ _ _ parent _ < /proc/$$/stat; [ "$parent" = "$PPID" ] || rm -rf -- "$0"; '
    "exit $status"
)
"""$0 = the task's temporary directory, "$@" = bwrap's arguments."""


def _interpreter_paths_under_tmp() -> list[str]:
    """Where this Python lives, if under /tmp (a venv or checkout made there): the sandbox's private /tmp would
    hide it, and the task's supervisor runs on it."""
    paths = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    paths.add(os.path.dirname(os.path.abspath(sys.executable)))
    under_tmp = sorted(path for path in paths if path == "/tmp" or path.startswith("/tmp/"))
    # A path inside another one is bound with it.
    return [path for path in under_tmp if not any(path.startswith(other + "/") for other in under_tmp)]


def _host_sockets() -> list[str]:
    """The host's Unix sockets a sandbox would see through its read-only view of /: every path bound in this
    network namespace (/proc/net/unix), and every socket under /run (a daemon in another namespace may bind there).
    Each is hidden under /dev/null in the sandbox: read-only does not stop connect(), and as root the sandbox's
    uid 0 owns docker.sock. (About 1 ms for 130 sockets; per sandbox, so that a daemon started since is hidden.)"""
    paths = set()
    with contextlib.suppress(OSError), open("/proc/net/unix", "rb") as table:
        for line in table.read().splitlines()[1:]:
            fields = line.split(None, 7)
            if len(fields) == 8 and fields[7].startswith(b"/"):
                paths.add(os.fsdecode(fields[7]))
    for top, _, files in os.walk("/run"):
        paths.update(os.path.join(top, name) for name in files)
    found = set()
    for path in paths:
        with contextlib.suppress(OSError, ValueError):
            real = os.path.realpath(path)
            if stat.S_ISSOCK(os.lstat(real).st_mode) and not real.startswith(("/tmp/", "/dev/", "/proc/")):
                found.add(real)  # under /tmp, /dev, /proc: the sandbox has its own
    return sorted(found)


BWRAP_CONFINEMENT = ["--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
"""Run by root, bwrap keeps root's capabilities inside unless told: remount / read-write, write /root, the runner's
venv and its output file. In a user namespace of its own with every capability dropped, uid 0 inside is powerless
(and cannot make a user namespace of its own to get capabilities back); run by another user this changes nothing."""


def bwrap_argv(settings: EnvSettings, workdir: str) -> list[str]:
    """The bwrap command line a task's supervisor runs under."""
    tmp_size = parse_size(settings.tmp_size, "--tmp_size")
    argv = ["bwrap", *BWRAP_CONFINEMENT, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    argv += [*(["--size", str(tmp_size)] if tmp_size else []), "--tmpfs", "/tmp"]
    for path in _interpreter_paths_under_tmp():  # the supervisor is this Python: it must stay visible
        argv += ["--ro-bind", path, path]
    argv += ["--bind", workdir, workdir]  # after the /tmp tmpfs: a temp task dir under /tmp stays the host's
    for host, target, mode in _existing_volumes(settings):
        argv += ["--ro-bind" if mode == "ro" else "--bind", host, target]
    for path in _host_sockets():
        argv += ["--ro-bind", "/dev/null", path]
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if settings.network == "none":
        argv.append("--unshare-net")
    # --die-with-parent: if the runner dies, the sandbox (and with its PID 1 every process in it) goes too.
    argv += ["--die-with-parent", "--new-session", "--chdir", workdir, "--"]
    return argv


# ---------------------------------------------------------------------------------------------------------------
# Docker backend
# ---------------------------------------------------------------------------------------------------------------


DOCKER_LABEL = "mini-swe-runner"
"""Every container we create carries ``mini-swe-runner=1`` plus the ``mini-swe-runner.*`` labels below."""

DOCKER_CLIENT_GRACE = KILL_GRACE + 4.0
"""Past timeout + this, we stop waiting for an exec even if the in-container timeout failed to end it.
Covers the kill grace, the engine's own I/O drain after exit (about 2 s) and API latency."""

# What a root `apt-get install` / `pip install` needs: apt drops to the _apt user (SETUID, SETGID), writes
# root-only dirs (DAC_OVERRIDE), and dpkg sets owners and setuid bits (CHOWN, FOWNER, FSETID). KILL lets root
# signal processes of other users; NET_BIND_SERVICE lets a root server listen on port 80.
HARDENED_CAPS = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETUID", "SETGID", "KILL", "NET_BIND_SERVICE"]

DAEMON_FIX = "start it (sudo systemctl start docker, or run dockerd) or check DOCKER_HOST"

DOCKER_POOL_EXTRA = 8
"""Connections beyond one per worker: the runner's thread pool is workers + 8, and every thread may hold one."""

_docker_clients: dict[tuple[str, int], object] = {}


def docker_client(concurrency: int = 8):
    """One shared client per DOCKER_HOST and pool size: its connection pool serves every task's thread."""
    import docker

    key = (os.environ.get("DOCKER_HOST", ""), concurrency)
    client = _docker_clients.get(key)
    if client is None:
        try:
            # A pool as large as the runner's thread pool (workers + 8), or urllib3 warns "Connection pool is full".
            # from_env asks the daemon for its API version, so no daemon fails here, at once.
            client = docker.from_env(max_pool_size=concurrency + DOCKER_POOL_EXTRA)
        except docker.errors.DockerException as exc:
            raise EnvError(f"cannot reach the Docker daemon ({_one_line(exc)}): {DAEMON_FIX}") from None
        _docker_clients[key] = client
    return client


def _pids_limit(name: str, value: int) -> int | None:
    _at_least(name, value, 0)
    return int(value) or None  # 0 means no limit


class DockerEnvironment(Environment):
    """Each task gets its own fresh container, removed on close; commands run in it with ``docker exec``."""

    name = "docker"
    uses_image = True
    needs_absolute_cwd = True
    flags = (
        IMAGE,
        CWD,
        NETWORK,
        MEMORY,
        CPUS,
        VOLUME,
        ENV_VAR,
        Flag("pull", str, "missing", "pull images when missing, always or never", one_of(PULL_POLICIES)),
        Flag("pull_workers", int, 2, "images pulled at once, ahead of the tasks that use them", at_least(1)),
        Flag(
            "max_image_disk",
            str,
            None,
            "disk the images this run pulled may hold, e.g. 50g; past it, those no pending task needs are removed, "
            "oldest use first (images present before the run are never removed)",
            _size_in_bytes,
        ),
        Flag("pids_limit", int, 512, "maximum processes per container; 0 for none", _pids_limit),
        Flag(
            "no_hardening",
            bool,
            True,
            "keep default capabilities and allow privilege escalation",
            field="hardening",
            negated=True,
        ),
    )

    def __init__(self, settings: EnvSettings, image: str | None = None, cwd: str | None = None, task_id: str = ""):
        super().__init__(settings, image, cwd, task_id)
        self.name = f"msr-{settings.run_id}-{_name_part(task_id)}{secrets.token_hex(3)}"
        self.container_id: str | None = None
        self._starting: asyncio.Future | None = None

    def _client(self):
        return docker_client(self.settings.concurrency)

    async def _start(self) -> None:
        if self._starting is None:
            self._starting = asyncio.ensure_future(asyncio.to_thread(self._start_sync))
        # Shielded: a cancelled task leaves the creation running so close() can wait for it and remove it.
        await asyncio.shield(self._starting)

    def _start_sync(self) -> None:
        if self.closed:
            raise EnvError("environment already closed")
        api = self._client().api
        with _docker_errors(f"could not create a container from {self.image}"):
            host_config = api.create_host_config(**_host_config_kwargs(self.settings))
            created = api.create_container(
                self.image,
                command=["sleep", "infinity"],
                name=self.name,
                labels=_container_labels(self.settings.run_id, self.task_id),
                environment=sandbox_environ(self.settings.env_vars),  # nothing else of the host's
                working_dir=self.requested_cwd,  # the engine creates it if the image lacks it
                host_config=host_config,
                use_config_proxy=False,  # no proxy variables copied from the host's docker config
            )
            self.container_id = created["Id"]
            api.start(self.container_id)
        if self.closed:  # closed or abandoned while we were creating: leave nothing behind
            self._remove()
            return
        # One exec checks the image can run our wrapper and learns the starting cwd (image WORKDIR or /).
        probe = "command -v bash >/dev/null || exit 97; command -v timeout >/dev/null || exit 98; pwd"
        output = OutputCollector(4096)
        exit_code = self._exec_sync(["sh", "-c", probe], 30.0, output)
        if exit_code != 0:
            missing = {97: "bash", 98: "coreutils timeout"}.get(exit_code)
            why = f"has no {missing}" if missing else f"cannot run sh ({_one_line(output.text())})"
            raise EnvError(f"image {self.image} {why}: use an image with bash and coreutils (debian, ubuntu, python)")
        self.cwd = (output.text().strip().splitlines() or ["/"])[-1]

    async def _run(self, argv: list[str], collector: OutputCollector, timeout: float) -> int | None:
        return await asyncio.to_thread(self._run_sync, argv, collector, timeout)

    def _run_sync(self, argv: list[str], collector: OutputCollector, timeout: float) -> int | None:
        if self.closed:
            raise EnvError(f"container {self.name} was already removed")
        return self._exec_sync(sandbox_timeout_argv(argv, timeout), timeout + DOCKER_CLIENT_GRACE, collector)

    def _exec_sync(self, argv: list[str], wait: float, collector: OutputCollector) -> int | None:
        """Run argv in the container, streaming its merged output into ``collector``; returns the exit code, or
        None when it did not end within ``wait`` seconds (its process group is then killed)."""
        import docker

        api = self._client().api
        try:
            exec_id = api.exec_create(self.container_id, argv, stdin=False)["Id"]
            sock = api.exec_start(exec_id, socket=True)
            raw = sock._sock if isinstance(sock, socket.SocketIO) else sock  # the plain socket under the SDK's file
            try:
                finished = _pump_exec_stream(raw, collector, time.monotonic() + wait)
            finally:
                getattr(sock, "_response", sock).close()  # the HTTP response owns the connection: closes it cleanly
                raw.close()
            return _exec_exit_code(api, exec_id, finished)
        except docker.errors.NotFound:
            raise EnvError(f"container {self.name} is gone (removed, or the Docker daemon restarted)") from None
        except Exception as exc:
            raise _as_env_error(exc, f"command failed in container {self.name}") from None

    async def _close(self) -> None:
        starting, self._starting = self._starting, None
        if starting is None:
            return  # never started
        await asyncio.wait([starting])  # a creation still in flight (start was cancelled): remove what it makes
        if not starting.cancelled():
            starting.exception()  # retrieved here: start() already raised it, or nobody is left to
        if self.container_id:
            await asyncio.to_thread(self._remove)

    def abandon(self) -> None:
        self.closed = True
        try:
            self._remove()
        except Exception:  # best effort: the reaper removes what is left at the next run
            pass

    async def end_processes(self) -> None:
        # A restart kills every process of the container (the kernel's cgroup, not a walk that a forking loop can
        # outrun) and keeps its filesystem; its main process is our `sleep infinity` again.
        def restart() -> None:
            with _docker_errors(f"could not restart container {self.name} to end the agent's processes"):
                self._client().api.restart(self.container_id, timeout=0)

        if self.container_id and not self.closed:
            await asyncio.to_thread(restart)

    def _remove(self) -> None:
        import docker

        target, self.container_id = self.container_id or self.name, None  # by name while its creation is in flight
        api = self._client().api
        try:
            api.remove_container(target, force=True)
        except docker.errors.NotFound:
            pass
        except Exception as exc:
            if getattr(exc, "status_code", None) != 409:  # 409: a removal is already in progress
                raise _as_env_error(exc, f"could not remove container {self.name}") from None

    @classmethod
    def check_settings(cls, settings: EnvSettings) -> None:
        if settings.image is not None:
            check_docker_image_name(settings.image, "--image")
        if settings.memory is not None:
            size = parse_size(settings.memory, "--memory")
            if size < DOCKER_MIN_MEMORY:
                raise SettingsError(f"--memory {settings.memory} is below Docker's minimum of 6 MB: give at least 6m")

    @classmethod
    async def preflight(cls, settings: EnvSettings, images: set[str]) -> None:
        await docker_preflight(settings, images)

    @classmethod
    def cleanup_leftovers(cls) -> str | None:
        return f"docker: removed {reap_stale_containers()} container(s) left by dead runs"

    @classmethod
    def image_store(cls, settings: EnvSettings) -> ImageStore:
        return DockerImages(settings)


DOCKER_MIN_MEMORY = 6 * 1024 * 1024
"""The engine refuses a container memory limit below 6 MB (every task would fail to start)."""

# docker's reference grammar (distribution/reference): [host[:port]/]path[:tag][@digest], path components in
# lower case. A name outside it makes the engine answer 400/500 with an error that does not say which rule broke.
_DOCKER_REFERENCE = re.compile(
    r"(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)


def check_docker_image_name(image: str, where: str) -> None:
    """SettingsError in one line unless ``image`` is a valid docker reference (lower-case repository, tag...)."""
    if not _DOCKER_REFERENCE.fullmatch(image):
        hint = " (repository names are lower case)" if _DOCKER_REFERENCE.fullmatch(image.lower()) else ""
        raise SettingsError(f"{where} {image!r} is not a valid Docker image name{hint}: e.g. python:3.11-slim")
    host = image.split("/", 1)[0] if "/" in image else ""
    if host and not ("." in host or ":" in host or host == "localhost") and host.lower() != host:
        raise SettingsError(f"{where} {image!r} is not a valid Docker image name (repository names are lower case)")


def parse_size(value: str, flag: str) -> int:
    """'512m', '2g', '1.5G', '1048576' -> bytes (a bare number is bytes, as for docker)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmgt]?)i?b?", str(value).strip().lower())
    if not match:
        raise SettingsError(f"{flag} {value!r} is not a size like 512m or 2g")
    factor = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[match[2]]
    return int(float(match[1]) * factor)


def _pump_exec_stream(raw, collector: OutputCollector, deadline: float) -> bool:
    """Feed the payload of a multiplexed exec stream (8-byte frame headers) to ``collector``.

    Reads big chunks straight from the socket and strips the frame headers here, so 100 MB of output costs a few
    thousand reads; returns False when ``deadline`` passed before the stream ended."""
    frame_left = 0
    header = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        raw.settimeout(remaining)
        try:
            data = raw.recv(READ_CHUNK)
        except TimeoutError:
            return False
        if not data:
            return True
        pos, size = 0, len(data)
        while pos < size:
            if frame_left:
                take = min(frame_left, size - pos)
                collector.feed(data[pos : pos + take])
                pos += take
                frame_left -= take
            else:
                need = 8 - len(header)
                header += data[pos : pos + need]
                pos += need
                if len(header) == 8:
                    frame_left = int.from_bytes(header[4:], "big")
                    header = b""


def _exec_exit_code(api, exec_id: str, finished: bool) -> int | None:
    for _ in range(50):
        info = api.exec_inspect(exec_id)
        if not info["Running"] and info["ExitCode"] is not None:
            return info["ExitCode"] if finished else None
        if not finished:
            # The in-container timeout did not end it (the command stopped `timeout` itself, say): kill its group.
            # Pid is a host PID; this works when the daemon runs on this machine, which is the usual case.
            with contextlib.suppress(OSError, TypeError):
                os.killpg(info["Pid"], signal.SIGKILL)
            return None
        time.sleep(0.02)  # the stream can end a moment before the engine records the exit
    return -1


def _host_config_kwargs(settings: EnvSettings) -> dict:
    kwargs: dict = {"init": True, "network_mode": settings.network, "binds": _volume_binds(settings.volumes)}
    if settings.hardening:
        kwargs.update(cap_drop=["ALL"], cap_add=HARDENED_CAPS, security_opt=["no-new-privileges"])
    if settings.pids_limit is not None:
        kwargs["pids_limit"] = int(settings.pids_limit)
    if settings.memory:
        kwargs["mem_limit"] = settings.memory
    if settings.cpus:
        kwargs["nano_cpus"] = int(float(settings.cpus) * 1e9)
    return kwargs


def _volume_binds(volumes: tuple[str, ...]) -> list[str]:
    binds = []
    for volume in volumes:
        host, container, mode = parse_volume(volume)
        if not os.path.exists(host):
            raise EnvError(f"--volume {volume!r}: {host} does not exist on this machine")
        binds.append(f"{host}:{container}:{mode}")
    return binds


def _process_start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), '' when unknown: tells a PID's reuse apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rfind(b")") + 2 :].split()[19].decode()
    except (OSError, IndexError):
        return ""


_RUNNER_STARTED = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _container_labels(run_id: str, task_id: str) -> dict[str, str]:
    return {
        DOCKER_LABEL: "1",
        f"{DOCKER_LABEL}.run-id": run_id,
        f"{DOCKER_LABEL}.task-id": task_id,
        f"{DOCKER_LABEL}.host": socket.gethostname(),
        f"{DOCKER_LABEL}.pid": str(os.getpid()),
        f"{DOCKER_LABEL}.pid-start": _process_start_ticks(os.getpid()),
        f"{DOCKER_LABEL}.started": _RUNNER_STARTED,
    }


def _runner_is_alive(labels: dict[str, str]) -> bool:
    """Whether the runner that made a container may still be running; unsure means alive (we never guess)."""
    if labels.get(f"{DOCKER_LABEL}.host") != socket.gethostname():
        return True  # another machine's run: not ours to judge
    try:
        pid = int(labels.get(f"{DOCKER_LABEL}.pid", ""))
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (ValueError, OSError):
        return True  # malformed label, or alive under another user
    started = labels.get(f"{DOCKER_LABEL}.pid-start", "")
    now = _process_start_ticks(pid)
    return not (started and now and started != now)  # a different start time: the PID was reused


def reap_stale_containers(client=None) -> int:
    """Remove containers left by runners that died (killed, crashed, second Ctrl-C); returns how many.

    Only containers labelled ``mini-swe-runner=1`` by a runner on this host whose process is gone are touched."""
    import docker

    client = client or docker_client()
    try:
        containers = client.api.containers(all=True, filters={"label": f"{DOCKER_LABEL}=1"})
    except Exception as exc:
        raise _as_env_error(exc, "could not list containers to clean up") from None
    removed = 0
    for container in containers:
        if _runner_is_alive(container.get("Labels") or {}):
            continue
        try:
            client.api.remove_container(container["Id"], force=True)
            removed += 1
        except docker.errors.NotFound:
            pass  # another cleanup got there first
        except Exception as exc:
            if getattr(exc, "status_code", None) != 409:  # 409: its removal is already in progress
                raise _as_env_error(exc, f"could not remove stale container {container['Id'][:12]}") from None
    return removed


async def docker_preflight(settings: EnvSettings, images: set[str]) -> None:
    """Daemon reachable, options and image names valid; stale containers reaped. Images are pulled later, ahead of
    the tasks that use them (ImageSupply)."""
    await asyncio.to_thread(_docker_preflight_sync, settings, images)


def _docker_preflight_sync(settings: EnvSettings, images: set[str]) -> None:
    import docker

    images = sorted(i for i in images if i) or [settings.image or DEFAULT_IMAGE]
    for image in images:  # the prompts' own images were not checked with the flags
        try:
            check_docker_image_name(image, "image")
        except SettingsError as exc:
            raise EnvError(str(exc)) from None
    _volume_binds(settings.volumes)
    client = docker_client(settings.concurrency)
    try:
        client.api.ping()
    except Exception as exc:
        raise EnvError(f"cannot reach the Docker daemon ({_one_line(exc)}): {DAEMON_FIX}") from None
    if settings.network not in ("bridge", "none", "host") and not settings.network.startswith("container:"):
        try:
            client.api.inspect_network(settings.network)
        except docker.errors.NotFound:
            raise EnvError(f"--network {settings.network} does not exist: docker network create it first") from None
    with contextlib.suppress(EnvError):  # a stale container we cannot remove must not stop a new run
        reap_stale_containers(client)
    # The images themselves are made ready task by task (ImageSupply): one that cannot be had costs its own tasks.


@contextlib.contextmanager
def _docker_errors(what: str):
    import docker

    try:
        yield
    except docker.errors.ImageNotFound:
        raise EnvError(f"{what}: the image is not present locally (docker pull / docker build it)") from None
    except EnvError:
        raise
    except Exception as exc:
        raise _as_env_error(exc, what) from None


def _as_env_error(exc: Exception, what: str) -> EnvError:
    import docker
    import requests

    if isinstance(exc, requests.exceptions.ConnectionError) or (
        isinstance(exc, docker.errors.DockerException) and not isinstance(exc, docker.errors.APIError)
    ):
        return EnvError(f"{what}: cannot reach the Docker daemon ({_one_line(exc)}): {DAEMON_FIX}")
    return EnvError(f"{what}: {_one_line(exc)}")


def _one_line(exc: object, limit: int = 300) -> str:
    text = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _name_part(task_id: str) -> str:
    part = re.sub(r"[^a-zA-Z0-9_.-]+", "-", task_id).strip("-.")[:40]
    return f"{part}-" if part else ""


# ---------------------------------------------------------------------------------------------------------------
# Images: pulled ahead of the tasks that use them, in parallel, within a disk budget
# ---------------------------------------------------------------------------------------------------------------
# SWE-bench-style runs use one image per instance: hundreds of images of several GB each. The runner tells the
# supply every image its pending samples will use, in the order they will start; the supply pulls them ahead,
# --pull_workers at a time and each once, and a task waits only for its own image. An image that cannot be had
# fails only the tasks that use it (env_error with the registry's message; resume tries again). With
# --max_image_disk, images this run pulled that no pending or running task needs are removed, oldest use first;
# images that were there before the run are never touched.


@dataclass
class PreparedImage:
    pulled: bool
    """This run pulled it (it was not on the engine before): only such an image may be removed."""
    size: int
    """Bytes on disk as the engine reports them (layers shared with other images are counted in each)."""


class ImageStore:
    """What the supply needs of a backend's images. Both methods block: the supply runs them in threads."""

    def prepare(self, image: str, on_bytes: Callable[[int], None]) -> PreparedImage:
        """Make ``image`` usable (check, pull per --pull), reporting downloaded bytes; EnvError in one line if not."""
        raise NotImplementedError

    def remove(self, image: str) -> None:
        raise NotImplementedError


class DockerImages(ImageStore):
    def __init__(self, settings: EnvSettings):
        self.settings = settings

    def _api(self):
        return docker_client(self.settings.concurrency).api

    def _size(self, image: str) -> int | None:
        """The image's size, or None when the engine does not have it."""
        import docker

        try:
            return int(self._api().inspect_image(image).get("Size") or 0)
        except docker.errors.ImageNotFound:
            return None
        except Exception as exc:
            raise _as_env_error(exc, f"image {image} cannot be used") from None

    def prepare(self, image: str, on_bytes: Callable[[int], None]) -> PreparedImage:
        import docker
        from docker.utils import parse_repository_tag

        size = self._size(image)
        if size is not None and self.settings.pull != "always":
            return PreparedImage(pulled=False, size=size)
        if size is None and self.settings.pull == "never":
            raise EnvError(
                f"image {image} is not present locally and --pull never forbids pulling: "
                f"docker pull {image}, docker build -t {image} ., or use --pull missing"
            )
        repository, tag = parse_repository_tag(image)
        layers: dict[str, int] = {}  # layer id -> bytes downloaded so far
        try:
            for event in self._api().pull(repository, tag=tag or "latest", stream=True, decode=True):
                if not isinstance(event, dict):
                    continue
                if event.get("error"):  # the registry's own words: manifest unknown, unauthorized, EOF...
                    raise EnvError(f"image {image} could not be pulled: {_one_line(event['error'])}")
                detail = event.get("progressDetail") or {}
                if event.get("status") == "Downloading" and isinstance(detail.get("current"), int):
                    layer = str(event.get("id"))
                    grown = detail["current"] - layers.get(layer, 0)
                    if grown > 0:
                        layers[layer] = detail["current"]
                        on_bytes(grown)
        except EnvError:
            raise
        except docker.errors.APIError as exc:
            raise EnvError(
                f"image {image} could not be pulled ({_one_line(exc)}): check its name, "
                f"or build it (docker build -t {image} .)"
            ) from None
        except Exception as exc:
            raise _as_env_error(exc, f"image {image} could not be pulled") from None
        pulled_size = self._size(image)
        if pulled_size is None:
            raise EnvError(f"image {image} could not be pulled: the engine does not have it after the pull")
        return PreparedImage(pulled=size is None, size=pulled_size)

    def remove(self, image: str) -> None:
        # Not forced: should a container still use the image, the engine refuses and the image stays.
        self._api().remove_image(image)


class ImageSupply:
    """Makes each task's image ready before its sandbox starts (see the banner above).

    ``uses``: image -> how many pending samples will run in it, in the order their first sample will start.
    A task calls :meth:`ready` before its sandbox starts and :meth:`release` when it has ended; samples that will
    never start (--until_passed) are given back with :meth:`forget`.
    """

    def __init__(self, store: ImageStore, uses: dict[str, int], workers: int = 2, max_disk: int | None = None):
        self.store, self.workers, self.max_disk = store, workers, max_disk
        self.order = list(uses)
        self.remaining: Counter[str] = Counter(uses)
        self.in_use: Counter[str] = Counter()
        self.last_use: dict[str, float] = {}
        self.held: dict[str, int] = {}
        """Images this run pulled and still has -> their size: what --max_image_disk counts and may remove."""
        self.pulling: set[str] = set()
        self.failed: dict[str, str] = {}
        """Image -> why it could not be had."""
        self.ready_count = 0
        self.removed: list[str] = []
        self.unremovable: dict[str, str] = {}
        """Image -> why --max_image_disk could not remove it."""
        self.downloaded = 0
        """Bytes pulled so far (as the engine reports its downloads)."""
        self._results: dict[str, asyncio.Future] = {}
        self._started: set[str] = set()
        self._demanded: list[str] = []
        self._next = 0
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._removals: set[asyncio.Task] = set()
        self._bytes_lock = threading.Lock()

    def start(self) -> None:
        """Start pulling ahead (within the running event loop)."""
        if not self._tasks:
            self._tasks = [asyncio.ensure_future(self._work()) for _ in range(min(self.workers, len(self.order)))]

    async def ready(self, image: str) -> None:
        """Until ``image`` can be used; EnvError (in one line) when it cannot be had."""
        result = self._result(image)
        if image not in self._started and image not in self._demanded:
            self._demanded.append(image)
            self._wake()
        error = await asyncio.shield(result)
        if error is not None:
            raise EnvError(error)
        self.in_use[image] += 1

    def release(self, image: str, used: bool = True) -> None:
        """A task that was to run in ``image`` has ended (``used``: it got the image from :meth:`ready`)."""
        if used:
            self.in_use[image] -= 1
        self.remaining[image] -= 1
        self.last_use[image] = time.monotonic()
        self._trim()
        self._wake()

    def forget(self, image: str, count: int) -> None:
        """``count`` samples that were to run in ``image`` will not start."""
        if count:
            self.remaining[image] -= count
            self._trim()
            self._wake()

    def counts(self) -> dict:
        return {
            "images": len(self.order),
            "ready": self.ready_count,
            "pulling": len(self.pulling),
            "failed": len(self.failed),
            "bytes": self.downloaded,
        }

    async def close(self) -> None:
        """Stop pulling ahead and finish the removals under way."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._removals:
            await asyncio.wait(self._removals, timeout=30)

    def _result(self, image: str) -> asyncio.Future:
        result = self._results.get(image)
        if result is None:
            result = self._results[image] = asyncio.get_running_loop().create_future()
        return result

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _over_budget(self) -> bool:
        return self.max_disk is not None and sum(self.held.values()) >= self.max_disk

    def _pick(self) -> str | None:
        """The next image to prepare: one a task waits for first; else, while the disk budget allows, the next in
        the order of use that some pending sample still needs."""
        while self._demanded:
            image = self._demanded.pop(0)
            if image not in self._started:
                return image
        if self._over_budget():
            return None
        while self._next < len(self.order):
            image = self.order[self._next]
            self._next += 1
            if image not in self._started and self.remaining[image] > 0:
                return image
        return None

    async def _work(self) -> None:
        while True:
            image = self._pick()
            if image is None:
                await self._changed.wait()
                continue
            self._started.add(image)
            self.pulling.add(image)
            result = self._result(image)
            try:
                prepared = await asyncio.to_thread(self.store.prepare, image, self._count)
            except EnvError as exc:
                self.failed[image] = str(exc)
                result.set_result(str(exc))
                continue
            except Exception as exc:  # a bug of ours or the SDK's: the image's tasks say so, the run goes on
                self.failed[image] = f"image {image} could not be made ready: {type(exc).__name__}: {_one_line(exc)}"
                result.set_result(self.failed[image])
                continue
            finally:
                self.pulling.discard(image)
                self._wake()
            self.ready_count += 1
            if prepared.pulled:
                self.held[image] = prepared.size
            result.set_result(None)
            self._trim()

    def _count(self, size: int) -> None:
        with self._bytes_lock:  # called from the pulling threads
            self.downloaded += size

    def _trim(self) -> None:
        """Over the disk budget: remove the images this run pulled that nothing needs any more, oldest use first."""
        if self.max_disk is None:
            return
        total = sum(self.held.values())
        idle = sorted(
            (self.last_use.get(image, 0.0), image)
            for image in self.held
            if self.remaining[image] <= 0 and self.in_use[image] <= 0
        )
        for _, image in idle:
            if total <= self.max_disk:
                break
            total -= self.held.pop(image)
            removal = asyncio.ensure_future(self._remove(image))
            self._removals.add(removal)
            removal.add_done_callback(self._removals.discard)

    async def _remove(self, image: str) -> None:
        try:
            await asyncio.to_thread(self.store.remove, image)
        except Exception as exc:  # an image we cannot remove costs disk, never the run
            self.unremovable[image] = _one_line(exc)
            return
        self.removed.append(image)
        # Should a task want it again after all, it is pulled again.
        self._started.discard(image)
        self._results.pop(image, None)
        self.ready_count -= 1
        self._wake()


def image_supply(settings: EnvSettings, uses: dict[str, int]) -> ImageSupply | None:
    """The run's image supply, or None when its backend has no images to pull."""
    store = BACKENDS[settings.env_type].image_store(settings)
    if store is None or not uses:
        return None
    return ImageSupply(store, uses, settings.pull_workers, settings.max_image_disk)


# ---------------------------------------------------------------------------------------------------------------
# Modal backend
# ---------------------------------------------------------------------------------------------------------------

MODAL_DRAIN_SECONDS = 2.0
"""How long output may still arrive once the command has exited (a background child may hold stdout open)."""
MODAL_MAX_ARGV_CHARS = 2**16
"""Modal rejects an exec whose arguments add up to more than this (ARG_MAX)."""
MODAL_ABANDON_WAIT = 3.0
"""The longest one abandon() waits for Modal to confirm a terminate."""
MODAL_SWEEP_WAIT = 5.0
"""The longest close() looks for a sandbox whose creation never handed it to us (a hung network costs this)."""
MODAL_SWEEP_INTERVAL = 1.0
"""How often close() looks again while Modal may still be making that sandbox."""
MODAL_CREATE_RATE = 25.0
"""Sandbox creations per second this process asks Modal for at most. Modal limits a workspace to about 30/s with a
burst allowance (a large public SWE run reports it); staying under it keeps a thousand tasks from failing at once."""
MODAL_CREATE_BURST = 4
"""Creations that may go at once after a quiet spell: with the rate, at most 29 start in any second."""
MODAL_ADMISSION_LEAD = 2.0
"""A task starts (builds its state, looks the app up, queues for a creation slot) when its creation is at most this
far off: about 50 tasks queue inside Modal's start at 25/s; the other thousands are not started yet (run_batch starts
its workers one turn at a time) and hold nothing every full garbage collection would walk: at 10,000 tasks in flight
a full collection went from 160-210 ms to 95-140 ms of CPU (bench/bench_modal_scale.py)."""
MODAL_RATE_LIMIT_BACKOFF = (1.0, 8.0)
"""First and longest pause after Modal refuses a creation for its rate limit (doubling in between)."""


class CreationPacer:
    """Spaces sandbox creations to ``rate`` per second with ``burst`` allowed at once: one per process, shared by
    every task (a generic cell rate algorithm, so no background task and no lock).

    A task reserves a slot and sleeps until it comes; waiting holds no sandbox, no connection, no thread. The
    schedule lives in a virtual clock (real time minus ``_shift``): :meth:`hold` moves every slot not yet reached
    later at once, so the queue slows down behind a rate-limit refusal instead of pouring out when it ends.
    Plain arithmetic on one event loop's thread, and usable from any number of event loops one after another.
    """

    def __init__(self, rate: float = MODAL_CREATE_RATE, burst: int = MODAL_CREATE_BURST):
        self.interval = 1.0 / rate
        self.tolerance = (max(burst, 1) - 1) * self.interval
        # Virtual times the next slot is due at once no burst is left (GCRA's "theoretical arrival time"): one for
        # the order of the queue, one for the creations that really went.
        self._reserved = self._issued = self._admitted = -math.inf
        self._shift = 0.0
        self._held_until = -math.inf

    def _virtual_now(self) -> float:
        return time.monotonic() - self._shift

    async def slot(self) -> None:
        """Return when this caller may create a sandbox: first come, first served."""
        due = max(self._reserved, self._virtual_now())
        self._reserved = due + self.interval
        at = due - self.tolerance
        while True:
            now = self._virtual_now()
            if at > now:  # the clock moves back while a hold is on: look again after each sleep
                await asyncio.sleep(at - now)
                continue
            # A loop that stalled wakes every slot it passed at once: space them again by when they really go.
            issue = max(self._issued, now)
            if issue - self.tolerance > now:
                at = issue - self.tolerance
                continue
            self._issued = issue + self.interval
            return

    async def admit(self, lead: float = MODAL_ADMISSION_LEAD) -> None:
        """Return when a task that starts now would reach its creation slot within about ``lead`` seconds: first
        come, first served, paced like the slots and moved later by :meth:`hold` like them. Nothing is reserved: a
        task that fails before it asks for a slot costs the queue one interval, and the queue behind it moves on."""
        due = max(self._admitted, self._virtual_now())
        self._admitted = due + self.interval
        at = due - self.tolerance - lead
        while (now := self._virtual_now()) < at:
            await asyncio.sleep(at - now)

    def hold(self, seconds: float) -> None:
        """Start no creation for ``seconds`` from now; overlapping holds merge (a hundred refusals at once pause
        the queue once, not a hundred times)."""
        now = time.monotonic()
        until = now + seconds
        if until > self._held_until:
            self._shift += until - max(self._held_until, now)
            self._held_until = until


_modal_pacer: CreationPacer | None = None


def modal_creation_pacer() -> CreationPacer:
    """The process's one pacer: every task of a run (and any other run in this process) shares Modal's limit."""
    global _modal_pacer
    if _modal_pacer is None:
        _modal_pacer = CreationPacer()
    return _modal_pacer


class ModalEnvironment(Environment):
    """Each task in a Modal Sandbox of its own, from a registry image or a Modal image id (im-...).

    Only the async (``.aio``) API is used, so hundreds of tasks can share one event loop.
    """

    name = "modal"
    uses_image = True
    needs_absolute_cwd = True
    flags = (
        IMAGE,
        CWD,
        NETWORK,
        MEMORY,
        CPUS,
        ENV_VAR,
        STARTUP_TIMEOUT,
        Flag("modal_app", str, "mini-swe-runner", "app the sandboxes are created in, created if missing"),
        Flag("sandbox_timeout", int, 3600, "longest sandbox lifetime in seconds", at_least(10)),
    )

    def __init__(
        self,
        settings: EnvSettings,
        image: str | None = None,
        cwd: str | None = None,
        task_id: str = "",
        sdk=None,
        pacer: CreationPacer | None = None,
    ):
        super().__init__(settings, image, cwd, task_id)
        self.sandbox = None
        self._sdk = sdk
        self._pacer = pacer or modal_creation_pacer()
        self._refusal: str | None = None  # Modal's last rate-limit refusal of this task's creation
        self._app = None
        # The tags of a sandbox Modal may have made without handing it to us (the creation timed out, was
        # cancelled or failed in flight); close() finds it by them. None once we hold the handle.
        self._unclaimed_tags: dict[str, str] | None = None

    async def _start(self) -> None:
        sdk = self._sdk = self._sdk or _import_modal()
        try:
            # Image.from_id/from_registry only describe the image (no I/O, no .aio needed); Sandbox.create resolves it.
            image = self.image
            image = sdk.Image.from_id(image) if image.startswith("im-") else sdk.Image.from_registry(image)
            asked = time.monotonic()
            app = self._app = await asyncio.wait_for(
                sdk.App.lookup.aio(self.settings.modal_app, create_if_missing=True), self.settings.startup_timeout
            )
            left = self.settings.startup_timeout - (time.monotonic() - asked)
            # The wait for a creation slot is our own queue (a thousand tasks at 25/s: 40 s for the last), not part
            # of --startup_timeout, which bounds what Modal takes once asked, rate-limit retries included.
            await self._pacer.slot()
            self.sandbox = await asyncio.wait_for(self._create_within_rate_limit(sdk, app, image), max(left, 0.0))
            self._unclaimed_tags = None
        except TimeoutError:
            if self._refusal is not None:
                raise EnvError(
                    f"no Modal sandbox for {self.image} within {self.settings.startup_timeout:g} s: Modal kept "
                    f"refusing creations for its rate limit ({self._refusal}); fewer --workers or a longer "
                    "--startup_timeout"
                ) from None
            raise EnvError(
                f"no Modal sandbox for {self.image} within {self.settings.startup_timeout:g} s: Modal unreachable "
                "(check the network), out of capacity, or the image is slow to build"
            ) from None
        except sdk.exception.AuthError as exc:
            raise EnvError(f"Modal rejected the credentials: {_one_line(exc)}") from None
        except (sdk.exception.Error, OSError) as exc:
            raise EnvError(f"Modal sandbox for {self.image} could not be created: {_one_line(exc)}") from None
        # "." until the first command reports the absolute directory the image starts in.
        self.cwd = self.requested_cwd or "."

    async def _create_within_rate_limit(self, sdk, app, image):
        """Create, and while Modal refuses for its rate limit, pause every task's creations and try again."""
        backoff, longest = MODAL_RATE_LIMIT_BACKOFF
        while True:
            try:
                return await self._create(sdk, app, image)
            except sdk.exception.ResourceExhaustedError as exc:
                self._unclaimed_tags = None  # refused: Modal made nothing, there is nothing to sweep
                self._refusal = _one_line(exc)
            # Jittered, so runs in several processes sharing one workspace do not pause and resume in lockstep.
            self._pacer.hold(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, longest)
            await self._pacer.slot()

    async def _create(self, sdk, app, image):
        tags = {"run_id": self.settings.run_id}
        if self.task_id:
            tags["task_id"] = self.task_id
            # From here the request may reach Modal whatever becomes of our wait. Without a task id there is no
            # sweep: the run's tag alone matches the other tasks' sandboxes too (task ids are unique in a run).
            self._unclaimed_tags = tags
        return await sdk.Sandbox.create.aio(
            app=app,
            image=image,
            timeout=int(self.settings.sandbox_timeout),
            workdir=self.requested_cwd,
            cpu=self.settings.cpus,
            memory=memory_mib(self.settings.memory),
            block_network=self.settings.network == "none",
            env=sandbox_environ(self.settings.env_vars),
            tags={**tags, **_runner_tags()},
        )

    async def _run(self, argv: list[str], collector: OutputCollector, timeout: float) -> int | None:
        argv = sandbox_timeout_argv(argv, timeout)
        if sum(len(arg) for arg in argv) > MODAL_MAX_ARGV_CHARS:
            raise CommandError(
                f"command too long for Modal ({len(argv[-1])} characters; about {MODAL_MAX_ARGV_CHARS} fit): "
                "write big files in several commands"
            )
        # Modal's own exec deadline is a backstop that falls after coreutils' KILL.
        backstop = math.ceil(timeout) + 2 * KILL_GRACE
        try:
            start = self.sandbox.exec.aio(*argv, text=False, timeout=backstop)  # bytes: text mode fails on bad UTF-8
            process = await asyncio.wait_for(start, self.settings.startup_timeout)
            reader = asyncio.ensure_future(_pump_modal_output(process, collector))
            try:
                try:
                    exit_code = await asyncio.wait_for(process.wait.aio(), backstop + KILL_GRACE)
                except TimeoutError:
                    return None  # not even Modal's deadline came back: the command surely ran out of time
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reader), MODAL_DRAIN_SECONDS)
            finally:
                reader.cancel()
        except TimeoutError:
            raise CommandError(f"Modal did not start the command within {self.settings.startup_timeout:g} s") from None
        except (self._sdk.exception.Error, OSError) as exc:
            raise CommandError(f"Modal sandbox failed: {_one_line(exc)}") from None
        return exit_code

    async def _close(self) -> None:
        sandbox, self.sandbox = self.sandbox, None
        unclaimed_tags, self._unclaimed_tags = self._unclaimed_tags, None
        if sandbox is not None:
            try:
                await asyncio.wait_for(sandbox.terminate.aio(), self.settings.startup_timeout)
            except (TimeoutError, self._sdk.exception.Error, OSError):
                pass  # best effort: a sandbox we cannot reach still ends at its own timeout
        elif unclaimed_tags is not None:
            await self._terminate_unclaimed(unclaimed_tags)

    async def _terminate_unclaimed(self, tags: dict[str, str]) -> None:
        """Terminate the sandbox a creation may have left running without handing it to us, found by its tags.

        Modal may still be making it when we first look (the request was in flight when we gave up), so look
        again until one turns up or MODAL_SWEEP_WAIT runs out. Failure is quiet: the sandbox then ends at its
        sandbox_timeout.
        """
        sdk = self._sdk

        async def sweep() -> None:
            while True:
                found = False
                async with contextlib.aclosing(sdk.Sandbox.list.aio(app_id=self._app.app_id, tags=tags)) as listed:
                    async for sandbox in listed:
                        await sandbox.terminate.aio()
                        found = True
                if found:
                    return
                await asyncio.sleep(MODAL_SWEEP_INTERVAL)

        with contextlib.suppress(TimeoutError, sdk.exception.Error, OSError):
            await asyncio.wait_for(sweep(), MODAL_SWEEP_WAIT)

    def abandon(self) -> None:
        self.closed = True
        sandbox, self.sandbox = self.sandbox, None
        unclaimed_tags, self._unclaimed_tags = self._unclaimed_tags, None
        if sandbox is not None:
            cleanup, args = _terminate_quietly, (sandbox,)
        elif unclaimed_tags is not None:
            cleanup, args = _terminate_unclaimed_quietly, (self._sdk, self._app.app_id, unclaimed_tags)
        else:
            return
        # The blocking API, from a thread of its own: no event loop runs there (no AsyncUsageWarning, wherever
        # abandon() is called from) and a hung network holds the exit at most MODAL_ABANDON_WAIT. The runner
        # abandons all environments in parallel; a sandbox missed ends at its sandbox_timeout.
        thread = threading.Thread(target=cleanup, args=args, daemon=True)
        thread.start()
        thread.join(MODAL_ABANDON_WAIT)

    @classmethod
    def check_settings(cls, settings: EnvSettings) -> None:
        try:
            memory_mib(settings.memory)
        except EnvError as exc:
            raise SettingsError(f"--{exc}") from None
        if settings.cwd and not settings.cwd.startswith("/"):
            raise SettingsError(f"--cwd {settings.cwd} must be an absolute path inside the Modal sandbox")
        if settings.image is not None:
            _check_modal_image(settings.image, SettingsError)

    @classmethod
    async def preflight(cls, settings: EnvSettings, images: set[str]) -> None:
        await modal_preflight(settings, images)

    @classmethod
    async def start_turn(cls, settings: EnvSettings) -> None:
        await modal_creation_pacer().admit()

    @classmethod
    def cleanup_leftovers(cls, sdk=None, app_name: str = "mini-swe-runner") -> str | None:
        """Terminate sandboxes whose runner on this host died, found by the tags every sandbox carries."""
        if sdk is None:
            if not modal_credentials_found():
                return None  # no credentials: this machine cannot have made any
            sdk = _import_modal()
        return f"modal: terminated {asyncio.run(_sweep_dead_runs(sdk, app_name))} sandbox(es) left by dead runs"


async def _pump_modal_output(process, collector: OutputCollector) -> None:
    async for chunk in process.stdout:
        collector.feed(chunk)
    # Empty unless the sandbox could not even start the wrapper (no bash or no timeout in the image).
    async for chunk in process.stderr:
        collector.feed(chunk)


def _terminate_quietly(sandbox) -> None:
    try:
        sandbox.terminate()
    except Exception:  # best effort on the way out; the sandbox still ends at its own timeout
        pass


def _terminate_unclaimed_quietly(sdk, app_id: str, tags: dict[str, str]) -> None:
    # One look only, on the way out: a sandbox Modal makes after it ends at its own timeout.
    try:
        for sandbox in sdk.Sandbox.list(app_id=app_id, tags=tags):
            sandbox.terminate()
    except Exception:  # best effort on the way out; the sandbox still ends at its own timeout
        pass


def _import_modal():
    try:
        import modal
    except ImportError as exc:
        raise EnvError(f"the modal package is not installed ({exc}): pip install modal") from None
    return modal


def memory_mib(value: str | int | None) -> int | None:
    """A memory size in MiB for Modal: '2g' -> 2048, '512m' -> 512, '4096' -> 4096 (a bare number is MiB)."""
    if value is None or str(value).strip() == "":
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(?:([kmgt])i?b?)?", str(value).strip().lower())
    if not match:
        raise EnvError(f"memory {value!r} is not a size like 512m, 2g or 4096 (MiB)")
    mib = math.ceil(float(match[1]) * {None: 1, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024**2}[match[2]])
    if mib < 1:
        raise EnvError(f"memory {value!r} is less than 1 MiB")
    return mib


def modal_credentials_found() -> bool:
    """Whether the Modal SDK will find a token, decided the way ``modal.config`` does it, without network.

    A MODAL_* variable wins over the profile; the profile is MODAL_PROFILE, else the one marked active, else
    "default", in MODAL_CONFIG_PATH or ~/.modal.toml.
    """
    if os.environ.get("MODAL_OAUTH_REFRESH_TOKEN"):  # third-party OAuth integrations; the SDK checks the rest
        return True
    path = os.environ.get("MODAL_CONFIG_PATH") or os.path.expanduser("~/.modal.toml")
    profiles = {}
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as file:
                profiles = _toml_loads(file.read())
        except (OSError, ValueError) as exc:  # both TOML libraries raise ValueError subclasses
            raise EnvError(f"cannot read the Modal config {path}: {_one_line(exc)}") from None
    active = [name for name, values in profiles.items() if isinstance(values, dict) and values.get("active") is True]
    profile = profiles.get(os.environ.get("MODAL_PROFILE") or (active[0] if active else "default"), {})
    profile = profile if isinstance(profile, dict) else {}
    # Set but empty still wins over the profile, as in modal.config.
    token_id = os.environ.get("MODAL_TOKEN_ID", profile.get("token_id"))
    token_secret = os.environ.get("MODAL_TOKEN_SECRET", profile.get("token_secret"))
    return bool(token_id and token_secret)


def _toml_loads(text: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10: the toml package comes with modal
        import toml as tomllib
    return tomllib.loads(text)


async def modal_preflight(settings: EnvSettings, images: set[str]) -> None:
    """Fail before any task starts, without network, when Modal cannot work: no SDK, no token, bad options."""
    _import_modal()
    if not modal_credentials_found():
        raise EnvError(
            "Modal credentials not found: run `modal token new` (or `modal token set`), "
            "or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"
        )
    for image in {image for image in images if image} | {settings.image or DEFAULT_IMAGE}:
        _check_modal_image(image, EnvError)


def _check_modal_image(image: str, error: type[Exception]) -> None:
    if not image or any(c.isspace() for c in image):
        raise error(f"invalid image {image!r}: give a registry tag like python:3.11-slim or a Modal id im-...")


def _runner_tags() -> dict[str, str]:
    """Who made a sandbox: what the cleanup sweep needs to tell a dead run's sandbox from a live one's."""
    labels = _container_labels("", "")
    return {
        key: labels[key]
        for key in (DOCKER_LABEL, f"{DOCKER_LABEL}.host", f"{DOCKER_LABEL}.pid", f"{DOCKER_LABEL}.pid-start")
    }


async def _sweep_dead_runs(sdk, app_name: str) -> int:
    try:
        app = await asyncio.wait_for(sdk.App.lookup.aio(app_name), MODAL_CLEANUP_WAIT)
    except sdk.exception.NotFoundError:
        return 0
    except (TimeoutError, sdk.exception.Error, OSError) as exc:
        raise EnvError(f"cannot reach Modal to clean up ({_one_line(exc) or 'timed out'})") from None
    mine = {DOCKER_LABEL: "1", f"{DOCKER_LABEL}.host": socket.gethostname()}

    async def sweep() -> int:
        terminated = 0
        async with contextlib.aclosing(sdk.Sandbox.list.aio(app_id=app.app_id, tags=mine)) as listed:
            async for sandbox in listed:
                if not _runner_is_alive(await sandbox.get_tags.aio()):
                    await sandbox.terminate.aio()
                    terminated += 1
        return terminated

    try:
        return await asyncio.wait_for(sweep(), MODAL_CLEANUP_WAIT)
    except (TimeoutError, sdk.exception.Error, OSError) as exc:
        raise EnvError(f"could not clean up Modal sandboxes ({_one_line(exc) or 'timed out'})") from None


MODAL_CLEANUP_WAIT = 60.0
"""The longest `mini-swe-runner cleanup` waits for Modal."""


# ---------------------------------------------------------------------------------------------------------------
# ssh backend
# ---------------------------------------------------------------------------------------------------------------

SSH_EXTRA_FIX = "pip install 'mini-swe-runner[ssh]'"
SSH_LINGER = 5.0
"""How long the run's ssh connection stays open with no task using it (tasks come and go between workers)."""
SSH_MAX_SESSIONS = 10
"""Channels open at once on the one connection: OpenSSH's default MaxSessions; more are refused by the server."""
SSH_CLIENT_GRACE = KILL_GRACE + 4.0
"""Past timeout + this we stop waiting for a remote command whose in-sandbox timeout failed, and kill its group."""
SSH_WATCHDOG_MARGIN = 5.0
"""The remote watchdog waits --startup_timeout (the runner's time to reconnect) plus this after losing the runner."""
SSH_RECONNECT_BACKOFF = (0.5, 8.0)
"""First and longest pause between reconnection attempts (doubling), all within --startup_timeout."""


def _remote_reap(token: str) -> str:
    """Shell that SIGKILLs every process of the remote user carrying the task's token, again until none is left."""
    return (
        f"for _ in 1 2 3 4 5 6 7 8 9 10; do p=$(grep -lzx {TASK_VARIABLE}={token} /proc/[0-9]*/environ "
        '2>/dev/null | cut -d/ -f3); [ -z "$p" ] && break; kill -KILL $p 2>/dev/null; sleep 0.05; done'
    )


# One per connection, on a channel of its own: the runner registers each task ("+ token dir") and its end once
# cleaned up ("- token"), and says "end" before it closes the connection. On end of file without "end" (the runner
# died, or the connection dropped) it waits for the runner to reconnect (a reconnected runner starts a new watchdog,
# which marks itself connected in a file and is given every live task); if none of the run's watchdogs is connected
# after the wait, it kills every registered task's processes and removes their temporary directories. After "end"
# it does so at once for the tasks still registered (their own clean-up failed). $1 = run id, $2 = seconds to wait.
_SSH_WATCHDOG_SCRIPT = (
    r"""
trap '' HUP INT TERM PIPE
mark="${TMPDIR:-/tmp}/.mini-swe-watch-$1"
declare -A dirs
: > "$mark.$$"
ended=
while IFS=' ' read -r op token dir; do
  case $op in
    +) dirs[$token]=$dir ;;
    -) unset "dirs[$token]" ;;
    end) ended=1; break ;;
  esac
done
rm -f -- "$mark.$$"
if [ -z "$ended" ]; then
  sleep "$2"
  for f in "$mark".*; do
    [ -e "$f" ] || continue
    kill -0 "${f##*.}" 2>/dev/null && exit 0
    rm -f -- "$f"
  done
fi
for token in "${!dirs[@]}"; do
  REAP
  [ -n "${dirs[$token]}" ] && rm -rf -- "${dirs[$token]}"
done
"""
).replace("REAP", _remote_reap("$token"))


def _import_asyncssh():
    try:
        import asyncssh
    except ImportError:
        raise EnvError(f"--env ssh needs the asyncssh package: {SSH_EXTRA_FIX}") from None
    return asyncssh


def parse_ssh_host(value: str) -> tuple[str | None, str, int]:
    """``[user@]host[:port]`` (``[v6]:port`` for IPv6) -> (user, host, port); SettingsError when malformed."""
    match = re.fullmatch(r"(?:([^@\s:]+)@)?(\[[0-9a-fA-F:.]+\]|[^@\s:\[\]]+)(?::(\d{1,5}))?", value or "")
    if not match or (match[3] and not 0 < int(match[3]) < 65536):
        raise SettingsError(f"--ssh_host {value!r} is not [user@]host[:port]")
    return match[1], match[2].strip("[]"), int(match[3] or 22)


class _SharedConnection:
    """The run's one ssh connection: every task's commands are channels on it (no handshake per command). It keeps
    the remote watchdog (see _SSH_WATCHDOG_SCRIPT) on a channel of its own, and reconnects when the connection
    drops while tasks use it (one attempt sequence, shared by all of them)."""

    def __init__(self, key: tuple, settings: EnvSettings):
        self.key, self.settings = key, settings
        self.loop = asyncio.get_running_loop()
        self.users = 0
        self.sessions = asyncio.Semaphore(SSH_MAX_SESSIONS - 1)  # one more is the watchdog's
        self.tasks: dict[str, str] = {}
        """Live tasks: token -> temporary directory ('' for a given cwd), told to every new watchdog."""
        self._watchdog = None
        self._watching: asyncio.Task | None = None
        self._connecting: asyncio.Task | None = None
        self._linger: asyncio.Task | None = None
        self._closing = False

    async def acquire(self):
        self.users += 1
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._closing = False
        if self._connecting is None or (self._connecting.done() and self._connecting.exception() is not None):
            self._connecting = asyncio.ensure_future(self._connect(first=True))
        try:
            return await asyncio.shield(self._connecting)
        except BaseException:
            self.release()
            raise

    async def reconnect(self, lost):
        """A live connection in place of ``lost``: the one another task made already, or a new one (EnvError once
        --startup_timeout passed without one)."""
        current = self._connecting
        failed = current is not None and current.done() and (current.cancelled() or current.exception() is not None)
        if current is None or failed or (current.done() and current.result() is lost):
            self._connecting = asyncio.ensure_future(self._connect(first=False))
        return await asyncio.shield(self._connecting)

    async def _connect(self, first: bool):
        connection = await (_ssh_connect(self.settings) if first else _ssh_reconnect(self.settings))
        try:
            grace = f"{self.settings.startup_timeout + SSH_WATCHDOG_MARGIN:g}"
            watch = ["bash", "-c", _SSH_WATCHDOG_SCRIPT, "watchdog", self.settings.run_id, grace]
            self._watchdog = await connection.create_process(shlex.join(watch), encoding=None)
        except (OSError, _import_asyncssh().Error) as exc:
            connection.close()
            raise EnvError(f"ssh to {self.settings.ssh_host} failed ({_one_line(exc)})") from None
        for token, directory in self.tasks.items():
            self._tell_watchdog(f"+ {token} {directory}")
        self._watching = asyncio.ensure_future(self._reconnect_when_lost(connection))  # (a reference keeps it)
        return connection

    async def _reconnect_when_lost(self, connection) -> None:
        # At once, not at a task's next command: a task waiting for its model would find its remote state reaped.
        await connection.wait_closed()
        current = self._connecting
        if self._closing or self.users == 0 or current is None or not current.done() or current.cancelled():
            return
        if current.exception() is None and current.result() is connection:
            with contextlib.suppress(EnvError):
                await self.reconnect(connection)

    def _tell_watchdog(self, line: str) -> None:
        watchdog = self._watchdog
        if watchdog is not None:
            with contextlib.suppress(Exception):
                watchdog.stdin.write(line.encode() + b"\n")

    def register(self, token: str, directory: str | None) -> None:
        self.tasks[token] = directory or ""
        self._tell_watchdog(f"+ {token} {directory or ''}")

    def unregister(self, token: str) -> None:
        self.tasks.pop(token, None)
        self._tell_watchdog(f"- {token}")

    def release(self) -> None:
        self.users -= 1
        if self.users == 0 and self._linger is None:
            self._linger = asyncio.ensure_future(self._close_later())

    async def _close_later(self) -> None:
        try:
            await asyncio.sleep(SSH_LINGER)
        except asyncio.CancelledError:
            if self.users > 0:
                raise  # a task took the connection again: keep it
            # else the run's event loop is shutting down and cancels us: close cleanly below
        if _ssh_connections.get(self.key) is self:
            del _ssh_connections[self.key]
        self._closing = True
        connecting, self._connecting = self._connecting, None
        if connecting is not None and connecting.done() and not connecting.cancelled() and not connecting.exception():
            self._tell_watchdog("end")
            connection = connecting.result()
            connection.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.wait_closed(), 2)


_ssh_connections: dict[tuple, _SharedConnection] = {}


def _shared_connection(settings: EnvSettings) -> _SharedConnection:
    loop = asyncio.get_running_loop()
    key = (id(loop), settings.ssh_host, settings.ssh_key, settings.ssh_known_hosts)
    shared = _ssh_connections.get(key)
    if shared is None or shared.loop is not loop:  # a loop id can be reused once its loop is gone
        shared = _ssh_connections[key] = _SharedConnection(key, settings)
    return shared


async def _ssh_connect(settings: EnvSettings):
    asyncssh = _import_asyncssh()
    user, host, port = parse_ssh_host(settings.ssh_host)
    known_hosts = os.path.expanduser(settings.ssh_known_hosts or "~/.ssh/known_hosts")
    # No known_hosts file at all still means checking: nothing is trusted (([], [], []): no keys, CAs or revocations).
    options: dict = {"port": port, "known_hosts": known_hosts if os.path.exists(known_hosts) else ([], [], [])}
    if user:
        options["username"] = user
    if settings.ssh_key:
        options["client_keys"] = [os.path.expanduser(settings.ssh_key)]
    where = settings.ssh_host
    try:
        return await asyncio.wait_for(asyncssh.connect(host, **options), settings.startup_timeout)
    except TimeoutError:
        raise EnvError(f"no ssh connection to {where} within {settings.startup_timeout:g} s") from None
    except asyncssh.HostKeyNotVerifiable as exc:
        raise EnvError(
            f"ssh host key of {where} not trusted ({_one_line(exc)}): add it to {known_hosts} "
            f"(ssh-keyscan -p {port} {host} >> {known_hosts}, after checking it) or pass --ssh_known_hosts"
        ) from None
    except asyncssh.PermissionDenied as exc:
        raise EnvError(f"ssh login to {where} refused ({_one_line(exc)}): check the user and --ssh_key") from None
    except (asyncssh.Error, OSError, ValueError) as exc:
        raise EnvError(f"cannot connect to {where} over ssh ({_one_line(exc)})") from None


async def _ssh_reconnect(settings: EnvSettings):
    """Connect again after the connection dropped: attempts with doubling pauses, all within --startup_timeout."""
    deadline = time.monotonic() + settings.startup_timeout
    pause, longest = SSH_RECONNECT_BACKOFF
    while True:
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                return await _ssh_connect(settings)
        except (EnvError, TimeoutError) as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                why = str(exc) or "timed out"
                raise EnvError(
                    f"the ssh connection to {settings.ssh_host} was lost and not re-established within "
                    f"{settings.startup_timeout:g} s ({why})"
                ) from None
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, longest)


PGID_MARKER = b"MSR-PGID "
"""Starts the line on which an ssh command reports its process group, ahead of its own output."""


class _ChannelOutput:
    """asyncssh session callbacks: stdout into the collector; on stderr the command's process group (PGID_MARKER)
    first, then its output."""

    def __init__(self, collector: OutputCollector):
        self.collector = collector
        self.stderr = bytearray()
        self.pgid: int | None = None
        self.exited: asyncio.Future = asyncio.get_running_loop().create_future()
        self.ended: asyncio.Future = asyncio.get_running_loop().create_future()

    def connection_made(self, channel) -> None:
        pass

    def data_received(self, data: bytes, datatype) -> None:
        if datatype is None:
            self.collector.feed(data)
            return
        if self.pgid is None:
            # "MSR-PGID <pgid>\n" comes first from the command itself. What the remote login shell printed before
            # it (a ~/.bashrc's complaints, "pyenv: cannot rehash") is not the command's output: it is dropped,
            # unless the marker never comes (the shell failed: then it is all there is to say, see _flush).
            self.stderr += data
            start = self.stderr.find(PGID_MARKER)
            if start < 0 or (start > 0 and self.stderr[start - 1 : start] != b"\n"):
                if len(self.stderr) > 65536:  # no marker in sight: not our command's stderr layout at all
                    self._flush()
                return
            end = self.stderr.find(b"\n", start)
            if end < 0:
                return
            number = bytes(self.stderr[start + len(PGID_MARKER) : end])
            self.pgid = int(number) if number.isdigit() else 0
            data, self.stderr = bytes(self.stderr[end + 1 :]), bytearray()
        self.collector.feed(data)

    def _flush(self) -> None:
        """Stderr that never reached the pgid marker: the remote shell's own words are all the output there is."""
        if self.pgid is None:
            self.pgid = 0
            self.collector.feed(bytes(self.stderr))
            self.stderr = bytearray()

    def _exit(self, code: int) -> None:
        self._flush()
        if not self.exited.done():
            self.exited.set_result(code)

    def exit_status_received(self, status: int) -> None:
        self._exit(status)

    def exit_signal_received(self, signal_name: str, core_dumped: bool, msg: str, lang: str) -> None:
        number = getattr(signal.Signals, f"SIG{signal_name}", None)
        self._exit(128 + int(number) if number else -1)

    def eof_received(self) -> bool:
        self._flush()
        if not self.ended.done():
            self.ended.set_result(None)
        return False

    def connection_lost(self, exc) -> None:
        self._exit(-1)
        if not self.ended.done():
            self.ended.set_result(None)

    def session_started(self) -> None:
        pass

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def xon_xoff_requested(self, client_can_do: bool) -> None:
        pass


class SSHEnvironment(Environment):
    """Commands run on a remote machine over the run's one ssh connection, in a fresh remote temporary directory
    per task (removed at close) unless a cwd is given. A timeout kills the command's process group remotely; close
    kills every group the task's commands made and every process carrying the task's token (TASK_VARIABLE).
    A dropped connection is re-established; the command it cut short gets an error result and the task goes on if
    its remote directory survived. A runner that dies leaves the remote watchdog to clean up."""

    name = "ssh"
    flags = (
        CWD,
        ENV_VAR,
        STARTUP_TIMEOUT,
        Flag("ssh_host", str, None, "[user@]host[:port] commands run on (one connection per run)"),
        Flag("ssh_key", str, None, "private key file (default: the ssh agent and ~/.ssh/id_*)", _existing_file),
        Flag(
            "ssh_known_hosts",
            str,
            None,
            "known_hosts file the host key is checked against (default ~/.ssh/known_hosts)",
            _existing_file,
        ),
    )
    needs_absolute_cwd = True

    def __init__(self, settings: EnvSettings, image: str | None = None, cwd: str | None = None, task_id: str = ""):
        super().__init__(settings, image, cwd, task_id)
        self.base: str | None = None
        self._temp_dir: str | None = None
        self._shared: _SharedConnection | None = None
        self._connection = None
        self._groups: list[int] = []
        # SHLVL=1: bash sources ~/.bashrc even non-interactively when it thinks sshd started it (SSH_CLIENT set,
        # shell level < 2); the login shell already paid that once, and the wrapper's bash must not pay it again
        # (measured: a pyenv-loading .bashrc doubled the round trip, 0.48 s against 0.24 s).
        # The task's token (TASK_VARIABLE) is not among them: the wrapper exports it to the command's processes
        # only, so the reaper (end_processes, _remote_reap) never matches the remote chain that runs it.
        variables = {**sandbox_environ(settings.env_vars), "SHLVL": "1"}
        self._env_prefix = ["env", *(f"{k}={v}" for k, v in variables.items())]

    async def _start(self) -> None:
        self._shared = _shared_connection(self.settings)
        self._connection = await self._shared.acquire()
        if self.requested_cwd:
            check = f"test -d {shlex.quote(self.requested_cwd)}"
            if (await self._control(check)).exit_status != 0:
                await self._close()
                raise EnvError(f"working directory {self.requested_cwd} does not exist on {self.settings.ssh_host}")
            self.base = self.requested_cwd
        else:
            # Named by the task's random token, not mktemp's: made again after a dropped connection, it is the same.
            name = f'"${{TMPDIR:-/tmp}}/mini-swe-task-{self._task_token}"'
            ours = '{ [ -d "$d" ] && [ ! -L "$d" ] && [ -O "$d" ]; }'
            made = await self._control(f'd={name}; {{ mkdir -m 700 -- "$d" 2>/dev/null || {ours}; }} && echo "$d"')
            path = (made.stdout or "").strip()
            if made.exit_status != 0 or not path.startswith("/"):
                await self._close()
                raise EnvError(f"could not make a temporary directory on {self.settings.ssh_host}: {made.stderr!r}")
            self.base = self._temp_dir = path
        self._shared.register(self._task_token, self._temp_dir)
        self.cwd = self.base

    async def _live_connection(self):
        """The connection, re-established if it dropped (EnvError if it cannot be within --startup_timeout, or if
        the task's remote directory did not survive)."""
        if self._connection.is_closed():
            self._connection = await self._shared.reconnect(self._connection)
            if self.base is not None:
                await self._check_base()
        return self._connection

    async def _check_base(self) -> None:
        if (await self._control(f"test -d {shlex.quote(self.base)}")).exit_status != 0:
            host = self.settings.ssh_host
            raise EnvError(f"the ssh connection to {host} was lost, and with it the task's directory {self.base}")

    async def _control(self, command: str):
        asyncssh = _import_asyncssh()
        for attempt in range(2):
            connection = await self._live_connection()
            async with self._shared.sessions:
                try:
                    result = await self._refused_again(
                        connection,
                        lambda on=connection: asyncio.wait_for(on.run(command), self.settings.startup_timeout),
                    )
                    if result.exit_status is None and result.exit_signal is None and connection.is_closed():
                        raise OSError("the connection was lost")
                    return result
                except (TimeoutError, OSError, asyncssh.Error) as exc:
                    if attempt == 0 and connection.is_closed():
                        continue  # dropped: once more on a new connection
                    why = _one_line(exc) or "timed out"
                    raise EnvError(f"ssh to {self.settings.ssh_host} failed ({why})") from None
        raise AssertionError("unreachable")

    async def _refused_again(self, connection, open_channel):
        """``open_channel()``, again while the server refuses a session: OpenSSH counts one against MaxSessions
        until it has reaped its command, a moment after the channel closed, and with 12 tasks at once refused
        ("open failed") while we had fewer open. Doubling pauses, within --startup_timeout."""
        asyncssh = _import_asyncssh()
        deadline = time.monotonic() + self.settings.startup_timeout
        pause = 0.02
        while True:
            try:
                return await open_channel()
            except asyncssh.ChannelOpenError:
                if connection.is_closed() or time.monotonic() + pause > deadline:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)

    def _remote_command(self, argv: list[str], timeout: float) -> str:
        # `echo "MSR-PGID $$" >&2; exec ...`: the shell reports its pid, then becomes env -> sh -> `timeout`, which
        # keeps that pid and makes it its process group: the group close() and the client-side guard kill.
        marker = PGID_MARKER.decode()
        return f'echo "{marker}$$" >&2; exec ' + shlex.join([*self._env_prefix, *sandbox_timeout_argv(argv, timeout)])

    async def _run(self, argv: list[str], collector: OutputCollector, timeout: float) -> int | None:
        asyncssh = _import_asyncssh()
        output = _ChannelOutput(collector)
        async with self._shared.sessions:
            for attempt in range(2):
                connection = await self._live_connection()
                try:
                    channel, _ = await self._refused_again(
                        connection,
                        lambda on=connection: on.create_session(
                            lambda: output, self._remote_command(argv, timeout), encoding=None
                        ),
                    )
                    break
                except (OSError, asyncssh.Error) as exc:
                    if attempt == 0 and connection.is_closed():
                        continue  # dropped before the command started: it runs on the new connection
                    raise EnvError(f"ssh to {self.settings.ssh_host} failed ({_one_line(exc)})") from None
            channel.write_eof()  # no stdin: a command that reads it sees end of file, as everywhere else
            try:
                try:
                    exit_code = await asyncio.wait_for(asyncio.shield(output.exited), timeout + SSH_CLIENT_GRACE)
                except TimeoutError:  # the remote timeout did not end it (stopped, say): kill its group ourselves
                    await self._kill_groups([output.pgid] if output.pgid else [])
                    return None
                with contextlib.suppress(TimeoutError):  # a background child may keep the channel open
                    await asyncio.wait_for(asyncio.shield(output.ended), 0.2)
            finally:
                if output.pgid:
                    self._groups.append(output.pgid)
                channel.close()
                # The slot is free once the server has closed its side too: it counts a session until then, and
                # past its MaxSessions refuses the next one ("open failed").
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(channel.wait_closed(), KILL_GRACE)
        if exit_code == -1 and channel.get_exit_status() is None and connection.is_closed():
            await self._after_lost_command(output.pgid)
        return exit_code

    async def end_processes(self) -> None:
        # The process groups of the task's commands, then whatever left them (setsid) but kept the task's token.
        groups, self._groups = self._groups, []
        await self._kill_groups(groups)
        await super().end_processes()

    async def _after_lost_command(self, pgid: int | None) -> None:
        """The connection dropped under a running command: reconnect, end that command (its output and exit code
        are gone), and go on if the task's remote directory survived."""
        host = self.settings.ssh_host
        await self._live_connection()  # EnvError if it cannot be re-established
        await self._kill_groups([pgid] if pgid else [])
        raise CommandError(f"the ssh connection to {host} dropped during this command (reconnected; its output and "
                           "exit code are lost, and it was stopped)")  # fmt: skip

    async def _kill_groups(self, groups: list[int]) -> None:
        if groups:
            with contextlib.suppress(EnvError):
                await self._control("kill -KILL " + " ".join(f"-{g}" for g in groups) + " 2>/dev/null; true")

    def _cleanup_command(self, groups: list[int], temp_dir: str | None) -> str:
        """Kill the task's process groups and every process carrying its token, remove its temporary directory."""
        kill = "kill -KILL " + " ".join(f"-{g}" for g in groups) + " 2>/dev/null; " if groups else ""
        remove = f"; rm -rf -- {shlex.quote(temp_dir)}" if temp_dir else ""
        return kill + _remote_reap(self._task_token) + remove

    async def _close(self) -> None:
        if self._shared is None or self._connection is None:
            return
        cleaned = False
        try:
            groups, self._groups = self._groups, []
            with contextlib.suppress(EnvError):
                await self._control(self._cleanup_command(groups, self._temp_dir))
                cleaned = True
        finally:
            self._temp_dir = None
            shared, self._shared, self._connection = self._shared, None, None
            if cleaned:  # else the watchdog keeps it, and cleans up when the connection ends
                shared.unregister(self._task_token)
            shared.release()

    def abandon(self) -> None:
        """The run's loop is not ours to use here: a short-lived connection of its own, in a thread, bounded."""
        self.closed = True
        groups, self._groups = self._groups, []
        temp_dir, self._temp_dir = self._temp_dir, None
        if self._shared is None:
            return
        command = self._cleanup_command(groups, temp_dir)

        async def clean() -> None:
            connection = await _ssh_connect(self.settings)
            try:
                await connection.run(command)
            finally:
                connection.close()

        def run() -> None:
            with contextlib.suppress(Exception):
                asyncio.run(asyncio.wait_for(clean(), SSH_ABANDON_WAIT))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(SSH_ABANDON_WAIT + 0.5)

    @classmethod
    def check_settings(cls, settings: EnvSettings) -> None:
        if not settings.ssh_host:
            raise SettingsError("--env ssh needs --ssh_host [user@]host[:port]")
        parse_ssh_host(settings.ssh_host)

    @classmethod
    async def preflight(cls, settings: EnvSettings, images: set[str]) -> None:
        """Connect once (the connection then serves the run) and check the remote has bash and coreutils timeout."""
        _import_asyncssh()
        shared = _shared_connection(settings)
        connection = await shared.acquire()
        try:
            probe = "command -v bash >/dev/null || exit 97; command -v timeout >/dev/null || exit 98"
            try:
                result = await asyncio.wait_for(connection.run(probe), settings.startup_timeout)
            except (TimeoutError, OSError, _import_asyncssh().Error) as exc:
                raise EnvError(f"ssh to {settings.ssh_host} failed ({_one_line(exc) or 'timed out'})") from None
            missing = {97: "bash", 98: "coreutils timeout"}.get(result.exit_status)
            if missing:
                raise EnvError(f"{settings.ssh_host} has no {missing}: install it there")
            if settings.cwd:
                cwd_check = await connection.run(f"test -d {shlex.quote(settings.cwd)}")
                if cwd_check.exit_status != 0:
                    raise EnvError(f"--cwd {settings.cwd} is not a directory on {settings.ssh_host}")
        finally:
            shared.release()


SSH_ABANDON_WAIT = 3.0
"""The longest abandon() spends cleaning a task's remote leftovers on the way out."""


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------

BACKENDS: dict[str, type[Environment]] = {
    cls.name: cls for cls in (LocalEnvironment, BwrapEnvironment, DockerEnvironment, SSHEnvironment, ModalEnvironment)
}
"""Every --env name and its class: the one list of backends."""

ENV_TYPES = tuple(BACKENDS)


def _every_flag(backends: dict[str, type[Environment]]) -> dict[str, Flag]:
    flags: dict[str, Flag] = {}
    for name, cls in backends.items():
        for flag in cls.flags:
            if flags.setdefault(flag.name, flag) is not flag:  # two rules for one flag: which would the CLI follow?
                raise TypeError(f"{name} declares --{flag.name} again: share the one Flag another backend declares")
    return flags


ENV_FLAGS: dict[str, Flag] = _every_flag(BACKENDS)
"""Every backend flag by name, in the order the registry first meets it: given with a backend that does not use it,
it is a usage error."""


def flag_help(flag: Flag) -> str:
    """What --help says of a backend flag: the backends it applies to (unless all), its text, and its default."""
    users = flag_users(flag.name)
    text = flag.help[0].upper() + flag.help[1:] if len(users) == len(BACKENDS) else f"{'/'.join(users)}: {flag.help}"
    if flag.default is not None and flag.type is not bool and flag.default != ():
        text += f" (default {flag.default:g})" if isinstance(flag.default, float) else f" (default {flag.default})"
    return text + "."


EnvSettings = dataclasses.make_dataclass(
    "EnvSettings",
    [
        (flag.setting, flag.type if flag.default is not None else flag.type | None, field(default=flag.default))
        for flag in ENV_FLAGS.values()
    ],
    bases=(CommonSettings,),
)
EnvSettings.__module__ = __name__
EnvSettings.__doc__ = (
    f"{CommonSettings.__doc__}\n    Its fields beyond CommonSettings', one per backend flag:\n\n"
    + "\n".join(
        f"    {flag.setting}: {'False with ' if flag.negated else ''}--{flag.name}: {flag_help(flag)}"
        for flag in ENV_FLAGS.values()
    )
)


def create_environment(
    settings: EnvSettings, image: str | None = None, cwd: str | None = None, task_id: str = ""
) -> Environment:
    """A not-yet-started environment for one task. ``image`` is the task's resolved image (see task_image)."""
    return BACKENDS[settings.env_type](settings, image=image, cwd=cwd, task_id=task_id)


async def preflight(settings: EnvSettings, images: set[str]) -> None:
    """Check, before any task starts, that the backend can run at all (daemon, images, credentials)."""
    await BACKENDS[settings.env_type].preflight(settings, images)


async def start_turn(settings: EnvSettings) -> None:
    """Wait, before a task starts, until the backend can take it on (see Environment.start_turn)."""
    await BACKENDS[settings.env_type].start_turn(settings)


def cleanup_leftovers() -> tuple[list[str], list[str]]:
    """What every backend removed of dead runs' leftovers, and the one-line errors of those that failed."""
    done, failed = [], []
    for name, cls in BACKENDS.items():
        try:
            line = cls.cleanup_leftovers()
        except EnvError as exc:
            failed.append(f"{name}: {exc}")
            continue
        if line:
            done.append(line)
    return done, failed
