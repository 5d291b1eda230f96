"""benchmarks/gpu_machine.sh: the GPU machine's prepared script, checked without a GPU or the network.

The script carries wheels to a machine with torch but no network (`wheels`, here) and runs the CUDA
tests and the video benchmark there (`run`). These tests build tiny wheels of their own, so that
`wheels` resolves them from a local folder and `run` installs them into a temporary folder, and
check that what grading and the video path import stays reachable after the prune list is applied.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_machine.sh"
NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")  # normalised (PEP 503) distribution names
IMPORT = re.compile(r"^\s*(?:from\s+([A-Za-z_][\w.]*)\s+import\b|import\s+([A-Za-z_][\w.]*(?:\s*,\s*[A-Za-z_][\w.]*)*))",
                    re.M)
#: course_lib's files the video part does not need on the GPU machine, and why.
NOT_VIDEO = {"lab.py": "starts JupyterLab",
             "widgets": "the lessons' widgets"}
#: Distributions the video part's code imports only in a notebook (course_lib.data.video.show_video).
NOTEBOOK_ONLY = {"ipython"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def script(*args: str, env: dict[str, str] | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    # The test machine's own pip settings (extra indexes, find-links) must not reach the local folders.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "GPU_MACHINE_", "OUT"))}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**base, "PIP_CONFIG_FILE": os.devnull, **(env or {})})


def listed(what: str) -> list[str]:
    result = script("list", what)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def make_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = (), size: int = 0) -> Path:
    """A pure-Python wheel of one module `<name>.py` (VALUE = version), with correct RECORD hashes."""
    dist = re.sub(r"[-.]+", "_", name)
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}.py": f"VALUE = {version!r}\nPADDING = {'x' * size!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                            + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = ""
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record += f"{path},sha256={digest},{len(text.encode())}\n"
    files[f"{info}/RECORD"] = record + f"{info}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def no_gpu_env(tmp_path: Path) -> dict[str, str]:
    """`run` with this test's Python, installing into a temporary folder, with every GPU hidden."""
    return {"GPU_MACHINE_PYTHON": sys.executable, "GPU_MACHINE_TARGET": str(tmp_path / "site"),
            "CUDA_VISIBLE_DEVICES": "", "OUT": str(tmp_path / "out")}


# --------------------------------------------------------------------------- the script and its lists


def test_the_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_image_list_is_dated_normalised_unique_and_holds_what_run_needs():
    assert re.search(r"^IMAGE_PACKAGES_READ=\d{4}-\d{2}-\d{2}$", SCRIPT.read_text(), re.M)
    image = listed("image")
    assert len(image) == len(set(image)) > 100
    assert [n for n in image if not NAME.match(n)] == []
    assert {"torch", "torchvision", "numpy", "pytest", "pip", "scipy", "imageio", "matplotlib"} <= set(image)


def test_each_prune_entry_names_a_package_and_why_and_none_is_on_the_machine():
    entries = [line.split("|", 1) for line in listed("prune")]
    assert entries and all(len(e) == 2 and NAME.match(e[0]) and len(e[1].split()) >= 3 for e in entries), entries
    assert not {name for name, _ in entries} & set(listed("image"))


def test_the_parts_pin_what_constraints_txt_pins_and_carry_nothing_the_machine_has():
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    pins = {norm(k): v for k, v in pins.items()}
    image = set(listed("image"))
    for part in ("video", "grading"):
        for line in listed(part):
            requirement = Requirement(line)
            name = norm(requirement.name)
            assert name not in image, f"{part} asks for {name}, which the machine has"
            if name in pins:
                assert str(requirement.specifier) == f"=={pins[name]}", (part, line)


def test_every_dependency_of_the_course_is_on_the_machine_carried_or_pruned():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    needed = [*project["dependencies"], *extras["grader"], *extras["cluster"]]
    known = set(listed("image")) | {norm(line.split("|")[0]) for line in listed("prune")}
    known |= {norm(Requirement(line).name) for part in ("video", "grading") for line in listed(part)}
    assert [r for r in needed if norm(Requirement(r).name) not in known] == []


def _reachable(roots: list[str], image: set[str], prune: set[str]) -> set[str]:
    """Distributions a part installs: its requirements' closure (installed metadata), not entering
    what the machine has or what is pruned."""
    environment, seen, todo = default_environment(), set(), [Requirement(r) for r in roots]
    while todo:
        requirement = todo.pop()
        name = norm(requirement.name)
        if name in image or name in prune or (name, frozenset(requirement.extras)) in seen:
            continue
        seen.add((name, frozenset(requirement.extras)))
        for line in metadata.distribution(name).requires or []:
            dependency = Requirement(line)
            extras = requirement.extras or {""}
            if dependency.marker is None or any(dependency.marker.evaluate({**environment, "extra": e}) for e in extras):
                todo.append(dependency)
    return {name for name, _ in seen}


