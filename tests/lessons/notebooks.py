"""Execute a notebook headless, as a learner would run it top to bottom."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient


#: Environment for notebooks whose figures a test inspects: the inline backend (not the suite's Agg)
#: makes every figure an image output of its cell.
INLINE_FIGURES = {"MPLBACKEND": "module://matplotlib_inline.backend_inline"}


def execute_notebook(path: Path, timeout: int = 900, env: dict[str, str] | None = None) -> nbformat.NotebookNode:
    """Run every cell of ``path`` in a fresh kernel (working directory: the notebook's folder).

    Quick mode and offline mode come from the environment (tests/conftest.py sets them).
    Raises nbclient's CellExecutionError, naming the cell, if any cell fails.
    """
    nb = nbformat.read(path, as_version=4)
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(Path(path).parent)}},
        )
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def cell_outputs_text(nb: nbformat.NotebookNode) -> str:
    """All stream and text/plain outputs of an executed notebook, joined (for asserting on printed facts)."""
    parts = []
    for cell in nb.cells:
        # a printed line may arrive split over several stream chunks: join a cell's streams without separators
        streams = "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")
        parts.append(streams)
        parts += [out["data"]["text/plain"] for out in cell.get("outputs", []) if "text/plain" in out.get("data", {})]
    return "\n".join(parts)
