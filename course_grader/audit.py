"""Reading the student's code before it runs: a report of delegation and patched test machinery.

Tests run in the student's own kernel, so an answer can change what the tests compute: replace
``torch.allclose``, the course's checkers or IPython's traceback display, or simply call the
reference implementation it was asked to write. The points do not depend on that: a question
keeps them only if the grader's own check confirms its results in the verdict process, where the
references do not exist and the tests do not run (`verdict_process`). This module reads every
code cell the student can edit (answers and cells they added) and names those moves for the
instructor, with the cell, the line's code and what it reaches (each message ends with `REPORTED`,
"reported; the points come from the grader's own check"):

    q1_answer imports box_iou from course_lib.detection (the reference it should re-implement): reported; ...
    cell 9 replaces torch.allclose (test machinery): reported; ...

One kind of finding costs points, because the verdict process cannot see it: a question's own prose
ruling out a torch function inside one definition (`OFF_LIMITS_IN`: exercise 2's ``LayerNorm2d``
computes the mean and variance itself, so ``nn.LayerNorm`` and ``F.layer_norm`` are ruled out
inside it, while its ``ConvNeXtBlock`` may use ``nn.LayerNorm``; exercise 6's ``frames_to_batches``
converts uint8 frames itself). torch's functions are where the verdict process computes too, so a
definition built on them gives the right results; the audit zeroes that question:

    q2_answer uses F.layer_norm in LayerNorm2d (which the question asks to compute by hand): q2_tests scores 0

So does a cell that redefines such a definition with what is ruled out after the answer, before the
question's tests (the verdict process calls the definition in force where the tests stand), and a
cell there that the audit cannot read at all (nested hundreds deep), like such an answer cell.

What counts as the reference: every module of ``course_lib`` except the helpers the exercises'
set-up imports (``checks``, ``get_device``, ...), and torchvision's own versions of what the
exercises ask for (`TORCHVISION_REFERENCES`: box operations, NMS, focal loss, box coding and
matching, ResNet and ConvNeXt blocks, stochastic depth), public or private, wherever torchvision
keeps them. The audit reads cells as the kernel does (IPython's ``%time x = f()``, ``files = !ls``,
``torch?``) and follows how a notebook names the references:

* imports in every form (``__import__`` and ``importlib.import_module`` with a constant name too),
  and plain aliases (``ops = torchvision.ops``), read notebook-wide: so ``box_ops.box_iou`` after
  ``from torchvision.ops import boxes as box_ops``, ``cl.models.ResidualBlock`` after ``import
  course_lib as cl``, or ``torch.ops.torchvision.nms`` resolve to what they are;
* look-ups by a constant name: ``getattr(torchvision.ops, "nms")``, ``vars(ops)["nms"]``,
  ``sys.modules["course_lib.detection"]``, ``locals()["helper"]``; by a computed name they are
  reported for review;
* names that reach a reference from another cell: bound by an import in a cell the student added
  or in another answer, bound by the instructor's hidden tests (``reference_box_iou``: pass the
  assignment's source notebook as ``source``, since a submission holds only the released tests),
  or helpers defined in added cells that use one; and an added cell after an answer that redefines
  it with one.

Test machinery (`_patches`) is what the notebook's tests compute and report verdicts with:
assigning or deleting attributes of torch, torchvision, ``course_lib`` (``checks``), nbgrader,
unittest, traceback, IPython, ``builtins``, ``sys`` and of the modules the tests import (``io``,
``contextlib``, ``math``); writing ``sys.modules`` or such a module's ``__dict__``;
``unittest.mock.patch`` on them; IPython's error display and cell hooks
(``get_ipython().showtraceback = ...``, ``set_custom_exc``, ``events.register``,
``ast_transformers``); ``sys.settrace``; replacing a function's code or globals or a frame's
variables. Everything else is ordinary code and is not reported: imports of any module
(``IPython.display``, ``inspect``, ``importlib``, ``warnings``, ``tqdm``), settings
(``plt.rcParams``, ``os.environ``, ``torch.backends``, ``sys.path``, print options, seeds),
magics (``%matplotlib inline``, ``%time``), ``exec``, ``globals()``, helper cells, pasted cells.

Limits. This is a static check, done by the grader in its own process: it reads what the source
says, not what it computes. It does not follow references through values (``f(torchvision.ops)``,
a list or dict of functions, a string built at run time, ``operator.attrgetter``, code written to
a file and imported), and names are tracked per notebook and per function, not per line. It
judges each answer on its own text: a later answer may call an earlier one (the exercises say
so), and a helper defined in an answer cell is that answer's, not followed into the others.
Whatever it misses meets the grader's own check of the answers' outputs (`verdicts`), except a
use of what a question rules out, which needs a person.
"""
from __future__ import annotations

