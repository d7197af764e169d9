"""Where the agent's commands run: one small interface, one class per backend, one factory.

Every backend runs each command as a fresh ``bash -c`` and carries only the working directory from one
command to the next. They share one output path (:class:`OutputCollector` + :func:`finish_output`), so
merging, UTF-8 replacement, head+tail truncation and secret redaction behave the same everywhere.

The interface (duck-typed, all coroutines so many tasks can share one event loop)::

    env = create_environment(settings, task)   # nothing started yet
    await env.start()                           # create the sandbox / temp dir
    result = await env.execute("ls", timeout=60)  # -> ExecResult, never raises for a failing command
    await env.close()                           # idempotent; removes everything the task created
    env.abandon()                               # sync best-effort cleanup when the user insists on exiting now

Heavy SDKs (docker, modal) are imported lazily so ``--help`` and the local backend stay fast.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from typing import Protocol

TIMEOUT_EXIT_CODE = 124
"""Exit code reported for a command that hit its timeout (the same as coreutils ``timeout``)."""

READ_CHUNK = 64 * 1024

SECRET_NAME_PATTERN = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE", re.IGNORECASE)
"""Environment variable names that never reach the agent's commands unless passed through by name."""

REDACTED = "[REDACTED]"


class EnvironmentError_(Exception):
    """A backend could not be prepared or used; the message is one line that names the fix."""


# Public alias with a readable name; the trailing underscore avoids shadowing the builtin EnvironmentError.
EnvError = EnvironmentError_


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


@dataclass
class EnvSettings:
    """How environments are made for a run; one object shared by every task of the run."""

    env_type: str = "local"
    """local, docker or modal."""
    image: str | None = None
    """Default image for docker/modal; a prompt may override it."""
    cwd: str | None = None
    """Where commands start. Local: None means a fresh temporary directory per task."""
    max_output_chars: int = 50_000
    """Output beyond this keeps its head and tail with a marker saying how much was left out."""
    pass_env: tuple[str, ...] = ()
    """Names of variables passed to the agent's commands even though they look secret (local only)."""
    secret_values: tuple[str, ...] = ()
    """Literal secrets (API keys...) that are replaced by [REDACTED] wherever they would appear in output."""
    run_id: str = field(default_factory=lambda: secrets.token_hex(6))
    """Identifies this run; backends label what they create with it."""
    # Sandbox options (docker and modal); the local backend ignores them.
    pull: str = "missing"
    """docker: missing, always or never."""
    network: str = "bridge"
    """docker network mode; 'none' cuts the network (modal: block_network)."""
    memory: str | None = None
    """Memory limit, e.g. '2g' (docker) or MiB (modal)."""
    cpus: float | None = None
    """CPU limit."""
    pids_limit: int | None = 512
    """Maximum number of processes in a container; None for no limit."""
    volumes: tuple[str, ...] = ()
    """docker: host:container[:ro] mounts the user asked for; nothing is mounted otherwise."""
    env_vars: tuple[str, ...] = ()
    """Host variables passed into the sandbox by name (none by default)."""
    hardening: bool = True
    """docker: drop capabilities and forbid privilege escalation."""
    modal_app: str = "mini-swe-runner"
    """modal: the app sandboxes are created in (created if missing)."""
    sandbox_timeout: int = 3600
    """modal: the longest a sandbox may live, in seconds."""
    startup_timeout: float = 120.0
    """Longest wait for a sandbox to be created before the task is recorded as env_error."""


class Environment(Protocol):
    async def start(self) -> None: ...

    async def execute(self, command: str, timeout: float) -> ExecResult: ...

    async def close(self) -> None: ...

    def abandon(self) -> None:
        """Synchronous, best-effort, quick cleanup for a second Ctrl-C, when the event loop is not waited on."""
        ...


# ---------------------------------------------------------------------------------------------------------------
# The shared output path
# ---------------------------------------------------------------------------------------------------------------

# UTF-8 continuation bytes (0b10xxxxxx): deleting them from a chunk leaves one byte per character.
_CONTINUATION_BYTES = bytes(range(0x80, 0xC0))


class OutputCollector:
    """Keeps the head and the tail of a byte stream of any length in bounded memory.

    Feed it chunks as they arrive; memory stays around ``2 * limit`` bytes whatever the stream's size.
    """

    def __init__(self, limit_chars: int):
        # A character is at most 4 bytes in UTF-8; keeping 4x the limit on each side is always enough.
        self.keep_bytes = max(limit_chars, 1) * 4
        self.limit_chars = limit_chars
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

    @property
    def data(self) -> bytes:
        """Everything, when nothing was dropped; else head + tail (callers use :meth:`text`)."""
        return bytes(self.head + self.tail)

    def text(self) -> str:
        """The decoded output, truncated to the limit with a marker that counts what was left out."""
        dropped_bytes = self.total_bytes - len(self.head) - len(self.tail)
        if dropped_bytes == 0:
            text = bytes(self.head + self.tail).decode("utf-8", errors="replace")
            return truncate_text(text, self.limit_chars)
        head = bytes(self.head).decode("utf-8", errors="replace")
        tail = bytes(self.tail).decode("utf-8", errors="replace")
        return _join_head_tail(head, tail, self.limit_chars, self.total_chars)


