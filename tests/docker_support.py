"""Shared pieces of the Docker tests: the engine check, the test images and small helpers.

The tests need a real engine and ``mini-swe-runner-test:bookworm`` (``scripts/docker-engine.sh`` makes both).
Without them the tests are skipped, except on CI (``CI=true``) where they fail loudly.
"""

from __future__ import annotations

import functools
import os
import secrets

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
