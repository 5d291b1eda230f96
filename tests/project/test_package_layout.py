"""Two packages, imports one way: learners import course_lib (no grader, no nbgrader); the instructor's
course_grader uses course_lib, has no import cycle, and runs only standard-library code in a sandbox."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import course_grader

ROOT = Path(__file__).resolve().parents[2]
GRADER = Path(course_grader.__file__).resolve().parent


def _module_name(path: Path, package_dir: Path) -> str:
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, package_dir: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (function-level imports included)."""
    module = _module_name(path, package_dir)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}  # `from . import colab` imports a module
    return found


def _graph(package_dir: Path) -> dict[str, set[str]]:
    modules = {_module_name(p, package_dir): p for p in package_dir.rglob("*.py")}
    return {name: {m for m in _imports(path, package_dir) if m in modules and m != name}
            for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each a cycle of imports."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_grader_has_no_import_cycle():
    graph = _graph(GRADER)
    assert len(graph) > 20
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_course_lib_never_imports_the_grader():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "course_lib").rglob("*.py")
                 if any(m.split(".")[0] in ("course_grader", "nbgrader") for m in _imports(p, ROOT / "course_lib"))]
    assert offenders == []


def test_what_runs_in_the_sandbox_imports_only_the_standard_library_at_import_time():
    for path in (GRADER / "sandboxed").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        names = {alias.name.split(".")[0] for node in top if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module.split(".")[0] for node in top if isinstance(node, ast.ImportFrom) and node.module}
        assert names - {"__future__"} <= set(sys.stdlib_module_names), (path.name, names)


BLOCK_NBGRADER = """
import importlib.abc, pkgutil, sys

class NoGrader(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("nbgrader", "course_grader"):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden for this test)")
        return None

sys.meta_path.insert(0, NoGrader())
import course_lib
for info in pkgutil.walk_packages(course_lib.__path__, "course_lib."):
    __import__(info.name)
print("imported", len([m for m in sys.modules if m.startswith("course_lib")]), "modules;",
      "nbgrader" in sys.modules, "course_grader" in sys.modules)
"""


def test_course_lib_imports_whole_without_nbgrader_or_the_grader(tmp_path):
    done = subprocess.run([sys.executable, "-c", BLOCK_NBGRADER], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg", "HOME": str(tmp_path),
                                            "PYTHONPATH": str(ROOT), "MPLCONFIGDIR": str(tmp_path / "mpl")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("modules; False False"), done.stdout
    assert int(done.stdout.split()[1]) > 40


PLANNER_IMPORTS = """
import sys
import course_grader.cli, course_grader.orchestrator, course_grader.cluster
print(sorted(m for m in ("torch", "nbconvert", "course_grader.autograde", "course_grader.probes") if m in sys.modules))
"""


def test_the_process_that_plans_and_stores_a_run_never_imports_what_only_workers_need(tmp_path):
    """`course grade` plans while its workers start: importing torch there (seconds) would delay both."""
    done = subprocess.run([sys.executable, "-c", PLANNER_IMPORTS], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout


def test_every_module_is_reachable_as_an_attribute_of_its_package():
    """A module named like a function its package exports would be hidden behind that function."""
    import importlib
    import pkgutil
    import types

    import course_lib

    shadowed = []
    for package in (course_lib, course_grader):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            module = importlib.import_module(info.name)
            parent = importlib.import_module(info.name.rsplit(".", 1)[0])
            if getattr(parent, info.name.rsplit(".", 1)[1]) is not module:
                shadowed.append(info.name)
            assert isinstance(module, types.ModuleType)
    assert shadowed == []


def test_no_module_defines_a_function_or_class_of_its_own_name():
    """`from package import name` must never have to choose between the module and what it defines."""
    import course_lib

    same = []
    for package in (Path(course_lib.__file__).parent, GRADER):
        for path in package.rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            if path.stem in {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}:
                same.append(str(path.relative_to(ROOT)))
    assert same == []


def test_a_test_imports_helpers_from_its_own_folder_or_the_shared_one_only():
    """Each folder of tests runs on its own (`pytest tests/lessons`): no import reaches into another folder,
    and no test imports another test file."""
    tests = ROOT / "tests"
    folders = {p.parent.name: p.parent for p in tests.glob("*/test_*.py")}
    reaching = []
    for folder in folders.values():
        others = {p.stem for f in folders.values() if f != folder for p in f.glob("*.py")} - \
            {p.stem for p in folder.glob("*.py")} - {p.stem for p in tests.glob("*.py")}
        for path in folder.glob("*.py"):
            for module in _imports(path, folder):
                top = module.split(".")[0]
                if top in others or top.startswith("test_"):
                    reaching.append(f"{path.relative_to(ROOT)} imports {module}")
    assert reaching == []
