"""`course`: the course's one command-line interface."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def find_root(start: Path | None = None) -> Path:
    """The course repository root: the nearest folder above ``start`` holding pyproject.toml and course_lib/."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "course_lib").is_dir():
            return folder
    raise SystemExit(f"course: no course repository found at or above {here} (expected pyproject.toml and course_lib/)")


def _cmd_notebooks(args: argparse.Namespace) -> int:
    from . import colab

    root = find_root()
    paths = sorted([*root.glob("notebooks/*.ipynb"), *root.glob("solutions/*.ipynb"), *root.glob("exercises/*.ipynb")])
    drifted = colab.check_or_fix(paths, root, fix=args.fix)
    if colab.check_or_fix_readme(root, fix=args.fix):
        drifted.append("README.md (lesson table)")
    verb = "updated" if args.fix else "out of date"
    for rel in drifted:
        print(f"{verb}: {rel}")
    if drifted and not args.fix:
        print("run `course notebooks --fix` to update the Colab badge and set-up cell", file=sys.stderr)
        return 1
    if not drifted:
        print(f"all {len(paths)} notebooks and the README carry the current Colab badges and set-up cell")
    return 0


def _course_dir(args: argparse.Namespace, root: Path) -> Path:
    from .coursedir import DEFAULT_GRADING_DIR

    return Path(args.course_dir).resolve() if args.course_dir else root / DEFAULT_GRADING_DIR


def _jupyter_home(course_dir: Path | None):
    """Jupyter/IPython/matplotlib files go to the grading folder, or to a temporary one."""
    import contextlib
    import tempfile

    from .coursedir import JUPYTER_HOME

    if course_dir is not None:
        return contextlib.nullcontext(course_dir / JUPYTER_HOME)
    return tempfile.TemporaryDirectory(prefix="course-jupyter-")


def _cmd_release(args: argparse.Namespace) -> int:
    from .coursedir import find_assignments
    from .environment import isolated_environment
    from .releasing import EXERCISES_DIR, release

    root = find_root()
    assignments = find_assignments(root / "solutions", args.assignments)
    if not assignments:
        print("course: no assignment sources in solutions/", file=sys.stderr)
        return 1
    course_dir = _course_dir(args, root) if args.course_dir else None
    with _jupyter_home(course_dir) as home, isolated_environment(Path(home), root):
        drifted = release(assignments, root / EXERCISES_DIR, check=args.check, course_dir=course_dir)
    for path in drifted:
        print(f"{'out of date' if args.check else 'released'}: {path.relative_to(root).as_posix()}")
    if args.check and drifted:
        print("run `course release` to regenerate exercises/ from solutions/", file=sys.stderr)
        return 1
    if not drifted:
        print(f"all {len(assignments)} exercise notebooks are up to date")
    if course_dir is not None:
        print(f"nbgrader course folder: {course_dir}")
    return 0


def _grading_options(args: argparse.Namespace):
    from .options import GradingOptions

    return GradingOptions(timeout=args.timeout, setup_timeout=args.setup_timeout, sandbox=args.sandbox,
                          memory_mb=args.memory_mb, cpu_seconds=args.cpu_seconds, max_processes=args.max_processes,
                          scratch_mb=args.scratch_mb, warm_kernels=not args.cold_kernels)


def _executor_kind(args: argparse.Namespace) -> str:
    """``local`` or ``dask``: --scheduler and --gpus-per-task imply Dask; asking for both kinds is an error."""
    from .coursedir import CourseError

    wants_dask = args.scheduler is not None or args.gpus_per_task > 0
    if args.executor == "local" and wants_dask:
        raise CourseError("--scheduler and --gpus-per-task grade on Dask: use --executor dask (or leave it out)")
    if args.gpus_per_task < 0:
        raise CourseError(f"--gpus-per-task must be 0 or more, got {args.gpus_per_task}")
    return args.executor or ("dask" if wants_dask else "local")


def _check_local_sandbox(args: argparse.Namespace, command: str) -> bool:
    """The sandbox where kernels start on this machine (the local pool or a cluster started here)."""
    from .sandbox import SandboxUnavailable, check_sandbox

    if args.scheduler is not None:
        return True  # remote workers are checked where they run
    try:
        note = check_sandbox(args.sandbox)
    except SandboxUnavailable as error:
        print(f"course {command}: {error}", file=sys.stderr)
        return False
    if note:
        print(f"course {command}: {note}", file=sys.stderr)
    return True


def _cluster(args: argparse.Namespace, kind: str):
    """The Dask cluster to grade on, or nothing (the local pool)."""
    import contextlib

    if kind != "dask":
        return contextlib.nullcontext(None)
    from .cluster import dask_grading

    return dask_grading(scheduler=args.scheduler, workers=args.workers, gpus_per_task=args.gpus_per_task,
                        sandbox=args.sandbox)


