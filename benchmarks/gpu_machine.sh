#!/usr/bin/env bash
# The course's GPU checks on a lent GPU machine that has torch but no network, in two parts:
#
#   video    tests/project/test_cuda.py's detector and video tests (-m "cuda and not grading"), then
#            benchmarks/video_detection.py on cuda and on the machine's CPU (with the GPU/CPU ratio)
#   grading  tests/project/test_cuda.py's grading tests (-m "cuda and grading"): `course doctor` on a Dask GPU
#            worker and the six solutions graded by `course grade --executor dask --gpus-per-task 1`
#
# The machine lacks what these need (imageio-ffmpeg, pycocotools, torchinfo; nbgrader, nbclient,
# ipykernel, dask/distributed; bubblewrap), and one call carries at most 64 MiB with the working
# tree: so each part carries its own folder of wheels, prepared here where PyPI is reachable.
#
# Here, from the repository root (a helper's worktree has a .git file: rev-parse finds the folder):
#   for d in .whl-video .whl-grading; do echo "/$d/" >> "$(git rev-parse --git-path info/exclude)"; done
#   bash benchmarks/gpu_machine.sh wheels video .whl-video        # 26 MiB: ffmpeg's wheel is 25.7 of them
#   bash benchmarks/gpu_machine.sh wheels grading .whl-grading    # 28 MiB: 70 wheels and bubblewrap's .deb
# Then the device tool's `run`, one call per part. The machine stays warm for 30 s after a call: make
# the second call at once (one start for both). Each part stops its steps after 330 s (the step table
# still prints); with the start, the two together need about 13 of the session's 15 minutes:
#   run  command: bash benchmarks/gpu_machine.sh run video .whl-video      carry: [".whl-video"]    timeout_s: 420
#   run  command: bash benchmarks/gpu_machine.sh run grading .whl-grading  carry: [".whl-grading"]  timeout_s: 420
# The reply's output_tail ends with a table of the steps (status, seconds); each step's whole log
# comes back under files_at (written to $OUT there). Afterwards: rm -rf .whl-video .whl-grading
#
#   bash benchmarks/gpu_machine.sh run PART DIR --dry-run   installs and checks, then prints the steps
#   bash benchmarks/gpu_machine.sh list image|prune|video|grading|debs   the lists below, one entry a line
#   bash benchmarks/gpu_machine.sh ratio CPU_LOG CUDA_LOG   the GPU/CPU table of two video_detection.py logs
#
# `run` installs the wheels into the interpreter's own environment (the machine is thrown away after
# the session): the graded kernels run with a cleared environment in a sandbox that sees the Python
# environment but neither PYTHONPATH nor /tmp, and nbgrader runs `alembic` from the interpreter's
# bin folder. Wheels of packages the environment already has are skipped. GPU_MACHINE_TARGET=DIR
# installs into DIR with PYTHONPATH instead (the tests here do; grading would then not work).
# Exit status of `run`: the tests' (0: all passed, none skipped); 2: bad arguments or wheels;
# 3: no CUDA GPU. The benchmarks' status is reported, not returned.
#
# Environment: GPU_MACHINE_PYTHON (run: default /opt/torch/.venv/bin/python3, else python3),
# GPU_MACHINE_PIP_PYTHON (wheels: default python3.12, else .venv/bin/python, else python3),
# GPU_MACHINE_PY_VERSION (the machine's Python, default 3.12), GPU_MACHINE_BUDGET_S (run: seconds for
# the whole part, default 330), GPU_MACHINE_MAX_MIB (wheels: the size limit; default 60 MiB, or
# 63 MiB less the working tree's size where that is smaller: the tree travels in the same call),
# GPU_MACHINE_FIND_LINKS (wheels: a local folder of wheels instead of PyPI; the tests use it),
# GPU_MACHINE_ALLOW_NO_GPU=1 (run: the steps even without a GPU, where the CUDA tests skip and so
# fail; the tests of this script use it).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

# --- what the GPU image already holds ------------------------------------------------------------
# /work/.library/device/KINDS.md, "Python packages already there" (nvidia-h100-x1 and nvidia-h200,
# image 'cuda'), as last read on a machine running it on 2026-11-17. Their wheels are not carried.
IMAGE_PACKAGES_READ=2026-11-17
IMAGE_PACKAGES=(
  absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
  certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
  cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils
  execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py
  hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
  jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
  lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib
  mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
  narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
  nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
  nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
  nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
  opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas
  pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow
  pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark
  pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex
  requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
  sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
  statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
  tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision
  tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
  wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
)

