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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="course", description="Tools for the course 'From CNN blocks to object detectors'.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("notebooks", help="check or fix every notebook's Colab badge and set-up cell")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="report notebooks that are out of date (default)")
    mode.add_argument("--fix", action="store_true", help="rewrite them")
    p.set_defaults(func=_cmd_notebooks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
