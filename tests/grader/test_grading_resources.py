"""What a student's kernel may use in all: one memory limit for the whole sandbox (shared memory and
child processes included), and writable folders in memory of a bounded size that vanish with it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from course_grader import memory_cgroup, warm
from course_grader.enforcement import enforcement_lines
from course_grader.memory_cgroup import CgroupParent, MemoryGroup, availability, remove_stale_groups
from course_grader.sandbox import Limits, bwrap_problem, tmpfs_size_supported
from sandbox_kernels import report_from_kernel, run_in_kernel

pytestmark = [pytest.mark.sandbox,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")]
MIB = 1024 * 1024


# --- finding where memory groups can be made (fake cgroup trees) -------------------------------


def _v2_tree(tmp_path: Path, subtree: str) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    (root / "grader.slice").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    (root / "grader.slice" / "cgroup.subtree_control").write_text(subtree)
    proc = tmp_path / "proc-cgroup"
    proc.write_text("0::/grader.slice\n")
    return root, proc


def test_cgroup_v2_is_used_only_where_memory_is_delegated(tmp_path):
    root, proc = _v2_tree(tmp_path, "cpu memory\n")
    parent, line = availability(root, proc)
    assert parent == CgroupParent(root / "grader.slice", 2)
    assert "cgroup v2" in line
    root, proc = _v2_tree(tmp_path / "other", "cpu\n")
    parent, line = availability(root, proc)
    assert parent is None
    assert "not delegated" in line and "per-process limits only" in line


def test_a_v2_group_gets_memory_max_and_no_swap(tmp_path):
    root, proc = _v2_tree(tmp_path, "memory\n")
    parent, _ = availability(root, proc)
    (parent.path / "template").mkdir()
    group = MemoryGroup(parent, 300 * MIB)
    assert (group.path / "memory.max").read_text() == str(300 * MIB)
    assert group.path.name.startswith(f"course-sandbox-{os.getpid()}-")
    (group.path / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n")
    assert group.oom_kills() == 2
    for name in ("memory.max", "memory.events"):
        (group.path / name).unlink()
    assert group.remove()
    assert not group.path.exists()


def test_cgroup_v1_needs_a_writable_memory_hierarchy(tmp_path):
    root = tmp_path / "cgroup"
    (root / "memory" / "box").mkdir(parents=True)
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (root / "memory" / "box" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("5:memory:/box\n0::/\n")
    parent, line = availability(root, proc)
    assert parent == CgroupParent(root / "memory" / "box", 1)
    group = MemoryGroup(parent, 64 * MIB)
    assert (group.path / "memory.limit_in_bytes").read_text() == str(64 * MIB)
    (group.path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert group.oom_kills() == 3


def test_without_any_cgroup_the_reason_is_one_line(tmp_path):
    parent, line = availability(tmp_path, tmp_path / "missing")
    assert parent is None
    assert line == "no cgroup memory controller is mounted at /sys/fs/cgroup; per-process limits only"


def test_limits_of_groups_must_be_positive(tmp_path):
    root, proc = _v2_tree(tmp_path, "memory\n")
    parent, _ = availability(root, proc)
    with pytest.raises(ValueError, match="limit_bytes must be positive"):
        MemoryGroup(parent, 0)


# --- on this machine ----------------------------------------------------------------------------

#: Writes 600 MiB into a shared anonymous mapping, which RLIMIT_DATA does not count.
SHARED_MEMORY_BOMB = """
import mmap
shared = mmap.mmap(-1, 600 * 1024 * 1024, flags=mmap.MAP_SHARED)
for offset in range(0, len(shared), 4096):
    shared[offset] = 1
