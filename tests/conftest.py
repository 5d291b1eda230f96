"""Test-suite set-up: Jupyter, IPython, matplotlib and torch write into a temporary home, never ~."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Set before anything imports jupyter_core / IPython / matplotlib / torch.hub.
_HOME = Path(tempfile.mkdtemp(prefix="course-tests-"))
for var, sub in {
    "JUPYTER_CONFIG_DIR": "jupyter-config",
    "JUPYTER_DATA_DIR": "jupyter-data",
    "JUPYTER_RUNTIME_DIR": "jupyter-runtime",
    "IPYTHONDIR": "ipython",
    "MPLCONFIGDIR": "matplotlib",
    "TORCH_HOME": "torch",
    # tests see no weight files a learner may keep in weights/: offline paths are tested as offline
    "COURSE_WEIGHTS_DIR": "weights",
}.items():
    (_HOME / sub).mkdir(parents=True, exist_ok=True)
    os.environ[var] = str(_HOME / sub)
os.environ["JUPYTER_PLATFORM_DIRS"] = "1"
os.environ["MPLBACKEND"] = "Agg"
os.environ["COURSE_QUICK"] = "1"
os.environ["COURSE_OFFLINE"] = "1"
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def one_thread():
    """torch on one thread for the test: small tensors on a busy machine run faster than on several
    threads fighting over the cores (the grader's own checks do the same)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: Each folder's tests, and the marker every test there carries (`pytest -m "not grading"` skips the grader's).
FOLDER_MARKERS = {"grader": "grading"}


def _sandbox_problem() -> str | None:
    from course_grader.sandbox import bwrap_problem

    return bwrap_problem()


def pytest_collection_modifyitems(config, items):
    """Mark the grader's tests ``grading``; where bubblewrap cannot run and the user is not root, tests
    that need the sandbox (marker ``sandbox``) are skipped with one line. As root (CI) they run and fail
    loudly: `make test` installs bubblewrap there."""
    problem = ...  # asked once, and only if a test needs it
    for item in items:
        folder = Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        if folder in FOLDER_MARKERS:
            item.add_marker(getattr(pytest.mark, FOLDER_MARKERS[folder]))
        if item.get_closest_marker("sandbox") is None or os.geteuid() == 0:
            continue
        if problem is ...:
            problem = _sandbox_problem()
        if problem:
            item.add_marker(pytest.mark.skip(reason=f"needs bubblewrap, the grader's sandbox: {problem}"))