def _cmd_grade(args: argparse.Namespace) -> int:
    from .coursedir import CourseFolder, find_assignments
    from .environment import isolated_environment, quiet_libraries
    from .export import write_grades_csv
    from .orchestrator import grade_folder, local_pool

    root = find_root()
    course_dir = _course_dir(args, root)
    options = _grading_options(args)
    kind = _executor_kind(args)
    if not _check_local_sandbox(args, "grade"):
        return 2
    solutions = Path(args.solutions).resolve() if args.solutions else root / "solutions"
    sources = {a.name: a for a in find_assignments(solutions)}
    with _jupyter_home(course_dir) as home, isolated_environment(Path(home), root):
        quiet_libraries()
        with _cluster(args, kind) as cluster:
            if cluster is not None:
                print(f"course grade: grading on {cluster.description}", file=sys.stderr)
            run = grade_folder(Path(args.submissions), sources, course_dir, options, workers=args.workers,
                               regrade=args.regrade, progress=not args.no_progress, only=args.assignments or None,
                               make_executor=cluster.executor if cluster is not None else local_pool)
        csv_path, rows = write_grades_csv(course_dir, Path(args.csv) if args.csv else CourseFolder(course_dir).grades_csv)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(run.counts().items()))
    print(f"graded {len(run.graded)} submissions ({counts or 'none'}); "
          f"skipped {len(run.skipped)} already graded (use --regrade to grade them again)")
    for record in run.graded:
        if record.status != "graded" or record.message:
            print(f"  {record.student}/{record.assignment}: {record.status}: {record.message}")
    print(f"grades of {rows} submissions: {csv_path}")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    """Grade a tiny built-in notebook in a sandboxed kernel and say, in one line per worker, what it computes on."""
    from .cluster import doctor
    from .environment import isolated_environment, quiet_libraries

    root = find_root()
    options = _grading_options(args)
    kind = _executor_kind(args)
    if not _check_local_sandbox(args, "doctor"):
        return 2
    with _jupyter_home(None) as home, isolated_environment(Path(home), root):
        quiet_libraries()
        with _cluster(args, kind) as cluster:
            if cluster is not None:
                print(f"course doctor: checking every worker of {cluster.description}", file=sys.stderr)
            reports = doctor(options, cluster, workers=args.workers)
    for report in reports:
        print(report.line)
        for line in report.enforced:
            print(f"  {line}")
    return 0 if reports and all(report.ok for report in reports) else 1


def _cmd_feedback(args: argparse.Namespace) -> int:
    from .environment import isolated_environment, quiet_libraries
    from .feedback import generate_feedback

    root = find_root()
    course_dir = _course_dir(args, root)
    with _jupyter_home(course_dir) as home, isolated_environment(Path(home), root):
        quiet_libraries()
        written, refused = generate_feedback(course_dir, args.assignments or None, args.students or None)
    print(f"wrote {len(written)} feedback pages under {course_dir / 'feedback'}")
    for reason in refused:
        print(f"  NOT WRITTEN {reason}", file=sys.stderr)
    return 1 if refused else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .coursedir import CourseFolder
    from .environment import isolated_environment, quiet_libraries
    from .export import write_grades_csv

    root = find_root()
    course_dir = _course_dir(args, root)
    with _jupyter_home(course_dir) as home, isolated_environment(Path(home), root):
        quiet_libraries()
        csv_path, rows = write_grades_csv(course_dir, Path(args.csv) if args.csv else CourseFolder(course_dir).grades_csv)
    print(f"grades of {rows} submissions: {csv_path}")
    return 0


def _add_course_dir(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--course-dir", metavar="DIR", help=help_text)


def _add_kernel_options(p: argparse.ArgumentParser) -> None:
    """Time limits and the sandbox of student kernels (`course grade`, `course doctor`)."""
    from .options import DEFAULT_CELL_TIMEOUT_S, DEFAULT_SETUP_TIMEOUT_S
    from .sandbox import (DEFAULT_CPU_SECONDS, DEFAULT_MAX_PROCESSES, DEFAULT_MEMORY_MB, DEFAULT_SANDBOX,
                          DEFAULT_SCRATCH_MB, SANDBOX_MODES)

    p.add_argument("--timeout", type=int, default=DEFAULT_CELL_TIMEOUT_S, metavar="S",
                   help=f"time limit of each answer/test cell, seconds (default {DEFAULT_CELL_TIMEOUT_S})")
    p.add_argument("--setup-timeout", type=int, default=DEFAULT_SETUP_TIMEOUT_S, metavar="S",
                   help=f"time limit of each read-only set-up cell, seconds (default {DEFAULT_SETUP_TIMEOUT_S})")
    p.add_argument("--sandbox", choices=SANDBOX_MODES, default=DEFAULT_SANDBOX,
                   help="required: run student kernels in bubblewrap with resource limits, refuse if it is missing "
                        "(default); rlimits: resource limits only; off: no isolation (trusted notebooks only)")
    p.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB, metavar="MB",
                   help=f"memory limit of a student kernel (default {DEFAULT_MEMORY_MB})")
    p.add_argument("--cpu-seconds", type=int, default=DEFAULT_CPU_SECONDS, metavar="S",
                   help=f"CPU time limit of a student kernel, all threads together (default {DEFAULT_CPU_SECONDS})")
    p.add_argument("--max-processes", type=int, default=DEFAULT_MAX_PROCESSES, metavar="N",
                   help=f"processes and threads a student kernel may run (default {DEFAULT_MAX_PROCESSES})")
    p.add_argument("--scratch-mb", type=int, default=DEFAULT_SCRATCH_MB, metavar="MB",
                   help=f"size of each folder a student kernel writes in (work, home, temporary folders), kept in "
                        f"memory and gone with its sandbox (default {DEFAULT_SCRATCH_MB})")
    p.add_argument("--cold-kernels", action="store_true",
                   help="start every student kernel from scratch instead of forking it from a warm kernel factory "
                        "that imported torch once (slower; the isolation is the same)")


