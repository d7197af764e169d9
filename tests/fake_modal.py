"""A stand-in for the ``modal`` package at the SDK boundary: the same names and call shapes, real bash behind them.

Pass a :class:`FakeModal` as ``sdk=`` to ``ModalEnvironment``. A sandbox is a directory on this machine (its
``workdir``, or a fresh directory under ``root``); ``exec`` runs the argv there as a local process. What it copies
from the real SDK (modal 1.6, read from its source):

- every network call has an ``.aio`` twin; the blocking form called inside a running event loop warns
  ``modal.exception.AsyncUsageWarning`` (``Image.from_registry``/``from_id`` do no I/O and are sync-only);
- ``exec(..., text=False)`` streams bytes; ``text=True`` decodes strictly, so invalid UTF-8 raises;
- past its ``timeout`` an exec is killed, its streams just end and ``wait()`` returns -1: nothing raises;
- a terminated sandbox rejects ``exec`` (``ConflictError``); ``workdir`` must be absolute; argv is at most 64 KiB;
- once a create request has reached Modal the sandbox gets made even if the caller stops waiting (times out, is
  cancelled): it carries its tags from the start and ``Sandbox.list(app_id=, tags=)`` finds it;
- ``Sandbox.list`` yields the running sandboxes having at least the given tags (``.aio``: an async generator,
  the blocking form: a generator);
- the exceptions are the real ``modal.exception`` classes;
- optional, off by default (see :class:`FakeModal`): Modal's latencies (an exec's round trip, a sandbox's creation,
  each with a long tail) and its per-workspace creation rate limit, a token bucket; a creation over it raises
  ``ResourceExhaustedError``, the class the SDK maps gRPC's RESOURCE_EXHAUSTED to (``modal/_grpc_client.py``) and
  raises when the server attaches no retry policy (``modal/_utils/grpc_utils.py``).

Every call is checked against the installed SDK's signature when it is made (a keyword the real SDK lacks is a
``TypeError`` here too) and recorded in ``calls`` for the contract test.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import functools
import inspect
import math
import os
import random
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpclib
import modal
import modal.container_process
import modal.exception
import modal.io_streams

# Where each fake name lives in the real SDK.
REAL_OWNERS = {
    "App": modal.App,
    "Image": modal.Image,
    "Sandbox": modal.Sandbox,
    "ContainerProcess": modal.container_process.ContainerProcess,
    "StreamReader": modal.io_streams.StreamReader,
}
ARG_MAX_CHARS = 2**16
CHUNK = 64 * 1024


def real_function(name: str):
    """The installed SDK's object for a recorded name such as ``"Sandbox.exec.aio"``."""
    owner, *attrs = name.split(".")
    obj = REAL_OWNERS[owner]
    for attr in attrs:
        obj = getattr(obj, attr)
    return obj


@functools.cache
def real_signature(name: str) -> inspect.Signature:
    return inspect.signature(real_function(name))


def bind_real(name: str, args: tuple, kwargs: dict) -> inspect.BoundArguments:
    """Bind a call to the real signature; raises TypeError when the real SDK would reject its shape."""
    signature = real_signature(name)
    first = next(iter(signature.parameters), None)
    # Methods read off the class still list self/cls (synchronicity keeps cls even on classmethods).
    placeholder = (object(),) if first in ("self", "cls") else ()
    return signature.bind(*placeholder, *args, **kwargs)


@dataclass
class LongTail:
    """A latency drawn from a log-normal distribution given by its median and 99th percentile (seconds)."""

    median: float
    p99: float
    seed: int = 0
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def __call__(self) -> float:
        sigma = math.log(self.p99 / self.median) / 2.326  # z of the 99th percentile
        return self.median * math.exp(self._random.gauss(0.0, sigma))


