"""Grading on a Dask cluster: the orchestrator's fan-out, with GPU workers if asked.

`grade_folder` sends each submission, a `jobs.GradingJob`, to an executor and stores each record as
it comes back. `DaskGrading.executor` is such an executor (`DaskJobs`) for a Dask distributed
cluster, either one it starts on this machine (worker processes, one thread each) or an existing
scheduler::

    with dask_grading(scheduler="tcp://10.0.0.5:8786", gpus_per_task=1) as cluster:
        grade_folder(submitted, sources, course_dir, make_executor=cluster.executor)

Submissions and records travel as bytes: a job carries its notebook's bytes; an assignment's source
goes to the cluster once (a small task returning its bytes, which Dask can recompute if the worker
holding it dies, unlike scattered data); a worker grades the job (`jobs.grade_job`, as a local
pool's worker does) and returns the record as JSON. So
workers need the course installed, and no shared file system or knowledge of the course folder.

Resources: with ``gpus_per_task=N`` every grading task asks for ``{"GPU": N}``, so it only runs on
workers started with ``--resources GPU=...``; the kernel then finds CUDA through `get_device()`.
Before anything is sent, `check_workers` makes sure some worker can take the tasks (a task asking
for a resource no worker has would wait forever) and runs one thread (grading redirects its
process's output and environment, which threads would share).

A worker that dies while grading (Dask's ``allowed-failures``: none on the cluster started here)
fails its task with `KilledWorker`; the executor reports it as the local pool does, so the
orchestrator sends that submission once more, then records an ``error`` saying the grading
process died. A grader that raises is retried once by Dask (``retries=``) on any worker.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .options import GradingOptions
from .coursedir import CourseError
from .environment import restored_environment
from .jobs import THREAD_COUNT_VARIABLES, GradingJob, LocalJobs, cpu_share, grade_job
from .record import GradeRecord, Status, sha256

#: The line an instructor sees when Dask is not installed.
INSTALL_HINT = "pip install 'dask[distributed]' (or the course's extra: pip install 'course_lib[cluster]')"
#: Seconds to reach a scheduler before giving up.
CONNECT_TIMEOUT_S = 10.0
#: Seconds to wait for a first worker when the scheduler has none yet.
WORKER_WAIT_S = 30.0
#: Name of the worker resource a task asks for: workers start with ``--resources GPU=1``.
GPU_RESOURCE = "GPU"
#: Dask reruns a grading task that raised (not one whose worker died) this many times.
TASK_RETRIES = 1
#: Worker deaths a task survives on the cluster started here; then the orchestrator's own retry applies.
LOCAL_ALLOWED_FAILURES = 0
#: Prefix of the line the doctor notebook prints (parsed back from the graded notebook).
DOCTOR_MARK = "COURSE-DOCTOR "
DOCTOR_ASSIGNMENT = "course_doctor"


class ClusterError(CourseError):
    """The cluster cannot grade (Dask missing, scheduler unreachable, no suitable worker): one line says why."""


def require_distributed():
    """The `distributed` module, or a `ClusterError` saying how to install it."""
    try:
        import distributed
    except ImportError as error:
        raise ClusterError(f"grading on Dask needs Dask distributed ({error}): {INSTALL_HINT}") from None
    return distributed


# --------------------------------------------------------------------------------------------
# What a worker runs.


def _course_root() -> Path | None:
    """The repository holding ``course_lib`` when it is not installed (then kernels need it on PYTHONPATH)."""
    import course_lib

    root = Path(course_lib.__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def _grading_environment():
    """Jupyter/IPython/matplotlib folders for grading on this worker, never under the user's home.

    A worker started by `course grade` (or a test) inherits an isolated home and keeps it; one
    started by hand gets a home of its own in the temporary folder (kept: the font cache survives).
    """
    from .environment import ISOLATED_DIRS, isolated_environment

    inherited = {Path(os.environ[variable]).parent for variable in ISOLATED_DIRS if os.environ.get(variable)}
    if len(inherited) == 1:
        home = inherited.pop()
        if all(os.environ.get(variable) == str(home / sub) for variable, sub in ISOLATED_DIRS.items()):
            return isolated_environment(home, _course_root())
    user = os.environ.get("USER") or str(os.getuid() if hasattr(os, "getuid") else "user")
    return isolated_environment(Path(tempfile.gettempdir()) / f"course-grading-{user}", _course_root())


def grade_on_worker(job: GradingJob, source_notebook: bytes | None = None) -> str:
    """Grade ``job`` (its source given apart when the cluster holds it); the record, graded notebook
    included, as JSON text.

    Runs on a Dask worker, exactly as a local pool's worker would (`jobs.grade_job`), in Jupyter
    folders of this machine's own.
    """
    from .environment import quiet_libraries

    if source_notebook is not None:
        job = dataclasses.replace(job, source_notebook=source_notebook)
    quiet_libraries()
    with _grading_environment():
        record = grade_job(job)
    return record.to_json(with_notebook=True)


def _source_bytes(data: bytes) -> bytes:
    """A task that returns an assignment's source: sent once, kept by the scheduler, recomputable."""
    return data