import ast
import functools
from dataclasses import dataclass, field

from .locations import course_lib_dir
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
    "_box_xyxy_to_cxcywh", "_box_cxcywh_to_xyxy", "_box_xywh_to_xyxy", "_box_xyxy_to_xywh",
    "_box_inter_union", "_box_diou_iou", "_loss_inter_union", "nms", "batched_nms", "_batched_nms_vanilla",
    "_batched_nms_coordinate_trick", "roi_align", "roi_pool", "RoIAlign", "RoIPool",
    # exercise 4: focal loss, box coding and matching from torchvision's detection models
    "sigmoid_focal_loss", "BoxCoder", "encode_boxes", "Matcher", "SSDMatcher",
    # exercise 1: ResNet's blocks and models
    "BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "ResBottleneckBlock", "BottleneckTransform",  # RegNet's: ResNet's bottleneck block under another name
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
#: The IPython shell, as ``get_ipython()`` gives it.
SHELL = "get_ipython()"
#: The notebook's namespace as the shell holds it.
SHELL_NAMESPACES = (f"{SHELL}.user_ns", f"{SHELL}.user_global_ns")
#: Aliases worth following besides references: ``t = torch`` leads to ``t.ops.torchvision``, ``ip = get_ipython()``
#: to ``ip.showtraceback``.
ALIAS_ROOTS = ("torch", "torch.ops", "sys", "sys.modules", NAMESPACE, SHELL)

#: Modules the tests compute and report verdicts with: assigning or deleting their attributes (through
#: any alias: ``t.allclose``, ``checks.check_close``) is reported. The modules a notebook's tests import
#: count too (exercise 1's hidden tests capture prints with ``io`` and ``contextlib``, exercise 2's use ``math``).
MACHINERY_MODULES = frozenset({"torch", "torchvision", "course_lib", "nbgrader", "unittest", "traceback", "IPython",
                               "builtins", "__builtins__", "sys"})
#: Attributes of those an answer may set: settings that do not touch how verdicts are computed
#: (``torch.backends.cudnn.benchmark``, ``sys.path``, IPython's ``InteractiveShell.ast_node_interactivity``).
ALLOWED_SETTINGS = ("torch.backends", "sys.path", "sys.argv", "sys.dont_write_bytecode",
                    "IPython.core.interactiveshell.InteractiveShell.ast_node_interactivity")
#: IPython's error display and the hooks that rewrite or wrap the cells that run after (the tests),
#: reported wherever the notebook reaches them (``get_ipython().showtraceback = ...``).
IPYTHON_HOOKS = frozenset({"showtraceback", "_showtraceback", "showsyntaxerror", "set_custom_exc", "CustomTB",
                           "custom_exceptions", "ast_transformers", "input_transformers_cleanup",
                           "input_transformers_post", "excepthook"})
#: Calls that make the interpreter run the student's code around every later line or cell.
INTERPRETER_HOOKS = ("sys.settrace", "sys.setprofile", "sys.addaudithook", "threading.settrace",
                     "threading.setprofile", "threading.settrace_all_threads", "threading.setprofile_all_threads")