# --- what each part carries ----------------------------------------------------------------------
# Requirements with the pyproject's ranges; constraints.txt's pins replace them where it pins the name.
# imageio-ffmpeg 0.5.1: the newest whose wheel fits (26 MiB; ffmpeg 4.2.2, which the course's video
# code supports: `-vsync` before ffmpeg 5.1); 0.6 and later ship ffmpeg 7 in 29-65 MiB wheels.
VIDEO_REQUIREMENTS=("imageio-ffmpeg==0.5.1" "pycocotools>=2.0.7" "torchinfo>=1.8")
GRADING_REQUIREMENTS=("nbgrader>=0.9.6,<0.10" "nbclient>=0.9" "nbformat>=5.9" "ipykernel" "jupyter-client"
                      "dask" "distributed>=2024.1")
# Debian packages carried with the grading part: bubblewrap (the grader's sandbox) and the libraries
# it links, used only where the machine lacks them. Unpacked into a folder (dpkg -x), never into /.
GRADING_DEBS=(bubblewrap libcap2 libselinux1 libpcre2-8-0)

# Packages that grading never imports, with why; what only they need goes too (the closure is
# walked without them). Each was checked by importing and running what grading runs without it.
PRUNE=(
  "jupyterlab|the JupyterLab application: grading starts no notebook server (16.5 MB, with babel 10.5 MB via jupyterlab-server)"
  "notebook|the classic Notebook application: no server either (5.4 MB)"
  "jupyterlab-server|JupyterLab's server side, only for jupyterlab and notebook"
  "ipywidgets|interactive widgets: only course_lib.widgets uses them, in the lessons, never in grading (with widgetsnbextension 2.1 MB)"
  "debugpy|ipykernel's debugger: optional there (ipykernel.debugger catches its ImportError); graded kernels are never debugged (5.1 MB)"
  "jedi|IPython's tab completion: optional there (found lazily); graded kernels complete nothing (4.7 MB with parso)"
)

# Seconds per part, everything included. Measured here on 2 busy CPU cores with the carried wheels
# (the pruned grading set, Python 3.11 and torch on the CPU): `course doctor` on a Dask worker 20 s,
# the six solutions graded by Dask in the bubblewrap sandbox 69 s.
# shellcheck disable=SC2034  # read as DEFAULT_BUDGET_${PART}_S
DEFAULT_BUDGET_VIDEO_S=330
# shellcheck disable=SC2034
DEFAULT_BUDGET_GRADING_S=330
DEFAULT_MAX_MIB=60
#: The device tool's limit for the working tree and the carried folders of one call.
CALL_LIMIT_MIB=64

MANYLINUX_TAGS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64
                manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_12_x86_64 manylinux2010_x86_64
                manylinux_2_5_x86_64 manylinux1_x86_64)

die() { echo "gpu_machine.sh: $*" >&2; exit 2; }

usage() {
  sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

part_requirements() {  # PART -> the requirement lines, constraints.txt's pins applied
  local -a reqs
  case $1 in
    video) reqs=("${VIDEO_REQUIREMENTS[@]}") ;;
    grading) reqs=("${GRADING_REQUIREMENTS[@]}") ;;
    *) die "unknown part '$1' (expected video or grading)" ;;
  esac
  local req name pin
  for req in "${reqs[@]}"; do
    name=$(normalize "${req%%[<>=!~;[]*}")
    pin=""
    if [[ -f $ROOT/constraints.txt ]]; then
      pin=$(grep -v '^\s*#' "$ROOT/constraints.txt" | while read -r line; do
              [[ $line == *==* ]] || continue
              [[ $(normalize "${line%%==*}") == "$name" ]] && echo "$name==${line#*==}"
            done | head -n 1)
    fi
    echo "${pin:-$req}"
  done
}

normalize() { echo "$1" | tr '[:upper:]' '[:lower:]' | sed 's/[-_.]\{1,\}/-/g'; }

