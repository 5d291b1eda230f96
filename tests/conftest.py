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
