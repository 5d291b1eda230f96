"""The verdict view: course_lib and torchvision as the verdict process sees them, references neutered.

- `neutered_source` on small sources: stubs raise one clear line, kept code and module-level code
  stay, decorators, dataclasses, enums and async functions still work;
- each solution's view (built once for the module): its read-only and answer cells run there with
  ``import course_lib`` finding the copy, every reference its hidden tests import raises, the view
  holds no grader module, no bytecode, and no reference body;
- torchvision's rewritten files, masks and operator schemas, and (bubblewrap) ``import torchvision``
  with them bound in place.
"""
from __future__ import annotations

import ast
import asyncio
import dataclasses
import importlib
import inspect
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import nbformat
import pytest
import torch
import torchvision

import course_lib
from course_grader import verdict_view
from course_grader.audit import TORCHVISION_REFERENCES
from course_grader.sandbox import bwrap_problem
from course_grader.submission import cell_kind
from course_grader.verdict_view import (GIVEN, MESSAGE, TORCHVISION_FILES, VerdictView,
                                             allowed_names, build_view, course_view, neutered_source,
                                             torchvision_op_schemas, torchvision_overlay)

ROOT = Path(__file__).resolve().parents[2]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
COURSE = Path(course_lib.__file__).resolve().parent

pytestmark = pytest.mark.sandbox


def _load(source: str, keep=lambda name: False, name: str = "snippet") -> types.ModuleType:
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look their module up
    try:
        exec(compile(neutered_source(source, keep, f"{name}.py"), f"{name}.py", "exec"), module.__dict__)
    finally:
        del sys.modules[name]
    return module


def _raises_stub(call, name: str) -> None:
    with pytest.raises(NotImplementedError) as caught:
        call()
    assert str(caught.value) == MESSAGE.format(name=name)


# --- neutered_source ---------------------------------------------------------------------------------------

FUNCTIONS = '''
"""A module."""
import functools
LIMIT = 3
TABLE = {"a": 1}

def reference(x, y=2, *, z=None):
    """How it is done."""
    def helper(t):
        return t * 2
    return helper(x) + y

def kept(x):
    return x + LIMIT

@functools.lru_cache(maxsize=None)
def cached(x):
    return x

async def fetch(x):
    return x

if True:
    def conditional():
        return 1
try:
    def in_try():
        return 1
except ImportError:
    pass
RESULT = kept(1)
'''


def test_a_rejected_function_raises_one_line_and_a_kept_one_works():
    module = _load(FUNCTIONS, keep=lambda name: name == "kept")
    _raises_stub(lambda: module.reference(1), "reference")
    _raises_stub(lambda: module.cached(1), "cached")
    _raises_stub(lambda: module.conditional(), "conditional")
    _raises_stub(lambda: module.in_try(), "in_try")
    assert module.kept(1) == 4 and module.RESULT == 4  # module-level code ran
    assert module.LIMIT == 3 and module.TABLE == {"a": 1} and module.__doc__ == "A module."
    assert module.cached.cache_info().hits == 0  # the decorator still wraps the stub
    assert str(inspect.signature(module.reference)) == "(x, y=2, *, z=None)"
    coroutine = module.fetch(1)  # an async def stays one: awaiting it raises
    _raises_stub(lambda: asyncio.run(coroutine), "fetch")


def test_a_stub_has_no_docstring_nor_nested_functions_and_a_kept_definition_is_unchanged():
    text = neutered_source(FUNCTIONS, lambda name: name == "kept", "functions.py")
    tree = ast.parse(text)
    stub = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "reference")
    assert len(stub.body) == 1 and isinstance(stub.body[0], ast.Raise)
    assert "How it is done" not in text and "helper" not in text
    original = next(n for n in ast.parse(FUNCTIONS).body if isinstance(n, ast.FunctionDef) and n.name == "kept")
    kept = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "kept")
    assert ast.dump(kept) == ast.dump(original)


CLASSES = '''
import enum
import typing
from dataclasses import dataclass, field
import torch
from torch import nn

@dataclass(frozen=True)
class Record:
    """A record."""
    SCALE = 2.0
    id: int
    frames: list = field(default_factory=list)

    @property
    def last(self):
        return self.frames[-1]

    def __post_init__(self):
        pass

class Block(nn.Module):
    EXPANSION = 4

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3)

    @torch.no_grad()
    def forward(self, x):
        return self.conv(x)

    def __call__(self, x):
        return self.forward(x)

    @staticmethod
    def width(c):
        return c * 4

    @classmethod
    def make(cls):
        return cls(3)

    @typing.overload
    def size(self, x: int) -> int: ...
    @typing.overload
    def size(self, x: str) -> str: ...
    def size(self, x):
        return x

    class Inner:
        def go(self):
            return 1

class Colour(enum.Enum):
    RED = 1
    def describe(self):
        return "red"

class Pair(typing.NamedTuple):
    a: int
    b: int = 0

class Plain:
    pass

class KeptOne:
    def go(self):
        return 5
'''