def _add_executor_options(p: argparse.ArgumentParser) -> None:
    """Where kernels run: this machine's process pool, or a Dask cluster (with GPU workers)."""
    p.add_argument("--executor", choices=("local", "dask"), default=None,
                   help="local: a process pool on this machine (default); dask: a Dask distributed cluster, "
                        "the one at --scheduler or one started here with --workers processes")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="address of a running Dask scheduler (tcp://HOST:8786); implies --executor dask")
    p.add_argument("--gpus-per-task", type=int, default=0, metavar="N",
                   help="GPUs each submission needs: tasks ask Dask for the worker resource GPU=N (workers "
                        "started with --resources GPU=1); implies --executor dask (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="course", description="Tools for the course 'From CNN blocks to object detectors'.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("notebooks", help="check or fix every notebook's Colab badge and set-up cell")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="report notebooks that are out of date (default)")
    mode.add_argument("--fix", action="store_true", help="rewrite them")
    p.set_defaults(func=_cmd_notebooks)

    grading_dir = "the instructor's nbgrader course folder (default: grading/ at the course root)"
    p = sub.add_parser("release", help="generate exercises/ from solutions/ (nbgrader generate_assignment)")
    p.add_argument("assignments", nargs="*", metavar="ASSIGNMENT", help="names or prefixes (default: all)")
    p.add_argument("--check", action="store_true", help="only report exercise notebooks that differ; exit 1 if any")
    p.add_argument("--course-dir", metavar="DIR",
                   help="also set up this nbgrader course folder (source/, release/, gradebook.db, nbgrader_config.py)")
    p.set_defaults(func=_cmd_release)

    p = sub.add_parser("grade", help="autograde a folder of submissions and write the grades CSV")
    p.add_argument("submissions", metavar="SUBMISSIONS_DIR",
                   help="nbgrader's submitted/ folder (<student>/<assignment>/<assignment>.ipynb), or a folder holding one")
    p.add_argument("--assignment", dest="assignments", action="append", metavar="NAME", help="grade only this one (repeatable)")
    _add_course_dir(p, grading_dir)
    p.add_argument("--csv", metavar="PATH", help="grades table to write (default: COURSE_DIR/grades.csv)")
    p.add_argument("--solutions", metavar="DIR", help="folder of the assignments' nbgrader sources (default: solutions/)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="submissions graded at once, one kernel each (default 1); with --executor dask and no "
                        "--scheduler, the worker processes of the cluster started here")
    _add_kernel_options(p)
    _add_executor_options(p)
    p.add_argument("--regrade", action="store_true", help="grade again submissions that were already graded")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_grade)

    p = sub.add_parser("doctor", help="check what a sandboxed student kernel computes on (CPU or GPU), "
                                      "here or on every worker of a Dask cluster")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="check a kernel as `course grade --workers N` runs it (its share of the CPU cores); with "
                        "--executor dask and no --scheduler: worker processes of the cluster started here")
    _add_kernel_options(p)
    _add_executor_options(p)
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("feedback", help="per-student feedback pages (HTML) without hidden tests")
    p.add_argument("--assignment", dest="assignments", action="append", metavar="NAME", help="only this assignment (repeatable)")
    p.add_argument("--student", dest="students", action="append", metavar="ID", help="only this student (repeatable)")
    _add_course_dir(p, grading_dir)
    p.set_defaults(func=_cmd_feedback)

    p = sub.add_parser("export", help="write the grades CSV from the gradebook")
    _add_course_dir(p, grading_dir)
    p.add_argument("--csv", metavar="PATH", help="where to write it (default: COURSE_DIR/grades.csv)")
    p.set_defaults(func=_cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .coursedir import CourseError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CourseError as error:
        print(f"course {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