def _imported_distributions(paths: list[Path]) -> dict[str, set[str]]:
    """{distribution: the files importing it} for the third-party modules these files import."""
    owners = metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for path in paths:
        text = path.read_text()
        if path.suffix == ".ipynb":
            text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"] if c["cell_type"] == "code")
        for first, many in IMPORT.findall(text):
            for module in [first] if first else [m.split(" as ")[0].strip() for m in many.split(",")]:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in ("course_lib", "course_grader", "__future__"):
                    continue
                assert top in owners, f"{path.relative_to(ROOT)} imports {top}, which no installed distribution provides"
                for dist in owners[top]:
                    found.setdefault(norm(dist), set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("part", ["video", "grading"])
def test_what_each_part_imports_stays_reachable_after_the_prune(part):
    image = set(listed("image"))
    prune = {line.split("|")[0] for line in listed("prune")}
    installed = _reachable(listed(part), image, prune)
    if part == "grading":
        files = [*(ROOT / "course_grader").rglob("*.py"), *(ROOT / "solutions").glob("*.ipynb")]
        allowed = set()
    else:
        files = [p for p in (ROOT / "course_lib").rglob("*.py")
                 if not set(p.relative_to(ROOT / "course_lib").parts) & set(NOT_VIDEO)]
        files.append(ROOT / "benchmarks" / "video_detection.py")
        allowed = NOTEBOOK_ONLY
    files.append(ROOT / "tests" / "project" / "test_cuda.py")
    imported = _imported_distributions(files)
    missing = {d: sorted(where) for d, where in imported.items() if d not in installed | image | allowed}
    assert missing == {}, f"the {part} part would lack these on the GPU machine: {missing}"
    assert not (set(imported) - allowed) & prune


#: What each part runs imports, beyond course_lib's own modules (some only inside functions).
PART_MODULES = {
    "grading": ["course_grader.cli", "nbgrader.apps", "nbgrader.converters", "nbgrader.preprocessors",
                "nbgrader.api", "nbconvert.preprocessors", "ipykernel.kernelapp", "IPython.core.inputtransformer2",
                "jupyter_client.manager", "nbclient", "distributed", "distributed.scheduler", "distributed.comm",
                "dask", "alembic.config", "sqlalchemy"],
    "video": ["course_lib.data.video", "course_lib.detection.video_detection", "course_lib.detection.pretrained",
              "course_lib.detection.faster_rcnn.train_shapes", "course_lib.detection.evaluate", "imageio_ffmpeg",
              "pycocotools.coco", "torchinfo", "imageio.v2", "scipy.optimize", "torchmetrics.detection"],
}


def _closure_installed_here(names: set[str]) -> set[str]:
    """These distributions and all they need, as installed here (what the machine has with them)."""
    return _reachable(sorted(n for n in names if _installed(n)), set(), set())


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def _machine_view(folder: Path, allowed: set[str]) -> None:
    """Links to this environment's files of the allowed distributions only (scripts and .pth left out)."""
    folder.mkdir()
    for dist in metadata.distributions():
        if norm(dist.metadata["Name"] or "") not in allowed:
            continue
        for file in dist.files or []:
            top = Path(file).parts[0]
            source, link = Path(dist.locate_file(top)), folder / top
            if top != ".." and not top.endswith(".pth") and source.exists() and not link.is_symlink():
                link.symlink_to(source)


@pytest.mark.parametrize("part", ["video", "grading"])
def test_what_each_part_runs_imports_with_only_the_machine_s_and_the_carried_packages(tmp_path, part):
    """Python started without site-packages, seeing only the image's packages (with what they need)
    and the part's carried closure: the modules the part runs import, tornado, zmq and all."""
    image = set(listed("image"))
    prune = {line.split("|")[0] for line in listed("prune")}
    allowed = _reachable(listed(part), image, prune) | _closure_installed_here(image)
    _machine_view(tmp_path / "site", allowed)
    code = "import importlib, pkgutil, sys\n" \
           "for name in sys.argv[1].split(','):\n" \
           "    importlib.import_module(name)\n" \
           "    if name == 'course_grader.cli':  # then every module of the grader\n" \
           "        import course_grader as grader\n" \
           "        for info in pkgutil.walk_packages(grader.__path__, 'course_grader.'):\n" \
           "            importlib.import_module(info.name)\n" \
           "print(sorted(set(m.split('.')[0] for m in sys.modules) & set(sys.argv[2].split(','))))\n"
    result = subprocess.run([sys.executable, "-S", "-c", code, ",".join(PART_MODULES[part]), ",".join(prune)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{ROOT}",
                                 "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(tmp_path / "mpl")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"  # no pruned package was imported (none could be)


# --------------------------------------------------------------------------- wheels (a local folder for PyPI)


def _fake_index(folder: Path) -> None:
    """The video part's three roots, whose needs reach the machine (numpy, setuptools) and a pruned
    package (jedi), whose own need (parso) must then stay behind."""
    make_wheel(folder, "imageio-ffmpeg", "0.5.1", ("setuptools",))
    make_wheel(folder, "pycocotools", "2.0.8", ("numpy",))
    make_wheel(folder, "torchinfo", "1.8.0", ("jedi>=0.1", "tzdata; python_version < '3.0'"))
    make_wheel(folder, "numpy", "1.0.0")
    make_wheel(folder, "setuptools", "1.0.0")
    make_wheel(folder, "jedi", "0.19.0", ("parso",))
    make_wheel(folder, "parso", "0.8.0")


def test_wheels_carries_the_closure_without_the_machine_s_or_the_pruned_packages(tmp_path):
    _fake_index(tmp_path / "index")
    env = {"GPU_MACHINE_FIND_LINKS": str(tmp_path / "index"), "GPU_MACHINE_PIP_PYTHON": sys.executable}
    result = script("wheels", "video", str(tmp_path / "carried"), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    carried = sorted(p.name.split("-")[0] for p in (tmp_path / "carried").iterdir())
    assert carried == ["imageio_ffmpeg", "pycocotools", "torchinfo"]
    assert "already on the machine, not carried (2): numpy, setuptools" in result.stdout
    assert "pruned: jedi (needed by torchinfo)" in result.stdout
    assert re.search(r"left with the pruned or not needed on Python 3\.12 \(1, .*\): parso$", result.stdout, re.M)
    assert re.search(r"^total: [\d.]+ MiB in .*carried \(limit [\d.]+ MiB", result.stdout, re.M)


def test_wheels_refuses_a_folder_above_the_size_limit(tmp_path):
    _fake_index(tmp_path / "index")
    make_wheel(tmp_path / "index", "torchinfo", "1.8.1", size=200_000)  # the newest: chosen
    env = {"GPU_MACHINE_FIND_LINKS": str(tmp_path / "index"), "GPU_MACHINE_PIP_PYTHON": sys.executable,
           "GPU_MACHINE_MAX_MIB": "0.1"}
    result = script("wheels", "video", str(tmp_path / "carried"), env=env)
    assert result.returncode == 1
    assert re.search(r"carried is [\d.]+ MiB, above the limit of 0\.1 MiB", result.stderr), result.stderr


def test_wheels_refuses_a_folder_holding_other_files(tmp_path):
    (tmp_path / "carried").mkdir()
    (tmp_path / "carried" / "notes.txt").write_text("mine")
    result = script("wheels", "video", str(tmp_path / "carried"))
    assert result.returncode == 2 and "holds other files" in result.stderr
    assert (tmp_path / "carried" / "notes.txt").exists()


# --------------------------------------------------------------------------- run (here: no GPU)


def test_run_installs_the_wheels_then_stops_in_one_line_where_there_is_no_gpu(tmp_path):
    make_wheel(tmp_path / "carried", "gm-probe-alpha", "1.2.3")
    make_wheel(tmp_path / "carried", "pluggy", "0.0.1")  # pytest's: already there, so kept as it is
    result = script("run", "video", str(tmp_path / "carried"), env=no_gpu_env(tmp_path))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "installed 1 wheel(s) into" in result.stdout
    assert re.search(r"^already there, kept: pluggy \S+ \(carried: pluggy-0\.0\.1", result.stderr, re.M)
    lines = [line for line in result.stderr.splitlines() if line.startswith("no CUDA GPU here: ")]
    assert lines == [lines[0]] and "sees no CUDA device (CUDA_VISIBLE_DEVICES='')" in lines[0]
    assert "=== tests-video" not in result.stdout  # stopped before any step
    assert (tmp_path / "site" / "gm_probe_alpha.py").is_file() and not (tmp_path / "site" / "pluggy.py").exists()
    probe = subprocess.run([sys.executable, "-c", "import gm_probe_alpha; print(gm_probe_alpha.VALUE)"],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert probe.stdout.strip() == "1.2.3"


def test_a_dry_run_checks_everything_and_prints_the_steps_with_their_limits(tmp_path):
    make_wheel(tmp_path / "carried", "gm-probe-beta", "0.1")
    result = script("run", "video", str(tmp_path / "carried"), "--dry-run", env=no_gpu_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no CUDA GPU here: " in result.stderr
    assert re.search(r"^ffmpeg: \S+: ffmpeg version ", result.stdout, re.M)  # the preflight
    planned = [line for line in result.stdout.splitlines() if line.startswith("would run: ")]
    assert [line.split(":")[1].split("(")[0].strip() for line in planned] == [
        "tests-video", "benchmark-cuda", "benchmark-cpu"]
    assert planned[0].endswith('tests/project/test_cuda.py -p no:cacheprovider --durations=5 -m "cuda and not grading"')
    assert planned[1].endswith("benchmarks/video_detection.py --threads 0 --repeats 2 --device cuda")
    assert "=== tests-video" not in result.stdout and not (tmp_path / "out" / "video-tests-video.log").exists()


def test_skipped_cuda_tests_count_as_a_failure_in_the_step_table(tmp_path):
    """Here the grading part's two CUDA tests skip: on the GPU machine that means something is missing."""
    make_wheel(tmp_path / "carried", "gm-probe-delta", "0.1")
    env = {**no_gpu_env(tmp_path), "GPU_MACHINE_ALLOW_NO_GPU": "1"}
    result = script("run", "grading", str(tmp_path / "carried"), env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^nbgrader \S+, nbclient \S+, ipykernel \S+, distributed \S+; kernels: .*python3", result.stdout,
                     re.M)  # the preflight
    assert re.search(r"^\| tests-grading \| FAILED \(2 skipped: every test must run here\) \| \d+ \|$", result.stdout,
                     re.M), result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("tests: FAILED; ")
    assert "2 skipped" in (tmp_path / "out" / "grading-tests-grading.log").read_text()


def test_steps_past_the_budget_are_not_run_and_fail_the_part(tmp_path):
    make_wheel(tmp_path / "carried", "gm-probe-epsilon", "0.1")
    env = {**no_gpu_env(tmp_path), "GPU_MACHINE_ALLOW_NO_GPU": "1", "GPU_MACHINE_BUDGET_S": "1"}
    result = script("run", "video", str(tmp_path / "carried"), env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    for step in ("tests-video", "benchmark-cuda", "benchmark-cpu"):
        assert f"| {step} | not run (no time left) | 0 |" in result.stdout
    assert "no GPU/CPU ratio: the cuda benchmark printed no table" in result.stdout


def test_run_refuses_bad_parts_empty_folders_and_two_versions_of_one_package(tmp_path):
    assert "unknown part 'audio'" in script("run", "audio", str(tmp_path)).stderr
    empty = script("run", "video", str(tmp_path))
    assert empty.returncode == 2 and "no .whl files in" in empty.stderr
    make_wheel(tmp_path / "carried", "gm-probe-gamma", "1.0")
    make_wheel(tmp_path / "carried", "gm-probe-gamma", "2.0")
    twice = script("run", "video", str(tmp_path / "carried"), env=no_gpu_env(tmp_path))
    assert twice.returncode == 2 and "two wheels of gm-probe-gamma" in twice.stderr
    assert not (tmp_path / "site").exists() or not any((tmp_path / "site").iterdir())


def test_the_ratio_table_reads_the_video_benchmark_s_own_table(tmp_path, capsys):
    """`run video` compares the cuda and cpu logs of benchmarks/video_detection.py: its table, as printed."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import video_detection
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    def logged(device: str, course_ms: float) -> Path:
        stages = dict.fromkeys(video_detection.SEED_STAGES, 1.0)
        row = {"name": "ssdlite320_mobilenet_v3_large", "info": SimpleNamespace(box_map=21.3, num_params=3.44e6),
               "frames": 8, "batch": 4, "agree": True, "raw": (True, 0.0, 0.0, 10, 0), "box": 0.0, "score": 0.0,
               "identical": 8, "total": 8, "boxes": 1.0, "seed_ms": 4 * course_ms, "course_ms": course_ms,
               "seed_cpu": 1.0, "course_cpu": 1.0, "seed_stages": stages, "course_stages": stages}
        video_detection.print_tables([row], SimpleNamespace(device=device))
        path = tmp_path / f"{device}.log"
        path.write_text(capsys.readouterr().out)
        return path

    result = script("ratio", str(logged("cpu", 600.0)), str(logged("cuda", 20.0)),
                    env={"GPU_MACHINE_PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    assert "| ssdlite320_mobilenet_v3_large | 2400.0 | 80.0 | 600.0 | 20.0 | 30.0x |" in result.stdout
