"""Warm kernels: forked from a sandboxed factory that imported torch once, and as isolated as cold ones."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from course_grader import warm
from course_grader.sandboxed.kernel_factory import exit_code
from course_grader.sandbox import (SCRATCH_PREFIX, bwrap_problem, remove_stale_scratch, sandbox_uid)
from sandbox_kernels import in_kernel, report_from_kernel, run_in_kernel

pytestmark = [pytest.mark.sandbox,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")]


@pytest.fixture(autouse=True)
def _sandbox_available():
    problem = bwrap_problem()
    if problem:
        pytest.fail(f"the grader's sandbox cannot run here: {problem}")


def _factories() -> list[warm.KernelFactory]:
    return [f for group in warm._FACTORIES.values() for f in group if f.alive]


LOOK_AROUND = """
import json, os, random, sys
report = {
    "torch_loaded": "torch" in sys.modules,
    "uid": os.getuid(),
    "cwd": os.getcwd(),
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "shared": [name for folder in ("/dev/shm", "/tmp") for name in os.listdir(folder) if "note" in name],
    "random": random.random(),
    "home": os.environ["HOME"],
    "left_behind": os.path.exists("left-behind.txt"),
}
try:
    report["scratch_listing"] = sorted(os.listdir(os.path.dirname(os.path.dirname(os.getcwd()))))
except PermissionError:
    report["scratch_listing"] = "denied"
report.update({
    "writable": [p for p in ("/", "/pwned", os.path.dirname(os.path.dirname(os.getcwd())), sys.prefix)
                 if os.access(p, os.W_OK)],
})
try:
    os.kill(os.getppid(), 0)
    report["can_signal_parent"] = True
except PermissionError:
    report["can_signal_parent"] = False
"""


def test_kernels_are_forked_with_torch_loaded_from_one_reused_factory():
    before = set(_factories())  # earlier tests may have left factories for other configurations
    first = report_from_kernel(LOOK_AROUND)
    after_first = set(_factories())
    second = report_from_kernel(LOOK_AROUND)
    assert first["torch_loaded"] and second["torch_loaded"]
    assert len(after_first - before) <= 1
    assert set(_factories()) == after_first, "the second kernel should come from the same factory"
    assert first["writable"] == [] and second["writable"] == [], "only the kernel's own folder is writable"
    assert first["random"] != second["random"], "forked kernels must not share the factory's random state"
    if os.geteuid() == 0:
        assert first["uid"] == sandbox_uid()
        assert first["can_signal_parent"] is False, "a kernel must not be able to signal its factory"


def test_cold_kernels_still_start_without_the_factory():
    before = set(_factories())
    report = report_from_kernel(LOOK_AROUND, warm=False)
    assert report["torch_loaded"] is False
    assert set(_factories()) <= before, "a cold kernel must not start a factory"


def test_nothing_a_kernel_leaves_behind_reaches_the_next_one():
    leave = """
import json, os, subprocess, sys
for shared in ("/dev/shm", "/tmp"):  # writable only where the sandbox maps the grader's own uid
    if os.access(shared, os.W_OK):
        with open(os.path.join(shared, "note-for-the-next-student"), "w") as note:
            note.write("hidden tests were here")
subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(600)"], start_new_session=True)
with open("left-behind.txt", "w") as note:
    note.write("mine")
report = {"cwd": os.getcwd(), "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
"""
    before = report_from_kernel(leave)
    assert len(before["pids"]) >= 4, "the background process should have been running"
    after = report_from_kernel(LOOK_AROUND)
    assert after["shared"] == []
    assert after["left_behind"] is False, "the previous kernel's files should be gone"
    if after["scratch_listing"] != "denied":  # as root the scratch folder cannot even be listed
        assert set(after["scratch_listing"]) <= {"slot", "factory-home"}, after["scratch_listing"]
    # Only the namespace's init, the factory and this kernel remain (the sleeper was killed).
    assert len(after["pids"]) <= 3, after["pids"]


def test_a_kernel_killed_at_its_time_limit_takes_its_factory_along_and_the_next_one_is_fresh():
    report_from_kernel(LOOK_AROUND)
    factory = _factories()[0]

    async def stuck(km, client) -> None:
        client.execute("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass")
        await asyncio.sleep(1)

    asyncio.run(in_kernel(stuck, now=True))
    assert not factory.alive
    assert not factory.root.exists()
    report = report_from_kernel(LOOK_AROUND)
    assert report["torch_loaded"]
    assert factory not in _factories()


def test_a_kernel_that_exits_is_reported_with_its_code_and_the_factory_carries_on():
    async def exit_seven(km, client) -> int | None:
        client.execute("import os\nos._exit(7)")
        for _ in range(600):
            if not await km.is_alive():
                break
            await asyncio.sleep(0.05)
        return km.exit_code

    assert asyncio.run(in_kernel(exit_seven)) == 7
    factory = _factories()[0]
    assert report_from_kernel(LOOK_AROUND)["torch_loaded"]
    assert factory in _factories()


def test_exit_codes_follow_the_shell_convention():
    assert exit_code(7 << 8) == 7
    assert exit_code(9) == 128 + 9  # killed by SIGKILL


def test_scratch_folders_of_dead_grading_processes_are_removed(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{SCRATCH_PREFIX}{dead.pid}-abc"
    mine = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}-def"
    unrelated = tmp_path / f"{SCRATCH_PREFIX}xyz"
    for folder in (stale, mine, unrelated):
        (folder / "work").mkdir(parents=True)
    remove_stale_scratch()
    assert not stale.exists()
    assert mine.exists() and unrelated.exists()


@pytest.mark.parametrize("flags, warm_kernels", [([], True), (["--cold-kernels"], False)])
def test_course_grade_forks_warm_kernels_unless_told_otherwise(flags, warm_kernels):
    from course_grader.cli import _grading_options, build_parser

    args = build_parser().parse_args(["grade", "submitted", *flags])
    assert _grading_options(args).warm_kernels is warm_kernels


def test_with_limits_only_the_factory_cleans_nothing_of_the_machines():
    """Outside the sandbox /tmp is everybody's: what appears there while kernels come and go stays."""
    import tempfile

    assert "ran" in run_in_kernel("print('ran')", sandbox="rlimits")[0]
    outsider = Path(tempfile.mkdtemp(prefix="not-the-graders-"))
    try:
        assert "ran" in run_in_kernel("print('ran')", sandbox="rlimits")[0]
        assert "ran" in run_in_kernel("print('ran')", sandbox="rlimits")[0]
        assert outsider.exists(), "the factory removed a folder of the machine's /tmp"
    finally:
        outsider.rmdir()
