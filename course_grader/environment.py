"""The process environment nbgrader and its kernels run in: nothing lands in the user's home.

Jupyter, IPython and matplotlib write configuration, runtime files and caches under the user's home
by default. Grading points them at a folder it is told instead (inside the grading folder, so that
matplotlib's font cache survives between runs), makes the environment's own executables (nbgrader
calls `alembic`) and the course package importable from the kernels, and silences the chatter of
libraries that would otherwise bury the progress bar.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

#: Environment variables pointed into the grading folder, and the sub-folder each one gets.
ISOLATED_DIRS = {
    "JUPYTER_CONFIG_DIR": "jupyter-config",
    "JUPYTER_DATA_DIR": "jupyter-data",
    "JUPYTER_RUNTIME_DIR": "jupyter-runtime",
    "IPYTHONDIR": "ipython",
    "MPLCONFIGDIR": "matplotlib",
}


def _prepend_path(variable: str, folder: str) -> str:
    current = os.environ.get(variable, "")
    parts = [p for p in current.split(os.pathsep) if p]
    if folder in parts:
        return current
    return os.pathsep.join([folder, *parts])


@contextlib.contextmanager
def isolated_environment(home: Path, course_root: Path | None = None) -> Iterator[None]:
    """Set Jupyter/IPython/matplotlib folders under ``home`` for the duration (restored after).

    Processes started inside (the grading pool's workers, their kernels) inherit the settings.
    ``course_root``, if given, is put on the kernels' PYTHONPATH so `course_lib` imports even when
    it is not installed.
    """
    home = Path(home).resolve()
    wanted = {var: str(home / sub) for var, sub in ISOLATED_DIRS.items()}
    for folder in wanted.values():
        Path(folder).mkdir(parents=True, exist_ok=True)
    wanted["JUPYTER_PLATFORM_DIRS"] = "1"
    wanted["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # a debugger warning every kernel would print
    # nbgrader runs `alembic` from PATH when it creates a gradebook: use this environment's.
    wanted["PATH"] = _prepend_path("PATH", str(Path(sys.executable).parent))
    if course_root is not None:
        wanted["PYTHONPATH"] = _prepend_path("PYTHONPATH", str(Path(course_root).resolve()))
    with restored_environment(wanted):
        os.environ.update(wanted)
        yield


@contextlib.contextmanager
def restored_environment(names) -> Iterator[None]:
    """When the block ends, put the environment variables ``names`` back as they were (or unset them)."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_QUIETED = False


def quiet_libraries() -> None:
    """Silence warnings from nbgrader's database layer and the kernels' start-up notices (once)."""
    global _QUIETED
    if _QUIETED:
        return
    _QUIETED = True
    warnings.filterwarnings("ignore", module=r"nbgrader\..*")
    warnings.filterwarnings("ignore", message=r".*not in session.*")  # SQLAlchemy, raised inside nbgrader
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(jupyter_client|traitlets|zmq)\..*")


class ListHandler(logging.Handler):
    """Keeps formatted log lines in memory (nbgrader reports problems only through its log)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        self.lines.append(text)
        if record.levelno >= logging.ERROR:
            self.errors.append(record.getMessage())


def capturing_logger(name: str) -> tuple[logging.Logger, ListHandler]:
    """A logger for one nbgrader run whose lines are kept (and not printed)."""
    logger = logging.getLogger(f"course.grading.{name}")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = ListHandler()
    logger.addHandler(handler)
    return logger, handler
