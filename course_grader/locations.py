"""Where the course's two packages live (a checkout or an installation), found without importing them."""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path


@functools.lru_cache(maxsize=None)
def package_dir(name: str) -> Path:
    """The folder of the package ``name`` (``course_lib``); importing it would import torch."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the package {name} is not installed (pip install -e . in the course's folder)")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def course_lib_dir() -> Path:
    """``course_lib``: what lessons, exercises and student kernels import."""
    return package_dir("course_lib")


#: This package's folder.
GRADER_DIR = Path(__file__).resolve().parent
#: The grader's only code a sandbox sees (`course_grader.sandboxed`), and the package's ``__init__`` above it.
SANDBOXED_DIR = GRADER_DIR / "sandboxed"
GRADER_INIT = GRADER_DIR / "__init__.py"


def import_paths() -> list[str]:
    """What a sandboxed process puts on ``PYTHONPATH``: the folders holding ``course_lib`` and this package."""
    paths = [str(course_lib_dir().parent), str(GRADER_DIR.parent)]
    return list(dict.fromkeys(paths))
