"""One memory limit for a whole sandbox: a memory cgroup.

RLIMIT_DATA, the per-process limit the sandbox always sets, misses three ways of using memory: shared
anonymous mappings (``mmap(MAP_SHARED)``), files in memory-backed folders (``/dev/shm``, tmpfs) and
child processes (each has a limit of its own). A memory cgroup counts all of them, for every process
in the sandbox together. The grader uses one where the machine lets it create one:

- cgroup v2, where the grader's own group delegates the ``memory`` controller to its children
  (``memory`` listed in its ``cgroup.subtree_control``, the folder writable): ``memory.max``;
- cgroup v1, where the ``memory`` hierarchy is mounted and the grader's group there is writable
  (typically as root in a container): ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes``
  where swap is accounted, so swapping is no way around it).

Elsewhere `availability` says why there is none, and only the per-process limits apply (`course
doctor` prints which). A sandbox enters its group before bubblewrap starts: ``enter_command`` is a
prefix that writes the shell's pid into ``cgroup.procs`` and then ``exec``s the real command, so
everything the sandbox ever starts is counted.
"""
from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

#: Where the cgroup file systems are mounted.
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Which groups this process is in (one line per hierarchy: ``number:controllers:/path``).
PROC_CGROUP = Path("/proc/self/cgroup")
#: Name prefix of the grader's groups; the grading process's pid follows, so a later run can remove
#: what a killed one left.
GROUP_PREFIX = "course-sandbox-"
_numbers = itertools.count(1)


@dataclass(frozen=True)
class CgroupParent:
    """Where the grader may create memory groups: ``path`` (a folder) and the cgroup ``version`` (1 or 2)."""

    path: Path
    version: int


def _own_group(version: int, proc_cgroup: Path) -> str | None:
    """This process's group path (``/a/b``) in the v2 hierarchy or in v1's memory hierarchy."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        number, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if version == 2 and number == "0" and controllers == "":
            return path
        if version == 1 and "memory" in controllers.split(","):
            return path
    return None


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def availability(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> tuple[CgroupParent | None, str]:
    """The folder memory groups can be made in, or None, and one line saying which (or why none).

    ``root`` is where the cgroup file systems are mounted, ``proc_cgroup`` this process's groups.
    """
    if (root / "cgroup.controllers").is_file():  # the unified (v2) hierarchy is mounted at the root
        own = _own_group(2, proc_cgroup)
        if own is None:
            return None, "cgroup v2: this process's group is not listed in /proc/self/cgroup"
        parent = root / own.lstrip("/")
        try:
            delegated = "memory" in (parent / "cgroup.subtree_control").read_text().split()
        except OSError:
            delegated = False
        if not delegated:
            return None, (f"cgroup v2: the memory controller is not delegated to {parent} (its "
                          "cgroup.subtree_control lacks 'memory'); per-process limits only")
        if not _writable(parent):
            return None, f"cgroup v2: {parent} is not writable by this user; per-process limits only"
        return CgroupParent(parent, 2), f"cgroup v2 memory groups under {parent}"
    memory = root / "memory"
    if (memory / "memory.limit_in_bytes").is_file():
        own = _own_group(1, proc_cgroup)
        parent = memory / (own or "/").lstrip("/")
        if not (parent / "memory.limit_in_bytes").is_file():
            parent = memory
        if not _writable(parent):
            return None, f"cgroup v1: {parent} is not writable by this user (run the grader as root); " \
                         "per-process limits only"
        return CgroupParent(parent, 1), f"cgroup v1 memory groups under {parent}"
    return None, "no cgroup memory controller is mounted at /sys/fs/cgroup; per-process limits only"


class MemoryGroup:
    """A memory cgroup holding one sandbox, limited to ``limit_bytes`` in all (see the module's docstring)."""

    def __init__(self, parent: CgroupParent, limit_bytes: int) -> None:
        if limit_bytes <= 0:
            raise ValueError(f"limit_bytes must be positive, got {limit_bytes}")
        self.version = parent.version
        self.path = parent.path / f"{GROUP_PREFIX}{os.getpid()}-{next(_numbers)}"
        self.path.mkdir()
        try:
            if self.version == 2:
                (self.path / "memory.max").write_text(str(limit_bytes))
                self._write_if_present("memory.swap.max", "0")
            else:
                (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
                self._write_if_present("memory.memsw.limit_in_bytes", str(limit_bytes))
        except OSError:
            self.remove()
            raise
        self.limit_bytes = limit_bytes

    def _write_if_present(self, name: str, value: str) -> None:
        target = self.path / name
        if target.exists():
            try:
                target.write_text(value)
            except OSError:  # swap accounting switched off on this machine: the memory limit still holds
                pass

    def enter_command(self) -> list[str]:
        """A command prefix that moves itself into this group, then runs the rest of the command line."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs")]

    def oom_kills(self) -> int:
        """How many processes the kernel's out-of-memory killer ended in this group."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def remove(self, wait_s: float = 5.0) -> bool:
        """Remove the group once its processes are gone (they die with their sandbox); True when removed."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.path.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)


def remove_stale_groups(root: Path = CGROUP_ROOT) -> None:
    """Remove empty groups left by grading processes that no longer exist."""
    parent, _ = availability(root)
    if parent is None:
        return
    for group in parent.path.glob(f"{GROUP_PREFIX}*-*"):
        pid = group.name[len(GROUP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            try:
                group.rmdir()
            except OSError:  # processes still in it, or not ours to remove
                pass


def memory_group(limit_bytes: int) -> MemoryGroup | None:
    """A new group limited to ``limit_bytes`` where the machine allows one, else None (see `availability`)."""
    parent, _ = availability()
    if parent is None:
        return None
    try:
        return MemoryGroup(parent, limit_bytes)
    except OSError:
        return None


__all__ = ["CgroupParent", "MemoryGroup", "availability", "memory_group", "remove_stale_groups"]
