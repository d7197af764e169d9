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
import contextlib
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

TIMEOUT_EXIT_CODE = 124
"""Exit code reported for a command that hit its timeout (the same as coreutils ``timeout``)."""

READ_CHUNK = 64 * 1024

SECRET_NAME_PATTERN = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE", re.IGNORECASE)
"""Environment variable names that never reach the agent's commands unless passed through by name."""

REDACTED = "[REDACTED]"


class EnvError(Exception):
    """A backend could not be prepared or used; the message is one line that names the fix."""


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


DEFAULT_IMAGE = "python:3.11-slim"
"""The image docker and modal tasks run in when neither the prompt nor --image names one."""


def task_image(settings: EnvSettings, prompt_image: str | None = None) -> str | None:
    """The image a task runs in: the prompt's, else --image, else the default; None for the local backend."""
    if settings.env_type == "local":
        return None
    return prompt_image or settings.image or DEFAULT_IMAGE


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

    def text(self, secret_values: tuple[str, ...] = ()) -> str:
        """The decoded output, secrets redacted, truncated to the limit with a marker counting what was left out."""
        dropped_bytes = self.total_bytes - len(self.head) - len(self.tail)
        if dropped_bytes == 0:
            text = bytes(self.head + self.tail).decode("utf-8", errors="replace")
            return truncate_text(text, self.limit_chars, secret_values)
        head = bytes(self.head).decode("utf-8", errors="replace")
        tail = bytes(self.tail).decode("utf-8", errors="replace")
        return _join_head_tail(head, tail, self.limit_chars, self.total_chars, secret_values)


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


def finish_output(
    collector: OutputCollector, cwd_marker: bytes | None, secret_values: tuple[str, ...]
) -> tuple[str, str | None]:
    """Turn what a command printed into its final text, and pull out the cwd its wrapper reported.

    Every backend ends here, so they all merge, decode, truncate and redact the same way.
    """
    new_cwd = None
    if cwd_marker:
        new_cwd = _take_cwd_marker(collector, cwd_marker)
    return collector.text(secret_values), new_cwd


def _take_cwd_marker(collector: OutputCollector, marker: bytes) -> str | None:
    # The wrapper prints "\n<marker><pwd>\n" last. When nothing was dropped, head and tail are one contiguous
    # stream and the line may straddle them: join them first. Otherwise the tail holds at least the last
    # keep_bytes of output, so the short line lies wholly inside it.
    if collector.tail and collector.total_bytes == len(collector.head) + len(collector.tail):
        collector.head += collector.tail
        collector.tail.clear()
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


