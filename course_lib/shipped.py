"""The course's own trained detectors (``data/*.pt``), found in a checkout or in an installation.

In a checkout they are in ``data/`` beside ``course_lib``; ``pip install`` puts them in
``<prefix>/share/cnn-blocks-to-detectors/`` (pyproject's data files), where ``<prefix>`` is the
environment's (or the one given to ``pip install --prefix``). ``COURSE_DATA_DIR`` names another
folder, searched first.
"""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path

#: A folder searched first for the course's files (e.g. a classroom's shared copy).
DATA_DIR_ENV = "COURSE_DATA_DIR"
#: Where an installation keeps them, under its prefix.
INSTALLED_DATA = Path("share", "cnn-blocks-to-detectors")
#: The package's folder; in an installation it is ``<prefix>/lib/pythonX.Y/site-packages/course_lib``.
_PACKAGE = Path(__file__).resolve().parent


def data_dirs() -> list[Path]:
    """The folders searched for the course's files, in order."""
    dirs = [Path(os.environ[DATA_DIR_ENV])] if os.environ.get(DATA_DIR_ENV) else []
    dirs.append(_PACKAGE.parent / "data")  # a checkout (or an editable install)
    dirs.append(Path(sysconfig.get_path("data")) / INSTALLED_DATA)  # this interpreter's environment
    if len(_PACKAGE.parents) > 3:  # an installation under another prefix (pip install --prefix)
        dirs.append(_PACKAGE.parents[3] / INSTALLED_DATA)
    return list(dict.fromkeys(dirs))


def shipped_file(name: str) -> Path:
    """Where the course's file ``name`` is (the first folder of `data_dirs` that has it); the checkout's
    ``data/`` path if none does (so that a message can say where to write it)."""
    for folder in data_dirs():
        if (folder / name).is_file():
            return folder / name
    return _PACKAGE.parent / "data" / name


def missing_file_message(path: Path, what: str, command: str, searched: bool = True) -> str:
    """One line: ``what`` is not at ``path`` (``searched``: nor in any of `data_dirs`), and the command
    that recreates it."""
    where = f"looked in {', '.join(str(d) for d in data_dirs())}" if searched else f"no file {path}"
    return f"{what} not found ({where}); recreate it with `{command} --out {path}`"


__all__ = ["DATA_DIR_ENV", "INSTALLED_DATA", "data_dirs", "missing_file_message", "shipped_file"]