#: ``get_ipython().events.register("pre_run_cell", f)``: code run before or after each test cell.
IPYTHON_EVENT_CALLS = (".events.register", ".events.unregister")
#: Attributes whose assignment replaces what a function runs or a frame sees (``f.__code__ = ...``).
CODE_INTERNALS = frozenset({"__code__", "__globals__", "__defaults__", "__kwdefaults__", "__closure__", "__class__",
                            "f_globals", "f_locals", "f_builtins", "f_trace"})
#: Methods that change a mapping in place: on ``sys.modules`` or a module's ``__dict__`` they patch.
MAPPING_WRITES = frozenset({"update", "pop", "popitem", "setdefault", "clear", "__setitem__", "__delitem__"})
#: unittest.mock's patchers, reported when what they patch is test machinery.
MOCK_PATCHERS = ("unittest.mock.patch", "unittest.mock.patch.object", "unittest.mock.patch.dict",
                 "unittest.mock.patch.multiple")

_PACKAGE_DIR = course_lib_dir()
_FUNCTION_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


@dataclass
class Finding:
    """One finding in one cell, for the instructor: ``question`` is the test cell it concerns (None: no
    one question), ``patches`` says it touches the test machinery, ``zeroes`` that ``question``
    scores 0 (only what the question's prose rules out, `OFF_LIMITS_IN`); the others are reported."""

    cell: str
    question: str | None
    message: str
    patches: bool
    zeroes: bool = False


@dataclass
class Audit:
    findings: list[Finding] = field(default_factory=list)

    @property
    def zeroed_questions(self) -> set[str]:
        """Test cells that score 0: those whose definitions use what their question rules out."""
        return {f.question for f in self.findings if f.zeroes and f.question}

    @property
    def reported_questions(self) -> set[str]:
        """Test cells whose answers reach a reference (reported; their points come from the grader's check)."""
        return {f.question for f in self.findings if not f.zeroes and f.question}


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
    """``course_lib.detection.boxes`` is a module of the package (``course_lib.detection.suppression.nms`` is not)."""
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
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "get_ipython":
            return {SHELL}
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "vars":
            if not node.args:
                return {NAMESPACE}
            return {f"{base}.__dict__" for base in self._modules(node.args[0], globals_)}
        if isinstance(node, ast.Call) and self.imports_module(node, globals_):
            module = _constant_str(node.args[0]) if node.args else None
            if module is None or module.startswith("."):
                return set()
            # __import__("a.b") gives package a, unless asked for names from a.b; import_module gives a.b
            names_from = node.args[3] if len(node.args) > 3 else next(
                (k.value for k in node.keywords if k.arg == "fromlist"), None)
            whole = "importlib.import_module" in self.resolve(node.func, globals_) or \
                (names_from is not None and not (isinstance(names_from, ast.Constant) and not names_from.value))
            return {module if whole else module.split(".")[0]}
        if isinstance(node, ast.Call) and (lookup := _lookup(node)):
            owner, name, in_table = lookup
            if in_table:
                return self._entry(owner, name, globals_)
            key = _constant_str(name)
            return {f"{base}.{key}" for base in self._modules(owner, globals_)} if key else set()
        return set()

    def imports_module(self, node: ast.Call, globals_: set[int] | None) -> bool:
        """Whether ``node`` calls ``__import__`` or ``importlib.import_module``."""
        imports = {"__import__", "builtins.__import__", "importlib.import_module"}
        return bool(self.resolve(node.func, globals_) & imports)

    def _entry(self, table: ast.AST, key: ast.AST, globals_: set[int] | None) -> set[str]:
        """``sys.modules["torchvision.ops"]`` is torchvision.ops, ``ops.__dict__["nms"]`` is ops.nms,
        ``locals()["helper"]`` and ``get_ipython().user_ns["helper"]`` are __main__.helper."""
        key = _constant_str(key)
        if key is None:
            return set()
        tables = {NAMESPACE if t in SHELL_NAMESPACES else t for t in self.resolve(table, globals_)}
        return ({key} if "sys.modules" in tables else set()) | {
            f"{t.removesuffix('.__dict__')}.{key}" for t in tables if t.endswith(".__dict__") or t == NAMESPACE}

    def _modules(self, node: ast.AST, globals_: set[int] | None) -> set[str]:
        # an attribute of course_lib's function or constant (grid_anchors.x) is no look-up in a module
        return {p for p in self.resolve(node, globals_)
                if p.split(".")[0] != REFERENCE_PACKAGE or _is_course_module(p)}