list() {
  case ${1:-} in
    image) printf '%s\n' "${IMAGE_PACKAGES[@]}" ;;
    prune) printf '%s\n' "${PRUNE[@]}" ;;
    video|grading) part_requirements "$1" ;;
    debs) printf '%s\n' "${GRADING_DEBS[@]}" ;;
    *) die "list what? image, prune, video, grading or debs" ;;
  esac
}

# --- Python helpers (run by whichever interpreter the step uses) ---------------------------------
read -r -d '' HELPER <<'PY'
import email, os, re, shutil, sys, zipfile
from pathlib import Path

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

def wheel_name(path):
    return norm(Path(path).name.split("-")[0])

def lines(var):
    return [x for x in os.environ.get(var, "").split("\n") if x.strip()]

def requirement_class():
    try:
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement
    return Requirement

def metadata(path):
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(z.read(name))

def marker_env(py):
    full = py if py.count(".") == 2 else py + ".3"
    return {"python_version": ".".join(full.split(".")[:2]), "python_full_version": full,
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "os_name": "posix", "platform_release": "", "platform_version": "", "implementation_version": full}

def select(part, downloaded, out):
    """Walk the requirements from the part's roots for the machine's Python, not into what the image
    has or what is pruned; copy the wheels walked to into `out`; say what was left and why."""
    Requirement = requirement_class()
    image = set(map(norm, lines("GM_IMAGE")))
    prune = {norm(e.split("|", 1)[0]): e.split("|", 1)[1] for e in lines("GM_PRUNE")}
    env = marker_env(os.environ.get("GM_PY", "3.12"))
    wheels = {}
    for path in sorted(Path(downloaded).glob("*.whl")):
        wheels.setdefault(wheel_name(path), []).append(path)
    problems = [f"two wheels of {n}: {', '.join(p.name for p in ps)}" for n, ps in wheels.items() if len(ps) > 1]
    needed_by, todo, seen = {}, [(Requirement(r), "(part)") for r in lines("GM_ROOTS")], set()
    wanted = {}  # the versions the carried packages ask of the machine's
    while todo:
        req, parent = todo.pop()
        name = norm(req.name)
        needed_by.setdefault(name, set()).add(parent)
        if name in image and str(req.specifier):
            wanted.setdefault(name, set()).add(str(req.specifier))
        key = (name, frozenset(req.extras))
        if key in seen or name in image or name in prune:
            continue
        seen.add(key)
        if name not in wheels:
            problems.append(f"{name} (needed by {parent}) was not downloaded")
            continue
        for line in metadata(wheels[name][0]).get_all("Requires-Dist") or []:
            dep = Requirement(line)
            extras = req.extras or {""}
            if dep.marker is None or any(dep.marker.evaluate({**env, "extra": e}) for e in extras):
                todo.append((dep, name))
    keep = sorted({n for n, _ in seen})
    if problems:
        for p in problems:
            print(f"gpu_machine.sh: {p}", file=sys.stderr)
        sys.exit(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in keep:
        shutil.copy2(wheels[name][0], out / wheels[name][0].name)
    mib = lambda paths: sum(p.stat().st_size for p in paths) / 2**20
    print(f"carried ({len(keep)} wheels, {mib([wheels[n][0] for n in keep]):.1f} MiB):")
    for name in sorted(keep, key=lambda n: -wheels[n][0].stat().st_size):
        print(f"  {wheels[name][0].stat().st_size / 2**20:6.2f} MiB  {wheels[name][0].name}")
    there = sorted(n for n in needed_by if n in image)
    print(f"already on the machine, not carried ({len(there)}): {', '.join(there)}")
    if wanted:  # what `pip check` there would flag if the machine's versions are older
        print("asked of the machine's versions: " + ", ".join(f"{n}{','.join(sorted(v))}" for n, v in sorted(wanted.items())))
    for name, why in prune.items():
        if name in needed_by:
            print(f"pruned: {name} (needed by {', '.join(sorted(needed_by[name]))}): {why}")
    rest = sorted(n for n in wheels if n not in keep and n not in image and n not in prune)
    if rest:
        print(f"left with the pruned or not needed on Python {env['python_version']} ({len(rest)}, "
              f"{mib([wheels[n][0] for n in rest]):.1f} MiB): {', '.join(rest)}")

def plan_install(folder):
    """The wheels in `folder` this interpreter does not have yet (one per line); one error line per problem."""
    from importlib import metadata as md
    wheels = {}
    for path in sorted(Path(folder).glob("*.whl")):
        wheels.setdefault(wheel_name(path), []).append(path)
    twice = [n for n, ps in wheels.items() if len(ps) > 1]
    if twice:
        print(f"gpu_machine.sh: two wheels of {', '.join(twice)} in {folder}: keep one of each", file=sys.stderr)
        sys.exit(2)
    target = os.environ.get("GPU_MACHINE_TARGET")
    installed = {}
    for dist in md.distributions(path=[target, *sys.path] if target else sys.path):
        installed.setdefault(norm(dist.metadata["Name"] or ""), dist.version)
    for name, (wheel,) in sorted(wheels.items()):
        if name in installed:
            print(f"already there, kept: {name} {installed[name]} (carried: {wheel.name})", file=sys.stderr)
        else:
            print(wheel)

def ratio(cpu_log, gpu_log):
    """GPU/CPU table from the two benchmark logs' first tables (course path, ms per frame)."""
    def rows(path):
        found = {}
        text = Path(path).read_text(errors="replace") if Path(path).exists() else ""
        for line in text.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 13 and cells[0] not in ("model", "---") and not cells[0].startswith("-"):
                try:
                    found[cells[0]] = (float(cells[6]), float(cells[7]))
                except ValueError:
                    pass
        return found
    cpu, gpu = rows(cpu_log), rows(gpu_log)
    if not gpu:
        print("no GPU/CPU ratio: the cuda benchmark printed no table")
        return
    print("| model | seed loop ms/frame cpu | cuda | course ms/frame cpu | cuda | cuda speed-up (course path) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, (seed_gpu, course_gpu) in gpu.items():
        seed_cpu, course_cpu = cpu.get(name, (float("nan"), float("nan")))
        print(f"| {name} | {seed_cpu:.1f} | {seed_gpu:.1f} | {course_cpu:.1f} | {course_gpu:.1f} | "
              f"{course_cpu / course_gpu:.1f}x |")

command = sys.argv[1]
if command == "select":
    select(*sys.argv[2:5])
elif command == "plan-install":
    plan_install(sys.argv[2])
elif command == "ratio":
    ratio(*sys.argv[2:4])
PY

helper() { local py=$1; shift; "$py" -c "$HELPER" "$@"; }

# --- wheels: here, where PyPI is reachable -------------------------------------------------------
pip_python() {
  if [[ -n ${GPU_MACHINE_PIP_PYTHON:-} ]]; then echo "$GPU_MACHINE_PIP_PYTHON"
  elif command -v "python${GPU_MACHINE_PY_VERSION:-3.12}" >/dev/null 2>&1 &&
       "python${GPU_MACHINE_PY_VERSION:-3.12}" -m pip --version >/dev/null 2>&1; then
    echo "python${GPU_MACHINE_PY_VERSION:-3.12}"
  elif [[ -x $ROOT/.venv/bin/python ]]; then echo "$ROOT/.venv/bin/python"
  else echo python3
  fi
}

tree_mib() {  # what else travels in a call: tracked and untracked-not-ignored files
  (cd "$ROOT" && git ls-files -z -co --exclude-standard 2>/dev/null) |
    (cd "$ROOT" && xargs -0 -r stat -c %s -- 2>/dev/null) | awk '{s += $1} END {printf "%.1f", s / 1048576}'
}

wheels() {
  local part=${1:-} out=${2:-}
  [[ -n $part && -n $out && $# -eq 2 ]] || die "usage: wheels video|grading DIR"
  local -a reqs
  mapfile -t reqs < <(part_requirements "$part") || exit 2
  [[ ${#reqs[@]} -gt 0 ]] || exit 2
  local py py_version=${GPU_MACHINE_PY_VERSION:-3.12}
  py=$(pip_python)
  if [[ -e $out ]] && find "$out" -mindepth 1 -maxdepth 1 ! -name '*.whl' ! -name '*.deb' | grep -q .; then
    die "$out holds other files than wheels and .deb files: give an empty or new folder"
  fi
  WHEELS_TMP=$(mktemp -d "${TMPDIR:-/tmp}/gpu-machine-wheels.XXXXXX") || exit 2
  trap 'rm -rf "$WHEELS_TMP"' EXIT
  local tmp=$WHEELS_TMP
  local -a platforms=() source=()
  local tag; for tag in "${MANYLINUX_TAGS[@]}"; do platforms+=(--platform "$tag"); done
  [[ -n ${GPU_MACHINE_FIND_LINKS:-} ]] && source=(--isolated --no-index --find-links "$GPU_MACHINE_FIND_LINKS")
  local running; running=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || die "cannot run $py"
  echo "downloading for CPython $py_version (manylinux x86_64) with $py (Python $running): ${reqs[*]}"
  [[ $running == "${py_version%.*}"* || $running == "$py_version" ]] ||
    echo "note: pip evaluates markers for Python $running; the walk below re-evaluates them for $py_version"
  "$py" -m pip download "${source[@]}" -q --disable-pip-version-check --only-binary=:all: \
    --python-version "$py_version" --implementation cp "${platforms[@]}" -d "$tmp/all" "${reqs[@]}" ||
    die "pip download failed (see above)"
  rm -f "$out"/*.whl "$out"/*.deb 2>/dev/null
  echo "the machine's packages: ${#IMAGE_PACKAGES[@]} names, as read on $IMAGE_PACKAGES_READ"
  GM_IMAGE=$(printf '%s\n' "${IMAGE_PACKAGES[@]}") GM_PRUNE=$(printf '%s\n' "${PRUNE[@]}") \
    GM_ROOTS=$(printf '%s\n' "${reqs[@]}") GM_PY=$py_version helper "$py" select "$part" "$tmp/all" "$out" || exit 1
  if [[ $part == grading ]]; then
    if command -v apt-get >/dev/null 2>&1; then
      local apt=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64)
      (cd "$out" && apt-get "${apt[@]}" download "${GRADING_DEBS[@]}" >/dev/null 2>&1) ||
        echo "note: apt-get could not download ${GRADING_DEBS[*]}: the grading tests will use --sandbox rlimits there"
      ls "$out"/*.deb 2>/dev/null | sed 's|.*/|carried: |'
    else
      echo "note: no apt-get here: bubblewrap is not carried, the grading tests will use --sandbox rlimits there"
    fi
  fi
  local size tree limit
  size=$(du -cbs "$out"/*.whl "$out"/*.deb 2>/dev/null | awk 'END {printf "%.1f", $1 / 1048576}')
  tree=$(tree_mib); tree=${tree:-0}
  limit=${GPU_MACHINE_MAX_MIB:-$(awk -v t="$tree" -v d=$DEFAULT_MAX_MIB -v c=$CALL_LIMIT_MIB \
    'BEGIN {l = c - 1 - t; if (l > d) l = d; printf "%.1f", l}')}
  echo "total: $size MiB in $out (limit $limit MiB: the working tree, $tree MiB, travels too; one call carries $CALL_LIMIT_MIB MiB)"
  if awk -v s="$size" -v l="$limit" 'BEGIN {exit !(s > l)}'; then
    echo "gpu_machine.sh: $out is $size MiB, above the limit of $limit MiB: prune more or split the part" >&2
    exit 1
  fi
  local full; full=$(cd "$out" && pwd)
  if [[ $full == "$ROOT"/* ]] && ! git -C "$ROOT" check-ignore -q "$full" 2>/dev/null; then
    echo "note: git does not ignore $out: run  echo \"/$(basename "$out")/\" >> \"\$(git rev-parse --git-path info/exclude)\""
  fi
  echo "device run: command: bash benchmarks/gpu_machine.sh run $part $(basename "$out")   carry: [\"$(basename "$out")\"]"
}

# --- run: there, on the GPU machine --------------------------------------------------------------
STEPS=()      # "name|status|seconds"
FAILED=0      # the tests' status
DRY=0

quoted() {  # the arguments as one would type them (those with spaces in double quotes)
  local arg out=()
  for arg; do if [[ $arg == *[[:space:]]* ]]; then out+=("\"$arg\""); else out+=("$arg"); fi; done
  echo "${out[*]}"
}

run_step() {  # KIND(test|bench) NAME CAP_SECONDS COMMAND...
  local kind=$1 name=$2 cap=$3; shift 3
  local left=$(( DEADLINE - SECONDS ))
  local limit=$(( cap < left ? cap : left ))
  if (( DRY )); then
    echo "would run: $name (limit ${cap}s): $(quoted "$@")"
    return 0
  fi
  if (( limit < 20 )); then
    echo "=== $name: not run, ${left}s left of the part's budget"
    STEPS+=("$name|not run (no time left)|0")
    [[ $kind == test ]] && FAILED=1
    return 0
  fi
  echo "=== $name (limit ${limit}s): $(quoted "$@")"
  local start=$SECONDS log="$LOGS/$PART-$name.log"
  timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]} status
  case $rc in
    0) if [[ $kind == test ]]; then status=passed; else status="done"; fi ;;
    124|137) status="TIMED OUT after ${limit}s" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  if [[ $kind == test ]]; then
    local skipped
    skipped=$(tail -n 5 "$log" | grep -oE '[0-9]+ skipped' | head -n 1)
    if [[ $rc == 0 && -n $skipped ]]; then status="FAILED ($skipped: every test must run here)"; rc=1; fi
    [[ $rc != 0 ]] && FAILED=1
  fi
  STEPS+=("$name|$status|$(( SECONDS - start ))")
}

install_wheels() {  # DIR
  local dir=$1
  local plan; local -a wheels=()
  plan=$(helper "$PY" plan-install "$dir") || exit 2
  [[ -n $plan ]] && mapfile -t wheels <<<"$plan"
  if [[ -n ${GPU_MACHINE_TARGET:-} ]]; then
    mkdir -p "$GPU_MACHINE_TARGET"
    export PYTHONPATH="$GPU_MACHINE_TARGET${PYTHONPATH:+:$PYTHONPATH}" PATH="$GPU_MACHINE_TARGET/bin:$PATH"
  fi
  if [[ ${#wheels[@]} -eq 0 ]]; then
    echo "installed 0 wheels: the environment has every package in $dir"
    return 0
  fi
  local -a where=()
  [[ -n ${GPU_MACHINE_TARGET:-} ]] && where=(--target "$GPU_MACHINE_TARGET")
  "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-warn-script-location \
    --root-user-action=ignore "${where[@]}" "${wheels[@]}" ||
    die "pip could not install the wheels of $dir into ${GPU_MACHINE_TARGET:-$("$PY" -c 'import sys; print(sys.prefix)')} (the video part also works with GPU_MACHINE_TARGET=/tmp/site; grading does not)"
  echo "installed ${#wheels[@]} wheel(s) into ${GPU_MACHINE_TARGET:-$("$PY" -c 'import sys; print(sys.prefix)')}"
  if [[ -z ${GPU_MACHINE_TARGET:-} ]]; then  # conflicts with the machine's versions; the pruned ones are expected
    local pruned; pruned=$(printf '%s\n' "${PRUNE[@]}" | cut -d'|' -f1 | paste -sd'|')
    "$PY" -m pip check 2>&1 | grep -vE "^course-lib |requires ($pruned), which is not installed" |
      grep -v '^No broken requirements' | head -n 15 | sed 's/^/pip check: /'
  fi
  return 0
}

report_machine() {  # and the GPU check: "no CUDA GPU here: ..." (exit 3; a note with --dry-run)
  echo "--- machine"
  if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L; else echo "nvidia-smi: not found"; fi
  echo "$(uname -srm); $(ldd --version 2>/dev/null | head -n 1); $(nproc) CPUs; user $(id -un)"
  local no_gpu=$SCRATCH/no-gpu
  "$PY" - "$no_gpu" <<'EOF' || echo "torch does not import (see above)" > "$no_gpu"
import os, sys
import torch, torchvision
print(f"python {sys.version.split()[0]} at {sys.executable}; torch {torch.__version__} (CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}), torchvision {torchvision.__version__}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"cuda: {torch.cuda.device_count()} device(s); 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, "
          f"capability {p.major}.{p.minor}, {p.multi_processor_count} SMs")
else:
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    with open(sys.argv[1], "w") as reason:
        reason.write(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device"
                     + (f" (CUDA_VISIBLE_DEVICES={seen!r})" if seen is not None else "") + "\n")
EOF
  [[ -s $no_gpu ]] || return 0
  echo "no CUDA GPU here: $(head -n 1 "$no_gpu")" >&2
  (( DRY )) || [[ ${GPU_MACHINE_ALLOW_NO_GPU:-} == 1 ]] || exit 3
}

preflight_video() {
  echo "--- preflight"
  "$PY" - <<'EOF' || die "the video part's packages do not import (see above)"
import subprocess, imageio_ffmpeg, pycocotools.coco, torchinfo
exe = imageio_ffmpeg.get_ffmpeg_exe()
banner = subprocess.run([exe, "-version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
print(f"ffmpeg: {exe}: {banner}; imageio-ffmpeg {imageio_ffmpeg.__version__}; torchinfo, pycocotools import")
EOF
}

setup_sandbox_tools() {  # DIR: bubblewrap from the carried .deb where the machine has none
  local dir=$1 tools=/tmp/gpu-machine-tools
  if ! command -v bwrap >/dev/null 2>&1 && ls "$dir"/bubblewrap_*.deb >/dev/null 2>&1; then
    if command -v dpkg-deb >/dev/null 2>&1; then
      rm -rf "$tools" && mkdir -p "$tools"
      dpkg-deb -x "$dir"/bubblewrap_*.deb "$tools"
      export PATH="$PATH:$tools/usr/bin"
      if ! bwrap --version >/dev/null 2>&1; then  # a library missing: the carried ones, for bwrap alone
        local deb; for deb in "$dir"/lib*.deb; do dpkg-deb -x "$deb" "$tools/libs"; done
        mv "$tools/usr/bin/bwrap" "$tools/usr/bin/bwrap.real"
        printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' \
          "$(find "$tools/libs" -name '*.so*' -printf '%h\n' | sort -u | paste -sd:)" "$tools/usr/bin/bwrap.real" \
          > "$tools/usr/bin/bwrap"
        chmod +x "$tools/usr/bin/bwrap"
      fi
    else
      echo "note: no dpkg-deb here: the carried bubblewrap stays packed"
    fi
  fi
  local tool; for tool in bwrap prlimit setpriv; do
    echo "$tool: $(command -v "$tool" || echo 'not found')"
  done
  if command -v bwrap >/dev/null 2>&1; then  # the probe tests/project/test_cuda.py makes to choose the sandbox
    local probe
    if probe=$(bwrap --ro-bind / / --unshare-all true 2>&1); then
      echo "bwrap starts a sandbox here: the tests grade with --sandbox required"
    else
      echo "bwrap cannot start a sandbox here (${probe##*$'\n'}): the tests grade with --sandbox rlimits"
    fi
  fi
  # Sandboxed kernels get a cleared environment: CUDA's driver must be found without LD_LIBRARY_PATH,
  # through the linker cache, as on a grading host. Where this machine finds it only through
  # LD_LIBRARY_PATH, its folders go into the cache (said aloud: a grading host needs the same).
  local cached; cached=$(ldconfig -p 2>/dev/null | grep -c 'libcuda\.so')
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}; libcuda in the linker cache: $cached entries"
  if [[ $cached == 0 ]]; then
    local folder; local -a found=() folders=()
    IFS=: read -ra folders <<<"${LD_LIBRARY_PATH:-}"
    for folder in "${folders[@]}"; do [[ -n $folder && -e $folder/libcuda.so.1 ]] && found+=("$folder"); done
    if (( ${#found[@]} && ! DRY )) && [[ ! -s $SCRATCH/no-gpu && -w /etc/ld.so.conf.d ]]; then  # a GPU machine only
      printf '%s\n' "${found[@]}" > /etc/ld.so.conf.d/zz-gpu-machine-cuda.conf && ldconfig
      echo "note: libcuda was found only through LD_LIBRARY_PATH, which sandboxed kernels do not get:" \
           "added ${found[*]} to the linker cache (/etc/ld.so.conf.d/zz-gpu-machine-cuda.conf)"
    else
      echo "warning: sandboxed kernels (cleared environment) may not find CUDA's driver${found:+ (in ${found[*]})}"
    fi
  fi
}

preflight_grading() {
  echo "--- preflight"
  "$PY" - <<'EOF' || die "the grading part's packages do not import (see above)"
import shutil, sys
from pathlib import Path
import distributed, ipykernel, jupyter_client, nbclient, nbconvert, nbformat, nbgrader
from nbgrader.apps import NbGraderAPI  # noqa: F401  (what nbgrader's own command imports)
from nbgrader.converters import Autograde, GenerateAssignment, GenerateFeedback  # noqa: F401
from nbgrader.preprocessors import Execute  # noqa: F401
from jupyter_client.kernelspec import KernelSpecManager
alembic = shutil.which("alembic", path=str(Path(sys.executable).parent))
print(f"nbgrader {nbgrader.__version__}, nbclient {nbclient.__version__}, ipykernel {ipykernel.__version__}, "
      f"distributed {distributed.__version__}; kernels: {', '.join(KernelSpecManager().find_kernel_specs())}; "
      f"alembic: {alembic or 'NOT in ' + str(Path(sys.executable).parent)}")
EOF
}

run_part() {
  local dir=${2:-} part=${1:-}
  [[ $# -ge 2 ]] || die "usage: run video|grading DIR [--dry-run]"
  shift 2
  local arg; for arg in "$@"; do
    case $arg in --dry-run) DRY=1 ;; *) die "unknown option $arg" ;; esac
  done
  case $part in video|grading) ;; *) die "unknown part '$part' (expected video or grading)" ;; esac
  [[ -d $dir ]] || die "no folder $dir (made here by: bash benchmarks/gpu_machine.sh wheels $part $dir)"
  dir=$(cd "$dir" && pwd)
  ls "$dir"/*.whl >/dev/null 2>&1 || die "no .whl files in $dir"
  PART=$part
  local budget_var=DEFAULT_BUDGET_${part^^}_S
  DEADLINE=$(( SECONDS + ${GPU_MACHINE_BUDGET_S:-${!budget_var}} ))
  PY=${GPU_MACHINE_PYTHON:-}
  if [[ -z $PY ]]; then
    if [[ -x /opt/torch/.venv/bin/python3 ]]; then PY=/opt/torch/.venv/bin/python3; else PY=python3; fi
  fi
  LOGS=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-machine-logs.XXXXXX")}
  mkdir -p "$LOGS"
  cd "$ROOT" || exit 2
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 COURSE_OFFLINE=1
  local bin; bin=$(command -v "$PY") || die "no Python $PY"
  PATH="$(dirname "$bin"):$PATH"  # pytest, course and alembic of this environment
  SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu-machine-home.XXXXXX")
  trap 'rm -rf "$SCRATCH"' EXIT
  export MPLCONFIGDIR=$SCRATCH/matplotlib TORCH_HOME=$SCRATCH/torch MPLBACKEND=Agg  # the benchmarks' (tests set their own)

  echo "=== gpu_machine.sh run $part: budget $(( DEADLINE - SECONDS ))s; logs in $LOGS"
  local start=$SECONDS
  install_wheels "$dir"
  STEPS+=("install|done|$(( SECONDS - start ))")
  report_machine
  local pytest=("$PY" -m pytest tests/project/test_cuda.py -p no:cacheprovider --durations=5)
  if [[ $part == video ]]; then
    preflight_video
    run_step test tests-video 240 "${pytest[@]}" -m "cuda and not grading"
    local bench=("$PY" benchmarks/video_detection.py --threads 0 --repeats 2)
    run_step bench benchmark-cuda 120 "${bench[@]}" --device cuda
    run_step bench benchmark-cpu 150 "${bench[@]}" --device cpu
    if (( ! DRY )); then
      echo "--- GPU and CPU, the same detectors and frames (milliseconds per frame, end to end)"
      helper "$PY" ratio "$LOGS/video-benchmark-cpu.log" "$LOGS/video-benchmark-cuda.log"
    fi
  else
    setup_sandbox_tools "$dir"
    preflight_grading
    run_step test tests-grading 300 "${pytest[@]}" -m "cuda and grading"
  fi
  (( DRY )) && exit 0
  echo "--- gpu_machine.sh run $part: steps"
  echo "| step | status | seconds |"
  echo "| --- | --- | ---: |"
  local step; for step in "${STEPS[@]}"; do echo "| ${step//|/ | } |"; done
  echo "tests: $([[ $FAILED == 0 ]] && echo passed || echo FAILED); $SECONDS s in all"
  exit $FAILED
}

case ${1:-} in
  wheels) shift; wheels "$@" ;;
  run) shift; run_part "$@" ;;
  list) shift; list "$@" ;;
  ratio) shift; [[ $# == 2 ]] || die "usage: ratio CPU_LOG CUDA_LOG"; helper "${GPU_MACHINE_PYTHON:-python3}" ratio "$@" ;;
  *) usage ;;
esac