def test_a_rejected_class_keeps_its_statement_constants_and_fields_and_its_methods_raise():
    module = _load(CLASSES, keep=lambda name: name == "KeptOne")
    assert module.Record.SCALE == 2.0 and module.Block.EXPANSION == 4
    assert [f.name for f in dataclasses.fields(module.Record)] == ["id", "frames"]
    assert issubclass(module.Block, torch.nn.Module)
    _raises_stub(lambda: module.Record(1), "Record")  # a dataclass keeps the __init__ that raises
    _raises_stub(lambda: module.Block(3), "Block")
    _raises_stub(lambda: module.Plain(), "Plain")
    block = object.__new__(module.Block)
    for call in (lambda: block.forward(1), lambda: block(1), lambda: module.Block.width(2), lambda: module.Block.make(),
                 lambda: block.size(1), lambda: module.Block.Inner().go()):
        _raises_stub(call, "Block")  # methods name their class
    _raises_stub(lambda: module.Record.last.fget(None), "Record")
    _raises_stub(lambda: module.Colour.RED.describe(), "Colour")  # an enum's members still exist
    assert module.Colour.RED.value == 1 and module.Pair(1).a == 1  # named tuples keep their constructor
    assert module.KeptOne().go() == 5
    assert "A record." not in neutered_source(CLASSES, lambda name: False, "classes.py")


def test_a_source_that_is_not_python_names_where_it_is():
    with pytest.raises(ValueError, match=r"^broken\.py: not valid Python"):
        neutered_source("def f(:\n", lambda name: False, "broken.py")


# --- which names stay --------------------------------------------------------------------------------------

def _cells(nb, kind):
    return [cell for cell in nb.cells if cell.cell_type == "code" and cell_kind(cell) == kind]


def _code(cell) -> str:
    return "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))


def _test_references(nb) -> list[tuple[str, str]]:
    """(module, name) of every course_lib definition the hidden tests import, directly or as an
    attribute of a module they import (``_yolo.decode``)."""
    found, modules = [], {}
    for cell in _cells(nb, "tests"):
        tree = ast.parse(_code(cell))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("course_lib"):
                for alias in node.names:
                    if (ROOT / node.module.replace(".", "/") / f"{alias.name}.py").is_file():
                        modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                    elif alias.name not in GIVEN and node.module != "course_lib.checks":
                        found.append((node.module, alias.name))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                found.append((modules[node.value.id], node.attr))
    return sorted(set(found))


