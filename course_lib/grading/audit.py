"""Reading the student's code before it runs: delegation to the reference and patched test machinery.

Tests run in the student's own kernel, so an answer can change what the tests compute: replace
``torch.allclose``, the course's checkers or IPython's traceback display, or simply call the
reference implementation it was asked to write. This module reads every code cell the student can
edit (answers and cells they added) and names those moves, so the grade record can say:

    q1_answer imports course_lib.models (the reference it should re-implement): q1_tests scores 0
    cell 9 replaces torch.allclose (test machinery): every question scores 0

What counts as the reference: every module of ``course_lib`` except the helpers the exercises'
set-up imports (``checks``, ``get_device``, ...), and torchvision's own versions of what the
exercises ask for (`TORCHVISION_REFERENCES`: box operations, NMS, focal loss, box coding and
matching, ResNet and ConvNeXt blocks, stochastic depth), public or private, wherever torchvision
keeps them. The audit reads cells as the kernel does (IPython's ``%time x = f()``, ``files = !ls``,
``torch?``) and follows how a notebook names the references:

* imports in every form, and plain aliases (``ops = torchvision.ops``), read notebook-wide: so
  ``box_ops.box_iou`` after ``from torchvision.ops import boxes as box_ops``, ``cl.models.ResidualBlock``
  after ``import course_lib as cl``, or ``torch.ops.torchvision.nms`` resolve to what they are;
* look-ups by a constant name: ``getattr(torchvision.ops, "nms")``, ``ops.__dict__["nms"]``,
  ``sys.modules["course_lib.detection"]``, ``locals()["helper"]``; by a computed name they are
  flagged for review;
* names that reach a reference from another cell: bound by an import in a cell the student added
  or in another answer, bound by the instructor's hidden tests (``reference_box_iou``: pass the
  assignment's source notebook as ``source``, since a submission holds only the released tests),
  or helpers defined in added cells that use one. An answer that uses such a name scores 0, and
  so does an answer that an added cell after it redefines with one;
* a question's own prose: exercise 2's ``LayerNorm2d`` computes the mean and variance itself, so
  ``nn.LayerNorm`` and ``F.layer_norm`` are ruled out inside it (`OFF_LIMITS_IN`), while its
  ``ConvNeXtBlock`` may use ``nn.LayerNorm``; torch itself (``F.smooth_l1_loss``) is fine everywhere.

A finding that belongs to no question (an added cell that imports a reference, a look-up by a
computed name) costs no points: the grade record lists its message with status ``delegated``, for
a person to read ("flagged for review").

Limits. This is a static check, done by the grader in its own process: it reads what the source
says, not what it computes. It does not follow references through values (``f(torchvision.ops)``,
a list or dict of functions, a string built at run time, ``operator.attrgetter``, code written to
a file and imported), and names are tracked per notebook and per function, not per line. It
judges each answer on its own text: a later answer may call an earlier one (the exercises say
so), even one that delegated (that earlier question already scores 0), and a helper defined in an
answer cell is that answer's, not followed into the others. A patch of the test machinery that it
misses still meets the grader's own checks of the answers' outputs (`verdicts`); a delegation it
misses computes the right outputs, so it needs a person. The audit therefore names clear cases
and stays free of false positives rather than guessing.
"""
from __future__ import annotations

import ast
import functools
from dataclasses import dataclass, field
from pathlib import Path

from .submission import cell_kind, grade_id

