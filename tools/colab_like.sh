#!/usr/bin/env bash
# Runs every lesson in an environment built like Google Colab's, to catch what breaks there only.
#
#   tools/colab_like.sh [--env DIR] [--python PYTHON] [--full] [NOTEBOOK ...]
#
# Colab preinstalls its own torch, numpy, ipywidgets 7 and IPython 7 and never installs the course's
# dependencies: its set-up cell only fetches the course code and the few packages Colab lacks
# (course_lib.config.COLAB_EXTRA_PACKAGES). This script reproduces that: a virtual environment
# (default _build/colab-like/) with Colab's versions pinned below, the course installed with
# `pip install --no-deps -e .` (so no nbgrader), then each lesson executed headless from a scratch
# working folder (Colab's /content), offline (COURSE_OFFLINE=1) and in quick mode unless --full is given.
# One line per lesson: ok / failed with the failing cell and its error, and the seconds it took.
# Exit status: 0 when every lesson ran, 1 when one failed, 2 when the environment could not be built.
#
# Python: Colab runs 3.12; the first of $COLAB_PYTHON, python3.12, python3.13, python3.14 (PATH, pyenv, /usr/bin)
# that is >= 3.12 is used. Where none exists, python3 on PATH is used and a line says so.
# The first run downloads a few GB (torch's CUDA wheels, as on Colab; 5.5 GB on disk); later runs reuse DIR.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_DIR="$ROOT/_build/colab-like"
PYTHON="${COLAB_PYTHON:-}"
QUICK=1
NOTEBOOKS=()

# What Colab preinstalls (the versions the course must work with). Kept as pins, not ranges:
# pip must not "upgrade" any of them while installing the rest.
COLAB_PINS=(
  "torch==2.11.0"
  "torchvision==0.26.0"
  "numpy==2.1.3"
  "ipywidgets==7.7.1"
  "ipython==7.34.0"
  "ipykernel==6.17.1"
  "jupyter-client==7.4.9"
)
# Also preinstalled on Colab (their versions follow from the pins above); nbclient runs the lessons.
COLAB_PREINSTALLED=(matplotlib seaborn scikit-image scipy imageio imageio-ffmpeg tqdm pillow nbformat nbclient)

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --env) ENV_DIR="$(realpath -m "$2")"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    --full) QUICK=0; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) NOTEBOOKS+=("$(realpath "$1")"); shift ;;
  esac