def _join_head_tail(head: str, tail: str, limit: int, total_chars: int) -> str:
    head_part = head[: limit // 2]
    tail_part = tail[len(tail) - (limit - len(head_part)) :] if limit - len(head_part) > 0 else ""
    omitted = max(total_chars - len(head_part) - len(tail_part), 0)
    return f"{head_part}\n\n[... {omitted} characters omitted ...]\n\n{tail_part}"


def truncate_text(text: str, limit: int) -> str:
    """Head + tail of ``text`` when it is longer than ``limit`` characters: the one truncation rule."""
    if len(text) <= limit:
        return text
    return _join_head_tail(text, text, limit, len(text))


def finish_output(
    collector: OutputCollector, cwd_marker: bytes | None, secret_values: tuple[str, ...]
) -> tuple[str, str | None]:
    """Turn what a command printed into its final text, and pull out the cwd its wrapper reported.

    Every backend ends here, so they all merge, decode, truncate and redact the same way.
    """
    new_cwd = None
    if cwd_marker:
        new_cwd = _take_cwd_marker(collector, cwd_marker)
    return redact(collector.text(), secret_values), new_cwd


def _take_cwd_marker(collector: OutputCollector, marker: bytes) -> str | None:
    # The wrapper prints "\n<marker><pwd>\n" last; it sits in the tail (or in the head for short output).
    for buf in (collector.tail, collector.head):
        start = buf.rfind(b"\n" + marker)
        if start < 0:
            continue
        end = buf.find(b"\n", start + 1 + len(marker))
        if end < 0:
            return None
        path = bytes(buf[start + 1 + len(marker) : end]).decode("utf-8", errors="replace")
        removed = end + 1 - start
        del buf[start : end + 1]
        collector.total_bytes -= removed
        collector.total_chars -= removed - (len(path.encode()) - len(path))
        return path or None
    return None


def redact(text: str, secret_values: tuple[str, ...]) -> str:
    """Replace every known secret value in ``text``: the one secret filter for outputs, errors and logs."""
    for value in secret_values:
        if value and value in text:
            text = text.replace(value, REDACTED)
    return text


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME_PATTERN.search(name))


