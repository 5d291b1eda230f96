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
    from .. import colab

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
    from .release import EXERCISES_DIR, release

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


def _cmd_grade(args: argparse.Namespace) -> int:
    from .autograde import GradingOptions
    from .coursedir import find_assignments
    from .environment import isolated_environment, quiet_libraries
    from .export import write_grades_csv
    from .orchestrator import grade_folder

    from .sandbox import SandboxUnavailable, check_sandbox

    root = find_root()
    course_dir = _course_dir(args, root)
    options = GradingOptions(timeout=args.timeout, setup_timeout=args.setup_timeout, sandbox=args.sandbox,
                             memory_mb=args.memory_mb, cpu_seconds=args.cpu_seconds,
                             max_processes=args.max_processes)
    try:
        note = check_sandbox(args.sandbox)
    except SandboxUnavailable as error:
        print(f"course grade: {error}", file=sys.stderr)
        return 2
    if note:
        print(f"course grade: {note}", file=sys.stderr)
    solutions = Path(args.solutions).resolve() if args.solutions else root / "solutions"
    sources = {a.name: a for a in find_assignments(solutions)}
    with _jupyter_home(course_dir) as home, isolated_environment(Path(home), root):
        quiet_libraries()
        run = grade_folder(Path(args.submissions), sources, course_dir, options, workers=args.workers,
                           regrade=args.regrade, progress=not args.no_progress, only=args.assignments or None)
        csv_path, rows = write_grades_csv(course_dir, Path(args.csv) if args.csv else course_dir / "grades.csv")
    counts = ", ".join(f"{n} {status}" for status, n in sorted(run.counts().items()))
    print(f"graded {len(run.graded)} submissions ({counts or 'none'}); "
          f"skipped {len(run.skipped)} already graded (use --regrade to grade them again)")
    for record in run.graded:
        if record.status != "graded" or record.message:
            print(f"  {record.student}/{record.assignment}: {record.status}: {record.message}")
    print(f"grades of {rows} submissions: {csv_path}")
    return 0


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
    from .environment import isolated_environment, quiet_libraries
    from .export import write_grades_csv

    root = find_root()
    course_dir = _course_dir(args, root)
    with _jupyter_home(course_dir) as home, isolated_environment(Path(home), root):
        quiet_libraries()
        csv_path, rows = write_grades_csv(course_dir, Path(args.csv) if args.csv else course_dir / "grades.csv")
    print(f"grades of {rows} submissions: {csv_path}")
    return 0


def _add_course_dir(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--course-dir", metavar="DIR", help=help_text)


def build_parser() -> argparse.ArgumentParser:
    from .sandbox import DEFAULT_CPU_SECONDS, DEFAULT_MAX_PROCESSES, DEFAULT_MEMORY_MB, DEFAULT_SANDBOX, SANDBOX_MODES

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
    p.add_argument("--workers", type=int, default=1, metavar="N", help="submissions graded at once, one kernel each (default 1)")
    p.add_argument("--timeout", type=int, default=120, metavar="S", help="time limit of each answer/test cell, seconds (default 120)")
    p.add_argument("--setup-timeout", type=int, default=300, metavar="S",
                   help="time limit of each read-only set-up cell, seconds (default 300)")
    p.add_argument("--sandbox", choices=SANDBOX_MODES, default=DEFAULT_SANDBOX,
                   help="required: run student kernels in bubblewrap with resource limits, refuse if it is missing "
                        "(default); rlimits: resource limits only; off: no isolation (trusted notebooks only)")
    p.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB, metavar="MB",
                   help=f"memory limit of a student kernel (default {DEFAULT_MEMORY_MB})")
    p.add_argument("--cpu-seconds", type=int, default=DEFAULT_CPU_SECONDS, metavar="S",
                   help=f"CPU time limit of a student kernel, all threads together (default {DEFAULT_CPU_SECONDS})")
    p.add_argument("--max-processes", type=int, default=DEFAULT_MAX_PROCESSES, metavar="N",
                   help=f"processes and threads a student kernel may run (default {DEFAULT_MAX_PROCESSES})")
    p.add_argument("--regrade", action="store_true", help="grade again submissions that were already graded")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_grade)

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