done
if [ ${#NOTEBOOKS[@]} -eq 0 ]; then
  while IFS= read -r nb; do NOTEBOOKS+=("$nb"); done < <(ls "$ROOT"/notebooks/[0-9][0-9]_*.ipynb)
fi

# --- an interpreter: Python >= 3.12 if there is one ---------------------------------------------
version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
at_least_312() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }
if [ -z "$PYTHON" ]; then
  candidates=()
  for v in 3.12 3.13 3.14; do  # Colab's own first
    command -v "python$v" >/dev/null 2>&1 && candidates+=("$(command -v "python$v")")
    for d in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v"*/bin; do [ -x "$d/python$v" ] && candidates+=("$d/python$v"); done
    [ -x "/usr/bin/python$v" ] && candidates+=("/usr/bin/python$v")
  done
  for c in "${candidates[@]}"; do
    if at_least_312 "$c" && "$c" -c 'import venv, ensurepip' 2>/dev/null; then PYTHON="$c"; break; fi
  done
  if [ -z "$PYTHON" ]; then
    PYTHON="$(command -v python3)"
    echo "note: no Python >= 3.12 with venv found (Debian: apt-get install python3.12-venv where offered);" \
         "using $PYTHON ($(version_of "$PYTHON")), Colab runs 3.12"
  fi
fi
PY_VERSION="$(version_of "$PYTHON")" || { echo "cannot run $PYTHON" >&2; exit 2; }

# --- the environment (rebuilt only when the pins or the interpreter change) ---------------------
VENV="$ENV_DIR/venv"
STAMP="$VENV/.colab-like-installed"
WANT="$PYTHON $PY_VERSION ${COLAB_PINS[*]} ${COLAB_PREINSTALLED[*]}"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "building the Colab-like environment in $VENV (Python $PY_VERSION from $PYTHON)"
  rm -rf "$VENV"
  mkdir -p "$ENV_DIR"
  "$PYTHON" -m venv "$VENV" || exit 2
  printf '%s\n' "${COLAB_PINS[@]}" > "$ENV_DIR/colab-pins.txt"
  # the packages the notebooks' set-up cell installs on Colab, read from the course's config
  extras="$("$PYTHON" -c 'import runpy, sys; print(" ".join(runpy.run_path(sys.argv[1])["COLAB_EXTRA_PACKAGES"]))' "$ROOT/course_lib/config.py")" || exit 2
  # (pip's notes about local index folders that hold no such package are left out)
  pip_install() { "$VENV/bin/python" -m pip install --quiet "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }
  {
    pip_install --upgrade pip &&
    # Colab's pre-installed set first, then (like the set-up cell's %pip) what it lacks, under the same pins.
    pip_install -c "$ENV_DIR/colab-pins.txt" "${COLAB_PINS[@]}" "${COLAB_PREINSTALLED[@]}" &&
    pip_install -c "$ENV_DIR/colab-pins.txt" $extras &&
    pip_install --no-deps -e "$ROOT"
  } || { echo "failed to build the environment in $VENV" >&2; exit 2; }
  echo "$WANT" > "$STAMP"
fi

# --- run the lessons ---------------------------------------------------------------------------
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/colab-like-XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT
for sub in content jupyter-config jupyter-data jupyter-runtime ipython matplotlib torch weights; do mkdir -p "$SCRATCH/$sub"; done
export JUPYTER_CONFIG_DIR="$SCRATCH/jupyter-config" JUPYTER_DATA_DIR="$SCRATCH/jupyter-data" \
       JUPYTER_RUNTIME_DIR="$SCRATCH/jupyter-runtime" JUPYTER_PLATFORM_DIRS=1 IPYTHONDIR="$SCRATCH/ipython" \
       MPLCONFIGDIR="$SCRATCH/matplotlib" TORCH_HOME="$SCRATCH/torch" COURSE_WEIGHTS_DIR="$SCRATCH/weights" \
       MPLBACKEND="module://matplotlib_inline.backend_inline" COURSE_OFFLINE=1 PYDEVD_DISABLE_FILE_VALIDATION=1
if [ "$QUICK" = 1 ]; then export COURSE_QUICK=1; else unset COURSE_QUICK; fi
mkdir -p "$ENV_DIR/executed"

"$VENV/bin/python" - "$SCRATCH/content" "$ENV_DIR/executed" "${NOTEBOOKS[@]}" <<'EOF'
import importlib.metadata as md
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

workdir, saved, notebooks = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
versions = ", ".join(f"{p} {md.version(p)}" for p in ("torch", "torchvision", "numpy", "ipywidgets", "ipython", "ipykernel"))
print(f"Python {sys.version.split()[0]}, {versions}; nbgrader installed: "
      f"{any(d.metadata['Name'] == 'nbgrader' for d in md.distributions())}", flush=True)


def failing_cell(nb):
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                first = next((l for l in cell.source.splitlines() if l.strip() and not l.startswith("#")), "")
                return f"cell {index} ({first.strip()[:60]!r}): {out['ename']}: {str(out['evalue']).splitlines()[0][:300] if out['evalue'] else ''}"
    return None


failed = 0
for path in notebooks:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    client = NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": workdir}})
    try:
        client.execute()
        verdict = "ok"
    except (CellExecutionError, CellTimeoutError, RuntimeError) as exc:
        failed += 1
        verdict = "failed  " + (failing_cell(nb) or f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}")
    seconds = time.perf_counter() - start
    nbformat.write(nb, saved / Path(path).name)
    print(f"{Path(path).name:45s} {seconds:7.1f} s  {verdict}", flush=True)
print(f"{len(notebooks) - failed}/{len(notebooks)} lessons ran; executed copies in {saved}")
sys.exit(1 if failed else 0)
EOF