def worker_facts(sandbox: str) -> dict[str, Any]:
    """What `check_workers` asks every worker: can it import the course, and run the sandbox."""
    import course_lib

    from .sandbox import SandboxUnavailable, check_sandbox

    try:
        check_sandbox(sandbox)
        problem = None
    except SandboxUnavailable as error:
        problem = str(error)
    return {"course_lib": course_lib.__version__, "sandbox_problem": problem}


# --------------------------------------------------------------------------------------------
# The orchestrator's side.


class DaskJobs:
    """`grade_folder`'s executor on a Dask cluster: ``submit(job)`` grades a `jobs.GradingJob` there.

    Futures are standard ones (of `GradeRecord`), so `concurrent.futures.as_completed` works on them.
    Leaving the ``with`` block cancels whatever is still queued or running on the cluster (nothing of
    a finished run is).
    """

    def __init__(self, grading: DaskGrading) -> None:
        self._grading = grading
        self._running: dict[Any, Future] = {}
        self._lock = threading.Lock()
        self._shut = False

    def __enter__(self) -> DaskJobs:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def submit(self, job: GradingJob) -> Future:
        if self._shut:
            raise RuntimeError("cannot submit to a DaskJobs executor after shutdown")
        dask_future = self._grading.submit_grading(job)
        convert: Callable[[Any], Any] = GradeRecord.from_json
        future: Future = Future()
        future.set_running_or_notify_cancel()
        with self._lock:
            self._running[dask_future] = future
        dask_future.add_done_callback(lambda done: self._finish(done, future, convert))
        return future

    def _finish(self, dask_future, future: Future, convert: Callable[[Any], Any]) -> None:
        """Called by Dask (in a thread of its own) when a task is over: pass its outcome on."""
        from distributed.scheduler import KilledWorker

        with self._lock:
            self._running.pop(dask_future, None)
        if future.done():  # cancelled by shutdown meanwhile
            dask_future.release()
            return
        try:
            result = dask_future.result()
        except KilledWorker as error:  # the local pool's way of saying "the worker process died"
            future.set_exception(BrokenProcessPool(f"the Dask worker grading it died ({error})"))
        except BaseException as error:  # cancelled, or the grader raised (after Dask's retries)
            future.set_exception(error)
        else:
            try:
                future.set_result(convert(result))
            except Exception as error:
                future.set_exception(error)
        finally:
            dask_future.release()

    def shutdown(self) -> None:
        self._shut = True
        with self._lock:
            left = dict(self._running)
            self._running.clear()
        if left:
            self._grading.client.cancel(list(left))
            for future in left.values():
                if not future.done():
                    future.set_exception(concurrent.futures.CancelledError())


def _workers(client) -> dict[str, dict]:
    """Every worker the scheduler knows, by address, with its ``nthreads`` and ``resources``."""
    try:
        info = client.scheduler_info(n_workers=-1)  # recent Dask lists 5 workers unless told otherwise
    except TypeError:  # older Dask: no such argument, every worker listed
        info = client.scheduler_info()
    return dict(info["workers"])


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 'es' if noun.endswith('s') else 's'}"


