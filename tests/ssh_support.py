"""A real, throwaway sshd on 127.0.0.1 for the ssh backend's tests (Debian ``openssh-server``).

The session fixture makes a host key and a user key in a temporary directory, starts ``sshd -D`` on a free port
with a config of its own (only that user key is accepted, nothing else of the machine's ssh setup is used), and
writes a known_hosts file holding the host key. Without sshd the tests are skipped, except on CI (``CI=true``)
where they fail loudly: ``scripts/test`` installs openssh-server.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port

from environments import EnvSettings

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class SSHServer:
    user: str
    port: int
    key: str
    known_hosts: str
    root: Path
    pid: int
    """The listening sshd's: each connection is served by a child of it."""

    @property
    def host(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    def settings(self, **overrides) -> EnvSettings:
        values = dict(env_type="ssh", ssh_host=self.host, ssh_key=self.key, ssh_known_hosts=self.known_hosts)
        values.update(overrides)
        return EnvSettings(**values)


def _problem() -> str | None:
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None:
        return "no sshd/ssh-keygen here (apt-get install openssh-server); scripts/test installs it"
    try:
        import asyncssh  # noqa: F401
    except ImportError:
        return "asyncssh is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="session", name="sshd")
def sshd_fixture():
    problem = _problem()
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {problem}", pytrace=False)
        pytest.skip(problem)
    root = Path(tempfile.mkdtemp(prefix="msr-sshd-"))
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    (root / "authorized_keys").write_text((root / "user_key.pub").read_text())
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {root / 'host_key'}",
                f"PidFile {root / 'sshd.pid'}",
                f"AuthorizedKeysFile {root / 'authorized_keys'}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                "MaxSessions 10",
                "MaxStartups 100",
                "LogLevel INFO",  # one "Accepted publickey" line per connection: the tests count them
                "",
            ]
        )
    )
    host_key = (root / "host_key.pub").read_text().split()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    log = open(root / "sshd.log", "wb")
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"sshd did not start: {(root / 'sshd.log').read_text()[-2000:]}", pytrace=False)
            time.sleep(0.05)
    try:
        yield SSHServer(getpass.getuser(), port, str(root / "user_key"), str(root / "known_hosts"), root, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def accepted_connections(server: SSHServer) -> int:
    """How many ssh connections the server has accepted so far (from its own log)."""
    return (server.root / "sshd.log").read_text(errors="replace").count("Accepted publickey")


def drop_connections(server: SSHServer) -> int:
    """Cut every ssh connection the server has, as a network failure would: SIGKILL the sshd process serving each
    one (what the remote commands run under is left alone: their processes are re-parented and go on)."""
    dropped = 0
    for thread in os.listdir(f"/proc/{server.pid}/task"):
        with open(f"/proc/{server.pid}/task/{thread}/children") as children:
            for pid in map(int, children.read().split()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    dropped += 1
    return dropped
