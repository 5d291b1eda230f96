"""Build the course site: every lesson executed, with its printed results and pictures, as static HTML.

    python book/build.py                      # all lessons, quick and offline mode -> _build/html
    python book/build.py --full               # the lessons' full configuration (long training)
    python book/build.py --lesson 01 --out DIR

Jupyter Book 1 (Sphinx + MyST-NB) builds it; book/_config.yml and book/_toc.yml describe the site.
The lessons run in their quick configuration (COURSE_QUICK=1) and offline (COURSE_OFFLINE=1) unless
--full or --online is given, with figures rendered inline whatever MPLBACKEND says.
"""
from __future__ import annotations

import argparse
import os
import runpy
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def lesson_files(selected: list[str]) -> list[str]:
    """Toc entries (``notebooks/NN_name``) of the lessons whose file name starts with one of ``selected``."""
    config = runpy.run_path(str(ROOT / "course_lib" / "config.py"))
    lessons = sorted((ROOT / config["LESSONS_DIR"]).glob(config["LESSON_GLOB"]))
    chosen = [p for p in lessons if not selected or any(p.name.startswith(s) for s in selected)]
    unknown = [s for s in selected if not any(p.name.startswith(s) for p in lessons)]
    if unknown:
        raise SystemExit(f"--lesson {' '.join(unknown)}: no lesson file starts with that; lessons: "
                         + ", ".join(p.name for p in lessons))
    return [p.relative_to(ROOT).with_suffix("").as_posix() for p in chosen]


def site_config(quick: bool, offline: bool) -> dict:
    """book/_config.yml with the repository address (written once, in course_lib/config.py) filled in."""
    course = runpy.run_path(str(ROOT / "course_lib" / "config.py"))
    cfg = yaml.safe_load((BOOK / "_config.yml").read_text(encoding="utf-8"))
    cfg["repository"].update(url=f"https://github.com/{course['REPOSITORY']}", branch=course["BRANCH"])
    mode = ("in their quick configuration (smaller models and shorter training than the full lessons)"
            if quick else "in their full configuration")
    where = "without network (pretrained weights replaced by random ones where a lesson says so)" if offline else ""
    substitutions = {"run_mode": f"{mode}{', ' + where if where else ''}."}
    cfg["parse"]["myst_substitutions"] = substitutions
    return cfg


def build(out: Path, lessons: list[str] | None = None, quick: bool = True, offline: bool = True,
          extra_env: dict[str, str] | None = None) -> Path:
    """Build the site into ``out`` (``out/_build/html``); returns that folder. Raises on a failed build."""
    out = Path(out).resolve()
    work = out / "_build" / "site-config"
    work.mkdir(parents=True, exist_ok=True)
    config_path = work / "_config.yml"
    config_path.write_text(yaml.safe_dump(site_config(quick, offline), sort_keys=False), encoding="utf-8")
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text(encoding="utf-8"))
    if lessons is not None:
        toc["chapters"] = [{"file": f} for f in lessons]
    toc_path = work / "_toc.yml"
    toc_path.write_text(yaml.safe_dump(toc, sort_keys=False), encoding="utf-8")

    env = dict(os.environ)
    env["MPLBACKEND"] = INLINE_BACKEND  # every figure becomes an image of its cell
    if quick:
        env["COURSE_QUICK"] = "1"
    else:
        env.pop("COURSE_QUICK", None)
    if offline:
        env["COURSE_OFFLINE"] = "1"
    else:
        env.pop("COURSE_OFFLINE", None)
    env.update(extra_env or {})
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    command = [str(jupyter_book) if jupyter_book.exists() else "jupyter-book", "build", str(ROOT),
               "--config", str(config_path), "--toc", str(toc_path), "--path-output", str(out)]
    result = subprocess.run(command, cwd=ROOT, env=env, check=False)
    html = out / "_build" / "html"
    if result.returncode != 0 or not (html / "index.html").is_file():
        raise RuntimeError(f"the site did not build (exit status {result.returncode}); see the messages above")
    return html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="run the lessons' full configuration (COURSE_QUICK unset)")
    parser.add_argument("--online", action="store_true", help="let lessons download pretrained weights")
    parser.add_argument("--lesson", nargs="+", default=None, metavar="NN",
                        help="build only these lessons (file-name prefixes, e.g. 01 03)")
    parser.add_argument("--out", type=Path, default=ROOT,
                        help="the site goes to OUT/_build/html (default: _build/html here)")
    args = parser.parse_args(argv)
    lessons = lesson_files(args.lesson) if args.lesson else None
    try:
        html = build(args.out, lessons, quick=not args.full, offline=not args.online)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"The course site is in {html} (open {html / 'index.html'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
