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
