"""The "Open in Colab" badge and the Colab-only set-up cell that open every notebook.

Every notebook starts with a markdown cell holding its title and badge, then a code cell that
installs the course on Colab and does nothing anywhere else. Both are generated here from
`course_lib.config`, so the repository address is written by hand in one place only;
`course notebooks --fix` rewrites them and `course notebooks --check` (run by the tests) reports drift.
"""
from __future__ import annotations

import re
from pathlib import Path

from . import config

BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
SETUP_MARKER = "# Colab set-up"
_BADGE_RE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")


def badge_markdown(notebook_path: str) -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({config.colab_url(notebook_path)})"


def setup_cell_source() -> str:
    packages = " ".join(config.COLAB_EXTRA_PACKAGES)
    url = config.repository_url()
    return (
        f"{SETUP_MARKER}: fetches the course code on Colab only; elsewhere this cell does nothing.\n"
        "import sys\n"
        "if \"google.colab\" in sys.modules:\n"
        f"    !git clone -q --depth 1 --branch {config.BRANCH} {url} /content/course || git -C /content/course pull -q\n"
        f"    %pip install -q {packages}\n"
        "    sys.path.insert(0, \"/content/course\")"
    )


def published_path(repo_relative: str) -> str:
    """Where learners open a notebook: instructor sources in solutions/ are released to exercises/."""
    path = Path(repo_relative)
    if path.parts and path.parts[0] == "solutions":
        path = Path("exercises", *path.parts[1:])
    return path.as_posix()


def stamp(nb, repo_relative: str) -> bool:
    """Put the current badge and set-up cell into notebook ``nb`` (an nbformat node). True if it changed."""
    import nbformat

    cells = nb.cells
    if not cells or cells[0].cell_type != "markdown":
        raise ValueError(f"{repo_relative}: the first cell must be a markdown title cell")
    changed = False
    title = cells[0].source
    badge = badge_markdown(published_path(repo_relative))
    if _BADGE_RE.search(title):
        new_title = _BADGE_RE.sub(lambda _: badge, title)
    else:
        new_title = title.rstrip() + "\n\n" + badge
    if new_title != title:
        cells[0].source = new_title
        changed = True
    setup = setup_cell_source()
    if len(cells) > 1 and cells[1].cell_type == "code" and cells[1].source.startswith(SETUP_MARKER):
        if cells[1].source != setup:
            cells[1].source = setup
            changed = True
    else:
        cells.insert(1, nbformat.v4.new_code_cell(setup))
        changed = True
    return changed


def check_or_fix(paths: list[Path], root: Path, fix: bool) -> list[str]:
    """Stamp (``fix=True``) or check the given notebooks; returns the repo-relative paths that drifted."""
    import nbformat

    drifted = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        rel = path.resolve().relative_to(root.resolve()).as_posix()
        if stamp(nb, rel):
            drifted.append(rel)
            if fix:
                nbformat.write(nb, path)
    return drifted