# --- the findings ---------------------------------------------------------------------------------

#: Why a finding is there: what an answer reached, and what its question rules out (that one costs the points).
REFERENCE_REASON = "the reference it should re-implement"
OFF_LIMITS_REASON = "which the question asks to compute by hand"
#: The end of every finding that costs nothing.
REPORTED = "reported; the points come from the grader's own check"


@dataclass
class _Delegations:
    """What one piece of code reaches: (what it does, the dotted path it reaches, why it counts); what it
    uses that a question rules out: (what it does, the dotted path, the definition it is in)."""

    found: list[tuple[str, str, str]] = field(default_factory=list)
    off_limits: list[tuple[str, str, str]] = field(default_factory=list)
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
            if isinstance(getattr(node, "ctx", None), (ast.Store, ast.Del)):
                continue  # replacing a reference is no use of it (`_patches` reads assignments)
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
            result.off_limits += _off_limits(node.name, node, names, globals_)
        elif isinstance(node, ast.Assign):  # LayerNorm2d = nn.LayerNorm
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in OFF_LIMITS_IN:
                    result.off_limits += _off_limits(target.id, node.value, names, globals_)
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:  # ... import LayerNorm as LayerNorm2d
            for alias in node.names:
                path = f"{node.module}.{alias.name}"
                if alias.asname in OFF_LIMITS_IN and _is_ruled_out(path, alias.asname):
                    result.off_limits.append((f"imports {alias.name} from {node.module} as {alias.asname}", path,
                                              alias.asname))
    # a look-up inside a definition that rules something out is decided there, not left for review
    decided = [what for what, _, _ in result.off_limits]
    result.review = [what for what in result.review if not any(o.startswith(f"{what} in ") for o in decided)]
    return result


def _is_ruled_out(path: str, definition: str) -> bool:
    """Whether ``path`` is torch's or torchvision's version of what ``definition``'s question rules out."""
    return path.split(".")[0] in ("torch", "torchvision") and path.rsplit(".", 1)[-1] in OFF_LIMITS_IN[definition]


def _off_limits(definition: str, code: ast.AST, names: _Namespace, globals_: set[int]) -> list[tuple[str, str, str]]:
    """Uses of what the question rules out in ``code``, the definition of ``definition`` or the value it is
    bound to (``nn.LayerNorm`` or ``getattr(F, "layer_norm")`` in ``LayerNorm2d``), and look-ups in torch or
    torchvision by a name the audit cannot read there (``getattr(TF, "to_" + "dtype")``): nothing else
    can tell whether they reach what is ruled out."""
    found = []
    for node in ast.walk(code):
        if isinstance(node, (ast.Attribute, ast.Name, ast.Subscript)) and isinstance(node.ctx, ast.Load) \
                or isinstance(node, ast.Call):
            # torch's, not a method of the student's
            paths = sorted(p for p in names.resolve(node, globals_) if _is_ruled_out(p, definition))
            text = ast.unparse(node)
            if paths:
                found.append((f"uses {text} in {definition}", paths[0], definition))
            elif owner := _torch_looked_up(node, names, globals_):
                found.append((f"looks up {text} by a computed name in {definition}", owner, definition))
    return found


def _computed_lookup(node: ast.AST) -> tuple[ast.AST, bool] | None:
    """``(owner, in_table)`` of a look-up by a name the source does not spell out: ``owner[key]``
    (a table) or ``getattr(owner, key)``; None for anything else."""
    if isinstance(node, ast.Subscript):
        owner, key, in_table = node.value, node.slice, True
    elif isinstance(node, ast.Call) and (lookup := _lookup(node)):
        owner, key, in_table = lookup
    else:
        return None
    return None if _constant_str(key) is not None else (owner, in_table)


