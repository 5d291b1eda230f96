"""The verdict view: ``course_lib`` and torchvision as the verdict process sees them, references gone.

The verdict process (`verdict_process`, `verdict_harness`) runs a student's set-up and answer cells,
then calls the student's functions; there, what the exercises ask for must not exist. `build_view`
writes, per assignment, what its sandbox binds over the real files:

* ``course_lib`` with every function and class *neutered* (`neutered_source`: calling it raises
  ``NotImplementedError("NAME is not available while your answer is graded")``) except what the
  read-only cells import and what that needs (`allowed_names`); `checks` and `config` whole (of the
  grader, the sandbox shows only `course_grader.sandboxed`: no probes, audit rules or tolerances);
* torchvision's files that define a reference (`audit.TORCHVISION_REFERENCES`) with those neutered
  (`torchvision_overlay`); their stale ``.pyc`` and the compiled operators (``_C*.so``) masked, the
  operators' schemas (`torchvision_op_schemas`) declared before ``import torchvision``
  (`verdict_harness.define_torchvision_ops`) so that the import still works.

Names are kept by qualified name (``course_lib.detection.anchors.grid_anchors``): keeping one never
keeps a namesake. What the hidden tests import from ``course_lib`` and the answers' own names are
never kept: a read-only cell that needs one (a picture after the answers) meets the stub and prints
its "Answer question N to see the picture" line.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import nbformat

from .locations import course_lib_dir
from .submission import cell_kind

#: What every assignment's set-up may use from ``course_lib/__init__.py``.
GIVEN = ("get_device", "seed_everything", "count_params")
#: Modules students get whole (no reference in them).
WHOLE_MODULES = ("course_lib.checks", "course_lib.config")
MESSAGE = "{name} is not available while your answer is graded"
#: Base classes whose machinery runs or forbids ``__init__`` at class creation: no stub ``__init__``.
_STRUCTURAL_BASE = re.compile(r"(Enum|Flag|NamedTuple|TypedDict|Protocol|Exception|Error|Warning)$")
#: The real ``course_lib`` package.
COURSE_DIR = course_lib_dir()
#: A module's script part, not run when it is imported.
MAIN_GUARDS = ("__name__ == '__main__'", '__name__ == "__main__"')
#: The view's folder of rewritten torchvision files (not a Python name: nothing imports it from the view).
TORCHVISION_FILES = "torchvision-files"


@dataclass(frozen=True)
class VerdictView:
    """What a verdict sandbox binds: everything lies under ``root``.

    ``binds``: (file or folder in the view, path it covers), read-only: the ``course_lib`` copy over
    the real package folder, each rewritten torchvision file over the original. ``masks``: paths to
    cover with /dev/null (torchvision's ``_C*.so``, the rewritten files' original ``.pyc``).
    ``op_schemas``: torchvision's operator schemas, to declare before importing torchvision.
    ``kept``: qualified names of the ``course_lib`` definitions left working.
    """

    root: Path
    binds: tuple[tuple[str, str], ...]
    masks: tuple[str, ...]
    op_schemas: tuple[str, ...]
    kept: frozenset[str]


# --- neutering source ------------------------------------------------------------------------------------

def _raise(name: str) -> ast.stmt:
    return ast.parse(f"raise NotImplementedError({MESSAGE.format(name=name)!r})").body[0]


def _nested_bodies(node: ast.stmt) -> list[list[ast.stmt]]:
    """The statement lists inside a compound statement that is not a definition (if, try, with, loops)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return []
    bodies = [getattr(node, name, None) for name in ("body", "orelse", "finalbody")]
    return [b for b in bodies if isinstance(b, list)] + [handler.body for handler in getattr(node, "handlers", [])]