@dataclass
class DaskGrading:
    """A Dask client ready to grade, and what it knows of the cluster.

    ``cluster``: the cluster started on this machine (None on an existing scheduler).
    """

    client: Any
    gpus_per_task: int = 0
    description: str = ""
    cluster: Any = None
    _sources: dict[str, Any] = field(default_factory=dict)

    @property
    def resources(self) -> dict[str, int] | None:
        return {GPU_RESOURCE: self.gpus_per_task} if self.gpus_per_task else None

    def executor(self, workers: int = 1) -> DaskJobs:
        """`grade_folder`'s ``make_executor``: the cluster decides how many submissions run at once."""
        return DaskJobs(self)

    def source_future(self, assignment: str, source: bytes):
        """The cluster's copy of an assignment's source, sent once per content."""
        digest = sha256(source)
        if digest not in self._sources:
            key = f"course-source-{assignment}-{digest[:16]}"
            future = self.client.submit(_source_bytes, source, key=key, pure=False)
            # On every worker: otherwise the scheduler sends each grading task where the source is (data
            # locality), and one worker grades them all in turn while the others wait.
            self.client.replicate([future])
            self._sources[digest] = future
        return self._sources[digest]

    def submit_grading(self, job: GradingJob, **placement):
        """One grading task: the job without its source, which the cluster already holds (`source_future`)."""
        source = self.source_future(job.assignment, job.source_notebook)
        return self.client.submit(
            grade_on_worker, dataclasses.replace(job, source_notebook=b""), source,
            key=f"course-grade-{job.assignment}-{job.student}-{uuid.uuid4().hex[:8]}", pure=False,
            resources=self.resources, retries=TASK_RETRIES, **placement,
        )

    def eligible_workers(self) -> dict[str, dict]:
        """Workers that can take a grading task (those with enough GPUs when tasks ask for them)."""
        workers = _workers(self.client)
        if not self.gpus_per_task:
            return dict(workers)
        return {address: info for address, info in workers.items()
                if info.get("resources", {}).get(GPU_RESOURCE, 0) >= self.gpus_per_task}

    def check_workers(self, sandbox: str, wait_s: float = WORKER_WAIT_S) -> dict[str, dict]:
        """Fail in one line unless some worker can grade: resources, one thread, course and sandbox there."""
        if not _workers(self.client):
            try:
                self.client.wait_for_workers(1, timeout=wait_s)
            except Exception:
                raise ClusterError(f"the Dask scheduler at {self.client.scheduler.address} has no workers after "
                                   f"{wait_s:g} s; start some: dask worker {self.client.scheduler.address} "
                                   "--nworkers 1 --nthreads 1") from None
        everyone = _workers(self.client)
        eligible = self.eligible_workers()
        if not eligible:
            offered = sorted({f"{k}={v:g}" for info in everyone.values() for k, v in info.get("resources", {}).items()})
            raise ClusterError(
                f"no worker of the Dask scheduler at {self.client.scheduler.address} offers "
                f"{GPU_RESOURCE}={self.gpus_per_task} ({_count(len(everyone), 'worker')}; resources offered: "
                f"{', '.join(offered) or 'none'}): start GPU workers with `dask worker ADDRESS --nworkers 1 "
                f"--nthreads 1 --resources {GPU_RESOURCE}={self.gpus_per_task}`, or drop --gpus-per-task")
        threaded = sorted(address for address, info in eligible.items() if info.get("nthreads", 1) != 1)
        if threaded:
            raise ClusterError(f"workers must run one thread each (grading redirects its process's output): "
                               f"{', '.join(threaded)} run more; start them with --nthreads 1")
        try:
            facts = self.client.run(worker_facts, sandbox, workers=list(eligible))
        except Exception as error:
            raise ClusterError(f"the Dask workers cannot run the course's grader ({type(error).__name__}: "
                               f"{error}); install the course on every worker").splitlines()[0] from None
        import course_lib

        versions = sorted({fact["course_lib"] for fact in facts.values()} - {course_lib.__version__})
        if versions:
            raise ClusterError(f"the Dask workers run course_lib {', '.join(versions)} and this machine "
                               f"{course_lib.__version__}: install the same course version everywhere")
        problems = sorted(f"{address}: {fact['sandbox_problem']}" for address, fact in facts.items()
                          if fact["sandbox_problem"])
        if problems:
            raise ClusterError(f"the sandbox cannot run on {len(problems)} workers ({problems[0]}); "
                               "install it there or choose --sandbox=rlimits")
        return eligible