def _torch_looked_up(node: ast.AST, names: _Namespace, globals_: set[int]) -> str | None:
    """The torch or torchvision module that ``getattr(module, name)`` or ``vars(module)[name]`` looks a
    computed name up in, or None."""
    computed = _computed_lookup(node)
    if computed is None:
        return None
    owner, in_table = computed
    paths = sorted(p.removesuffix(".__dict__") for p in names.resolve(owner, globals_)
                   if p.split(".")[0] in ("torch", "torchvision") and (p.endswith(".__dict__") or not in_table))
    return paths[0] if paths else None


def _dynamic_lookup(node: ast.AST, names: _Namespace, globals_: set[int]) -> bool:
    """``getattr(torchvision.ops, name)``, ``sys.modules[name]``, ``importlib.import_module(name)``: a look-up
    by a name the audit cannot read."""
    if isinstance(node, ast.Call) and names.imports_module(node, globals_):
        return bool(node.args) and _constant_str(node.args[0]) is None
    computed = _computed_lookup(node)
    if computed is None:
        return False
    owner, in_table = computed
    paths = names.resolve(owner, globals_)
    if in_table:  # only the table of modules and namespaces hold what modules define
        paths = {p.removesuffix(".__dict__") for p in paths
                 if p in ("sys.modules", NAMESPACE) or p.endswith(".__dict__")}
    return any(_reaches_references(p) for p in paths)


def _patches(tree: ast.AST, names: _Namespace, globals_: set[int], machinery: frozenset[str]) -> list[str]:
    """What ``tree`` does to the test machinery (`MACHINERY_MODULES` and ``machinery``, the modules the tests use)."""

    def machinery_path(node: ast.AST | str) -> str | None:  # torch.allclose for t.allclose
        if isinstance(node, str):  # a name or a dotted path in a string: resolve its first part
            first, _, rest = node.partition(".")
            paths = {".".join(filter(None, (p, rest))) for p in {first} | names.paths.get(first, set())}
        else:
            paths = names.resolve(node, globals_)
        own = [p.removeprefix(NAMESPACE + ".") for p in paths if p.startswith(NAMESPACE + ".")]  # __main__.checks
        paths = set(paths) | {path for name in own if (path := machinery_path(name))}
        return next((p for p in sorted(paths) if p.split(".")[0] in machinery and not _allowed_setting(p)), None)

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in IPYTHON_HOOKS:
            text = _dotted(node)
            shell = sorted(p for p in names.resolve(node, globals_) if p.startswith(SHELL) and p != text)
            found.append(f"{'uses' if isinstance(node.ctx, ast.Load) else 'replaces'} {text}"
                         + (f" ({shell[0]})" if shell else ""))
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = list(node.targets) if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
        verb = "deletes" if isinstance(node, ast.Delete) else "replaces"
        while targets:
            top = targets.pop()
            if isinstance(top, (ast.Tuple, ast.List, ast.Starred)):
                targets.extend(top.elts if isinstance(top, (ast.Tuple, ast.List)) else [top.value])
            elif isinstance(top, ast.Attribute) and top.attr not in IPYTHON_HOOKS:
                if top.attr in CODE_INTERNALS or machinery_path(top):
                    found.append(f"{verb} {_dotted(top)}")
            elif isinstance(top, ast.Subscript):  # sys.modules["torch"] = ..., torch.__dict__["allclose"] = ...
                table = top.value
                if names.resolve(table, globals_) & {NAMESPACE, f"{NAMESPACE}.__dict__", *SHELL_NAMESPACES}:
                    key = _constant_str(top.slice)  # locals()["checks"] = ...: the name itself
                    if key and machinery_path(key):
                        found.append(f"{verb} {key} through {ast.unparse(table)}")
                elif machinery_path(table) or _attributes(table) & CODE_INTERNALS:
                    found.append(f"{verb} {ast.unparse(top)}")
            elif isinstance(top, ast.Name) and top.id == "__builtins__":
                found.append(f"{verb} __builtins__")
        if isinstance(node, ast.Call):
            found += _patching_call(node, names, globals_, machinery_path)
    return found