print("survived")
"""


def _usable_group_or_reason() -> str | None:
    parent, line = availability()
    return None if parent is not None else line


def test_this_machine_reports_what_it_enforces():
    parent, line = availability()
    assert line.startswith(("cgroup v1", "cgroup v2", "no cgroup"))
    if os.geteuid() == 0 and Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").is_file():
        assert parent is not None, line  # root with cgroup v1 mounted (the course's CI): groups are used


def test_a_group_stops_shared_memory_that_rlimits_miss():
    reason = _usable_group_or_reason()
    if reason:
        pytest.skip(reason)
    group = memory_cgroup.memory_group(200 * MIB)
    try:
        done = subprocess.run([*group.enter_command(), sys.executable, "-c", SHARED_MEMORY_BOMB],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == -9 and "survived" not in done.stdout
        assert group.oom_kills() >= 1
    finally:
        assert group.remove()


def test_groups_of_dead_grading_processes_are_removed():
    reason = _usable_group_or_reason()
    if reason:
        pytest.skip(reason)
    parent, _ = availability()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    left = parent.path / f"course-sandbox-{dead}-1"
    left.mkdir()
    remove_stale_groups()
    assert not left.exists()


@pytest.fixture
def sandbox():
    problem = bwrap_problem()
    if problem:
        pytest.fail(f"the grader's sandbox cannot run here: {problem}")


@pytest.mark.parametrize("warm_kernels", [True, False], ids=["warm", "cold"])
def test_a_kernel_using_shared_memory_past_its_limit_is_killed_and_told_why(sandbox, warm_kernels):
    reason = _usable_group_or_reason()
    if reason:
        pytest.skip(reason)
    # torch needs more than 1 GiB of RLIMIT_DATA to start a kernel; a warm factory's group has 1 GiB more for the factory itself
    printed, km = run_in_kernel(SHARED_MEMORY_BOMB.replace("600", "4000"), warm=warm_kernels, memory_mb=1536)
    assert "survived" not in printed
    assert "[the kernel died]" in printed
    assert km.out_of_memory, (km.exit_code, printed)


#: Forks children that each hold 300 MiB (each under the per-process limit), then counts those still alive.
CHILDREN = """
import os, time
pids = []
for _ in range(10):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        block = b"x" * (300 * 1024 * 1024)
        os.write(write_end, b"1")
        time.sleep(30)
        os._exit(0)
    os.close(write_end)
    os.read(read_end, 1)  # the child holds its block, or was killed
    pids.append(pid)
time.sleep(1)
alive = [pid for pid in pids if os.waitpid(pid, os.WNOHANG) == (0, 0)]
print("children holding 300 MiB:", len(alive))
for pid in alive:
    os.kill(pid, 9)
"""


def test_children_share_one_memory_limit(sandbox):
    reason = _usable_group_or_reason()
    if reason:
        pytest.skip(reason)
    printed, km = run_in_kernel(CHILDREN, warm=False, memory_mb=1536)
    if "[the kernel died]" in printed:  # the out-of-memory killer chose the kernel itself
        assert km.out_of_memory
        return
    holding = int(printed.split("children holding 300 MiB:")[1].split()[0])
    assert holding * 300 <= 1536, printed  # 10 x 300 MiB fit each process's limit, not the sandbox's


FILL = """
import os
report = {}
for folder in (os.getcwd(), os.environ["HOME"], os.environ["TMPDIR"], "/tmp", "/dev/shm"):
    written = 0
    try:
        for number in range(64):
            with open(os.path.join(folder, f"fill-{number}"), "wb") as out:
                for _ in range(10):
                    out.write(b"x" * (1024 * 1024))
                    written += 1
    except OSError as error:
        report.setdefault("errors", []).append(error.strerror)
    report[folder] = written
deep = os.path.join(os.getcwd(), "deep")
os.makedirs(deep)
path = deep
for _ in range(300):
    path = os.path.join(path, "d")
    os.mkdir(path)
os.chmod(deep, 0o500)
open(os.path.join(os.environ["TMPDIR"], "left-for-the-next"), "w").close()
"""

LOOK = """
import os
report = {"work": sorted(os.listdir(".")), "home": sorted(n for n in os.listdir(os.environ["HOME"]) if n.startswith("fill")),
          "tmp": sorted(os.listdir(os.environ["TMPDIR"])),
          "machine_tmp": sorted(n for n in os.listdir("/tmp") if n.startswith("fill")),
          "shm": sorted(os.listdir("/dev/shm"))}
