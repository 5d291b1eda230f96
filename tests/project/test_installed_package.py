"""The course as pip installs it (not a checkout): both packages, and the trained detectors found."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from course_lib import shipped

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("ssd_shapes.pt", "faster_rcnn_shapes.pt")


#: What a source distribution of the course holds (setuptools builds in the source folder: a copy).
SOURCE_PARTS = ("pyproject.toml", "README.md", "LICENSE", "course_lib", "course_grader", "data")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for part in SOURCE_PARTS:
        if (ROOT / part).is_dir():
            shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / part, source / part)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                            "-w", str(out), str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (path,) = out.glob("course_lib-*.whl")
    return path


def test_the_wheel_holds_both_packages_and_the_trained_detectors(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("course_lib/") for n in names) and any(n.startswith("course_grader/sandboxed/") for n in names)
    for name in SHIPPED:
        assert any(n.endswith(f".data/data/share/cnn-blocks-to-detectors/{name}") for n in names), name
    assert not any(n.startswith(("tests/", "solutions/", "notebooks/")) for n in names)


def test_an_installation_finds_the_trained_detectors_outside_any_checkout(wheel, tmp_path):
    prefix = tmp_path / "prefix"
    # --ignore-installed: never touch the running environment's own installation of the course
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--ignore-installed", "--quiet", "--prefix",
                                str(prefix), str(wheel)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-2000:]
    (site,) = prefix.glob("lib/python*/site-packages")
    code = ("import course_lib.shipped as s, course_lib.detection.ssd as ssd\n"
            "print(s.__file__); print(ssd.SHAPES_SSD_PATH); print(ssd.load_shapes_ssd().config.class_names)")
    env = {**os.environ, "PYTHONPATH": str(site), "COURSE_DATA_DIR": ""}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    module, weights, classes = done.stdout.splitlines()[-3:]
    assert Path(module).is_relative_to(site), module  # the installed copy, not this checkout
    assert Path(weights) == prefix / "share" / "cnn-blocks-to-detectors" / "ssd_shapes.pt"
    assert "circle" in classes


def test_a_classroom_folder_comes_first_and_a_missing_file_says_where_it_looked(tmp_path, monkeypatch):
    (tmp_path / "ssd_shapes.pt").write_bytes(b"")
    monkeypatch.setenv(shipped.DATA_DIR_ENV, str(tmp_path))
    assert shipped.shipped_file("ssd_shapes.pt") == tmp_path / "ssd_shapes.pt"
    assert shipped.data_dirs()[0] == tmp_path
    missing = shipped.shipped_file("nothing-here.pt")
    assert missing == ROOT / "data" / "nothing-here.pt"
    message = shipped.missing_file_message(missing, "the thing", "python -m make_it")
    assert message.startswith(f"the thing not found (looked in {tmp_path}, {ROOT / 'data'}")
    assert message.endswith(f"recreate it with `python -m make_it --out {missing}`") and "\n" not in message
