"""How fast `course grade` gets through a class, with 1 and with N workers.

Builds a class of COPIES submissions of one assignment (its solution, submitted as it is), grades it
once per worker count in a fresh grading folder, and prints seconds per submission and the speed-up.
Each submission costs a kernel start, the notebook's imports and its tests, so the speed-up is
bounded by the number of cores.

    python benchmarks/grading_throughput.py [--assignment 01_blocks_and_resnets] [--copies 6] [--workers 1 2]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_class(submitted: Path, source: Path, copies: int) -> None:
    for index in range(copies):
        folder = submitted / f"student{index:03d}" / source.stem
        folder.mkdir(parents=True)
        shutil.copyfile(source, folder / source.name)


def grade(submitted: Path, course_dir: Path, workers: int) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "course_lib.grading.cli", "grade", str(submitted), "--course-dir",
                    str(course_dir), "--workers", str(workers), "--no-progress"], cwd=ROOT, check=True,
                   capture_output=True, text=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assignment", default="01_blocks_and_resnets")
    parser.add_argument("--copies", type=int, default=6)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    source = ROOT / "solutions" / f"{args.assignment}.ipynb"
    with tempfile.TemporaryDirectory(prefix="course-bench-") as scratch:
        submitted = Path(scratch) / "submitted"
        build_class(submitted, source, args.copies)
        timings = {}
        for workers in args.workers:
            seconds = grade(submitted, Path(scratch) / f"grading-{workers}", workers)
            timings[workers] = seconds
            print(f"workers={workers}: {seconds:.1f} s for {args.copies} submissions "
                  f"({seconds / args.copies:.1f} s per submission)")
        base = timings[args.workers[0]]
        for workers, seconds in list(timings.items())[1:]:
            print(f"speed-up with {workers} workers vs {args.workers[0]}: {base / seconds:.2f}x")


if __name__ == "__main__":
    main()