#: The package of the course's reference implementations...
REFERENCE_PACKAGE = "course_lib"
#: ...and what of it the exercises' set-up gives students (``from course_lib import checks, get_device``).
ALLOWED_COURSE_NAMES = ("checks", "get_device", "seed_everything", "count_params")
#: torchvision's versions of what the exercises ask students to write, matched on any part of a
#: dotted name under `TORCHVISION_ROOTS` (``torchvision.ops.boxes._box_inter_union``).
TORCHVISION_REFERENCES = frozenset({
    # exercise 4 and the detection lessons: box operations, NMS, ROI pooling, and their private helpers
    "box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou", "box_area", "box_convert",
    "_box_inter_union", "_box_diou_iou", "_loss_inter_union", "nms", "batched_nms", "_batched_nms_vanilla",
    "_batched_nms_coordinate_trick", "roi_align", "roi_pool", "RoIAlign", "RoIPool",
    # exercise 4: focal loss, box coding and matching from torchvision's detection models
    "sigmoid_focal_loss", "BoxCoder", "encode_boxes", "Matcher", "SSDMatcher",
    # exercise 1: ResNet's blocks and models
    "BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    # exercise 2: ConvNeXt's block, its LayerNorm, stochastic depth and models
    "CNBlock", "LayerNorm2d", "stochastic_depth", "StochasticDepth", "ConvNeXt", "convnext_tiny",
    "convnext_small", "convnext_base", "convnext_large",
    # exercise 5: Faster R-CNN's anchors, RPN head and proposals, sampling, clipping, ROI heads and losses
    "AnchorGenerator", "RPNHead", "RegionProposalNetwork", "concat_box_prediction_layers", "permute_and_flatten",
    "filter_proposals", "BalancedPositiveNegativeSampler", "clip_boxes_to_image", "remove_small_boxes",
    "MultiScaleRoIAlign", "TwoMLPHead", "FastRCNNPredictor", "RoIHeads", "fastrcnn_loss",
})
#: Where torchvision's operators are reached from.
TORCHVISION_ROOTS = ("torchvision", "torch.ops.torchvision")
#: torchvision packages whose ``import *`` brings references in.
TORCHVISION_REFERENCE_PACKAGES = ("torchvision.ops", "torchvision.models")
#: What a question's prose rules out for one definition, though it is fine elsewhere: exercise 2's
#: LayerNorm2d computes the mean and variance itself (its ConvNeXtBlock may use nn.LayerNorm).
OFF_LIMITS_IN = {
    "LayerNorm2d": frozenset({"LayerNorm", "layer_norm", "native_layer_norm"}),
    # exercise 6 asks for the uint8 -> float [0, 1] conversion itself, which these do in one call
    "frames_to_batches": frozenset({"to_tensor", "ToTensor", "convert_image_dtype", "ConvertImageDtype", "to_dtype",
                                    "to_dtype_image", "ToDtype"}),
}
#: The notebook's own namespace, as ``import __main__`` or ``locals()`` reach it.
NAMESPACE = "__main__"
#: Aliases worth following besides references: ``t = torch`` leads to ``t.ops.torchvision``.
ALIAS_ROOTS = ("torch", "torch.ops", "sys", "sys.modules", NAMESPACE)

#: Names whose attributes, when assigned or deleted, change how tests compute or report verdicts.
PROTECTED_ROOTS = ("torch", "nn", "F", "np", "numpy", "checks", "course_lib", "builtins", "__builtins__", "sys",
                   "math", "IPython", "traceback", "unittest", "operator", "functools", "nbgrader")
#: Calls that reach into the interpreter or the kernel to change verdicts or tracebacks.
FORBIDDEN_CALLS = ("get_ipython", "setattr", "delattr", "__import__", "exec", "eval", "compile", "globals",
                   "_getframe", "settrace", "setprofile", "excepthook", "showtraceback", "register_cell_magic", "vars")
#: Settings an answer may change (they do not touch how verdicts are computed).
ALLOWED_SETTINGS = ("torch.backends.", "np.random.", "numpy.random.")
FORBIDDEN_MODULES = ("importlib", "ctypes", "gc", "inspect", "IPython", "traceback", "builtins")

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_FUNCTION_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


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


# --- what a dotted name stands for ---------------------------------------------------------------

def _torchvision_root(path: str) -> str | None:
    return next((root for root in TORCHVISION_ROOTS if path == root or path.startswith(root + ".")), None)


def _is_reference(path: str) -> bool:
    """Whether ``path`` (``torchvision.ops.boxes.box_iou``) names a reference an answer must not use.

    A module's own imports count too: ``checks.torch.ops.torchvision.nms`` is torchvision's nms.
    """
    parts = path.split(".")
    return any(_names_reference(".".join(parts[start:])) for start in range(len(parts)))


def _names_reference(path: str) -> bool:
    parts = path.split(".")
    if parts[0] == REFERENCE_PACKAGE:
        return len(parts) > 1 and parts[1] not in ALLOWED_COURSE_NAMES
    root = _torchvision_root(path)
    return root is not None and any(part in TORCHVISION_REFERENCES for part in path[len(root):].split("."))