def secret_values_from_environ(extra: tuple[str, ...] = (), environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """Values of the runner's secret-looking variables long enough to be worth redacting, plus ``extra`` (the API
    key), longest first so a secret containing another is replaced whole."""
    environ = os.environ if environ is None else environ
    found = {v for k, v in environ.items() if is_secret_name(k) and len(v) >= 8} | set(extra)
    return tuple(sorted(found - {""}, key=len, reverse=True))


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


def sandbox_environ(env_vars: tuple[str, ...]) -> dict[str, str]:
    """What a sandbox's commands see: the agent defaults plus only the host variables named by the user."""
    environ = dict(AGENT_ENV_DEFAULTS)
    environ.update({name: os.environ[name] for name in env_vars if name in os.environ})
    return environ


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
        loop = asyncio.get_running_loop()
        collector = OutputCollector(self.settings.max_output_chars)
        # A plain Popen watched through a pidfd and a raw pipe costs about half of asyncio's subprocess
        # machinery (which also starts a watcher thread per child on 3.11), and the exit and the end of output
        # stay separate events: a background child (`server &`) may hold the pipe open long after bash exits.
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        try:
            proc = subprocess.Popen(
                wrapped_argv(command, self.cwd, self._marker),
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=subprocess.STDOUT,
                cwd=self.base,
                env=self._environ,
                process_group=0,  # its own group, so a timeout can kill the whole tree (and vfork stays usable)
            )
        except OSError as exc:
            os.close(read_fd)
            return ExecResult(output="", exit_code=-1, error=f"could not start bash: {exc}")
        finally:
            os.close(write_fd)
        self._process_groups.add(proc.pid)
        output_done = _pump_pipe(loop, read_fd, collector)
        exited = _exit_future(loop, proc)
        timed_out = False
        try:
            try:
                await asyncio.wait_for(asyncio.shield(exited), timeout)
            except TimeoutError:
                timed_out = True
                _kill_group(proc.pid)
                await exited
            try:  # bash is gone; drain what is left, briefly if a background child keeps the pipe open
                await asyncio.wait_for(asyncio.shield(output_done), 2.0 if timed_out else 0.2)
            except TimeoutError:
                pass
        finally:
            if not exited.done():  # cancelled mid-command (task timeout, Ctrl-C): leave nothing running
                _kill_group(proc.pid)
            loop.remove_reader(read_fd)
            os.close(read_fd)
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


def _pump_pipe(loop: asyncio.AbstractEventLoop, read_fd: int, collector: OutputCollector) -> asyncio.Future:
    """Feed everything readable on ``read_fd`` to ``collector``; the future is done at end of file."""
    done = loop.create_future()

    def on_readable() -> None:
        try:
            chunk = os.read(read_fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            collector.feed(chunk)
            return
        loop.remove_reader(read_fd)
        if not done.done():
            done.set_result(None)

    loop.add_reader(read_fd, on_readable)
    return done


def _exit_future(loop: asyncio.AbstractEventLoop, proc: subprocess.Popen) -> asyncio.Future:
    """Done (and the child reaped) when ``proc`` exits, without a thread where the kernel has pidfds."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): a thread waits instead
        return asyncio.ensure_future(asyncio.to_thread(proc.wait))
    exited = loop.create_future()

    def on_exit() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        returncode = proc.wait()
        if not exited.done():
            exited.set_result(returncode)

    loop.add_reader(pidfd, on_exit)
    return exited


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------------------------------
# Docker backend
# ---------------------------------------------------------------------------------------------------------------


DOCKER_LABEL = "mini-swe-runner"
"""Every container we create carries ``mini-swe-runner=1`` plus the ``mini-swe-runner.*`` labels below."""

DOCKER_KILL_GRACE = 2.0
"""Seconds between the in-container SIGTERM at the timeout and the SIGKILL that follows."""

DOCKER_CLIENT_GRACE = DOCKER_KILL_GRACE + 4.0
"""Past timeout + this, we stop waiting for an exec even if the in-container timeout failed to end it.
Covers the kill grace, the engine's own I/O drain after exit (about 2 s) and API latency."""

# What a root `apt-get install` / `pip install` needs: apt drops to the _apt user (SETUID, SETGID), writes
# root-only dirs (DAC_OVERRIDE), and dpkg sets owners and setuid bits (CHOWN, FOWNER, FSETID). KILL lets root
# signal processes of other users; NET_BIND_SERVICE lets a root server listen on port 80.
HARDENED_CAPS = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETUID", "SETGID", "KILL", "NET_BIND_SERVICE"]

DAEMON_FIX = "start it (sudo systemctl start docker, or run dockerd) or check DOCKER_HOST"

_docker_clients: dict[str, object] = {}


def docker_client():
    """One shared client per DOCKER_HOST: its connection pool serves every task's thread."""
    import docker

    key = os.environ.get("DOCKER_HOST", "")
    client = _docker_clients.get(key)
    if client is None:
        try:
            # A pool at least as large as the runner's thread pool, or urllib3 warns "Connection pool is full".
            # from_env asks the daemon for its API version, so no daemon fails here, at once.
            client = docker.from_env(max_pool_size=256)
        except docker.errors.DockerException as exc:
            raise EnvError(f"cannot reach the Docker daemon ({_one_line(exc)}): {DAEMON_FIX}") from None
        _docker_clients[key] = client
    return client


class DockerEnvironment:
    """Each task gets its own fresh container, removed on close; commands run in it with ``docker exec``."""

    def __init__(self, settings: EnvSettings, image: str | None = None, cwd: str | None = None, task_id: str = ""):
        self.settings = settings
        self.image = task_image(settings, image)
        self.requested_cwd = cwd or settings.cwd
        self.task_id = task_id
        self.name = f"msr-{settings.run_id}-{_name_part(task_id)}{secrets.token_hex(3)}"
        self.container_id: str | None = None
        self.cwd: str | None = None
        self._marker = new_cwd_marker()
        self._starting: asyncio.Future | None = None
        self._closed = False

    async def start(self) -> None:
        if self._starting is None:
            self._starting = asyncio.ensure_future(asyncio.to_thread(self._start_sync))
        # Shielded: a cancelled task leaves the creation running so close() can wait for it and remove it.
        await asyncio.shield(self._starting)

    def _start_sync(self) -> None:
        if self._closed:
            raise EnvError("environment already closed")
        if self.requested_cwd and not self.requested_cwd.startswith("/"):
            raise EnvError(f"cwd {self.requested_cwd!r} must be an absolute path inside the container")
        api = docker_client().api
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
        if self._closed:  # closed or abandoned while we were creating: leave nothing behind
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

    async def execute(self, command: str, timeout: float) -> ExecResult:
        if self.container_id is None or self.cwd is None:
            await self.start()
        return await asyncio.to_thread(self._execute_sync, command, timeout)

    def _execute_sync(self, command: str, timeout: float) -> ExecResult:
        if self._closed:
            raise EnvError(f"container {self.name} was already removed")
        # sh merges stderr into stdout inside the container: the engine streams them on two pipes, which would
        # lose their order. coreutils timeout puts the command in its own process group and signals the whole
        # group: the command's whole tree dies inside the container, and the container stays usable.
        limits = ["-k", f"{DOCKER_KILL_GRACE:g}", f"{max(timeout, 0.01):.3f}"]
        argv = ["sh", "-c", 'exec "$@" 2>&1', "sh", "timeout", *limits, *wrapped_argv(command, self.cwd, self._marker)]
        collector = OutputCollector(self.settings.max_output_chars)
        started = time.monotonic()
        exit_code = self._exec_sync(argv, timeout + DOCKER_CLIENT_GRACE, collector)
        elapsed = time.monotonic() - started
        text, new_cwd = finish_output(collector, self._marker.encode(), self.settings.secret_values)
        # 124: the command got SIGTERM at the timeout; 137: it ignored it and got SIGKILL; None: we gave up waiting.
        if exit_code is None or (exit_code in (124, 137) and elapsed >= timeout):
            return timed_out_result(text, timeout)
        if new_cwd:
            self.cwd = new_cwd
        return ExecResult(output=text, exit_code=exit_code)

    def _exec_sync(self, argv: list[str], wait: float, collector: OutputCollector) -> int | None:
        """Run argv in the container, streaming its merged output into ``collector``; returns the exit code, or
        None when it did not end within ``wait`` seconds (its process group is then killed)."""
        import docker

        api = docker_client().api
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

    async def close(self) -> None:
        self._closed = True
        starting, self._starting = self._starting, None
        if starting is None:
            return  # never started, or already closed
        await asyncio.wait([starting])  # a creation still in flight (start was cancelled): remove what it makes
        if not starting.cancelled():
            starting.exception()  # retrieved here: start() already raised it, or nobody is left to
        if self.container_id:
            await asyncio.to_thread(self._remove)

    def abandon(self) -> None:
        self._closed = True
        try:
            self._remove()
        except Exception:  # best effort: the reaper removes what is left at the next run
            pass

    def _remove(self) -> None:
        import docker

        target, self.container_id = self.container_id or self.name, None  # by name while its creation is in flight
        api = docker_client().api
        try:
            api.remove_container(target, force=True)
        except docker.errors.NotFound:
            pass
        except Exception as exc:
            if getattr(exc, "status_code", None) != 409:  # 409: a removal is already in progress
                raise _as_env_error(exc, f"could not remove container {self.name}") from None


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
        host, _, rest = volume.partition(":")
        container, _, mode = rest.partition(":")
        if not host or not container.startswith("/") or mode not in ("", "ro", "rw"):
            raise EnvError(f"volume {volume!r} is not host:container[:ro] with an absolute container path")
        host = os.path.abspath(os.path.expanduser(host))
        if not os.path.exists(host):
            raise EnvError(f"volume {volume!r}: {host} does not exist on this machine")
        binds.append(f"{host}:{container}:{mode or 'rw'}")
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
    """Daemon reachable, options valid, every image present (pulled per --pull); stale containers reaped."""
    await asyncio.to_thread(_docker_preflight_sync, settings, images)


def _docker_preflight_sync(settings: EnvSettings, images: set[str]) -> None:
    import docker
    from docker.utils import parse_bytes, parse_repository_tag

    if settings.pull not in ("missing", "always", "never"):
        raise EnvError(f"--pull {settings.pull!r} is not valid: choose missing, always or never")
    if settings.memory:
        try:
            parse_bytes(settings.memory)
        except docker.errors.DockerException:
            raise EnvError(f"--memory {settings.memory!r} is not a size like 512m or 2g") from None
    if settings.cpus is not None and not (isinstance(settings.cpus, int | float) and settings.cpus > 0):
        raise EnvError(f"--cpus {settings.cpus!r} must be a positive number")
    _volume_binds(settings.volumes)
    client = docker_client()
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
    for image in sorted(i for i in images if i) or [settings.image or DEFAULT_IMAGE]:
        present = True
        try:
            client.api.inspect_image(image)
        except docker.errors.ImageNotFound:
            present = False
        if settings.pull == "always" or (settings.pull == "missing" and not present):
            repository, tag = parse_repository_tag(image)
            try:
                client.api.pull(repository, tag=tag or "latest")
            except docker.errors.APIError as exc:
                raise EnvError(
                    f"image {image} could not be pulled ({_one_line(exc)}): check its name, "
                    f"or build it (docker build -t {image} .)"
                ) from None
        elif not present:
            raise EnvError(
                f"image {image} is not present locally and --pull never forbids pulling: "
                f"docker pull {image}, docker build -t {image} ., or use --pull missing"
            )


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
# Modal backend
# ---------------------------------------------------------------------------------------------------------------

MODAL_KILL_GRACE = 5
"""Seconds between coreutils timeout's TERM and its KILL inside the sandbox."""
MODAL_DRAIN_SECONDS = 2.0
"""How long output may still arrive once the command has exited (a background child may hold stdout open)."""
MODAL_MAX_ARGV_CHARS = 2**16
"""Modal rejects an exec whose arguments add up to more than this (ARG_MAX)."""
MODAL_TIMEOUT_CODES = (-1, 124, 137)
"""How a timed-out command comes back: Modal's own deadline (-1), coreutils timeout's TERM (124) or KILL (137)."""
MODAL_ABANDON_WAIT = 3.0
"""The longest one abandon() waits for Modal to confirm a terminate."""
MODAL_SWEEP_WAIT = 5.0
"""The longest close() looks for a sandbox whose creation never handed it to us (a hung network costs this)."""
MODAL_SWEEP_INTERVAL = 1.0
"""How often close() looks again while Modal may still be making that sandbox."""


class ModalEnvironment:
    """Each task in a Modal Sandbox of its own, from a registry image or a Modal image id (im-...).

    Only the async (``.aio``) API is used, so hundreds of tasks can share one event loop.
    """

    def __init__(
        self, settings: EnvSettings, image: str | None = None, cwd: str | None = None, task_id: str = "", sdk=None
    ):
        self.settings = settings
        self.image = task_image(settings, image)
        self.requested_cwd = cwd or settings.cwd
        self.task_id = task_id
        # "." until the first command reports the absolute directory the image starts in.
        self.cwd = self.requested_cwd or "."
        self.sandbox = None
        self.closed = False
        self._sdk = sdk
        self._marker = new_cwd_marker()
        self._app = None
        # The tags of a sandbox Modal may have made without handing it to us (the creation timed out, was
        # cancelled or failed in flight); close() finds it by them. None once we hold the handle.
        self._unclaimed_tags: dict[str, str] | None = None

    async def start(self) -> None:
        if self.sandbox is not None:
            return
        if self.closed:
            raise EnvError("this Modal environment was closed; create a new one")
        if self.requested_cwd and not self.requested_cwd.startswith("/"):
            raise EnvError(f"Modal needs an absolute working directory, got {self.requested_cwd!r}")
        sdk = self._sdk = self._sdk or _import_modal()
        try:
            self.sandbox = await asyncio.wait_for(self._create(sdk), self.settings.startup_timeout)
            self._unclaimed_tags = None
        except TimeoutError:
            raise EnvError(
                f"no Modal sandbox for {self.image} within {self.settings.startup_timeout:g} s: Modal unreachable "
                "(check the network), out of capacity, or the image is slow to build"
            ) from None
        except sdk.exception.AuthError as exc:
            raise EnvError(f"Modal rejected the credentials: {_one_line(exc)}") from None
        except (sdk.exception.Error, OSError) as exc:
            raise EnvError(f"Modal sandbox for {self.image} could not be created: {_one_line(exc)}") from None

    async def _create(self, sdk):
        # Image.from_id/from_registry only describe the image (no I/O, no .aio needed); Sandbox.create resolves it.
        image = sdk.Image.from_id(self.image) if self.image.startswith("im-") else sdk.Image.from_registry(self.image)
        app = self._app = await sdk.App.lookup.aio(self.settings.modal_app, create_if_missing=True)
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
            tags=tags,
        )

    async def execute(self, command: str, timeout: float) -> ExecResult:
        if self.sandbox is None:
            await self.start()
        # coreutils timeout kills the command's whole process group in the sandbox; `exec "$@" 2>&1` merges
        # stderr into stdout in the order the command wrote them.
        argv = ["timeout", "-k", str(MODAL_KILL_GRACE), f"{timeout:.3f}", "bash", "-c", 'exec "$@" 2>&1', "bash"]
        argv += wrapped_argv(command, self.cwd, self._marker)
        if sum(len(arg) for arg in argv) > MODAL_MAX_ARGV_CHARS:
            error = f"command too long for Modal ({len(command)} characters; about {MODAL_MAX_ARGV_CHARS} fit)"
            return ExecResult(output=f"[{error}: write big files in several commands]", exit_code=-1, error=error)
        collector = OutputCollector(self.settings.max_output_chars)
        started = time.monotonic()
        error = None
        try:
            exit_code = await self._run(argv, collector, timeout)
        except TimeoutError:
            exit_code, error = -1, f"Modal did not start the command within {self.settings.startup_timeout:g} s"
        except (self._sdk.exception.Error, OSError) as exc:
            exit_code, error = -1, f"Modal sandbox failed: {_one_line(exc)}"
        text, new_cwd = finish_output(collector, self._marker.encode(), self.settings.secret_values)
        if error:
            return ExecResult(output=text, exit_code=exit_code, error=redact(error, self.settings.secret_values))
        # A timeout does not raise in Modal; only the exit code and the time taken tell.
        if exit_code in MODAL_TIMEOUT_CODES and time.monotonic() - started >= timeout:
            return timed_out_result(text, timeout)
        if new_cwd:
            self.cwd = new_cwd
        return ExecResult(output=text, exit_code=exit_code)

    async def _run(self, argv: list[str], collector: OutputCollector, timeout: float) -> int:
        # Modal's own exec deadline is a backstop that falls after coreutils' KILL.
        backstop = math.ceil(timeout) + 2 * MODAL_KILL_GRACE
        start = self.sandbox.exec.aio(*argv, text=False, timeout=backstop)  # bytes: text mode raises on bad UTF-8
        process = await asyncio.wait_for(start, self.settings.startup_timeout)
        reader = asyncio.ensure_future(_pump_modal_output(process, collector))
        try:
            try:
                exit_code = await asyncio.wait_for(process.wait.aio(), backstop + MODAL_KILL_GRACE)
            except TimeoutError:
                exit_code = -1  # not even Modal's deadline came back: the command surely ran out of time
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), MODAL_DRAIN_SECONDS)
        finally:
            reader.cancel()
        return exit_code

    async def close(self) -> None:
        self.closed = True
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
    memory_mib(settings.memory)
    if settings.cwd and not settings.cwd.startswith("/"):
        raise EnvError(f"--cwd {settings.cwd} must be an absolute path inside the Modal sandbox")
    # A task without an image of its own runs the run's image, else the default.
    for image in {image for image in images if image} | {settings.image or DEFAULT_IMAGE}:
        if any(c.isspace() for c in image):
            raise EnvError(f"invalid image {image!r}: give a registry tag like python:3.11-slim or a Modal id im-...")


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
