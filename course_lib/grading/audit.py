"""Reading the student's code before it runs: delegation to the reference and patched test machinery.

Tests run in the student's own kernel, so an answer can change what the tests compute: replace
``torch.allclose``, the course's checkers or IPython's traceback display, or simply call the
reference implementation it was asked to write. This module reads every code cell the student can
edit (answers and cells they added) and names those moves, so the grade record can say:

    q1_answer calls the reference implementation (course_lib.models): q1_tests scores 0
    cell 9 replaces torch.allclose (test machinery): every question scores 0

It is a static check, done by the grader in its own process: it sees what the source says, not
what obfuscated code computes (that needs verdicts computed outside the kernel).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field

from .submission import cell_kind, grade_id

#: Modules an answer must not import from: the course's reference implementations.
REFERENCE_MODULES = ("course_lib",)
#: ...except these, which the exercises themselves use.
ALLOWED_COURSE_MODULES = ("course_lib.checks",)
ALLOWED_COURSE_NAMES = ("checks", "get_device", "seed_everything", "count_params")
#: torchvision's box operations, which the detection exercises ask students to write themselves.
TORCHVISION_REFERENCE_OPS = ("box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou", "box_area",
                             "nms", "batched_nms", "roi_align", "roi_pool", "RoIAlign", "RoIPool",
                             "sigmoid_focal_loss", "box_convert")
#: Names whose attributes, when assigned or deleted, change how tests compute or report verdicts.
PROTECTED_ROOTS = ("torch", "nn", "F", "np", "numpy", "checks", "course_lib", "builtins", "__builtins__", "sys",
                   "math", "IPython", "traceback", "unittest", "operator", "functools", "nbgrader")
#: Calls that reach into the interpreter or the kernel to change verdicts or tracebacks.
FORBIDDEN_CALLS = ("get_ipython", "setattr", "delattr", "__import__", "exec", "eval", "compile", "globals",
                   "_getframe", "settrace", "setprofile", "excepthook", "showtraceback", "register_cell_magic", "vars")
#: Settings an answer may change (they do not touch how verdicts are computed).
ALLOWED_SETTINGS = ("torch.backends.", "np.random.", "numpy.random.")
FORBIDDEN_MODULES = ("importlib", "ctypes", "gc", "inspect", "IPython", "traceback", "builtins")


@dataclass
class Finding:
    """One problem in one cell; ``patches`` ones void every question, the others one question."""

    cell: str
    question: str | None
    message: str
    patches: bool


@dataclass
class Audit:
    findings: list[Finding] = field(default_factory=list)

    @property
    def zeroed_questions(self) -> set[str] | None:
        """Test cells that score 0 (None: every one of them)."""
        if any(f.patches for f in self.findings):
            return None
        return {f.question for f in self.findings if f.question}


def graded_cell_of(answer_id: str | None) -> str | None:
    """``q2_answer`` -> ``q2_tests`` (the course's naming of an answer and its tests)."""
    if answer_id and answer_id.endswith("_answer"):
        return answer_id[: -len("_answer")] + "_tests"
    return None


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    elif isinstance(node, ast.Call):
        parts.append(_dotted(node.func) + "()")
    return ".".join(reversed(parts))


def _delegations(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = node.module
            if module.startswith(REFERENCE_MODULES) and module not in ALLOWED_COURSE_MODULES:
                names = [a.name for a in node.names if not (module == "course_lib" and a.name in ALLOWED_COURSE_NAMES)]
                if names:
                    found.append(f"imports {', '.join(names)} from {module}")
            if module.startswith("torchvision.ops"):
                names = [a.name for a in node.names if a.name in TORCHVISION_REFERENCE_OPS or a.name == "*"]
                if names:
                    found.append(f"imports {', '.join(names)} from {module}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(REFERENCE_MODULES) and alias.name not in ALLOWED_COURSE_MODULES:
                    found.append(f"imports {alias.name}")
        elif isinstance(node, ast.Attribute) and node.attr in TORCHVISION_REFERENCE_OPS:
            if "ops" in _dotted(node).split("."):
                found.append(f"calls {_dotted(node)}")
        elif isinstance(node, ast.Attribute) and _dotted(node).startswith(("course_lib.", "models.")):
            found.append(f"uses {_dotted(node)}")
    return found


def module_names(nb) -> set[str]:
    """Names the notebook binds to imported modules or their members (``import torch as t`` gives ``t``)."""
    names: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse("\n".join(l for l in cell.source.splitlines() if not l.lstrip().startswith(("%", "!"))))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
    return names


def _patches(tree: ast.AST, roots: set[str] = frozenset()) -> list[str]:
    roots = set(PROTECTED_ROOTS) | set(roots)
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
        for target in targets:
            tops = target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
            for top in tops:
                if isinstance(top, ast.Subscript):  # torch.__dict__["allclose"] = ...
                    top = top.value
                dotted = _dotted(top) if isinstance(top, (ast.Attribute, ast.Name)) else ""
                if "." in dotted and dotted.split(".")[0] in roots and not dotted.startswith(ALLOWED_SETTINGS):
                    found.append(f"replaces {dotted}")
                elif dotted == "__builtins__":
                    found.append("replaces __builtins__")
        if isinstance(node, ast.Call):
            name = _dotted(node.func).split(".")[-1]
            if name in ("setattr", "delattr"):  # setattr(self, ...) builds modules; setattr(torch, ...) patches
                first = _dotted(node.args[0]).split(".")[0] if node.args else ""
                if first in roots:
                    found.append(f"calls {name} on {_dotted(node.args[0])}")
            elif name in FORBIDDEN_CALLS:
                found.append(f"calls {_dotted(node.func)}")
        elif isinstance(node, ast.Attribute) and node.attr in ("excepthook", "showtraceback", "_getframe",
                                                                "__globals__", "__code__", "__class__"):
            found.append(f"uses {_dotted(node)}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in FORBIDDEN_MODULES:
                    found.append(f"imports {module}")
    return found


def audit_cells(nb) -> Audit:
    """Findings in the cells a student can edit (answer cells and cells without a grading role)."""
    audit = Audit()
    roots = module_names(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or cell_kind(cell) not in ("answer", "free"):
            continue
        gid = grade_id(cell)
        where = gid or f"cell {index + 1}"
        source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue  # it fails when it runs, like any syntax error
        for what in dict.fromkeys(_patches(tree, roots)):
            audit.findings.append(Finding(where, None, f"{where} {what} (test machinery): every question scores 0",
                                          patches=True))
        question = graded_cell_of(gid)
        for what in dict.fromkeys(_delegations(tree)):
            target = f"{question} scores 0" if question else "flagged for review"
            audit.findings.append(Finding(where, question, f"{where} {what} (the reference it should re-implement): "
                                                           f"{target}", patches=False))
    return audit