def visible_gpus() -> list[str]:
    """This machine's GPUs as CUDA_VISIBLE_DEVICES names them (it, if set, else 0..count-1)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [device.strip() for device in listed.split(",") if device.strip() and device.strip() != "-1"]
    try:
        import torch

        return [str(index) for index in range(torch.cuda.device_count())]
    except Exception:  # a broken driver: no GPU to offer
        return []


def local_worker_environments(workers: int, gpus_per_task: int, gpus: list[str] | None = None) -> list[dict[str, str]]:
    """One environment per worker of a cluster started here: its GPUs, and its share of the CPU cores."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if gpus_per_task < 0:
        raise ValueError(f"gpus_per_task must be 0 or more, got {gpus_per_task}")
    threads = cpu_share(workers)  # Dask's nanny would set 1 in its workers (and so in their kernels)
    if not gpus_per_task:
        return [dict(threads) for _ in range(workers)]
    gpus = visible_gpus() if gpus is None else gpus
    slots = len(gpus) // gpus_per_task
    if slots == 0:
        raise ClusterError(f"--gpus-per-task {gpus_per_task} needs {_count(gpus_per_task, 'GPU')} and this machine "
                           f"shows {len(gpus)} (torch.cuda.device_count(), CUDA_VISIBLE_DEVICES); give a --scheduler "
                           "whose workers have GPUs, or drop --gpus-per-task")
    return [{**threads, "CUDA_VISIBLE_DEVICES": ",".join(gpus[i * gpus_per_task:(i + 1) * gpus_per_task])}
            for i in range(min(workers, slots))]


def _start_local_cluster(environments: list[dict[str, str]], gpus_per_task: int):
    """Worker processes on this machine (one thread each, Dask's nanny restarts a dead one)."""
    from distributed import Nanny, Scheduler, SpecCluster

    quiet = logging.ERROR  # worker chatter would bury the progress bar; records say what went wrong
    no_dashboard = {"dashboard": False, "dashboard_address": ":0"}  # any free port for the health endpoints
    worker_options = {"nthreads": 1, "host": "127.0.0.1", "silence_logs": quiet, **no_dashboard}
    if gpus_per_task:
        worker_options["resources"] = {GPU_RESOURCE: gpus_per_task}
    workers = {f"grader-{i}": {"cls": Nanny, "options": {**worker_options, "env": env}}
               for i, env in enumerate(environments)}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "port": 0,
                                               "allowed_failures": LOCAL_ALLOWED_FAILURES, **no_dashboard}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=quiet, name="course-grading")


