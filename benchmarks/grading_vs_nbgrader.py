"""`course grade --workers N` against plain serial `nbgrader autograde`, on the same class, in one run.

Builds a class of COPIES submissions of one assignment (its solution, submitted as it is). First
plain nbgrader, the way a course without this grader runs it: one `nbgrader autograde <assignment>
--student <id>` process per student, one after the other, in an nbgrader course folder. Then
`course grade` (sandboxed kernels, then the verdict process that decides the points) with each
worker count, kernels and verdict processes forked from warm factories (the default) and, with
``--cold``, also started from scratch.
Prints seconds per submission and the ratios.

    python benchmarks/grading_vs_nbgrader.py [--assignment 01_blocks_and_resnets] [--copies 40] [--workers 2] [--cold]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from course_grader.coursedir import Assignment, generate_assignment, write_course_config  # noqa: E402
from course_grader.environment import isolated_environment  # noqa: E402


def build_class(submitted: Path, source: Path, copies: int) -> list[str]:
    students = [f"student{index:03d}" for index in range(copies)]
    for student in students:
        folder = submitted / student / source.stem
        folder.mkdir(parents=True)
        shutil.copyfile(source, folder / source.name)
    return students


def plain_nbgrader(course_dir: Path, source: Path, students: list[str]) -> float:
    """Seconds for serial `nbgrader autograde`, one process per student (set-up not counted)."""
    write_course_config(course_dir, timeout=300)
    generate_assignment(course_dir, Assignment(source.stem, source))
    nbgrader = [sys.executable, "-m", "nbgrader", "autograde", source.stem, "--force"]
    started = time.perf_counter()
    for student in students:
        subprocess.run([*nbgrader, "--student", student], cwd=course_dir, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def course_grade(submitted: Path, course_dir: Path, workers: int, cold: bool = False) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "course_grader.cli", "grade", str(submitted), "--course-dir",
                    str(course_dir), "--workers", str(workers), "--no-progress", *(["--cold-kernels"] if cold else [])],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assignment", default="01_blocks_and_resnets")
    parser.add_argument("--copies", type=int, default=40)
    parser.add_argument("--workers", type=int, nargs="+", default=[os.cpu_count() or 1])
    parser.add_argument("--cold", action="store_true", help="also time kernels started from scratch")
    args = parser.parse_args()
    source = ROOT / "solutions" / f"{args.assignment}.ipynb"
    with tempfile.TemporaryDirectory(prefix="course-bench-") as scratch:
        scratch = Path(scratch)
        with isolated_environment(scratch / "home", ROOT):
            nbgrader_dir = scratch / "nbgrader-course"
            students = build_class(nbgrader_dir / "submitted", source, args.copies)
            baseline = plain_nbgrader(nbgrader_dir, source, students)
            print(f"plain nbgrader autograde, serial: {baseline:.1f} s for {args.copies} submissions "
                  f"({baseline / args.copies:.2f} s per submission)")
            for cold in ([False, True] if args.cold else [False]):
                for workers in args.workers:
                    seconds = course_grade(nbgrader_dir / "submitted", scratch / f"grading-{workers}-{cold}", workers,
                                           cold)
                    flags = f"--workers {workers}" + (" --cold-kernels" if cold else "")
                    print(f"course grade {flags}: {seconds:.1f} s ({seconds / args.copies:.2f} s per "
                          f"submission); {baseline / seconds:.2f}x plain nbgrader's speed", flush=True)


if __name__ == "__main__":
    main()