def secret_values_from_environ(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """Values of the runner's secret-looking variables, long enough to be worth redacting."""
    environ = os.environ if environ is None else environ
    return tuple(sorted({v for k, v in environ.items() if is_secret_name(k) and len(v) >= 8}, key=len, reverse=True))


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
    """The runner's environment without its secrets, for the local backend's commands."""
    environ = dict(os.environ if environ is None else environ)
    keep = {k: v for k, v in environ.items() if not is_secret_name(k) or k in pass_env}
    keep.update(AGENT_ENV_DEFAULTS)
    return keep


# The wrapper every backend runs: a fresh bash that starts in the task's cwd, runs the command through eval
# (so the command text is data, never spliced into a script), and on exit reports its $PWD on the original
# stdout, so the next command can start where this one ended. $1 = marker, $2 = cwd, $3 = command.
_WRAPPER_SCRIPT = (
    'exec 9>&1; trap \'printf "\\n%s%s\\n" "$1" "$PWD" >&9 2>/dev/null\' EXIT; cd -- "$2" || exit 1; eval "$3"'
)


def new_cwd_marker() -> str:
    return f"__MSR_CWD_{secrets.token_hex(8)}__:"


def wrapped_argv(command: str, cwd: str, marker: str) -> list[str]:
    """argv that runs ``command`` with ``bash -c`` in ``cwd`` and reports the final cwd after ``marker``."""
    return ["bash", "-c", _WRAPPER_SCRIPT, "bash", marker, cwd, command]


def timeout_notice(timeout: float) -> str:
    return f"Command timed out after {timeout:g} s; its processes were killed."


def timed_out_result(output: str, timeout: float) -> ExecResult:
    """The one shape of a timed-out command, whatever the backend."""
    notice = timeout_notice(timeout)
    text = f"{output}\n[{notice}]" if output else f"[{notice}]"
    return ExecResult(output=text, exit_code=TIMEOUT_EXIT_CODE, error=notice)


# ---------------------------------------------------------------------------------------------------------------
# Local backend
# ---------------------------------------------------------------------------------------------------------------


class LocalEnvironment:
    """Commands run on this machine, in a fresh temporary directory per task unless a cwd is given."""

    def __init__(self, settings: EnvSettings, cwd: str | None = None):
        self.settings = settings
        self.requested_cwd = cwd or settings.cwd
        self.base: str | None = None
        self.cwd: str | None = None
        self._temp_dir: str | None = None
        self._process_groups: set[int] = set()
        self._marker = new_cwd_marker()
        self._environ = command_environ(settings.pass_env)

    async def start(self) -> None:
        if self.requested_cwd:
            base = os.path.abspath(os.path.expanduser(self.requested_cwd))
            if not os.path.isdir(base):
                raise EnvError(f"working directory {base} does not exist (check --cwd or the prompt's cwd)")
        else:
            base = self._temp_dir = tempfile.mkdtemp(prefix="mini-swe-task-")
        self.base = self.cwd = base

    async def execute(self, command: str, timeout: float) -> ExecResult:
        if self.base is None:
            await self.start()
        collector = OutputCollector(self.settings.max_output_chars)
        # Our own pipe, not asyncio's: asyncio's Process.wait() also waits for its pipes to close, which a
        # background child (`server &`) would hold open until the timeout.
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *wrapped_argv(command, self.cwd, self._marker),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_fd,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.base,
                env=self._environ,
                start_new_session=True,  # its own process group, so a timeout can kill the whole tree
            )
        except OSError as exc:
            os.close(read_fd)
            return ExecResult(output="", exit_code=-1, error=f"could not start bash: {exc}")
        finally:
            os.close(write_fd)
        self._process_groups.add(proc.pid)
        reader = asyncio.ensure_future(_pump_fd(read_fd, collector))
        timed_out = False
        try:
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except asyncio.TimeoutError:
                timed_out = True
                _kill_group(proc.pid)
                await proc.wait()
            # bash is gone; a background child may still hold the pipe open, so drain only briefly.
            try:
                await asyncio.wait_for(asyncio.shield(reader), 2.0 if timed_out else 0.2)
            except asyncio.TimeoutError:
                pass
        finally:
            if proc.returncode is None:  # cancelled mid-command (task timeout, Ctrl-C): leave nothing running
                _kill_group(proc.pid)
            reader.cancel()
        text, new_cwd = finish_output(collector, self._marker.encode(), self.settings.secret_values)
        if timed_out:
            return timed_out_result(text, timeout)
        if new_cwd:
            self.cwd = new_cwd
        return ExecResult(output=text, exit_code=proc.returncode)

    async def close(self) -> None:
        for pgid in self._process_groups:
            _kill_group(pgid)
        self._process_groups.clear()
        if self._temp_dir:
            await asyncio.to_thread(shutil.rmtree, self._temp_dir, True)
            self._temp_dir = None

    def abandon(self) -> None:
        for pgid in self._process_groups:
            _kill_group(pgid)
        if self._temp_dir:
            shutil.rmtree(self._temp_dir, True)


async def _pump_fd(read_fd: int, collector: OutputCollector) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_CHUNK)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
    )
    try:
        while chunk := await reader.read(READ_CHUNK):
            collector.feed(chunk)
    finally:
        transport.close()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------------------------

ENV_TYPES = ("local", "docker", "modal")


def create_environment(
    settings: EnvSettings, image: str | None = None, cwd: str | None = None, task_id: str = ""
) -> Environment:
    """A not-yet-started environment for one task; ``image``/``cwd`` override the run's settings."""
    if settings.env_type == "local":
        return LocalEnvironment(settings, cwd=cwd)
    if settings.env_type == "docker":
        return DockerEnvironment(settings, image=image, cwd=cwd, task_id=task_id)
    if settings.env_type == "modal":
        return ModalEnvironment(settings, image=image, cwd=cwd, task_id=task_id)
    raise EnvError(f"unknown environment {settings.env_type!r}: choose one of {', '.join(ENV_TYPES)}")


async def preflight(settings: EnvSettings, images: set[str]) -> None:
    """Check, before any task starts, that the backend can run at all (daemon, images, credentials)."""
    if settings.env_type == "local":
        if settings.cwd and not os.path.isdir(os.path.expanduser(settings.cwd)):
            raise EnvError(f"--cwd {settings.cwd} is not a directory")
        if shutil.which("bash") is None:
            raise EnvError("bash was not found on PATH; the local environment needs it")
        return
    if settings.env_type == "docker":
        return await docker_preflight(settings, images)
    if settings.env_type == "modal":
        return await modal_preflight(settings, images)
    raise EnvError(f"unknown environment {settings.env_type!r}: choose one of {', '.join(ENV_TYPES)}")
