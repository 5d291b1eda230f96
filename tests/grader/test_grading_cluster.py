"""Grading on a Dask cluster: the same records as the local pool, bytes only, clear failures.

A real multi-process Dask cluster (LocalCluster, two worker processes of one thread) grades a small
class of the red-team fixture assignment; the local pool grades the same class; records and grade
tables must agree. Then: a worker killed while grading, a cluster without the GPUs asked for, a
scheduler that is not there, Dask not installed, and `course doctor` on the cluster's workers.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_grader.autograde import GradingOptions
from course_grader.cluster import ClusterError, dask_grading, doctor, local_worker_environments
from course_grader.coursedir import Assignment
from course_grader.environment import isolated_environment
from course_grader.export import write_grades_csv
from course_grader.jobs import THREAD_COUNT_VARIABLES, cpu_share
from course_grader.orchestrator import grade_folder, local_pool
from course_grader.submission import grade_id

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "fixtures" / "redteam" / "redteam.ipynb"
NAME = "redteam"
SOURCES = {NAME: Assignment(NAME, SOURCE)}
OPTIONS = GradingOptions(timeout=60, setup_timeout=300, memory_mb=1536, max_processes=64, probe_seed=7)
#: Fields of a record that depend on the run, not on the submission.
RUN_FIELDS = ("duration_s", "log")


def _cell(nb, gid):
    return next(c for c in nb.cells if grade_id(c) == gid)


def _put(submitted: Path, student: str, nb=None, raw: bytes | None = None, name: str = f"{NAME}.ipynb") -> None:
    folder = submitted / student / NAME
    folder.mkdir(parents=True, exist_ok=True)
    if raw is not None:
        (folder / name).write_bytes(raw)
    else:
        nbformat.write(nb, folder / name)
    (folder / "timestamp.txt").write_text("2025-03-01 09:00:00.000000 UTC\n")


def build_class(submitted: Path) -> None:
    solution = nbformat.read(SOURCE, as_version=4)
    _put(submitted, "solution", solution)
    partial = copy.deepcopy(solution)
    _cell(partial, "q1_answer").source = "def box_area(boxes):\n    return boxes[:, 2] - boxes[:, 0]\n"
    _put(submitted, "partial", partial)
    _put(submitted, "corrupt", raw=SOURCE.read_bytes()[:3000])
    _put(submitted, "wrong_name", solution, name="notebook.ipynb")


def _records(course_dir: Path) -> dict[str, dict]:
    records = {}
    for path in sorted((course_dir / "records" / NAME).glob("*.json")):
        data = json.loads(path.read_text())
        records[path.stem] = {key: value for key, value in data.items() if key not in RUN_FIELDS}
    return records


@pytest.fixture(scope="module")
def dask_cluster():
    """A real Dask cluster on this machine: a scheduler and two worker processes of one thread."""
    from distributed import LocalCluster

    saved = dict(os.environ)  # Dask's nanny sets thread-count variables in this process
    # allowed_failures=0: a task whose worker dies fails at once (then the orchestrator retries it once)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR, scheduler_kwargs={"allowed_failures": 0}) as cluster:
        yield cluster
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def graded(dask_cluster, tmp_path_factory):
    """The class graded twice: by the local pool, and on the Dask cluster (bytes only)."""
    base = tmp_path_factory.mktemp("cluster")
    submitted = base / "submitted"
    build_class(submitted)
    with isolated_environment(base / "home", ROOT):
        pool_run = grade_folder(submitted, SOURCES, base / "pool", OPTIONS, workers=2, progress=False,
                                make_executor=local_pool)
        with dask_grading(scheduler=dask_cluster.scheduler_address, sandbox=OPTIONS.sandbox) as grading:
            dask_run = grade_folder(submitted, SOURCES, base / "dask", OPTIONS, workers=2, progress=False,
                                    make_executor=grading.executor)
            rerun = grade_folder(submitted, SOURCES, base / "dask", OPTIONS, workers=2, progress=False,
                                 make_executor=grading.executor)
        tables = {name: write_grades_csv(base / name, base / f"{name}.csv")[0].read_text() for name in ("pool", "dask")}
    return {"base": base, "pool": pool_run, "dask": dask_run, "rerun": rerun, "tables": tables,
            "records": {name: _records(base / name) for name in ("pool", "dask")}}


def test_the_class_gets_the_verdicts_it_deserves(graded):
    records = graded["records"]["dask"]
    verdicts = {student: (r["status"], r["scores"]) for student, r in records.items()}
    assert verdicts == {
        "solution": ("graded", {"q1_tests": 2.0, "q2_tests": 1.0}),
        "partial": ("graded", {"q1_tests": 0.0, "q2_tests": 1.0}),
        "corrupt": ("failed", {"q1_tests": 0.0, "q2_tests": 0.0}),
        "wrong_name": ("missing", {"q1_tests": 0.0, "q2_tests": 0.0}),
    }
    assert "not valid JSON" in records["corrupt"]["message"] and "notebook.ipynb" in records["wrong_name"]["message"]


def test_dask_records_and_grades_table_equal_the_local_pools(graded):
    assert graded["records"]["dask"] == graded["records"]["pool"]
    assert graded["tables"]["dask"] == graded["tables"]["pool"]
    assert len(graded["dask"].graded) == len(graded["pool"].graded) == 4
    for student in ("solution", "partial"):  # the executed notebook came back too
        assert (graded["base"] / "dask" / "autograded" / student / NAME / f"{NAME}.ipynb").is_file()


def test_a_rerun_on_the_cluster_skips_what_was_graded(graded):
    assert graded["rerun"].graded == [] and len(graded["rerun"].skipped) == 4


def test_the_local_pool_and_the_cluster_take_the_same_job_and_give_the_same_record(dask_cluster, tmp_path):
    """One value, `GradingJob`, goes to either executor (a notebook that is not JSON: no kernel needed)."""
    from course_grader.jobs import GradingJob, LocalJobs

    job = GradingJob(NAME, "someone", SOURCE.read_bytes(), b"{ not a notebook", "2026-12-06 10:00:00", OPTIONS)
    with isolated_environment(tmp_path / "home", ROOT):
        with LocalJobs(1) as pool:
            local = pool.submit(job).result(timeout=300)
        with dask_grading(scheduler=dask_cluster.scheduler_address) as grading, grading.executor() as executor:
            remote = executor.submit(job).result(timeout=300)
    assert local.status == remote.status == "failed"
    assert (local.student, local.scores, local.message, local.timestamp) == \
        (remote.student, remote.scores, remote.message, remote.timestamp)


def course_inline(capsys, *args: str) -> tuple[int, str, str]:
    """`course ARGS` in this process (for failures that start nothing): exit code, stdout, stderr."""
    from course_grader.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    return lines[0]


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the `course` command finds the course from the current folder


def test_gpus_asked_of_workers_without_any_fail_at_once_in_one_line(dask_cluster, tmp_path, capsys, at_root):
    code, _, err = course_inline(capsys, "grade", str(tmp_path), "--scheduler", dask_cluster.scheduler_address,
                                 "--gpus-per-task", "1", "--course-dir", str(tmp_path / "grading"))
    line = _one_line(code, err)
    assert "no worker of the Dask scheduler" in line and "offers GPU=1" in line and "--resources GPU=1" in line
    assert not (tmp_path / "grading" / "gradebook.db").exists()  # refused before anything was graded


def test_gpus_asked_of_a_machine_without_any_fail_in_one_line():
    with pytest.raises(ClusterError, match=r"--gpus-per-task 1 needs 1 GPU and this machine shows 0"):
        local_worker_environments(2, gpus_per_task=1, gpus=[])


def test_local_gpu_workers_get_their_own_devices():
    envs = local_worker_environments(4, gpus_per_task=2, gpus=["0", "1", "2", "3", "4"])
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == ["0,1", "2,3"]
    assert all(int(env["OMP_NUM_THREADS"]) >= 1 for env in envs)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_scheduler_that_is_not_there_fails_at_once_in_one_line(tmp_path, capsys, at_root):
    address = f"tcp://127.0.0.1:{_free_port()}"
    code, _, err = course_inline(capsys, "grade", str(tmp_path), "--scheduler", address)
    assert _one_line(code, err).startswith(f"course grade: cannot reach the Dask scheduler at {address}")
    with pytest.raises(ClusterError, match="is not a Dask address"):
        with dask_grading(scheduler="not an address"):
            pass


def test_a_worker_address_is_not_taken_for_the_scheduler(dask_cluster):
    worker = next(iter(dask_cluster.scheduler_info["workers"]))
    with pytest.raises(ClusterError, match="is a Dask Worker; give the scheduler's address"):
        with dask_grading(scheduler=worker):
            pass


def test_workers_with_several_threads_are_refused():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as threaded:
        with pytest.raises(ClusterError, match="one thread each"):
            with dask_grading(scheduler=threaded.scheduler_address, sandbox="off"):
                pass


def test_missing_dask_is_one_line_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(ClusterError, match=r"pip install 'dask\[distributed\]'"):
        with dask_grading(workers=1):
            pass


def test_executor_options_that_contradict_each_other_are_refused(tmp_path, capsys, at_root):
    code, _, err = course_inline(capsys, "grade", str(tmp_path), "--executor", "local", "--gpus-per-task", "1")
    assert "use --executor dask" in _one_line(code, err)


def test_a_cluster_started_here_has_one_thread_per_worker_and_shares_the_cores():
    with dask_grading(workers=1) as grading:
        assert grading.description == "a Dask cluster on this machine: 1 worker process, one thread each"
        workers = grading.client.scheduler_info(n_workers=-1)["workers"]
        assert [info["nthreads"] for info in workers.values()] == [1]
        threads = grading.client.run(lambda: os.environ.get("OMP_NUM_THREADS"))  # read on the worker
        assert list(threads.values()) == [str(os.cpu_count() or 1)]
        assert grading.client.submit(pow, 2, 10).result(timeout=120) == 1024


def test_doctor_reports_what_each_workers_sandboxed_kernel_computes_on(dask_cluster, graded):
    with isolated_environment(graded["base"] / "home", ROOT):
        with dask_grading(scheduler=dask_cluster.scheduler_address, sandbox=OPTIONS.sandbox) as grading:
            reports = doctor(OPTIONS, grading)
    assert sorted(report.where for report in reports) == sorted(dask_cluster.scheduler_info["workers"])
    for report in reports:
        assert report.ok, report.line
        assert report.facts["device"] == "cpu" and report.facts["sum"] == 4.0
        assert f"the kernel (sandbox {OPTIONS.sandbox}) computes on cpu (1 CPU thread)" in report.line
        assert report.facts["threads"] == 1  # Dask's workers of one thread: their kernels too
        assert "\n" not in report.line
        assert report.enforced[0].startswith("each process: 1536 MiB of data"), report.enforced
        assert any(line.startswith("the whole sandbox:") for line in report.enforced)


def course(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "course_grader.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_the_local_doctor_checks_a_kernel_with_its_share_of_the_cores(tmp_path):
    """Kernels of `course grade --workers 2` get half the cores each: more threads than cores, spinning
    while they wait for each other, made grading half as slow again."""
    share = max(1, (os.cpu_count() or 1) // 2)
    environment = {name: value for name, value in os.environ.items() if name not in THREAD_COUNT_VARIABLES}
    result = subprocess.run([sys.executable, "-m", "course_grader.cli", "doctor", "--workers", "2", "--memory-mb",
                             "1536", "--max-processes", "64"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env=environment)
    assert result.returncode == 0, result.stdout + result.stderr
    line = result.stdout.splitlines()[0]
    threads = "1 CPU thread" if share == 1 else f"{share} CPU threads"
    assert line.startswith(f"this machine: the kernel (sandbox {OPTIONS.sandbox}) computes on cpu ({threads})"), line
    assert cpu_share(2) == {name: str(share) for name in THREAD_COUNT_VARIABLES}


def test_a_dead_worker_costs_only_its_submission_then_an_error_record(dask_cluster, tmp_path):
    """`course grade --scheduler`: one kernel kills its Dask worker (last: the nanny restarts that worker)."""
    submitted = tmp_path / "submitted"
    solution = nbformat.read(SOURCE, as_version=4)
    killer = copy.deepcopy(solution)  # without the sandbox a kernel can signal its parent, the worker
    _cell(killer, "q2_answer").source = "import os, signal\n\nos.kill(os.getppid(), signal.SIGKILL)\n"
    _put(submitted, "killer", killer)
    _put(submitted, "solution", solution)
    result = course("grade", str(submitted), "--course-dir", str(tmp_path / "grading"), "--scheduler",
                    dask_cluster.scheduler_address, "--solutions", str(SOURCE.parent), "--sandbox", "off",
                    "--no-progress", "--timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"grading on the Dask scheduler at {dask_cluster.scheduler_address} (2 workers)" in result.stderr
    assert "graded 2 submissions (1 error, 1 graded)" in result.stdout, result.stdout
    killed = json.loads((tmp_path / "grading" / "records" / NAME / "killer.json").read_text())
    assert killed["status"] == "error" and "the grading process died" in killed["message"]
    honest = json.loads((tmp_path / "grading" / "records" / NAME / "solution.json").read_text())
    assert (honest["status"], honest["scores"]) == ("graded", {"q1_tests": 2.0, "q2_tests": 1.0}), honest["message"]