def _neuter_block(body: list[ast.stmt], keep: Callable[[str], bool], owner: str | None = None) -> None:
    """Neuter the definitions of ``body`` that ``keep`` rejects; ``owner``: the class whose methods these are."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not keep(node.name):
            node.body = [_raise(owner or node.name)]
        elif isinstance(node, ast.ClassDef) and not keep(node.name):
            _neuter_class(node, owner or node.name)
        for inner in _nested_bodies(node):
            _neuter_block(inner, keep, owner)


def _neuter_class(node: ast.ClassDef, owner: str) -> None:
    """Class statement, bases, decorators and class-level assignments stay; every method raises."""
    body = node.body[1:] if ast.get_docstring(node, clean=False) is not None else node.body
    _neuter_block(body, lambda name: False, owner)
    defines_init = any(isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.name == "__init__" for s in body)
    bases = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
    structural = node.keywords or any(_STRUCTURAL_BASE.search(b) or "(" in b for b in bases)
    if not defines_init and not structural:  # instantiating it raises too (a dataclass keeps an __init__ it is given)
        body.append(ast.parse("def __init__(self, *args, **kwargs): pass").body[0])
        body[-1].body = [_raise(owner)]
    node.body = body or [ast.Pass()]


def neutered_source(text: str, keep: Callable[[str], bool], where: str) -> str:
    """``text`` with every function and class whose name ``keep`` rejects made a stub that raises.

    A function keeps its signature and decorators; its body becomes one ``raise NotImplementedError``.
    A class keeps its bases, decorators and class-level statements (constants, dataclass fields); every
    method's body raises, and one without ``__init__`` gets one that raises (not enums, named tuples,
    typed dicts, protocols, exceptions, or with ``metaclass=``). Definitions in top-level ``if``/``try``
    count; nested functions go with their enclosing body; kept definitions and other statements stay
    (as ``ast.unparse`` writes them: no comments). ``where`` names the source in errors.
    """
    try:
        tree = ast.parse(text, filename=where)
    except SyntaxError as error:
        raise ValueError(f"{where}: not valid Python ({error.msg}, line {error.lineno})") from None
    _neuter_block(tree.body, keep)
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def _top_level_definitions(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    found = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[node.name] = node
        for inner in _nested_bodies(node):
            found.update(_top_level_definitions(inner))
    return found


# --- torchvision -----------------------------------------------------------------------------------------

def _torchvision_dir() -> Path:
    spec = importlib.util.find_spec("torchvision")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("torchvision is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _torchvision_version(folder: Path) -> str:
    return (folder / "version.py").read_text() if (folder / "version.py").is_file() else ""


def torchvision_overlay(reference_names: frozenset[str] | None = None) -> list[tuple[Path, str]]:
    """(installed torchvision file, its source with the ``reference_names`` it defines at top level
    neutered) for each such file; ``reference_names`` default to `audit.TORCHVISION_REFERENCES`."""
    if reference_names is None:
        from .audit import TORCHVISION_REFERENCES as reference_names
    folder = _torchvision_dir()
    return list(_overlay(frozenset(reference_names), folder, _torchvision_version(folder)))


@lru_cache(maxsize=4)
def _overlay(names: frozenset[str], folder: Path, version: str) -> tuple[tuple[Path, str], ...]:
    alternatives = "|".join(map(re.escape, sorted(names)))
    pattern = re.compile(rf"^[ \t]*(?:async[ \t]+def|def|class)[ \t]+({alternatives})\b", re.MULTILINE)
    rewritten = []
    for path in sorted(folder.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        where = str(path.relative_to(folder.parent))
        if pattern.search(text) and names & set(_top_level_definitions(ast.parse(text, filename=where).body)):
            rewritten.append((path, neutered_source(text, lambda name: name not in names, where)))
    return tuple(rewritten)


def torchvision_op_schemas() -> list[str]:
    """torchvision's operator schemas as this process registered them (``"torchvision::nms(...) -> ..."``)."""
    import torch

    importlib.import_module("torchvision")  # loads the compiled operators, which register their schemas
    return [str(s) for s in torch._C._jit_get_all_schemas() if str(s).startswith("torchvision::")]




