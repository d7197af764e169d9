"""A real image registry on 127.0.0.1 for the image tests: Debian's ``docker-registry`` (the CNCF distribution
registry), seeded with small images built from the test image, and a TCP relay in front of it that can slow the
registry down to a given bandwidth. No registry outside this machine is ever asked."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port
from docker_support import TEST_IMAGE, engine

REGISTRY_BINARY = "/usr/bin/docker-registry"
SEEDED = 12
"""Images in the seeded registry: msr/img0 ... msr/img11, tag v1, each with a layer of its own."""
LAYER_BYTES = 1_500_000
"""Random (incompressible) bytes in each image's own layer: what a pull of it downloads."""


class Registry:
    """``docker-registry serve`` on 127.0.0.1, storing under ``root``; can be stopped and started again."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.process: subprocess.Popen | None = None
        self.config = root / "config.yml"
        self.config.write_text(
            "version: 0.1\n"
            "log: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: '127.0.0.1:{self.port}'}}\n"
        )

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "registry.log", "ab"),  # noqa: SIM115 - the child owns it
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"docker-registry did not answer on {self.host}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


class Throttle:
    """A TCP relay on 127.0.0.1 to ``target``, passing at most ``bytes_per_second`` each way per connection."""

    def __init__(self, target: str, bytes_per_second: float):
        self.target_host, _, port = target.partition(":")
        self.target_port, self.rate = int(port), bytes_per_second
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((self.target_host, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        chunk = 16384
        try:
            while True:
                data = source.recv(chunk)
                if not data:
                    break
                sink.sendall(data)
                time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.listener.close()


def seeded_image(host: str, number: int, tag: str = "v1") -> str:
    return f"{host}/msr/img{number}:{tag}"


def seed(registry: Registry, count: int = SEEDED, layer_bytes: int = LAYER_BYTES) -> None:
    """Push ``count`` images, each the test image plus a layer of its own (/layer holding its number and random
    bytes), then forget them locally so that a run must pull them."""
    client = engine()
    for number in range(count):
        container = client.containers.run(
            TEST_IMAGE,
            ["bash", "-c", f"echo img{number} > /layer-id && head -c {layer_bytes} /dev/urandom > /layer"],
            detach=True,
        )
        try:
            container.wait(timeout=60)
            image = seeded_image(registry.host, number)
            repository, tag = image.rsplit(":", 1)
            container.commit(repository=repository, tag=tag)
        finally:
            container.remove(force=True)
        for line in client.api.push(repository, tag=tag, stream=True, decode=True):
            if "error" in line:
                raise RuntimeError(f"push of {image} failed: {line['error']}")
        client.api.remove_image(image)


def forget_local(*hosts: str) -> None:
    """Remove the seeded images named under ``hosts`` (a registry's and its relays') from the engine, so the next
    run pulls them again. Only those: another test session's registry on another port is left alone."""
    client = engine()
    prefixes = tuple(f"{host}/msr/img" for host in hosts)
    for image in client.api.images():
        for tag in image.get("RepoTags") or ():
            if tag.startswith(prefixes):
                try:
                    client.api.remove_image(tag, force=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass


def local_tags(prefix: str) -> set[str]:
    return {tag for image in engine().api.images() for tag in image.get("RepoTags") or () if tag.startswith(prefix)}


def _registry_problem() -> str | None:
    if not os.path.exists(REGISTRY_BINARY):
        return f"{REGISTRY_BINARY} is missing (apt-get install docker-registry; scripts/test does)"
    return None


@functools.cache
def _seeded_registry(root: str) -> Registry:
    registry = Registry(Path(root))
    registry.start()
    seed(registry)
    return registry


@pytest.fixture(scope="session")
def registry(docker_engine, tmp_path_factory) -> Registry:
    """The seeded registry, running (a test that stops it starts it again)."""
    problem = _registry_problem()
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {problem}", pytrace=False)
        pytest.skip(problem)
    registry = _seeded_registry(str(tmp_path_factory.mktemp("registry")))
    yield registry
    registry.stop()
    forget_local(registry.host)
    shutil.rmtree(registry.root, ignore_errors=True)