def _patching_call(node: ast.Call, names: _Namespace, globals_: set[int], machinery_path) -> list[str]:
    """``setattr(checks, ...)``, ``sys.modules.update(...)``, ``sys.settrace(f)``, ``mock.patch("torch.allclose")``."""
    function = names.resolve(node.func, globals_)
    dotted = _dotted(node.func)
    first = node.args[0] if node.args else None
    if function & {"setattr", "delattr", "builtins.setattr", "builtins.delattr"} and first is not None:
        attribute = _constant_str(node.args[1]) if len(node.args) > 1 else None
        # setattr(__main__, "F", ...) rebinds the notebook's own name F
        in_namespace = attribute is not None and NAMESPACE in names.resolve(first, globals_)
        if machinery_path(first) or attribute in IPYTHON_HOOKS | CODE_INTERNALS or in_namespace and \
                machinery_path(attribute):
            return [f"calls {dotted} on {_dotted(first) or ast.unparse(first)}"]
    if isinstance(node.func, ast.Attribute) and node.func.attr in MAPPING_WRITES:
        tables = names.resolve(node.func.value, globals_)  # sys.modules, torch.__dict__, vars(checks)
        if "sys.modules" in tables or any(t.endswith(".__dict__") and machinery_path(node.func.value) for t in tables):
            return [f"changes {ast.unparse(node.func.value)}"]
    if function & set(INTERPRETER_HOOKS) or dotted.endswith(IPYTHON_EVENT_CALLS):
        return [f"calls {dotted}"]
    if function & set(MOCK_PATCHERS) and first is not None:
        target = _constant_str(first)
        if machinery_path(target) if target is not None else machinery_path(first):
            return [f"patches {target or ast.unparse(first)} with {dotted}"]
    return []


def _allowed_setting(path: str) -> bool:
    return any(path == allowed or path.startswith(allowed + ".") for allowed in ALLOWED_SETTINGS)


def _attributes(node: ast.AST) -> set[str]:
    """The attribute names along a chain: ``f.__globals__["x"].y`` -> {"__globals__", "y"}."""
    return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}



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
#: How deep a cell's syntax tree may nest for the audit to read it: Python's parser and the audit's
#: walks recurse once per level; honest code nests 20 levels at most.
MAX_SYNTAX_DEPTH = 200
#: The audit's work on a tree grows with the sum of its nodes' depths (it resolves and quotes each
#: chain from every link): at most this per cell, and per notebook. The course's largest module
#: (this one, 700 lines) sums to about 50,000.
MAX_SYNTAX_WORK = 400_000
MAX_NOTEBOOK_SYNTAX_WORK = 2_000_000
#: Words of a magic's options tried before its code (``%timeit -n1 -r 2 y = f()``): each try parses the rest.
MAX_MAGIC_OPTION_WORDS = 8
#: Why the audit could not read a cell (``(((...)))`` thousands deep, ``- - - ... 1``, or too much of it).
NESTED_TOO_DEEPLY = "nested too deeply"
TOO_COMPLEX = "too long and too deeply nested"
TOO_MUCH_CODE = "the notebook holds too much deeply nested code"


class _Unreadable(Exception):
    """A cell the audit cannot read (too deep for the parser or for its own walks); the message says why."""


def _parse(cell) -> ast.Module | None:
    """`_read_cell`'s tree; None for a cell with a syntax error or one the audit cannot read."""
    try:
        return _read_cell(cell)[0]
    except _Unreadable:
        return None