def _torchvision_masks(folder: Path, rewritten: Iterable[Path]) -> list[str]:
    """The compiled operators, and the bytecode of the rewritten files (any Python version's)."""
    masks = sorted(folder.glob("_C*.so"))
    for path in rewritten:
        masks += sorted(path.parent.glob(f"__pycache__/{path.stem}.*.pyc")) + sorted(path.parent.glob(f"{path.stem}.pyc"))
    return [str(p) for p in masks]


# --- which course_lib names stay -------------------------------------------------------------------------

class _Module(NamedTuple):
    tree: ast.Module
    definitions: dict[str, ast.stmt]
    imports: dict[str, tuple[str, str | None]]  # bound name -> (module, attribute or None for the module)


def _absolute(module: str, is_package: bool, level: int, target: str | None) -> str:
    if not level:
        return target or ""
    parts = module.split(".")[: len(module.split(".")) - level + (1 if is_package else 0)]
    return ".".join(parts + ([target] if target else []))


def _imports(tree: ast.AST, module: str = "", is_package: bool = False) -> dict[str, tuple[str, str | None]]:
    """Names bound by the imports anywhere in ``tree`` (functions' lazy imports included)."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _absolute(module, is_package, node.level, node.module)
            bound.update({alias.asname or alias.name: (source, alias.name) for alias in node.names})
        elif isinstance(node, ast.Import):
            for alias in node.names:  # `import a.b` binds a; `import a.b as c` binds c to a.b
                top = alias.name.split(".")[0]
                bound[alias.asname or top] = (alias.name if alias.asname else top, None)
    return bound


@lru_cache(maxsize=4)
def _index(course_hash: str) -> dict[str, _Module]:
    """Every module of ``course_lib`` by dotted name (``course_hash``: the cache's key, its content)."""
    modules = {}
    for path in sorted(COURSE_DIR.rglob("*.py")):
        relative = path.relative_to(COURSE_DIR.parent).with_suffix("")
        is_package = relative.name == "__init__"
        name = ".".join(relative.parts[:-1] if is_package else relative.parts)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        modules[name] = _Module(tree, _top_level_definitions(tree.body), _imports(tree, name, is_package))
    return modules


def _resolve(index: dict[str, _Module], module: str, name: str | None,
             depth: int = 0) -> tuple[str, str | None] | None:
    """Where ``module.name`` comes from: (defining module, name); (module, None) when it is a module
    (``name`` None: ``module`` itself); None when it is not ``course_lib``'s (or not a definition)."""
    found = index.get(module)
    if found is None or depth > 20:
        return None
    if name is None:
        return module, None
    if name in found.definitions:
        return module, name
    if name in found.imports:
        source, attribute = found.imports[name]
        resolved = _resolve(index, source, attribute, depth + 1)
        if resolved is not None or attribute is None:
            return resolved
    return (f"{module}.{name}", None) if f"{module}.{name}" in index else None  # a submodule


def _chains(node: ast.AST) -> Iterable[list[str]]:
    """Every ``a.b.c`` read in ``node`` as ["a", "b", "c"], outside annotations."""
    if isinstance(node, (ast.Attribute, ast.Name)):
        chain, inner = [], node
        while isinstance(inner, ast.Attribute):
            chain.insert(0, inner.attr)
            inner = inner.value
        if isinstance(inner, ast.Name):
            yield [inner.id, *chain]
            return
        node = inner
    for field, value in ast.iter_fields(node):
        if field in ("annotation", "returns"):
            continue
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, ast.AST):
                yield from _chains(child)


def _targets(index: dict[str, _Module], chains: Iterable[list[str]], module: str | None = None,
             bound: dict[str, tuple[str, str | None]] | None = None) -> set[tuple[str, str]]:
    """The course_lib definitions that name chains reach, read in ``module`` or in a notebook (``bound``:
    its imports)."""
    found = set()
    for first, *attributes in chains:
        where = _resolve(index, module, first) if bound is None else _resolve(index, *bound.get(first, ("", None)))
        for attribute in attributes:
            if where is None or where[1] is not None:
                break
            where = _resolve(index, where[0], attribute)
        if where is not None and where[1] is not None:
            found.add(where)
    return found


