"""The course as a project: set-up files agree, notebooks are clean and carry current Colab cells."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from course_grader import colab
from course_lib import config

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted([*ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("solutions/*.ipynb"), *ROOT.glob("exercises/*.ipynb")])
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _split(requirement: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement)
    assert match, requirement
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def test_environment_yml_names_the_same_packages_as_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = pyproject["optional-dependencies"]
    dev = [r for r in extras["dev"] if not r.startswith("course_lib[")]
    included = [extra for r in extras["dev"] if r.startswith("course_lib[")  # the dev extra names others
                for extra in r[len("course_lib["):-1].split(",")]
    wanted = dict(_split(r) for r in [*pyproject["dependencies"], *dev, *(x for e in included for x in extras[e])])

    import yaml  # shipped with jupyter's dependencies

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {}
    for dep in env["dependencies"]:
        if isinstance(dep, str):
            name, spec = _split(dep)
            if name not in ("python", "pip"):
                conda[CONDA_NAMES.get(name, name)] = spec
    assert conda == wanted


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up: two commands\s+```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert len(commands) == 2, commands
    test_command = next(c for c in commands if "test" in c)
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert test_command in ci_lines


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_notebook_is_committed_clean(path):
    nb = json.loads(path.read_text())
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"cell {index} has outputs"
            assert cell.get("execution_count") is None, f"cell {index} has an execution count"
        extra = set(cell.get("metadata", {})) - {"nbgrader", "tags", "deletable", "editable"}
        assert not extra, f"cell {index} carries metadata {sorted(extra)}"
    assert set(nb["metadata"]) <= {"kernelspec", "language_info"}, sorted(nb["metadata"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_notebook_avoids_the_seeds_outdated_idioms(path):
    """CPU and GPU alike (no .cuda()), torchvision's weights= API (ERRATA 000-7, 000-8), modern PyTorch."""
    nb = json.loads(path.read_text())
    source = "\n".join("".join(cell["source"]) for cell in nb["cells"] if cell["cell_type"] == "code")
    for idiom in (".cuda()", "pretrained=True", "size_average=", "Variable("):
        assert idiom not in source, f"{idiom} in a code cell"
    assert nb["cells"][0]["cell_type"] == "markdown" and "".join(nb["cells"][0]["source"]).startswith("# ")


def test_notebooks_and_readme_carry_the_configured_colab_cells():
    drifted = colab.check_or_fix(NOTEBOOKS, ROOT, fix=False)
    assert drifted == [], f"run `course notebooks --fix`: {drifted}"
    assert not colab.check_or_fix_readme(ROOT, fix=False), "run `course notebooks --fix` (README lesson table)"


def test_repository_address_is_written_in_one_place_only():
    """Notebooks get the address by stamping; no other hand-written file names it."""
    needle = config.REPOSITORY
    allowed = {ROOT / "course_lib" / "config.py", ROOT / "README.md"}
    for path in [*ROOT.glob("course_lib/**/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("*.toml"), *ROOT.glob("*.yml")]:
        if path not in allowed:
            assert needle not in path.read_text(encoding="utf-8"), path