def _read_cell(cell) -> tuple[ast.Module | None, int]:
    """`_parse_cell`'s tree and the audit's work on it (`_syntax_work`); raises `_Unreadable` instead
    of the parser's RecursionError or MemoryError, and for a tree too deep or too large for the audit."""
    try:
        tree = _parse_cell(cell)
    except (RecursionError, MemoryError):
        raise _Unreadable(NESTED_TOO_DEEPLY) from None
    work = 0 if tree is None else _syntax_work(tree)
    if work > MAX_SYNTAX_WORK:
        raise _Unreadable(TOO_COMPLEX)
    return tree, work


def _syntax_work(tree: ast.AST) -> int:
    """The sum of the depths of ``tree``'s nodes, counted without recursion; `_Unreadable` past `MAX_SYNTAX_DEPTH`."""
    total, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_SYNTAX_DEPTH:
            raise _Unreadable(NESTED_TOO_DEEPLY)
        total += depth
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return total


def _parse_cell(cell) -> ast.Module | None:
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
    for start in range(min(len(words), MAX_MAGIC_OPTION_WORDS + 1)):
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
    cells, unreadable, work = [], {}, 0
    for i, c in enumerate(nb.cells):
        try:
            tree, cost = _read_cell(c) if c.cell_type == "code" else (None, 0)
            work += cost
            if work > MAX_NOTEBOOK_SYNTAX_WORK:
                raise _Unreadable(TOO_MUCH_CODE)
        except _Unreadable as why:  # a finding below, for the answer or added cell it is
            unreadable[i] = str(why)
            continue
        if tree is not None:
            cells.append(_Cell(i, cell_kind(c), grade_id(c), tree))
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
    answer_names = {a.index: _bound_names(a.tree.body) for a in answers}  # once each: the loop below repeats
    redefined_after = {cell.index: {name for a in answers if a.index > cell.index for name in answer_names[a.index]}
                       for cell in added}
    changed = True
    while changed:  # until no helper of an added cell reaches a reference through another one
        changed = False
        for cell in added:
            redefined_later = redefined_after[cell.index]
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

    def add(where: str, question: str | None, what: str, *, patches: bool = False, zeroes: bool = False) -> None:
        message = f"{where} {what}: {f'{question} scores 0' if zeroes else REPORTED}"
        if all(f.message != message for f in audit.findings):
            audit.findings.append(Finding(where, question, message, patches, zeroes and question is not None))

    # What the questions rule out is decided here: the verdict process computes with torch as the answer
    # does. The definition that counts is the one in force where the question's tests stand (the verdict
    # process calls it there): the answer's, or a later cell's before the tests.
    owners = _ruled_out_owners(source.cells if source is not None else nb.cells)  # LayerNorm2d -> q2_answer
    owners |= {name: cell.gid for name, cell in defined_by.items() if name in OFF_LIMITS_IN and name not in owners}
    positions = {grade_id(c): i for i, c in reversed(list(enumerate(nb.cells))) if grade_id(c)}  # first copies
    tested_at = {name: positions.get(graded_cell_of(owner), len(nb.cells)) for name, owner in owners.items()}
    definitions = []  # (cell, name, what it uses that its question rules out, or None), in notebook order
    for cell in sorted(answers + added, key=lambda c: c.index):
        for statement in cell.tree.body:
            for name in _bound_names([statement]) & OFF_LIMITS_IN.keys():
                ruled_out = [p for _, p, d in _delegations(statement, names, cell.globals_).off_limits if d == name]
                definitions.append((cell, name, ruled_out[0] if ruled_out else None))
    decided = set()  # (cell index, name): that cell's use of what is ruled out costs a question its points
    for name, owner in owners.items():
        in_force = [(c, path) for c, n, path in definitions if n == name and c.index < tested_at[name]]
        cell, path = in_force[-1] if in_force else (None, None)
        if path and cell.gid != owner and graded_cell_of(owner):
            verb = "redefines" if name in defined_by and defined_by[name].index < cell.index else "defines"
            add(cell.where, graded_cell_of(owner), f"{verb} {name} of {owner} with {path} ({OFF_LIMITS_REASON})",
                zeroes=True)
            decided.add((cell.index, name))
    for index, why in unreadable.items():  # it may define what its question rules out, or redefine it
        kind, gid = cell_kind(nb.cells[index]), grade_id(nb.cells[index])
        if kind not in ("answer", "free"):
            continue
        where = gid if kind == "answer" and gid else f"cell {index + 1}"
        unchecked = {name: owner for name, owner in owners.items()
                     if owner == gid or positions.get(owner, len(nb.cells)) < index < tested_at[name]}
        for name, owner in unchecked.items():
            add(where, graded_cell_of(owner), f"could not be read: {why}, so the audit cannot check what it "
                                              f"defines as {name} ({OFF_LIMITS_REASON})", zeroes=True)
        if not unchecked:
            add(where, graded_cell_of(gid) if kind == "answer" else None, f"could not be read: {why}")

    tests = hidden + [c.tree for c in cells if c.kind == "tests"]
    machinery = MACHINERY_MODULES | {path.split(".")[0] for tree in tests for node in ast.walk(tree)
                                     for _, path in _imports(node)}
    for cell in cells:
        if cell.kind not in ("answer", "free"):
            continue
        where, question = cell.where, graded_cell_of(cell.gid) if cell.kind == "answer" else None
        for what in _patches(cell.tree, names, cell.globals_, machinery):
            add(where, None, f"{what} (test machinery)", patches=True)
        if cell.kind == "answer":
            reached = _delegations(cell.tree, names, cell.globals_)
            found = [(what, why) for what, _, why in reached.found] + _uses_of(cell, names, references, reached.covered)
            for what, _, _ in reached.off_limits:
                add(where, question, f"{what} ({OFF_LIMITS_REASON})", zeroes=True)
            review = reached.review
        else:
            reached = [in_added[id(s)] for s in cell.tree.body]
            found = [(what, why) for r in reached for what, _, why in r.found]
            found += [(what, OFF_LIMITS_REASON) for r in reached for what, _, name in r.off_limits
                      if (cell.index, name) not in decided]  # a scratch definition, replaced later
            review = [what for r in reached for what in r.review]
            for name, answer in defined_by.items():
                target = graded_cell_of(answer.gid)
                if binders.get(name) is cell and answer.index < cell.index and target:
                    add(where, target, f"redefines {name} of {answer.where}, {references[name]} ({REFERENCE_REASON})")
        for what, why in found:
            add(where, question, f"{what} ({why})")
        for what in review:
            add(where, None, what)
    return audit


