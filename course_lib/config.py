"""The course's configuration, in one place.

The repository address below is the only place it is written by hand: `course notebooks --fix`
stamps it into every notebook's "Open in Colab" badge and first cell, and the test suite checks
that the notebooks agree with it.
"""
from __future__ import annotations

#: GitHub "owner/name" of the course repository (forks change this line, then run `course notebooks --fix`).
REPOSITORY = "cnn-blocks-to-detectors/course"
#: Branch the Colab badges open.
BRANCH = "main"
#: The lessons: notebooks/NN_*.ipynb; sorted by name, the order of the README's lesson table.
LESSONS_DIR = "notebooks"
LESSON_GLOB = "[0-9][0-9]_*.ipynb"
#: Packages Colab does not preinstall; the first cell of every notebook installs them there.
COLAB_EXTRA_PACKAGES = ("torchinfo", "torchmetrics", "pycocotools")
#: Environment variable that selects the small, still-real configuration of long cells (tests set it).
QUICK_ENV = "COURSE_QUICK"
#: Environment variable that moves the course's own weights folder (default: weights/ at the course root).
WEIGHTS_DIR_ENV = "COURSE_WEIGHTS_DIR"
#: Environment variable naming a local mirror of pretrained weight files (a folder or a file:// URL).
WEIGHTS_MIRROR_ENV = "COURSE_WEIGHTS_MIRROR"


def repository_url() -> str:
    return f"https://github.com/{REPOSITORY}"


def colab_url(notebook_path: str) -> str:
    """The "Open in Colab" address of a notebook given by its path inside the repository."""
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/{notebook_path}"


def quick_mode() -> bool:
    """True when long cells should use their small configuration (set ``COURSE_QUICK=1``)."""
    import os

    return os.environ.get(QUICK_ENV, "").strip().lower() not in ("", "0", "false", "no")
#: Environment variable that makes pretrained-weight loading skip the network (tests set it).
OFFLINE_ENV = "COURSE_OFFLINE"


def offline() -> bool:
    """True when code must not try the network (set ``COURSE_OFFLINE=1``)."""
    import os

    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")
