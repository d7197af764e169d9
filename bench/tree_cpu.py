"""CPU time of a whole process tree, read from a cgroup of its own (shared by the benchmarks).

``getrusage``/``wait4`` see a process and the children it reaped itself. The runner's commands run under a
supervisor forked by a zygote: their processes are reaped there and never reach the runner's RUSAGE_CHILDREN
(about 30% of the tree's CPU was visible that way). A cgroup counts every process placed in it and all their
descendants, reaped by whoever, so a benchmark starts its measured child in a fresh cgroup and reads the total.

Tried in order: cgroup v1 ``cpuacct`` (``cpuacct.usage``, nanoseconds), then cgroup v2 (``cpu.stat``'s
``usage_usec``) under the unified mount. Both need a writable hierarchy (root, or a delegated subtree); where
neither is, :func:`tree_cgroup` gives None and the benchmark says the figure is unavailable rather than print
the partial rusage one.

    with tree_cgroup("bench-harness") as group:
        process = subprocess.Popen(command, preexec_fn=group.enter if group else None)
        process.wait()
        seconds = group.seconds() if group else None
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

V1_ROOT = Path("/sys/fs/cgroup/cpuacct")
V2_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


class CpuGroup:
    """One cgroup made for one measurement: ``enter`` moves the calling process into it (use it as a Popen
    ``preexec_fn``: the child is inside before it execs, and everything it starts is too)."""

    def __init__(self, path: Path, version: int):
        self.path = path
        self.version = version

    def enter(self) -> None:
        (self.path / "cgroup.procs").write_text(f"{os.getpid()}\n")

    def seconds(self) -> float:
        """CPU time (user + system) of every process that ran in the group so far, reaped or not."""
        if self.version == 1:
            return int((self.path / "cpuacct.usage").read_text()) / 1e9
        for line in (self.path / "cpu.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "usage_usec":
                return int(value) / 1e6
        raise OSError(f"no usage_usec in {self.path / 'cpu.stat'}")

    def sub(self, name: str) -> CpuGroup:
        """A group inside this one (its CPU counts in this one's too), for a part of the tree: move processes into
        it with :meth:`adopt`. Removed with this group."""
        path = self.path / name
        path.mkdir(exist_ok=True)
        return CpuGroup(path, self.version)

    def adopt(self, pid: int) -> None:
        """Move ``pid`` (it alone: what it starts afterwards follows it) into this group."""
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def remove(self) -> None:
        """Remove the group once its processes are gone (a straggler still in it is moved to the parent)."""
        for inner in [path for path in self.path.iterdir() if path.is_dir()]:
            CpuGroup(inner, self.version).remove()
        parent = self.path.parent / "cgroup.procs"
        for _ in range(50):
            with contextlib.suppress(OSError):
                for pid in (self.path / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        parent.write_text(f"{pid}\n")
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.02)


def _make(name: str) -> CpuGroup | None:
    if (V1_ROOT / "cpuacct.usage").exists():
        path = V1_ROOT / name
        with contextlib.suppress(OSError):
            path.mkdir()
            return CpuGroup(path, 1)
    for root in V2_ROOTS:
        if (root / "cgroup.controllers").exists():
            path = root / name
            with contextlib.suppress(OSError):
                path.mkdir()
                if (path / "cpu.stat").exists():
                    return CpuGroup(path, 2)
                path.rmdir()
    return None


@contextlib.contextmanager
def tree_cgroup(label: str) -> Iterator[CpuGroup | None]:
    """A fresh cgroup for one measured process tree, removed afterwards; None where none can be made."""
    group = _make(f"{label}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        yield group
    finally:
        if group is not None:
            group.remove()


def where() -> str:
    """Which accounting the benchmarks use on this machine, for their printed header."""
    with tree_cgroup("probe") as group:
        if group is None:
            return "no writable cgroup: whole-tree CPU unavailable"
        return f"whole-tree CPU from cgroup v{group.version} ({'cpuacct.usage' if group.version == 1 else 'cpu.stat'})"