def _ruled_out_owners(cells) -> dict[str, str]:
    """The answer cell (grade id) that defines each name of `OFF_LIMITS_IN` in ``cells``: LayerNorm2d -> q2_answer."""
    owners = {}
    for cell in cells:
        tree = _parse(cell) if cell.cell_type == "code" and cell_kind(cell) == "answer" else None
        for name in _bound_names(tree.body) & OFF_LIMITS_IN.keys() if tree is not None else ():
            owners.setdefault(name, grade_id(cell))
    return owners


def _uses_of(cell: _Cell, names: _Namespace, references: dict[str, str], covered: set[int]) -> list[tuple[str, str]]:
    """An answer's reads of names that reach a reference from elsewhere (and that it did not bind first)."""
    found = []
    whole_cell = _bound_names(cell.tree.body)
    before: set[str] = set()  # what the statements so far bind (grown as we go: linear in the cell's length)
    for statement in cell.tree.body:
        for name, in_function in _global_loads(statement):
            own = whole_cell if in_function else before  # a function reads the namespace when it is called
            if name.id in references and name.id not in own and id(name) not in covered:
                found.append((f"uses {name.id}, {references[name.id]}", REFERENCE_REASON))
        before |= _bound_names([statement])
    for node in ast.walk(cell.tree):  # through the namespace itself: __main__.helper, locals()["helper"]
        if isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
            for path in names.resolve(node, cell.globals_):
                name = path.split(".")[1] if path.startswith(NAMESPACE + ".") else ""
                if name in references:
                    found.append((f"uses {name}, {references[name]}", REFERENCE_REASON))
    return found
