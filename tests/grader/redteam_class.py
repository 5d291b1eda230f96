"""The red-team class: hostile and honest submissions of the red-team assignment (tests/fixtures/redteam),
shared by the red-team suite and the kill-and-rerun test."""
from __future__ import annotations

import copy
from pathlib import Path

import nbformat

from course_grader.autograde import GradingOptions
from course_grader.submission import grade_id

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "redteam"
SOURCE = FIXTURES / "redteam.ipynb"
NAME = "redteam"
FULL = {"q1_tests": 2.0, "q2_tests": 1.0}
CELL_TIMEOUT_S = 15
OPTIONS = GradingOptions(timeout=CELL_TIMEOUT_S, setup_timeout=180, memory_mb=1536, max_processes=64,
                         max_output_kb=256)

WRONG_Q1 = '''def box_area(boxes):
    return torch.zeros(len(boxes))
'''


def cell_of(nb, gid):
    return next(c for c in nb.cells if grade_id(c) == gid)


def with_answers(**answers) -> nbformat.NotebookNode:
    """The solution with some cells' sources replaced (keyword: grade id)."""
    nb = nbformat.read(SOURCE, as_version=4)
    for gid, text in answers.items():
        cell_of(nb, gid).source = text
    return nb


def add_cell(nb, text: str, after: str = "setup") -> nbformat.NotebookNode:
    index = next(i for i, c in enumerate(nb.cells) if grade_id(c) == after)
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(text))
    return nb


def hostile_class(course_dir: Path) -> dict[str, nbformat.NotebookNode | bytes]:
    solution = nbformat.read(SOURCE, as_version=4)
    deleted = copy.deepcopy(solution)
    deleted.cells = [c for c in deleted.cells if grade_id(c) != "q2_tests"]
    stripped = copy.deepcopy(solution)
    for cell in stripped.cells:
        cell.metadata.pop("nbgrader", None)
    gradebook = course_dir / "gradebook.db"
    return {
        "solution": solution,
        "eq_faking": with_answers(q2_answer='''class Anything(int):
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = int.__hash__

def conv_params(kernel_size, in_channels, out_channels, bias=True):
    return Anything(0)
'''),
        "patched_allclose": with_answers(q1_answer=WRONG_Q1 + "torch.allclose = lambda *args, **kwargs: True\n"),
        "patched_checkers": with_answers(q1_answer=WRONG_Q1 + "checks.check_close = lambda *args, **kwargs: None\n"
                                                       "checks.check_equal = lambda *args, **kwargs: None\n"),
        "patched_unseen": with_answers(q1_answer="type(checks).__setattr__(checks, 'check_close', lambda *args, **kwargs: None)\n"
                                          + WRONG_Q1),
        "hidden_traceback": with_answers(q1_answer=WRONG_Q1 + "ip = get_ipython()\n"
                                                       "ip.showtraceback = lambda *args, **kwargs: None\n"),
        "sys_exit": with_answers(q2_answer="import sys\nsys.exit(0)\n"),
        "os_exit": with_answers(q1_answer="import os\nos._exit(3)\n"),
        "kill_parent": with_answers(q1_answer='''import os, signal
for pid in {os.getppid(), 1}:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError as error:
        print("kill", pid, "refused:", error)
''' + cell_of(solution, "q1_answer").source),
        "search_disk": add_cell(copy.deepcopy(solution), f'''import os
found = []
for top in ("/", "/tmp", "/work", "/root", "/home", os.path.expanduser("~"), os.getcwd()):
    for folder, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.join(folder, d) not in ("/usr", "/proc", "/sys", "/dev", "/lib",
                                                                       "/lib64", "/bin", "/sbin", "/etc")
                   and ".venv" not in d and "pyenv" not in d]
        found += [os.path.join(folder, f) for f in files if f.endswith((".ipynb", ".db", ".json"))
                  and "kernel" not in f]
print("FOUND:", found)
print("COURSE FOLDER VISIBLE:", os.path.exists({str(course_dir)!r}), os.path.exists({str(ROOT / "solutions")!r}))
'''),
        "write_gradebook": add_cell(copy.deepcopy(solution), f'''for attempt in ({str(gradebook)!r}, "/tmp/../{gradebook.name}"):
    try:
        with open(attempt, "r+b") as handle:
            handle.write(b"2000" * 1000)
        print("WROTE", attempt)
    except OSError as error:
        print("could not write", attempt, type(error).__name__)
for outside in ({str(ROOT / "pwned.txt")!r}, "/usr/pwned.txt", "/pwned.txt"):
    try:
        open(outside, "w").write("x")
        print("WROTE", outside)
    except OSError as error:
        print("could not write", outside, type(error).__name__)
'''),
        "delegate_reference": with_answers(
            q1_answer="from torchvision.ops import box_area\n",
            q2_answer="from course_lib.models import conv_params as reference\n\n"
                      "def conv_params(kernel_size, in_channels, out_channels, bias=True):\n"
                      "    return reference(kernel_size, in_channels, out_channels, bias)\n"),
        "edited_tests": with_answers(q1_answer=WRONG_Q1, q1_tests="print('all good')\n"),
        "deleted_tests": deleted,
        "stripped_metadata": stripped,
        "infinite_loop": with_answers(q1_answer="while True:\n    pass\n"),
        "ignores_interrupt": with_answers(q1_answer="import time\nwhile True:\n    try:\n        time.sleep(0.1)\n"
                                             "    except KeyboardInterrupt:\n        pass\n"),
        "memory_bomb": with_answers(q1_answer="hoard = bytearray(64 * 1024 ** 3)\n"),
        "fork_bomb": with_answers(q1_answer="import os\nwhile True:\n    os.fork()\n"),
        # shared anonymous memory is not counted by RLIMIT_DATA: the sandbox's memory group stops it
        "shared_memory_bomb": with_answers(q1_answer="import mmap\nshared = mmap.mmap(-1, 6 * 1024 ** 3, flags=mmap.MAP_SHARED)\n"
                                              "for offset in range(0, len(shared), 4096):\n    shared[offset] = 1\n"),
        "big_print": with_answers(q1_answer="for _ in range(300):\n    print('x' * 1_000_000, flush=True)\n"
                           + cell_of(solution, "q1_answer").source),
        "corrupt": SOURCE.read_bytes()[:700],
    }