@dataclass
class CreationLimit:
    """Modal's per-workspace sandbox creation limit as a token bucket: ``rate`` per second, ``burst`` at most."""

    rate: float = 30.0
    burst: int = 30
    _tokens: float = field(init=False, default=0.0)
    _last: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self._tokens, self._last = float(self.burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def rate_limit_error() -> modal.exception.ResourceExhaustedError:
    """What the SDK raises for a RESOURCE_EXHAUSTED answer, built the way ``grpc_error_to_modal_exception`` does."""
    message = "Too many sandbox creation requests: rate limit exceeded, please retry later"
    error = modal.exception.ResourceExhaustedError(message)
    error._grpc_message, error._grpc_status, error._grpc_details = message, grpclib.Status.RESOURCE_EXHAUSTED, None
    return error


class _Twin:
    """A callable with an ``.aio`` coroutine twin, like synchronicity's FunctionWithAio."""

    def __init__(self, fake: FakeModal, name: str, impl):
        self.fake, self.name, self.impl = fake, name, impl

    def __call__(self, *args, **kwargs):
        self.fake.record(self.name, args, kwargs)
        _warn_if_in_event_loop(self.name)
        return _in_own_loop(self.impl(*args, **kwargs))

    async def aio(self, *args, **kwargs):
        self.fake.record(self.name + ".aio", args, kwargs)
        return await self.impl(*args, **kwargs)


class _TwinMethod:
    """A method's twins, made at each access as synchronicity's method wrappers are. An instance holding a twin of
    its own bound method would be a reference cycle: each sandbox and process garbage for the cycle collector instead
    of freed when dropped, which is the fake's heap, not the SDK's, in a benchmark's collections. An instance
    attribute of the same name still overrides it (a test's hanging terminate)."""

    def __init__(self, name: str, impl: str):
        self.name, self.impl = name, impl

    def __get__(self, owner, owner_type=None):
        if owner is None:
            return self
        return _Twin(owner.fake, self.name, getattr(owner, self.impl))


class _GeneratorTwin:
    """An async generator function's twins: ``.aio(...)`` is the async generator, the blocking call a generator."""

    def __init__(self, fake: FakeModal, name: str, impl):
        self.fake, self.name, self.impl = fake, name, impl

    def __call__(self, *args, **kwargs):
        self.fake.record(self.name, args, kwargs)
        _warn_if_in_event_loop(self.name)
        return self._items(args, kwargs)

    def _items(self, args: tuple, kwargs: dict):
        yield from _in_own_loop(_collect(self.impl(*args, **kwargs)))

    def aio(self, *args, **kwargs):
        self.fake.record(self.name + ".aio", args, kwargs)
        return self.impl(*args, **kwargs)


def _warn_if_in_event_loop(name: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    warnings.warn(f"blocking {name} called inside an event loop", modal.exception.AsyncUsageWarning, 3)


def _in_own_loop(coroutine):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a loop of its own, as synchronicity has
        return pool.submit(asyncio.run, coroutine).result()


async def _collect(items) -> list:
    return [item async for item in items]


class FakeApp:
    def __init__(self, name: str, app_id: str):
        self.name, self.app_id = name, app_id


class FakeImage:
    def __init__(self, kind: str, ref: str):
        self.kind, self.ref = kind, ref  # kind: "registry" or "id"


class FakeStream:
    """A process's stdout or stderr: ``async for`` yields chunks until EOF or the exec deadline."""

    def __init__(self, process: FakeProcess, fd: int, text: bool):
        self.process, self.fd, self.text = process, fd, text

    def __aiter__(self):
        self.process.fake.record("StreamReader.__aiter__", (), {})
        return self._chunks()

    async def _chunks(self):
        fd, self.fd = self.fd, None
        if fd is None:
            return
        reader = asyncio.StreamReader(limit=CHUNK)
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
        )
        decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(reader.read(CHUNK), self.process.remaining())
                except TimeoutError:
                    self.process.expire()
                    return
                if not chunk:
                    break
                yield decoder.decode(chunk) if self.text else chunk
            if self.text and (rest := decoder.decode(b"", final=True)):
                yield rest
        finally:
            transport.close()

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


class FakeProcess:
    def __init__(self, fake: FakeModal, proc: subprocess.Popen, fds: tuple[int, int], timeout, text: bool):
        self.fake, self.proc = fake, proc
        self.deadline = time.monotonic() + timeout if timeout else math.inf
        self.expired = False
        self.stdout = FakeStream(self, fds[0], text)
        self.stderr = FakeStream(self, fds[1], text)

    wait = _TwinMethod("ContainerProcess.wait", "_wait")

    def remaining(self) -> float | None:
        return None if self.deadline == math.inf else max(self.deadline - time.monotonic(), 0)

    def expire(self) -> None:
        self.expired = True
        _kill_group(self.proc.pid)

    async def _wait(self) -> int:
        while (code := self.proc.poll()) is None and time.monotonic() < self.deadline:
            await asyncio.sleep(0.01)
        if code is None or self.expired:
            self.expire()
            return -1
        return 128 - code if code < 0 else code  # killed by a signal: 128 + signal, as the real SDK reports


class ScriptedStream:
    """A stream whose bytes were decided without running anything (``FakeModal.exec_script``)."""

    def __init__(self, fake: FakeModal, data: bytes, text: bool):
        self.fake, self.data, self.text = fake, data, text

    def __aiter__(self):
        self.fake.record("StreamReader.__aiter__", (), {})
        return self._chunks()

    async def _chunks(self):
        data, self.data = self.data, b""
        for start in range(0, len(data), CHUNK):
            yield data[start : start + CHUNK].decode() if self.text else data[start : start + CHUNK]

    def close(self) -> None:
        self.data = b""


class ScriptedProcess:
    def __init__(self, fake: FakeModal, output: bytes, exit_code: int, text: bool):
        self.fake, self.exit_code = fake, exit_code
        self.stdout = ScriptedStream(fake, output, text)
        self.stderr = ScriptedStream(fake, b"", text)

    wait = _TwinMethod("ContainerProcess.wait", "_wait")

    async def _wait(self) -> int:
        return self.exit_code


class FakeSandbox:
    def __init__(self, fake: FakeModal, root: str, create_kwargs: dict):
        self.fake, self.root, self.create_kwargs = fake, root, create_kwargs
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": root, **(create_kwargs["env"] or {})}
        self.app: FakeApp = create_kwargs["app"]
        self.tags: dict[str, str] = dict(create_kwargs.get("tags") or {})
        self.terminated = False
        self.processes: list[FakeProcess] = []

    exec = _TwinMethod("Sandbox.exec", "_exec")
    terminate = _TwinMethod("Sandbox.terminate", "_terminate")
    get_tags = _TwinMethod("Sandbox.get_tags", "_get_tags")

    async def _get_tags(self) -> dict[str, str]:
        return dict(self.tags)

    async def _exec(self, *args, timeout=None, workdir=None, env=None, text=True, **_):  # the rest: checked, unused
        if self.fake.exec_latency is not None:
            await asyncio.sleep(self.fake.exec_latency())  # the round trip to Modal and into the sandbox
        if self.terminated:
            raise modal.exception.ConflictError("Sandbox already finished")
        if workdir is not None and not workdir.startswith("/"):
            raise modal.exception.InvalidError(f"workdir must be an absolute path, got: {workdir}")
        if sum(len(arg) for arg in args) > ARG_MAX_CHARS:
            raise modal.exception.InvalidError("Total length of CMD arguments cannot exceed 65536 bytes (ARG_MAX).")
        if self.fake.exec_script is not None:
            output, exit_code = self.fake.exec_script(args)
            return ScriptedProcess(self.fake, output, exit_code, text)
        # Spawned from a thread, so 64 forks at once do not stall the event loop (a real exec is an RPC), on pipes
        # of our own, so wait() returns when the process exits even if a background child keeps stdout open.
        (out_read, out_write), (err_read, err_write) = os.pipe(), os.pipe()
        try:
            proc = await asyncio.to_thread(
                subprocess.Popen,
                args,
                stdin=subprocess.DEVNULL,
                stdout=out_write,
                stderr=err_write,
                cwd=workdir or self.root,
                env={**self.env, **(env or {})},
                start_new_session=True,
            )
        finally:
            os.close(out_write)
            os.close(err_write)
        process = FakeProcess(self.fake, proc, (out_read, err_read), timeout, text)
        self.processes.append(process)
        return process

    async def _terminate(self, *, wait: bool = False) -> None:
        if not self.terminated and not self.fake.keep_history:
            self.fake.sandboxes.remove(self)
        self.terminated = True
        for process in self.processes:
            _kill_group(process.proc.pid)
            process.stdout.close()  # the fds of streams nobody read
            process.stderr.close()


class FakeModal:
    """One fake ``modal`` module.

    Knobs: ``create_delay``, how long Modal takes to make a sandbox once asked (math.inf: never), whether or not the
    caller still waits; ``reply_delay``, how much later the handle reaches the caller (math.inf: never);
    ``create_error``; ``list_delay`` (math.inf hangs) and ``list_error`` for ``Sandbox.list``.

    Modal at scale (all off by default): ``create_latency`` and ``exec_latency``, callables drawing seconds (a
    :class:`LongTail`), added to every creation and every exec; ``creation_limit``, a :class:`CreationLimit` every
    ``Sandbox.create`` must get a token from, else it raises :func:`rate_limit_error`; ``exec_script``, a callable
    ``argv -> (output bytes, exit code)`` that answers execs without starting a process (a thousand sandboxes of
    real bash are more than a 2-core machine can host beside the runner); ``keep_history = False`` still checks every
    call against the real signatures but keeps no log of them and forgets terminated sandboxes, as the real SDK
    does (a benchmark's heap is then the runner's, not the fake's). ``created_at`` (monotonic times of the accepted
    creations) and ``refused`` count what the limit saw.
    """

    exception = modal.exception

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = str(root or tempfile.mkdtemp(prefix="fake-modal-"))
        Path(self.root).mkdir(parents=True, exist_ok=True)
        self.calls: list[tuple[str, tuple, dict]] = []
        self.sandboxes: list[FakeSandbox] = []
        self.apps: dict[str, FakeApp] = {}
        self.create_delay = 0.0
        self.reply_delay = 0.0
        self.create_error: BaseException | None = None
        self.list_delay = 0.0
        self.list_error: BaseException | None = None
        self.create_latency: Callable[[], float] | None = None
        self.exec_latency: Callable[[], float] | None = None
        self.creation_limit: CreationLimit | None = None
        self.exec_script: Callable[[tuple[str, ...]], tuple[bytes, int]] | None = None
        self.keep_history = True
        self.created_at: list[float] = []
        self.refused = 0
        self._making: set[asyncio.Task] = set()  # creations Modal carries on with after the caller gave up
        self.App = type("App", (), {})()
        self.App.lookup = _Twin(self, "App.lookup", self._lookup)
        self.Image = type("Image", (), {})()
        self.Image.from_registry = self._from_registry
        self.Image.from_id = self._from_id
        self.Sandbox = type("Sandbox", (), {})()
        self.Sandbox.create = _Twin(self, "Sandbox.create", self._create)
        self.Sandbox.list = _GeneratorTwin(self, "Sandbox.list", self._list)

    def record(self, name: str, args: tuple, kwargs: dict) -> None:
        bind_real(name, args, kwargs)
        if self.keep_history:
            self.calls.append((name, args, kwargs))

    def called(self, name: str) -> list[dict]:
        return [kwargs for call, _, kwargs in self.calls if call == name]

    def _from_registry(self, tag: str, *args, **kwargs) -> FakeImage:
        self.record("Image.from_registry", (tag, *args), kwargs)
        return FakeImage("registry", tag)

    def _from_id(self, image_id: str, *args, **kwargs) -> FakeImage:
        self.record("Image.from_id", (image_id, *args), kwargs)
        return FakeImage("id", image_id)

    async def _lookup(self, name: str, *, create_if_missing: bool = False, **_) -> FakeApp:
        if name not in self.apps:
            if not create_if_missing:
                raise modal.exception.NotFoundError(f"App '{name}' not found")
            self.apps[name] = FakeApp(name, f"ap-fake{len(self.apps)}")
        return self.apps[name]

    async def _create(self, *args, **kwargs) -> FakeSandbox:
        if self.create_error is not None:
            raise self.create_error
        if self.creation_limit is not None and not self.creation_limit.take():
            self.refused += 1
            raise rate_limit_error()
        self.created_at.append(time.monotonic())
        options = {"app": None, "image": None, "env": None, "workdir": None, "tags": None, **kwargs}
        if options["app"] is None:
            raise modal.exception.InvalidError("App is required")
        workdir = options["workdir"]
        if workdir is not None and not workdir.startswith("/"):
            raise modal.exception.InvalidError(f"workdir must be an absolute path, got: {workdir}")
        # The request has reached Modal: the sandbox gets made even if the caller stops waiting for it.
        making = asyncio.ensure_future(self._make_sandbox(options))
        self._making.add(making)
        making.add_done_callback(self._making.discard)
        sandbox = await asyncio.shield(making)
        await _sleep(self.reply_delay)
        return sandbox

    async def _make_sandbox(self, options: dict) -> FakeSandbox:
        await _sleep(self.create_delay + (self.create_latency() if self.create_latency is not None else 0.0))
        root = options["workdir"] or tempfile.mkdtemp(prefix="sandbox-", dir=self.root)
        Path(root).mkdir(parents=True, exist_ok=True)
        sandbox = FakeSandbox(self, root, options)
        self.sandboxes.append(sandbox)
        return sandbox

    async def _list(self, *, app_id: str | None = None, tags: dict[str, str] | None = None, client=None):
        if self.list_error is not None:
            raise self.list_error
        await _sleep(self.list_delay)
        for sandbox in list(self.sandboxes):  # running ones only, as the real list (include_finished=False)
            if sandbox.terminated or (app_id is not None and sandbox.app.app_id != app_id):
                continue
            if (tags or {}).items() <= sandbox.tags.items():
                yield sandbox


async def _sleep(seconds: float) -> None:
    if seconds == math.inf:
        await asyncio.Event().wait()
    await asyncio.sleep(seconds)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