def _check_scheduler(scheduler: str, timeout: float) -> None:
    """Fail in one line, and soon, unless a Dask scheduler answers at ``scheduler``.

    Dask's client keeps retrying a refused connection until its timeout, and a port that answers
    something else can leave it stuck closing: a plain connection and Dask's ``identity`` request first.
    """
    import asyncio
    import socket

    from distributed.comm import connect, get_address_host_port, parse_address

    try:
        protocol, _ = parse_address(scheduler)
        host, port = get_address_host_port(scheduler) if protocol in ("tcp", "tls") else (None, None)
    except ValueError as error:
        raise ClusterError(f"--scheduler {scheduler!r} is not a Dask address (tcp://HOST:PORT): "
                           f"{str(error).splitlines()[0]}") from None
    if host is not None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise ClusterError(f"cannot reach the Dask scheduler at {scheduler} ({reason}); "
                               "is `dask scheduler` running there and its port open?") from None

    async def identity() -> Any:
        comm = await connect(scheduler, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    try:
        reply = asyncio.run(asyncio.wait_for(identity(), timeout))
    except Exception as error:
        raise ClusterError(f"no Dask scheduler answered at {scheduler} within {timeout:g} s "
                           f"({type(error).__name__}); is that the scheduler's address?") from None
    kind = reply.get("type") if isinstance(reply, dict) else None
    if kind != "Scheduler":
        raise ClusterError(f"{scheduler} is {'a Dask ' + kind if kind else 'not a Dask scheduler'}; "
                           "give the scheduler's address (`dask scheduler` prints it)")


@contextlib.contextmanager
def dask_grading(scheduler: str | None = None, workers: int = 1, gpus_per_task: int = 0,
                 sandbox: str | None = None, connect_timeout: float | None = None) -> Iterator[DaskGrading]:
    """A `DaskGrading` on the scheduler at ``scheduler``, or on a cluster of ``workers`` processes started here.

    With ``sandbox`` given, `DaskGrading.check_workers` runs first. Raises `ClusterError` (one
    line) when Dask is missing, the scheduler cannot be reached or no worker can take the tasks.
    """
    distributed = require_distributed()
    if gpus_per_task < 0:
        raise ValueError(f"gpus_per_task must be 0 or more, got {gpus_per_task}")
    timeout = CONNECT_TIMEOUT_S if connect_timeout is None else connect_timeout
    import dask

    pre_spawn = tuple(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    with contextlib.ExitStack() as stack:
        cluster = None
        if scheduler is None:
            environments = local_worker_environments(workers, gpus_per_task)
            # Dask's nanny sets a few variables in its own process before starting a worker: undo that after.
            stack.enter_context(restored_environment({*pre_spawn, *THREAD_COUNT_VARIABLES}))
            cluster = stack.enter_context(_start_local_cluster(environments, gpus_per_task))
            client = stack.enter_context(distributed.Client(cluster, set_as_default=False))
            gpus = f", GPUs {', '.join(env['CUDA_VISIBLE_DEVICES'] for env in environments)}" if gpus_per_task else ""
            description = (f"a Dask cluster on this machine: {_count(len(environments), 'worker process')}, "
                           f"one thread each{gpus}")
        else:
            _check_scheduler(scheduler, timeout)
            client = distributed.Client(scheduler, timeout=timeout, set_as_default=False)
            stack.enter_context(client)
            description = f"the Dask scheduler at {scheduler}"
        grading = DaskGrading(client=client, gpus_per_task=gpus_per_task, description=description, cluster=cluster)
        if sandbox is not None:
            eligible = grading.check_workers(sandbox)
            if scheduler is not None:
                resource = f" with {GPU_RESOURCE}={gpus_per_task}" if gpus_per_task else ""
                grading.description += f" ({_count(len(eligible), 'worker')}{resource})"
        yield grading


# --------------------------------------------------------------------------------------------
# `course doctor`: what a student's kernel sees, checked by grading a tiny notebook.


def doctor_notebook() -> bytes:
    """An nbgrader source whose one test cell prints, from inside the kernel, the device it computes on."""
    import nbformat

    def meta(grade_id: str, grade: bool = False, points: int | None = None) -> dict:
        info = {"grade": grade, "grade_id": grade_id, "locked": True, "schema_version": 3, "solution": False,
                "task": False}
        if points is not None:
            info["points"] = points
        return {"nbgrader": info}

    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Where does a student's kernel compute?", metadata=meta("title")),
        nbformat.v4.new_code_cell("import json\n\nimport torch\n\nfrom course_lib import get_device",
                                  metadata=meta("setup")),
        nbformat.v4.new_code_cell(
            "device = get_device()\n"
            "total = float(torch.ones(4, device=device).sum())  # one computation on that device\n"
            "cuda = torch.cuda.is_available()\n"
            "facts = {'device': str(device), 'cuda': cuda, 'sum': total, 'torch': torch.__version__,\n"
            "         'threads': torch.get_num_threads(),\n"
            "         'cuda_version': torch.version.cuda,\n"
            "         'gpus': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]\n"
            "                 if cuda else []}\n"
            f"print({DOCTOR_MARK!r} + json.dumps(facts))\n"
            "assert total == 4.0",
            metadata=meta("device_check", grade=True, points=1)),
    ]
    return nbformat.writes(nb).encode("utf-8")


@dataclass
class DoctorReport:
    """What one worker's sandboxed kernel said about its device."""

    where: str
    ok: bool
    line: str
    facts: dict[str, Any] = field(default_factory=dict)
    enforced: list[str] = field(default_factory=list)  # what limits hold there (`enforcement.enforcement_lines`)


def _doctor_facts(record: GradeRecord) -> dict[str, Any] | None:
    import nbformat

    if record.graded_notebook is None:
        return None
    for cell in nbformat.reads(record.graded_notebook, as_version=4).cells:
        for output in cell.get("outputs", []):
            for line in str(output.get("text", "")).splitlines():
                if line.startswith(DOCTOR_MARK):
                    return json.loads(line[len(DOCTOR_MARK):])
    return None


def doctor_report(where: str, record: GradeRecord, sandbox: str, want_gpu: bool) -> DoctorReport:
    """One line: what the kernel computed on, or why the check could not run."""
    facts = _doctor_facts(record)
    took = f"[{record.duration_s:.1f} s]"
    if facts is None or record.status != Status.GRADED:
        reason = record.message or "the kernel printed no device"
        return DoctorReport(where, False, f"{where}: the check did not run: {record.status}: {reason} {took}")
    threads = facts.get("threads")
    kernel = f"the kernel (sandbox {sandbox}) computes on {facts['device']}" + \
        (f" ({_count(threads, 'CPU thread')})" if isinstance(threads, int) else "")
    if facts["cuda"]:
        line = (f"{where}: {kernel}: {len(facts['gpus'])} GPU ({', '.join(facts['gpus'])}), "
                f"torch {facts['torch']}, CUDA {facts['cuda_version']} {took}")
        return DoctorReport(where, True, line, facts)
    hint = ("; asked for a GPU but torch.cuda.is_available() is False there (driver, /dev/nvidia*, "
            "CUDA_VISIBLE_DEVICES, a CPU-only torch?)") if want_gpu else ", torch.cuda.is_available() is False"
    return DoctorReport(where, not want_gpu, f"{where}: {kernel}{hint}; torch {facts['torch']} {took}", facts)


def doctor(options: GradingOptions, grading: DaskGrading | None = None, workers: int = 1) -> list[DoctorReport]:
    """Grade the doctor notebook in a sandboxed kernel: in a worker of a local pool of ``workers`` (as
    `course grade --workers` would), or once on every eligible worker of ``grading``."""
    from .enforcement import enforcement_lines

    source = doctor_notebook()
    job = GradingJob(DOCTOR_ASSIGNMENT, "doctor", source, source, None, options)
    if grading is None:
        with LocalJobs(workers) as pool:
            record = pool.submit(job).result()
        report = doctor_report("this machine", record, options.sandbox, want_gpu=False)
        report.enforced = enforcement_lines(options.sandbox, options.limits, options.warm_kernels)
        return [report]
    futures, enforced = {}, {}
    for address in sorted(grading.eligible_workers()):
        where = dict(key=f"course-doctor-{uuid.uuid4().hex[:8]}", pure=False, resources=grading.resources,
                     workers=[address], allow_other_workers=False)
        futures[address] = grading.client.submit(grade_on_worker, job, **where)
        where["key"] = f"course-doctor-limits-{uuid.uuid4().hex[:8]}"
        enforced[address] = grading.client.submit(enforcement_lines, options.sandbox, options.limits,
                                                  options.warm_kernels, **where)
    reports = []
    for address, future in futures.items():
        try:
            record = GradeRecord.from_json(future.result())
        except Exception as error:
            reports.append(DoctorReport(address, False, f"{address}: the check failed: {type(error).__name__}: "
                                                        f"{error}".splitlines()[0]))
            continue
        report = doctor_report(address, record, options.sandbox, want_gpu=grading.gpus_per_task > 0)
        try:
            report.enforced = enforced[address].result()
        except Exception as error:
            report.enforced = [f"could not tell what is enforced there: {type(error).__name__}: {error}".splitlines()[0]]
        reports.append(report)
    return reports


__all__ = ["ClusterError", "DaskGrading", "DaskJobs", "DoctorReport", "dask_grading", "doctor", "doctor_notebook",
           "grade_on_worker", "local_worker_environments", "require_distributed", "visible_gpus"]
