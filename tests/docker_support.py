"""Shared pieces of the Docker tests: the engine check, the test images and small helpers.

The tests need a real engine and ``mini-swe-runner-test:bookworm`` (``scripts/docker-engine.sh`` makes both).
Without them the tests are skipped, except on CI (``CI=true``) where they fail loudly.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import socket
import tempfile
import threading

import pytest

from environments import EnvSettings

TEST_IMAGE = "mini-swe-runner-test:bookworm"
VARIANT_IMAGE = "mini-swe-runner-test:variant"
"""TEST_IMAGE plus /etc/msr-variant and WORKDIR /srv/work: for per-task image override and WORKDIR tests."""


def _engine_problem() -> str | None:
    try:
        import docker

        client = docker.from_env()
        client.ping()
        client.images.get(TEST_IMAGE)
    except Exception as exc:  # noqa: BLE001 - any failure means "no usable engine"
        return (
            f"no usable Docker engine or image {TEST_IMAGE} ({type(exc).__name__}: {exc}); run scripts/docker-engine.sh"
        )
    return None


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Use with ``pytest.mark.usefixtures``: skips (fails on CI) unless a live engine has the test image."""
    problem = _engine_problem()
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {problem}", pytrace=False)
        pytest.skip(problem)


@functools.cache
def engine():
    """A docker SDK client of the test engine, for looking at containers from outside."""
    import docker

    return docker.from_env()


@functools.cache
def variant_image() -> str:
    """A second local image, derived from the test image without any registry; built once."""
    import docker

    try:
        engine().images.get(VARIANT_IMAGE)
        return VARIANT_IMAGE
    except docker.errors.ImageNotFound:
        pass
    container = engine().containers.run(
        TEST_IMAGE, ["bash", "-c", "mkdir -p /srv/work && echo variant > /etc/msr-variant"], detach=True
    )
    try:
        container.wait(timeout=60)
        repository, tag = VARIANT_IMAGE.split(":")
        container.commit(repository=repository, tag=tag, changes=["WORKDIR /srv/work"])
    finally:
        container.remove(force=True)
    return VARIANT_IMAGE


PODMAN_SOCKET = os.environ.get("MSR_PODMAN_SOCKET", "/run/mini-swe-runner-podman.sock")
"""Where scripts/podman-engine.sh serves Podman's Docker-compatible API (with the test image imported)."""


def _podman_problem() -> str | None:
    try:
        import docker

        client = docker.DockerClient(base_url=f"unix://{PODMAN_SOCKET}")
        client.ping()
        client.images.get(TEST_IMAGE)
    except Exception as exc:  # noqa: BLE001 - any failure means "no usable Podman service"
        return f"no Podman service with {TEST_IMAGE} on {PODMAN_SOCKET} ({type(exc).__name__}: {exc}); run " + (
            "scripts/podman-engine.sh"
        )
    return None


@pytest.fixture
def podman_engine(monkeypatch) -> str:
    """DOCKER_HOST pointing at the Podman service for this test (skips, or fails on CI, without one)."""
    problem = _podman_problem()
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {problem}", pytrace=False)
        pytest.skip(problem)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{PODMAN_SOCKET}")
    return PODMAN_SOCKET


@functools.cache
def podman():
    """A docker SDK client of the Podman service, for looking at its containers from outside."""
    import docker

    return docker.DockerClient(base_url=f"unix://{PODMAN_SOCKET}")


def docker_settings(**overrides) -> EnvSettings:
    """Settings for one test: the local test image, never pull, a run id of its own."""
    values = {"env_type": "docker", "image": TEST_IMAGE, "pull": "never", "run_id": f"test{secrets.token_hex(4)}"}
    values.update(overrides)
    return EnvSettings(**values)


def run_containers(run_id: str, client=None) -> list[str]:
    """Names of the containers (running or not) labelled with ``run_id``, from one list call (``containers.list()``
    inspects each container in a second request, which fails when one is removed in between)."""
    listed = (client or engine()).api.containers(all=True, filters={"label": f"mini-swe-runner.run-id={run_id}"})
    return [c["Names"][0].lstrip("/") for c in listed]


SWE_BASE_IMAGE = "mini-swe-runner-test:swe"
"""TEST_IMAGE plus git, python3 and pytest (from Debian's archive): the base of the miniature SWE-bench images."""


