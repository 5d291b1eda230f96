"""What the grader can enforce on this machine, in a few lines (printed by `course doctor`).

The limits a student's kernel gets depend on the machine: bubblewrap and its version, whether a memory
cgroup can be made, whether the grader runs as root. An instructor should not have to read the code
to know which of them hold.
"""
from __future__ import annotations

import shutil
import subprocess

from .memory_cgroup import availability
from .sandbox import FACTORY_MEMORY_MB, Limits, running_as_root, sandbox_uid, tmpfs_size_supported


def _bwrap_version() -> str:
    try:
        return subprocess.run([shutil.which("bwrap") or "bwrap", "--version"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or "bubblewrap"
    except (OSError, subprocess.SubprocessError):
        return "bubblewrap (version unknown)"


def enforcement_lines(sandbox: str, limits: Limits, warm: bool = True) -> list[str]:
    """One line per kind of limit: what holds for a student's kernel graded with ``sandbox`` and ``limits``."""
    if sandbox == "off":
        return ["no isolation and no limits: student code runs as this user (sandbox off: trusted notebooks only)"]
    lines = [f"each process: {limits.memory_mb} MiB of data (RLIMIT_DATA), {limits.cpu_seconds} s of CPU, "
             f"{limits.max_processes} processes and threads, files up to {limits.max_file_mb} MiB, "
             f"{limits.max_open_files} open files"]
    parent, why = availability()
    if parent is not None:
        total = limits.memory_mb + (FACTORY_MEMORY_MB if warm else 0)
        lines.append(f"the whole sandbox: {total} MiB of memory, shared memory, memory-backed files and child "
                     f"processes included ({why})")
    else:
        lines.append(f"the whole sandbox: no memory limit beyond each process's ({why}): shared memory and "
                     "child processes are not bounded")
    if sandbox == "required":
        if tmpfs_size_supported():
            lines.append(f"writable folders: work, home, temporary folders and /dev/shm are in memory, at most "
                         f"{limits.scratch_mb} MiB each, gone with the sandbox ({_bwrap_version()})")
        else:
            lines.append(f"writable folders: in memory and gone with the sandbox, but without a size limit "
                         f"({_bwrap_version()}; bubblewrap 0.7 or later can limit them)")
        if running_as_root():
            lines.append(f"identity: kernels run as uid {sandbox_uid()} of this grading process, without "
                         "capabilities, in their own namespaces (no network, no view of other processes)")
        else:
            lines.append("identity: kernels run as this user in their own namespaces (no network); run the grader "
                         "as root to give them a uid of their own")
    else:
        lines.append("no namespaces (sandbox rlimits): the kernel sees this machine's files and network and "
                     "writes to a scratch folder on disk (files up to the size limit)")
    return lines


__all__ = ["enforcement_lines"]