def _reaches_references(path: str) -> bool:
    """Whether looking a name up in ``path`` (a module) may find a reference."""
    parts = path.split(".")
    if parts[0] == REFERENCE_PACKAGE:
        return len(parts) == 1 or parts[1] not in ALLOWED_COURSE_NAMES
    return _torchvision_root(path) is not None or path in ("sys.modules", NAMESPACE)


def _is_course_module(path: str) -> bool:
    """``course_lib.detection.boxes`` is a module of the package (``course_lib.detection.nms.nms`` is not)."""
    parts = path.split(".")
    if parts[0] != REFERENCE_PACKAGE:
        return False
    where = _PACKAGE_DIR.joinpath(*parts[1:])
    return (where / "__init__.py").is_file() or (len(parts) > 1 and where.with_suffix(".py").is_file())


@functools.lru_cache(maxsize=None)
def _course_public_names(module: str) -> frozenset[str]:
    """What ``from <module> import *`` binds, read from the module's source (its ``__all__``)."""
    where = _PACKAGE_DIR.joinpath(*module.split(".")[1:])
    path = where / "__init__.py" if (where / "__init__.py").is_file() else where.with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            try:
                return frozenset(ast.literal_eval(node.value))
            except ValueError:
                break
    return frozenset(node.name for node in tree.body
                     if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"))


def _star_references(module: str) -> dict[str, str]:
    """The references ``from <module> import *`` binds: name -> dotted path."""
    if module.startswith(TORCHVISION_REFERENCE_PACKAGES):
        return {name: f"{module}.{name}" for name in TORCHVISION_REFERENCES if not name.startswith("_")}
    if _is_course_module(module):
        paths = {name: f"{module}.{name}" for name in _course_public_names(module)}
        return {name: path for name, path in paths.items() if _is_reference(path)}
    return {}


def _imports(node: ast.AST) -> list[tuple[str, str]]:
    """(name bound, dotted path) for an import: ``import a.b`` binds a; ``from a import b as c`` binds c to a.b."""
    if isinstance(node, ast.Import):
        return [(a.asname, a.name) if a.asname else (a.name.split(".")[0], a.name.split(".")[0]) for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return [(a.asname or a.name, f"{node.module}.{a.name}") for a in node.names if a.name != "*"]
    return []


# --- scopes: which names a cell reads from the notebook ------------------------------------------

def _bound_names(nodes: list[ast.AST]) -> set[str]:
    """Names these statements bind in their own scope (not inside the functions or classes they define)."""
    names: set[str] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue
        if isinstance(node, (ast.Lambda, *_COMPREHENSIONS)):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(name for name, _ in _imports(node))
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        stack.extend(ast.iter_child_nodes(node))
    return names


def _function_locals(function: ast.AST) -> set[str]:
    args = function.args
    names = {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg) if a}
    body = function.body if isinstance(function.body, list) else [function.body]
    declared = {name for node in body for sub in ast.walk(node) if isinstance(sub, (ast.Global, ast.Nonlocal))
                for name in sub.names}
    return (names | _bound_names(body)) - declared


def _global_loads(tree: ast.AST) -> list[tuple[ast.Name, bool]]:
    """Names read from the notebook's namespace (not parameters or locals), and whether inside a function."""
    loads: list[tuple[ast.Name, bool]] = []

    def visit(node: ast.AST, local: frozenset[str], in_function: bool) -> None:
        if isinstance(node, _FUNCTION_SCOPES):
            outer = [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]
            for sub in [*outer, *getattr(node, "decorator_list", [])]:
                visit(sub, local, in_function)
            inner = local | _function_locals(node)
            for sub in node.body if isinstance(node.body, list) else [node.body]:
                visit(sub, inner, True)
            return
        if isinstance(node, _COMPREHENSIONS):
            local = local | {n.id for g in node.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in local:
            loads.append((node, in_function))
        for sub in ast.iter_child_nodes(node):
            visit(sub, local, in_function)

    visit(tree, frozenset(), False)
    return loads


# --- resolving expressions to dotted paths ---------------------------------------------------------

def _constant_str(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _lookup(node: ast.Call) -> tuple[ast.AST, ast.AST, bool] | None:
    """(owner, name, in_table) of ``getattr(owner, name)``, ``owner.__getattr__(name)`` (in_table False)
    and ``table.get(name)`` (True: ``sys.modules.get("torchvision.ops")``)."""
    func = node.func
    if isinstance(func, ast.Name) and func.id == "getattr" and len(node.args) >= 2:
        return node.args[0], node.args[1], False
    if isinstance(func, ast.Attribute) and func.attr in ("__getattribute__", "__getattr__") and node.args:
        return (func.value, node.args[0], False) if len(node.args) == 1 else (node.args[0], node.args[1], False)
    if isinstance(func, ast.Attribute) and func.attr == "get" and node.args:
        return func.value, node.args[0], True
    return None


class _Namespace:
    """Dotted paths that the notebook's imports and aliases bind each name to, read from every cell."""

    def __init__(self, trees: list[ast.AST]) -> None:
        self.paths: dict[str, set[str]] = {}
        for _ in range(2):  # twice: an alias may use a name bound in a later cell
            for tree in trees:
                for node in ast.walk(tree):
                    for name, path in _imports(node):
                        self.paths.setdefault(name, set()).add(path)
                    if isinstance(node, ast.Assign):
                        paths = {p for p in self.resolve(node.value)
                                 if _reaches_references(p) or p in ALIAS_ROOTS}
                        for target in node.targets:
                            if isinstance(target, ast.Name) and paths:
                                self.paths.setdefault(target.id, set()).update(paths)

    def resolve(self, node: ast.AST, globals_: set[int] | None = None) -> set[str]:
        """Dotted paths ``node`` may stand for (``box_ops.box_iou`` -> torchvision.ops.boxes.box_iou).

        ``globals_``: ids of the Name nodes that read the notebook's namespace (None: all of them);
        a parameter called like an imported module is not that module.
        """
        if isinstance(node, ast.Name):
            found = {node.id}
            if globals_ is None or id(node) in globals_:
                found |= self.paths.get(node.id, set())
            return found
        if isinstance(node, ast.Attribute):
            return {f"{base}.{node.attr}" for base in self._modules(node.value, globals_)}
        if isinstance(node, ast.Subscript):
            return self._entry(node.value, node.slice, globals_)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("locals", "globals"):
            return {NAMESPACE}
        if isinstance(node, ast.Call) and (lookup := _lookup(node)):
            owner, name, in_table = lookup
            if in_table:
                return self._entry(owner, name, globals_)
            key = _constant_str(name)
            return {f"{base}.{key}" for base in self._modules(owner, globals_)} if key else set()
        return set()

    def _entry(self, table: ast.AST, key: ast.AST, globals_: set[int] | None) -> set[str]:
        """``sys.modules["torchvision.ops"]`` is torchvision.ops, ``ops.__dict__["nms"]`` is ops.nms,
        ``locals()["helper"]`` is __main__.helper."""
        key = _constant_str(key)
        if key is None:
            return set()
        tables = self.resolve(table, globals_)
        return ({key} if "sys.modules" in tables else set()) | {
            f"{t.removesuffix('.__dict__')}.{key}" for t in tables if t.endswith(".__dict__") or t == NAMESPACE}

    def _modules(self, node: ast.AST, globals_: set[int] | None) -> set[str]:
        # an attribute of course_lib's function or constant (grid_anchors.x) is no look-up in a module
        return {p for p in self.resolve(node, globals_)
                if p.split(".")[0] != REFERENCE_PACKAGE or _is_course_module(p)}


# --- the findings ---------------------------------------------------------------------------------

#: Why a finding costs the question its points.
REFERENCE_REASON = "the reference it should re-implement"
OFF_LIMITS_REASON = "which the question asks to compute by hand"


@dataclass
class _Delegations:
    """What one piece of code reaches: (what it does, the dotted path it reaches, why it counts)."""

    found: list[tuple[str, str, str]] = field(default_factory=list)
    review: list[str] = field(default_factory=list)
    covered: set[int] = field(default_factory=set)  # ids of the Name nodes inside what was found


def _parents(tree: ast.AST) -> dict[int, ast.AST]:
    return {id(child): parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}


def _delegations(tree: ast.AST, names: _Namespace, globals_: set[int]) -> _Delegations:
    """Delegations and look-ups for review in ``tree``."""
    result = _Delegations()
    parents = _parents(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            result.found += [(f"imports {a.name}", a.name, REFERENCE_REASON)
                             for a in node.names if _is_reference(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            star = ["*"] if any(a.name == "*" for a in node.names) and _star_references(node.module) else []
            imported = star + [a.name for a in node.names if a.name != "*" and _is_reference(f"{node.module}.{a.name}")]
            if imported:
                result.found.append((f"imports {', '.join(imported)} from {node.module}",
                                     f"{node.module}.{imported[0]}", REFERENCE_REASON))
        elif isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
            parent = parents.get(id(node))
            if isinstance(parent, (ast.Attribute, ast.Subscript)) and parent.value is node:
                continue  # the longest chain speaks for it
            paths = sorted((p for p in names.resolve(node, globals_) if _is_reference(p)),
                           key=lambda p: (not _names_reference(p), p))  # torch.ops.torchvision.nms before t.ops...
            text = ast.unparse(node)
            if paths:
                result.found.append((f"uses {text}" + (f" ({paths[0]})" if paths[0] != text else ""), paths[0],
                                     REFERENCE_REASON))
                result.covered |= {id(n) for n in ast.walk(node) if isinstance(n, ast.Name)}
            elif _dynamic_lookup(node, names, globals_):
                result.review.append(f"looks up {text} by a computed name")
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name in OFF_LIMITS_IN:
            result.found += _off_limits(node, OFF_LIMITS_IN[node.name], names, globals_)
    return result


def _off_limits(definition: ast.AST, ruled_out: frozenset[str], names: _Namespace,
                globals_: set[int]) -> list[tuple[str, str, str]]:
    """Uses of what the question rules out, inside its definition (``nn.LayerNorm`` in ``LayerNorm2d``)."""
    found = []
    for node in ast.walk(definition):
        if isinstance(node, (ast.Attribute, ast.Name)) and isinstance(node.ctx, ast.Load):
            paths = sorted(p for p in names.resolve(node, globals_)  # torch's, not a method of the student's
                           if p.split(".")[0] in ("torch", "torchvision") and p.rsplit(".", 1)[-1] in ruled_out)
            if paths:
                found.append((f"uses {ast.unparse(node)} in {definition.name}", paths[0], OFF_LIMITS_REASON))
    return found


def _dynamic_lookup(node: ast.AST, names: _Namespace, globals_: set[int]) -> bool:
    """``getattr(torchvision.ops, name)``, ``sys.modules[name]``: a look-up by a name the audit cannot read."""
    if isinstance(node, ast.Subscript):
        owner, key, in_table = node.value, node.slice, True
    elif isinstance(node, ast.Call) and (lookup := _lookup(node)):
        owner, key, in_table = lookup
    else:
        return False
    if _constant_str(key) is not None:
        return False
    paths = names.resolve(owner, globals_)
    if in_table:  # only the table of modules and namespaces hold what modules define
        paths = {p.removesuffix(".__dict__") for p in paths
                 if p in ("sys.modules", NAMESPACE) or p.endswith(".__dict__")}
    return any(_reaches_references(p) for p in paths)


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
                    if isinstance(top, ast.Call) and _dotted(top.func) == "locals":
                        found.append("replaces a name through locals()")
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


# --- the notebook ---------------------------------------------------------------------------------

#: Magics whose argument or body is Python run in the student's namespace (or written for an import).
CODE_MAGICS = ("time", "timeit", "prun", "capture", "writefile")


def _parse(cell) -> ast.Module | None:
    """The cell's syntax tree, IPython's syntax included (``%time x = f()``, ``files = !ls``, ``torch?``)."""
    try:
        return ast.parse(cell.source)
    except SyntaxError:
        pass
    from IPython.core.inputtransformer2 import TransformerManager  # the kernel's own reading of the cell

    try:
        tree = ast.parse(TransformerManager().transform_cell(cell.source))
    except SyntaxError:
        return None  # it fails when it runs, like any syntax error
    if "get_ipython" in cell.source:
        return tree  # the student calls get_ipython too: its calls stay, and `_patches` names them
    return ast.fix_missing_locations(_MagicsAsCode().visit(tree))


def _code_in(text: str) -> list[ast.stmt]:
    """The statements of a magic's argument, after its options (``-n1 -r 2 y = f()``)."""
    words = text.split(" ")
    for start in range(len(words)):
        try:
            return ast.parse(" ".join(words[start:])).body
        except SyntaxError:
            continue
    return []


class _MagicsAsCode(ast.NodeTransformer):
    """IPython's ``get_ipython().run_line_magic("time", "x = f()")`` becomes ``x = f()``; other magics and
    shell commands, which run no Python in the kernel, become nothing."""

    @staticmethod
    def code(node: ast.AST) -> list[ast.stmt] | None:
        func = node.func if isinstance(node, ast.Call) else None
        if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call)
                and isinstance(func.value.func, ast.Name) and func.value.func.id == "get_ipython"):
            return None
        texts = [_constant_str(arg) or "" for arg in node.args]
        if func.attr == "run_line_magic" and texts and texts[0] in CODE_MAGICS:
            return _code_in(texts[1] if len(texts) > 1 else "")
        if func.attr == "run_cell_magic" and texts and texts[0] in CODE_MAGICS:
            return (_code_in(texts[1]) if texts[0] == "timeit" else []) + _code_in(texts[-1])
        return []

    def visit_Expr(self, node: ast.Expr):
        code = self.code(node.value)
        return self.generic_visit(node) if code is None else (code or ast.Pass())

    def visit_Call(self, node: ast.Call):
        code = self.code(node)
        if code is None:
            return self.generic_visit(node)
        return code[0].value if len(code) == 1 and isinstance(code[0], ast.Expr) else ast.Constant(None)


def module_names(nb) -> set[str]:
    """Names the notebook binds to imported modules or their members (``import torch as t`` gives ``t``)."""
    names: set[str] = set()
    for cell in nb.cells:
        tree = _parse(cell) if cell.cell_type == "code" else None
        for node in ast.walk(tree) if tree else ():
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
    return names


@dataclass
class _Cell:
    index: int
    kind: str
    gid: str | None
    tree: ast.Module
    globals_: set[int] = field(default_factory=set)

    @property
    def where(self) -> str:
        return self.gid or f"cell {self.index + 1}"


def _module_level(statement: ast.AST):
    """The nodes of a statement that run in the notebook's namespace (not in the functions it defines)."""
    stack = [statement]
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (*_FUNCTION_SCOPES, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))


def _references_bound(statement: ast.AST, names: _Namespace, origin: str) -> dict[str, str]:
    """What an import or alias statement binds to a reference: name -> what it is."""
    bound = {}
    for node in _module_level(statement):
        if isinstance(node, ast.ImportFrom) and node.module and any(a.name == "*" for a in node.names):
            bound |= {name: f"{path} imported in {origin}" for name, path in _star_references(node.module).items()}
        if isinstance(node, (ast.Import, ast.ImportFrom)):  # `import course_lib.models` binds course_lib: no reference
            bound |= {name: f"{path} imported in {origin}" for name, path in _imports(node) if _is_reference(path)}
        elif isinstance(node, ast.Assign):
            paths = sorted(p for p in names.resolve(node.value) if _is_reference(p))
            bound |= {t.id: f"{paths[0]} from {origin}" for t in node.targets if isinstance(t, ast.Name) and paths}
    return bound


def audit_cells(nb, source=None) -> Audit:
    """Findings in the cells a student can edit (answer cells and cells without a grading role).

    ``source``: the assignment's source notebook, whose hidden tests bind names that answers must
    not use either (``reference_box_iou``); without it only the tests in ``nb`` are read.
    """
    cells = [_Cell(i, cell_kind(c), grade_id(c), tree) for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (tree := _parse(c)) is not None]
    hidden = [tree for c in (source.cells if source is not None else []) if c.cell_type == "code"
              and cell_kind(c) == "tests" and (tree := _parse(c)) is not None]
    names = _Namespace([c.tree for c in cells] + hidden)
    for cell in cells:
        cell.globals_ = {id(name) for name, _ in _global_loads(cell.tree)}
    answers = [c for c in cells if c.kind == "answer"]
    added = [c for c in cells if c.kind == "free"]
    defined_by = {}  # name -> the first answer cell that defines it
    for cell in answers:
        for name in _bound_names(cell.tree.body):
            defined_by.setdefault(name, cell)

    # Names that reach a reference: bound by the tests, by an answer's imports or aliases, or by an added
    # cell (a helper that uses a reference or such a name, unless an answer after it defines that name again).
    references: dict[str, str] = {}
    for tree in hidden + [c.tree for c in cells if c.kind == "tests"]:
        references |= _references_bound(tree, names, "the tests")
    readonly = [tree for c in (source.cells if source is not None else nb.cells) if c.cell_type == "code"
                and cell_kind(c) == "readonly" and (tree := _parse(c)) is not None]
    provided = _bound_names(readonly)  # the set-up's grid_anchors (as released: edits are undone when graded)
    references = {name: why for name, why in references.items() if name not in provided}
    for cell in answers:
        references |= _references_bound(cell.tree, names, cell.where)
    in_added = {id(s): _delegations(s, names, c.globals_) for c in added for s in c.tree.body}
    binders: dict[str, _Cell] = {}  # name -> the added cell that made it reach a reference
    changed = True
    while changed:  # until no helper of an added cell reaches a reference through another one
        changed = False
        for cell in added:
            redefined_later = {name for a in answers if a.index > cell.index for name in _bound_names(a.tree.body)}
            for statement in cell.tree.body:
                reached = [path for _, path, _ in in_added[id(statement)].found]
                reached += [n.id for n, _ in _global_loads(statement) if n.id in references]
                if not reached:
                    continue
                if isinstance(statement, (ast.Import, ast.ImportFrom)):
                    bound = _references_bound(statement, names, cell.where)
                else:
                    bound = {name: f"defined in {cell.where} with {reached[0]}" for name in _bound_names([statement])}
                new = {name: why for name, why in bound.items() if name not in references.keys() | redefined_later}
                references |= new
                binders |= dict.fromkeys(new, cell)
                changed |= bool(new)

    audit = Audit()
    roots = module_names(nb)
    for cell in cells:
        if cell.kind not in ("answer", "free"):
            continue
        where, question = cell.where, graded_cell_of(cell.gid) if cell.kind == "answer" else None
        for what in dict.fromkeys(_patches(cell.tree, roots)):
            audit.findings.append(Finding(where, None, f"{where} {what} (test machinery): every question scores 0",
                                          patches=True))
        if cell.kind == "answer":
            reached = _delegations(cell.tree, names, cell.globals_)
            found = [(what, why) for what, _, why in reached.found] + _uses_of(cell, names, references, reached.covered)
            review = reached.review
        else:
            reached = [in_added[id(s)] for s in cell.tree.body]
            found = [(what, why) for r in reached for what, _, why in r.found]
            review = [what for r in reached for what in r.review]
            for name, answer in defined_by.items():
                target = graded_cell_of(answer.gid)
                if binders.get(name) is cell and answer.index < cell.index and target:
                    audit.findings.append(Finding(where, target, f"{where} redefines {name} of {answer.where}, "
                                                                 f"{references[name]} ({REFERENCE_REASON}): "
                                                                 f"{target} scores 0", patches=False))
        verdict = f"{question} scores 0" if question else "flagged for review"
        for what, why in dict.fromkeys(found):
            audit.findings.append(Finding(where, question, f"{where} {what} ({why}): {verdict}", patches=False))
        for what in dict.fromkeys(review):
            audit.findings.append(Finding(where, None, f"{where} {what}: flagged for review", patches=False))
    return audit


def _uses_of(cell: _Cell, names: _Namespace, references: dict[str, str], covered: set[int]) -> list[tuple[str, str]]:
    """An answer's reads of names that reach a reference from elsewhere (and that it did not bind first)."""
    found = []
    whole_cell = _bound_names(cell.tree.body)
    for position, statement in enumerate(cell.tree.body):
        before = _bound_names(cell.tree.body[:position])
        for name, in_function in _global_loads(statement):
            own = whole_cell if in_function else before  # a function reads the namespace when it is called
            if name.id in references and name.id not in own and id(name) not in covered:
                found.append((f"uses {name.id}, {references[name.id]}", REFERENCE_REASON))
    for node in ast.walk(cell.tree):  # through the namespace itself: __main__.helper, locals()["helper"]
        if isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
            for path in names.resolve(node, cell.globals_):
                name = path.split(".")[1] if path.startswith(NAMESPACE + ".") else ""
                if name in references:
                    found.append((f"uses {name}, {references[name]}", REFERENCE_REASON))
    return found