def _import_time_calls(node: ast.AST) -> Iterable[list[str]]:
    """What a module calls while it is imported: everything but function and lambda bodies (decorators
    and defaults run) and ``if __name__ == "__main__":`` (a script's)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for decorator in child.decorator_list:  # a bare decorator is called too
                yield from _chains(decorator) if isinstance(decorator, (ast.Name, ast.Attribute)) else ()
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for part in [*child.decorator_list, child.args]:
                yield from _import_time_calls(part)
        elif not isinstance(child, ast.Lambda) and not (isinstance(child, ast.If)
                                                        and ast.unparse(child.test) in MAIN_GUARDS):
            if isinstance(child, ast.Call):
                yield from _chains(child.func)
            yield from _import_time_calls(child)


def _cells(nb: nbformat.NotebookNode, kind: str) -> list[ast.Module]:
    trees = []
    for number, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and cell_kind(cell) == kind:  # IPython's magics and shell lines dropped
            lines = [line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!"))]
            try:
                trees.append(ast.parse("\n".join(lines)))
            except SyntaxError as error:
                if kind != "answer":  # an answer that does not parse defines nothing
                    raise ValueError(f"{kind} cell {number + 1} is not valid Python: {error.msg}") from None
    return trees


def _course_imports(trees: list[ast.Module]) -> dict[str, tuple[str, str | None]]:
    return {name: where for tree in trees for name, where in _imports(tree).items()
            if where[0] == "course_lib" or where[0].startswith("course_lib.")}


def allowed_names(source_notebook: nbformat.NotebookNode) -> frozenset[str]:
    """Qualified names of the ``course_lib`` definitions the verdict view keeps for this assignment.

    The roots: what the read-only cells import from ``course_lib`` (and the attributes they read of
    an imported module), `GIVEN`, the `WHOLE_MODULES`' definitions, and whatever a module calls while
    it is imported. Then, recursively, the definitions a kept one reads (in its module, or imported
    from ``course_lib``). Never kept: names the answer cells define, and names the hidden tests
    import (or read of a module they import) from ``course_lib``, by plain name wherever defined.
    """
    index = _index(_course_hash())
    setup, tests = _cells(source_notebook, "readonly"), _cells(source_notebook, "tests")
    given = {("course_lib", name) for name in GIVEN} | {(m, n) for m in WHOLE_MODULES for n in index[m].definitions}
    test_imports = _course_imports(tests)
    used_by_tests = _targets(index, [c for tree in tests for c in _chains(tree)] + [[n] for n in test_imports],
                             bound=test_imports) - given
    withheld = {name for tree in _cells(source_notebook, "answer") for name in _top_level_definitions(tree.body)}
    withheld |= {name for _, name in used_by_tests}
    withheld |= {name for _, name in test_imports.values() if name and name not in GIVEN}
    setup_imports = _course_imports(setup)
    roots = given | _targets(index, [c for tree in setup for c in _chains(tree)] + [[n] for n in setup_imports],
                             bound=setup_imports)
    for name, module in index.items():
        roots |= _targets(index, _import_time_calls(module.tree), name)
    kept, todo = set(), [root for root in roots if root[1] not in withheld]
    while todo:
        module, name = todo.pop()
        if (module, name) not in kept:
            kept.add((module, name))
            todo += [t for t in _targets(index, _chains(index[module].definitions[name]), module)
                     if t[1] not in withheld]
    return frozenset(f"{module}.{name}" for module, name in kept)


# --- writing the view ------------------------------------------------------------------------------------

def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    path.chmod(0o644)  # the sandbox's user reads the view


def course_view(folder: Path, keep: Callable[[str], bool]) -> Path:
    """Write ``folder / "course_lib"``: the package with every definition ``keep`` rejects neutered.

    ``keep`` gets qualified names (``course_lib.detection.boxes.box_iou``); `GIVEN` always stays.
    `WHOLE_MODULES` and non-Python files are copied as they are; no ``__pycache__``.
    """
    source = COURSE_DIR
    target = Path(folder) / "course_lib"
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_dir() or "__pycache__" in relative.parts or path.suffix == ".pyc":
            continue
        module = ".".join(("course_lib", *relative.with_suffix("").parts)).removesuffix(".__init__")
        if path.suffix != ".py" or module in WHOLE_MODULES:
            _write(target / relative, path.read_bytes())
        else:
            def keeps(name: str, module: str = module) -> bool:
                return keep(f"{module}.{name}") or module == "course_lib" and name in GIVEN

            _write(target / relative, neutered_source(path.read_text(encoding="utf-8"), keeps, str(relative)))
    for directory in [target, *[p for p in target.rglob("*") if p.is_dir()]]:
        directory.chmod(0o755)
    return target


def _course_hash() -> str:
    digest = hashlib.sha256()
    folder = COURSE_DIR
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


_VIEWS: dict[tuple[str, str], VerdictView] = {}


#: Compiled modules of other packages that compute what an exercise asks for (pycocotools' box IoU):
#: masked, so that importing them fails. (package, glob of the file in its folder)
COMPILED_ELSEWHERE = (("pycocotools", "_mask*.so"),)


def compiled_masks() -> list[str]:
    """The files of `COMPILED_ELSEWHERE` installed here."""
    masks = []
    for package, pattern in COMPILED_ELSEWHERE:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                masks += sorted(str(p) for p in Path(location).glob(pattern))
    return masks


def torchvision_hidden_names(source_notebook: nbformat.NotebookNode) -> frozenset[str]:
    """torchvision's names neutered for this assignment: its versions of what the exercises ask for
    (`audit.TORCHVISION_REFERENCES`), and what the assignment's questions rule out by name inside an
    answer (`audit.OFF_LIMITS_IN`, e.g. ``to_dtype`` for exercise 6's ``frames_to_batches``)."""
    from .audit import OFF_LIMITS_IN, TORCHVISION_REFERENCES

    defined = {name for tree in _cells(source_notebook, "answer") for name in _top_level_definitions(tree.body)}
    ruled_out = {name for answer, names in OFF_LIMITS_IN.items() if answer in defined for name in names}
    return frozenset(TORCHVISION_REFERENCES | ruled_out)


def build_view(source_notebook: nbformat.NotebookNode, folder: Path) -> VerdictView:
    """The verdict view of the assignment whose source (hidden tests included) is ``source_notebook``.

    Written to a subfolder of ``folder`` named after what it depends on (the kept names, the
    content of ``course_lib``, torchvision's version), once per process: a second call with the same
    ones returns the same view.
    """
    kept = allowed_names(source_notebook)
    hidden = torchvision_hidden_names(source_notebook)
    tv_folder = _torchvision_dir()
    key = "\n".join([*sorted(kept), _course_hash(), _torchvision_version(tv_folder), *sorted(hidden)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = Path(folder).resolve()
    cached = _VIEWS.get((str(folder), digest))
    if cached is not None and cached.root.is_dir():
        return cached
    root = folder / f"verdict-view-{digest}"
    partial = folder / f".partial-{digest}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    course_view(partial, kept.__contains__)
    binds = [(str(root / "course_lib"), str(COURSE_DIR))]
    rewritten = torchvision_overlay(hidden)
    for path, text in rewritten:
        relative = path.relative_to(tv_folder)
        _write(partial / TORCHVISION_FILES / relative, text)
        binds.append((str(root / TORCHVISION_FILES / relative), str(path)))
    for directory in [partial, *[p for p in partial.rglob("*") if p.is_dir()]]:
        directory.chmod(0o755)
    try:
        partial.rename(root)  # atomic: a view folder is always whole
    except OSError:  # another process wrote the same view (same name, same content) first
        shutil.rmtree(partial, ignore_errors=True)
        if not root.is_dir():
            raise
    masks = _torchvision_masks(tv_folder, [path for path, _ in rewritten]) + compiled_masks()
    view = VerdictView(root, tuple(binds), tuple(masks), tuple(torchvision_op_schemas()), kept)
    _VIEWS[(str(folder), digest)] = view
    return view