"""


def test_the_kernels_folders_are_bounded_in_memory_and_empty_for_the_next_kernel(sandbox):
    if not tmpfs_size_supported():
        pytest.skip("this bubblewrap cannot limit the size of a tmpfs (bubblewrap 0.7 or later can)")
    limits = dict(warm=True, scratch_mb=24, memory_mb=2048)
    filled = report_from_kernel(FILL, **limits)
    for folder, written in filled.items():
        if folder != "errors":
            assert written <= 24, (folder, written)
    assert "No space left on device" in filled["errors"]
    left = report_from_kernel(LOOK, **limits)
    assert left == {"work": [], "home": [], "tmp": [], "machine_tmp": [], "shm": []}
    # and nothing of it ever reached the grader's disk
    for group in warm._FACTORIES.values():
        for factory in group:
            if factory.alive:
                sizes = [p.stat().st_size for p in factory.root.rglob("*") if p.is_file() and not p.is_symlink()]
                assert sum(sizes) < 4 * MIB, sum(sizes)


def test_cold_kernels_write_in_memory_too_and_leave_nothing(sandbox, tmp_path):
    if not tmpfs_size_supported():
        pytest.skip("this bubblewrap cannot limit the size of a tmpfs (bubblewrap 0.7 or later can)")
    filled = report_from_kernel(FILL, warm=False, scratch_mb=24, memory_mb=2048)
    assert all(written <= 24 for folder, written in filled.items() if folder != "errors")


def test_limits_carry_the_scratch_size():
    assert Limits().scratch_mb == 512
    with pytest.raises(ValueError, match="scratch_mb must be a positive integer"):
        Limits(scratch_mb=0)


@pytest.mark.parametrize("mode", ["required", "rlimits", "off"])
def test_what_is_enforced_is_said_in_a_line_per_kind_of_limit(mode, monkeypatch):
    lines = enforcement_lines(mode, Limits(memory_mb=2000, scratch_mb=64))
    assert all("\n" not in line for line in lines)
    if mode == "off":
        assert lines == ["no isolation and no limits: student code runs as this user (sandbox off: trusted "
                         "notebooks only)"]
        return
    assert lines[0].startswith("each process: 2000 MiB of data (RLIMIT_DATA)")
    parent, why = availability()
    assert lines[1] == (f"the whole sandbox: 3024 MiB of memory, shared memory, memory-backed files and child "
                        f"processes included ({why})" if parent else
                        f"the whole sandbox: no memory limit beyond each process's ({why}): shared memory and "
                        "child processes are not bounded")
    if mode == "required":
        assert "at most 64 MiB each" in lines[2] or "without a size limit" in lines[2]
    else:
        assert lines[2].startswith("no namespaces (sandbox rlimits)")


def test_without_a_memory_group_the_doctor_says_what_is_not_bounded(monkeypatch):
    from course_grader import enforcement

    monkeypatch.setattr(enforcement, "availability", lambda: (None, "cgroup v2: nothing delegated"))
    lines = enforcement_lines("required", Limits())
    assert lines[1] == ("the whole sandbox: no memory limit beyond each process's (cgroup v2: nothing delegated): "
                        "shared memory and child processes are not bounded")


def test_grading_kernels_keep_the_full_traceback_that_feedback_reads(tmp_path, monkeypatch):
    from course_lib.checks import TRACEBACK_ENV
    from course_grader.sandbox import GRADING_KERNEL_ENV, kernel_environment

    monkeypatch.setenv(TRACEBACK_ENV, "short")  # not even the grader's own setting changes it
    assert GRADING_KERNEL_ENV == {TRACEBACK_ENV: "full"}
    assert kernel_environment(tmp_path)[TRACEBACK_ENV] == "full"