@functools.cache
def swe_base_image() -> str:
    """Built once per engine from TEST_IMAGE with apt-get (the Debian mirror the test image itself came from)."""
    import docker

    try:
        engine().images.get(SWE_BASE_IMAGE)
        return SWE_BASE_IMAGE
    except docker.errors.ImageNotFound:
        pass
    install = (
        "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
        "git python3 python-is-python3 python3-pytest && rm -rf /var/lib/apt/lists/* "
        "&& git config --system user.name swe && git config --system user.email swe@example.com"
    )
    container = engine().containers.run(TEST_IMAGE, ["bash", "-c", install], detach=True)
    try:
        status = container.wait(timeout=600)
        if status.get("StatusCode") != 0:
            raise RuntimeError(f"building {SWE_BASE_IMAGE} failed: {container.logs()[-2000:].decode(errors='replace')}")
        repository, tag = SWE_BASE_IMAGE.split(":")
        container.commit(repository=repository, tag=tag)
    finally:
        container.remove(force=True)
    return SWE_BASE_IMAGE


def _put_files(container, files: dict[str, str]) -> None:
    import io
    import tarfile

    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"testbed/{path}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    container.put_archive("/", archive.getvalue())


def swe_instance_image(name: str, files: dict[str, str], leftovers: dict[str, str] | None = None) -> tuple[str, str]:
    """An image of ``files`` committed as a git repository in /testbed (its WORKDIR), as SWE-bench images are;
    returns (image, base_commit). The commit's dates are fixed, so the same files give the same commit.
    ``leftovers`` are written after the commit and left uncommitted (what an install step leaves behind)."""
    image = f"mini-swe-runner-test:swe-{name}"
    container = engine().containers.run(swe_base_image(), ["sleep", "infinity"], detach=True)
    try:
        _put_files(container, files)
        commit = (
            "cd /testbed && git init -q && git add -A && "
            "GIT_AUTHOR_DATE=2020-01-01T00:00:00Z GIT_COMMITTER_DATE=2020-01-01T00:00:00Z git commit -qm base && "
            "git rev-parse HEAD"
        )
        result = container.exec_run(["bash", "-c", commit])
        if result.exit_code != 0:
            raise RuntimeError(f"building {image} failed: {result.output.decode(errors='replace')}")
        base_commit = result.output.decode().strip().splitlines()[-1]
        if leftovers:
            _put_files(container, leftovers)
        repository, tag = image.split(":")
        container.commit(repository=repository, tag=tag, changes=["WORKDIR /testbed"])
    finally:
        container.remove(force=True)
    return image, base_commit


class HeldCreations:
    """A relay in front of the Docker engine's socket that holds every container creation until :meth:`release`
    (or ``hold_for`` seconds): a test acts while a task's container is being made. Point DOCKER_HOST at ``url``.

    With ``fail`` a released creation is answered with an HTTP 500 of the relay's own instead of reaching the
    engine: a start that fails at a moment the test chose. Everything else passes through unchanged (a request
    that upgrades its connection, as exec does, turns that connection into a plain byte pipe)."""

    def __init__(self, hold_for: float = 20.0, fail: bool = False):
        self._directory = tempfile.mkdtemp(prefix="msr-relay-")  # short: a socket's path has at most 107 bytes
        self.path = f"{self._directory}/docker.sock"
        self.engine_path = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://")
        self.hold_for = hold_for
        self.fail = fail
        self.holding = threading.Event()
        """A creation is held right now."""
        self.held = 0
        """Creations held so far."""
        self.let_go = 0
        """Creations let go so far (passed on to the engine, or refused)."""
        self._released = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def release(self) -> None:
        self._released.set()

    def __enter__(self) -> HeldCreations:
        self._listener.bind(self.path)
        self._listener.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._listener.close()
        shutil.rmtree(self._directory, ignore_errors=True)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            engine_side = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            engine_side.connect(self.engine_path)
            threading.Thread(target=self._pipe, args=(engine_side, client), daemon=True).start()
            threading.Thread(target=self._requests, args=(client, engine_side), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _requests(self, client: socket.socket, engine_side: socket.socket) -> None:
        """Pass the client's requests on one by one, holding the creations."""
        buffered = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffered:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    buffered += chunk
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                if "content-length" not in headers:  # no body, or one we cannot frame (chunked): pipe the rest
                    engine_side.sendall(head + b"\r\n\r\n" + buffered)
                    return self._pipe(client, engine_side)
                length = int(headers["content-length"])
                while len(buffered) < length:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    buffered += chunk
                body, buffered = buffered[:length], buffered[length:]
                if "/containers/create" in lines[0]:
                    self.held += 1
                    self.holding.set()
                    self._released.wait(self.hold_for)
                    self.holding.clear()
                    self.let_go += 1
                    if self.fail:
                        answer = b'{"message": "the relay refused this creation"}'
                        client.sendall(
                            b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                            b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
                        )
                        continue
                engine_side.sendall(head + b"\r\n\r\n" + body)
                if "upgrade" in headers.get("connection", "").lower():  # exec's stream: raw bytes from here on
                    engine_side.sendall(buffered)
                    return self._pipe(client, engine_side)
        except OSError:
            pass