def _answers(nb) -> set[str]:
    return {node.name for cell in _cells(nb, "answer") for node in ast.parse(_code(cell)).body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_no_answer_and_no_reference_of_the_hidden_tests_is_kept(path):
    nb = nbformat.read(path, as_version=4)
    kept = allowed_names(nb)
    plain = {name.rsplit(".", 1)[1] for name in kept}
    assert not plain & _answers(nb)
    references = _test_references(nb)
    assert references, "every solution's hidden tests compare with a reference"
    assert not plain & {name for _, name in references}
    assert {f"course_lib.{name}" for name in GIVEN} <= kept
    assert all(name.startswith("course_lib.") and not name.startswith("course_grader") for name in kept)


def test_what_the_set_up_cells_import_and_call_is_kept_with_what_it_needs():
    kept = {path.stem[:2]: allowed_names(nbformat.read(path, as_version=4)) for path in SOLUTIONS}
    assert "course_lib.detection.anchors.grid_anchors" in kept["04"]
    assert "course_lib.detection.anchors._positive_numbers" in kept["04"]  # grid_anchors checks its input with it
    assert "course_lib.data.images.sample_image" in kept["05"] and "course_lib.data.images._path" in kept["05"]
    assert "course_lib.detection.pretrained.metadata.coco_categories" in kept["06"]
    assert "course_lib.detection.yolo.build_targets" in kept["03"]  # read as course_yolo.build_targets
    assert "course_lib.data.images.SampleImage" in kept["01"]  # built while course_lib.data.images is imported
    assert "course_lib.detection.anchors.grid_anchors" not in kept["01"]  # nothing of lesson 1 needs it


# --- each solution's view ----------------------------------------------------------------------------------

DRIVER = r"""
import contextlib, importlib, inspect, io, json, sys, traceback
import torch, torchvision, matplotlib.pyplot as plt  # once for all the views: only course_lib changes
reports, path = {}, list(sys.path)
for job in json.load(open(sys.argv[1])):
    for name in [m for m in sys.modules if m == "course_lib" or m.startswith("course_lib.")]:
        del sys.modules[name]
    sys.path[:] = [job["root"], *path]  # as PYTHONPATH would: before site-packages' editable course_lib
    importlib.invalidate_caches()
    import course_lib
    report = reports[job["stem"]] = {"course_lib": course_lib.__file__, "errors": [], "references": {}}
    namespace = {"__name__": "__main__"}
    for source in job["cells"]:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(source, "<cell>", "exec"), namespace)
        except BaseException:
            report["errors"].append(traceback.format_exc()[-1500:])
    plt.close("all")
    for module, name in job["references"]:
        target = None
        try:
            target = getattr(importlib.import_module(module), name)
            parameters = inspect.signature(target).parameters.values()
            args = [None for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
            kwargs = {p.name: None for p in parameters if p.kind == p.KEYWORD_ONLY and p.default is p.empty}
            target(*args, **kwargs)
            outcome = "no error"
        except BaseException as error:
            outcome = f"{type(error).__name__}: {error}"
        report["references"][f"{module}.{name}"] = [getattr(target, "__name__", name), outcome]
print(json.dumps(reports))
"""


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    """Each solution's view, its build time, and what running its read-only and answer cells there
    reported (one process for the six views: torch is imported once, course_lib once per view)."""
    folder = tmp_path_factory.mktemp("views")
    built, jobs = {}, []
    for path in SOLUTIONS:
        nb = nbformat.read(path, as_version=4)
        started = time.process_time()
        view = build_view(nb, folder)
        built[path.stem] = (nb, view, time.process_time() - started)
        cells = [_code(c) for c in nb.cells if c.cell_type == "code" and cell_kind(c) in ("readonly", "answer")]
        jobs.append({"stem": path.stem, "root": str(view.root), "cells": cells, "references": _test_references(nb)})
    (folder / "jobs.json").write_text(json.dumps(jobs))
    result = subprocess.run([sys.executable, "-c", DRIVER, str(folder / "jobs.json")], cwd=folder, capture_output=True,
                            text=True, timeout=600, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    reports = json.loads(result.stdout.strip().splitlines()[-1])
    return {stem: (*built[stem], reports[stem]) for stem in built}


@pytest.mark.parametrize("stem", [p.stem for p in SOLUTIONS])
def test_the_cells_run_in_the_view_and_every_reference_raises(views, stem):
    nb, view, _, report = views[stem]
    assert Path(report["course_lib"]).is_relative_to(view.root / "course_lib")
    assert report["errors"] == []
    assert set(report["references"]) == {f"{m}.{n}" for m, n in _test_references(nb)}
    for reference, (name, outcome) in report["references"].items():
        assert outcome == "NotImplementedError: " + MESSAGE.format(name=name), reference


@pytest.mark.parametrize("stem", [p.stem for p in SOLUTIONS])
def test_the_view_holds_no_grader_no_bytecode_and_no_reference_body(views, stem):
    nb, view, _, _ = views[stem]
    copy = view.root / "course_lib"
    assert not (copy / "grading").exists() and not list(view.root.rglob("course_grader"))
    for name in ["checks.py", "config.py"]:
        assert (copy / name).read_bytes() == (COURSE / name).read_bytes(), name
    assert not [p for p in view.root.rglob("*") if p.name == "__pycache__" or p.suffix == ".pyc"]
    originals = {p.relative_to(COURSE) for p in COURSE.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                 and p.suffix != ".pyc"}
    assert originals <= {p.relative_to(copy) for p in copy.rglob("*") if p.is_file()}
    for module, name in _test_references(nb):
        reference = getattr(importlib.import_module(module), name)  # the real one, where it is defined
        path = Path(inspect.getsourcefile(reference)).resolve()
        original = ast.parse(path.read_text())
        definition = verdict_view._top_level_definitions(original.body)[reference.__name__]
        text = (copy / path.relative_to(COURSE)).read_text()
        everywhere = ast.unparse(original)
        bodies = [f.body for f in ast.walk(definition) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
        statements = [s for body in bodies for top in body for s in ast.walk(top) if isinstance(s, ast.stmt)
                      and not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        distinctive = [line for s in statements for line in ast.unparse(s).splitlines()[:1]
                       if len(line) > 20 and everywhere.count(line) == 1]  # what the function computes
        assert distinctive, f"{module}.{name}: nothing distinctive to look for"
        assert not [line for line in distinctive if line in text], f"{module}.{name}'s body is in the view"


def test_kept_definitions_are_unchanged_in_the_view(views):
    _, view, _, _ = views["05_faster_rcnn_step_by_step"]
    for qualified in sorted(view.kept):
        module, name = qualified.rsplit(".", 1)
        relative = module.replace(".", "/")
        relative += "/__init__.py" if (COURSE.parent / relative).is_dir() else ".py"
        before = verdict_view._top_level_definitions(ast.parse((COURSE.parent / relative).read_text()).body)[name]
        after = verdict_view._top_level_definitions(ast.parse((view.root / relative).read_text()).body)[name]
        assert ast.dump(after) == ast.dump(before), qualified


def test_a_view_is_built_once_per_assignment_in_seconds(views, tmp_path):
    nb, view, seconds, _ = views["04_ssd_matching_and_focal_loss"]
    assert isinstance(view, VerdictView) and view.root.name.startswith("verdict-view-")
    assert max(s for _, _, s, _ in views.values()) < 20  # CPU seconds; about 1 s each once torchvision is read
    assert build_view(nb, view.root.parent) is view
    assert view.binds[0] == (str(view.root / "course_lib"), str(COURSE))
    other = views["05_faster_rcnn_step_by_step"][1]
    assert other.root != view.root and other.kept != view.kept
    fresh = build_view(nb, tmp_path)  # another folder: the same view written there
    assert fresh.root.parent == tmp_path.resolve() and fresh.kept == view.kept


def test_course_view_keeps_the_given_functions_and_copies_whole_modules(tmp_path):
    target = course_view(tmp_path, lambda name: False)
    assert target == tmp_path / "course_lib"
    init = verdict_view._top_level_definitions(ast.parse((target / "__init__.py").read_text()).body)
    original = verdict_view._top_level_definitions(ast.parse((COURSE / "__init__.py").read_text()).body)
    assert all(ast.dump(init[name]) == ast.dump(original[name]) for name in GIVEN)
    boxes = ast.parse((target / "detection" / "boxes.py").read_text())
    assert all(isinstance(d.body[0], ast.Raise) for d in verdict_view._top_level_definitions(boxes.body).values()
               if isinstance(d, ast.FunctionDef))


# --- torchvision -------------------------------------------------------------------------------------------

def test_the_torchvision_overlay_neuters_the_references_and_nothing_else():
    folder = Path(torchvision.__file__).parent
    rewritten = dict(torchvision_overlay())
    assert folder / "ops" / "boxes.py" in rewritten and folder / "models" / "resnet.py" in rewritten
    defined = set()
    for path, text in rewritten.items():
        before = verdict_view._top_level_definitions(ast.parse(path.read_text()).body)
        after = verdict_view._top_level_definitions(ast.parse(text).body)
        assert set(after) == set(before), path
        for name, node in after.items():
            if name in TORCHVISION_REFERENCES and isinstance(node, ast.FunctionDef):
                assert len(node.body) == 1 and isinstance(node.body[0], ast.Raise), (path, name)
            elif name not in TORCHVISION_REFERENCES:
                assert ast.dump(node) == ast.dump(before[name]), (path, name)
        defined |= set(after) & TORCHVISION_REFERENCES
        defined |= {method.name for name, node in after.items() if isinstance(node, ast.ClassDef)
                    and name in TORCHVISION_REFERENCES for method in node.body if isinstance(method, ast.FunctionDef)}
    assert defined >= TORCHVISION_REFERENCES  # every reference was found (filter_proposals: a method of the RPN)
    namespace = {"__name__": "torchvision.ops.boxes", "__package__": "torchvision.ops"}
    exec(compile(rewritten[folder / "ops" / "boxes.py"], "boxes.py", "exec"), namespace)
    _raises_stub(lambda: namespace["box_iou"](torch.zeros(1, 4), torch.zeros(1, 4)), "box_iou")
    _raises_stub(lambda: namespace["nms"](torch.zeros(1, 4), torch.zeros(1), 0.5), "nms")
    assert namespace["_upcast"](torch.ones(2, dtype=torch.float16)).dtype == torch.float32  # kept helper


def test_masks_cover_the_compiled_operators_and_the_stale_bytecode(views):
    folder = Path(torchvision.__file__).parent
    view = views["01_blocks_and_resnets"][1]
    compiled = sorted(str(p) for p in folder.glob("_C*.so"))
    assert compiled and set(compiled) <= set(view.masks)
    covered = {Path(inside) for _, inside in view.binds[1:]}
    for path in covered:
        assert Path(next(s for s, i in view.binds if i == str(path))).read_text() == dict(torchvision_overlay())[path]
        for pyc in path.parent.glob(f"__pycache__/{path.stem}.*.pyc"):
            assert str(pyc) in view.masks
    assert all(Path(m).exists() for m in view.masks)
    assert all(Path(source).is_relative_to(view.root / TORCHVISION_FILES) for source, _ in view.binds[1:])
    schemas = torchvision_op_schemas()
    assert len(schemas) >= 10 and all(s.startswith("torchvision::") for s in schemas)
    assert "torchvision::nms" in "\n".join(schemas) and tuple(schemas) == view.op_schemas


SANDBOXED = r'''
import json, sys
import torch
from course_grader.sandboxed.verdict_harness import define_torchvision_ops  # the view's copy
define_torchvision_ops(json.load(open(sys.argv[1])))
import torchvision
import course_lib.detection, course_lib.models
outcomes = {}
namespace = {"__name__": "__main__"}
try:  # the assignment's set-up cell: torchvision's detection models' metadata read with their files rewritten
    exec(open(sys.argv[2]).read(), namespace)
    outcomes["set-up"] = len(namespace["COCO"])
except Exception as error:
    outcomes["set-up"] = f"{type(error).__name__}: {error}"
boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
for name, call in {"box_iou": lambda: torchvision.ops.box_iou(boxes, boxes),
                   "nms": lambda: torchvision.ops.nms(boxes, torch.ones(1), 0.5),
                   "resnet18": lambda: torchvision.models.resnet18(),
                   "BasicBlock": lambda: torchvision.models.resnet.BasicBlock(8, 8),
                   "sigmoid_focal_loss": lambda: torchvision.ops.sigmoid_focal_loss(boxes, boxes),
                   "op": lambda: torch.ops.torchvision.nms(boxes, torch.ones(1), 0.5),
                   "course box_iou": lambda: course_lib.detection.box_iou(boxes, boxes)}.items():
    try:
        call()
        outcomes[name] = "no error"
    except Exception as error:
        outcomes[name] = f"{type(error).__name__}: {error}"
outcomes["conv"] = list(torch.nn.Conv2d(3, 8, 3)(torch.rand(1, 3, 8, 8)).shape)
outcomes["course_lib"] = course_lib.__file__
try:
    outcomes["_C.so"] = len(open(torchvision.__file__.replace("__init__.py", "_C_stable.so"), "rb").read())
except OSError as error:
    outcomes["_C.so"] = type(error).__name__
print(json.dumps(outcomes))
'''


def test_in_bubblewrap_torchvision_imports_and_its_references_raise(views, tmp_path):
    problem = bwrap_problem()
    assert problem is None, f"this test needs bubblewrap: {problem}"
    nb, view, _, _ = views["06_pretrained_detectors_on_video"]
    (tmp_path / "schemas.json").write_text(json.dumps(view.op_schemas))
    (tmp_path / "setup.py").write_text(_code(next(c for c in _cells(nb, "readonly") if "coco_categories" in c.source)))
    (tmp_path / "check.py").write_text(SANDBOXED)
    command = ["bwrap", "--dev-bind", "/", "/"]
    for source, inside in view.binds:
        command += ["--ro-bind", source, inside]
    for path in view.masks:
        command += ["--ro-bind", "/dev/null", path]
    result = subprocess.run(command + [sys.executable, *(str(tmp_path / f) for f in ("check.py", "schemas.json", "setup.py"))],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("box_iou", "nms", "resnet18", "sigmoid_focal_loss"):
        assert outcomes[name] == "NotImplementedError: " + MESSAGE.format(name=name)
    assert outcomes["BasicBlock"] == "NotImplementedError: " + MESSAGE.format(name="BasicBlock")
    assert outcomes["op"].startswith("NotImplementedError: Could not run 'torchvision::nms'")
    assert outcomes["course box_iou"] == "NotImplementedError: " + MESSAGE.format(name="box_iou")
    assert outcomes["conv"] == [1, 8, 6, 6]
    assert outcomes["set-up"] == 91  # COCO's category list, from torchvision's weights metadata
    assert outcomes["course_lib"] == str(COURSE / "__init__.py")
    assert outcomes["_C.so"] in (0, "PermissionError")  # /dev/null: nothing of the compiled library to read
