"""nbgrader course directories: the instructor's grading folder and the throw-away ones.

nbgrader works on a folder laid out as::

    <root>/nbgrader_config.py
    <root>/gradebook.db
    <root>/source/<assignment>/<notebook>.ipynb          instructor version (solutions, hidden tests)
    <root>/release/<assignment>/<notebook>.ipynb         student version
    <root>/submitted/<student>/<assignment>/<notebook>.ipynb
    <root>/autograded/<student>/<assignment>/<notebook>.ipynb
    <root>/feedback/<student>/<assignment>/<notebook>.html

In this course an assignment is one notebook of the same name: ``solutions/NN_name.ipynb`` is the
source of assignment ``NN_name``. The instructor's folder (``grading/`` by default) is a complete
nbgrader course, so formgrader and ``nbgrader export`` work in it; grading one submission happens in
a temporary folder of the same layout.
"""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from .environment import capturing_logger, quiet_libraries

#: nbgrader's course id for the gradebook.
COURSE_ID = "cnn-blocks-to-detectors"
#: Where `course` commands keep the instructor's nbgrader course unless told otherwise (git-ignored).
DEFAULT_GRADING_DIR = "grading"
#: Folder (inside the grading folder) where Jupyter, IPython and matplotlib keep their files.
JUPYTER_HOME = ".jupyter-home"
#: Per-submission grade records (JSON) and grader logs, next to nbgrader's own folders.
RECORDS_DIR = "records"
LOGS_DIR = "logs"

CONFIG_TEMPLATE = '''\
# nbgrader configuration for this course's grading folder (written by `course grade`/`course release`).
# Run nbgrader commands (formgrader, export, generate_feedback) from this folder.
c = get_config()  # noqa: F821
c.CourseDirectory.course_id = "{course_id}"
c.Execute.timeout = {timeout}
c.OverwriteCells.add_missing_cells = True
'''


@dataclass(frozen=True)
class CourseFolder:
    """Where everything lies in an nbgrader course folder ``root`` (see the module's docstring).

    The one place the layout is spelled: ``CourseFolder(root).submitted(student, assignment)`` is
    that student's notebook of that assignment, and so on. Assignments are notebooks of their own
    name (``<assignment>.ipynb``).
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @staticmethod
    def notebook(assignment: str) -> str:
        return f"{assignment}.ipynb"

    @property
    def config(self) -> Path:
        return self.root / "nbgrader_config.py"

    @property
    def gradebook(self) -> Path:
        return self.root / "gradebook.db"

    @property
    def gradebook_url(self) -> str:
        return f"sqlite:///{self.gradebook.resolve()}"

    @property
    def grades_csv(self) -> Path:
        return self.root / "grades.csv"

    def source(self, assignment: str) -> Path:
        """The instructor's version (solutions and hidden tests)."""
        return self.root / "source" / assignment / self.notebook(assignment)

    def release(self, assignment: str) -> Path:
        """The students' version."""
        return self.root / "release" / assignment / self.notebook(assignment)

    def submitted_dir(self, student: str, assignment: str) -> Path:
        return self.root / "submitted" / student / assignment

    def submitted(self, student: str, assignment: str) -> Path:
        return self.submitted_dir(student, assignment) / self.notebook(assignment)

    def autograded_dir(self, student: str, assignment: str) -> Path:
        return self.root / "autograded" / student / assignment

    def autograded(self, student: str, assignment: str) -> Path:
        return self.autograded_dir(student, assignment) / self.notebook(assignment)

    def feedback(self, student: str, assignment: str) -> Path:
        return self.root / "feedback" / student / assignment / f"{assignment}.html"

    @property
    def records_dir(self) -> Path:
        """The course's own grade records (JSON, one per submission), beside nbgrader's folders."""
        return self.root / RECORDS_DIR

    def record(self, student: str, assignment: str) -> Path:
        return self.records_dir / assignment / f"{student}.json"

    def log(self, student: str, assignment: str) -> Path:
        """The grader's log of one submission."""
        return self.root / LOGS_DIR / assignment / f"{student}.log"


class CourseError(Exception):
    """A problem the person running a `course` command can fix (a wrong name, a missing folder)."""


class NbgraderError(CourseError):
    """An nbgrader step failed; the message is nbgrader's own last error line, ``log`` its whole log."""

    def __init__(self, message: str, log: list[str] | None = None) -> None:
        super().__init__(message)
        self.log = log or []


@dataclass(frozen=True)
class Assignment:
    """An assignment: its name (also its notebook's name) and its nbgrader source notebook."""

    name: str
    source_path: Path

    @property
    def notebook_file(self) -> str:
        return f"{self.name}.ipynb"

    def source_bytes(self) -> bytes:
        return self.source_path.read_bytes()

    def source_sha256(self) -> str:
        return hashlib.sha256(self.source_bytes()).hexdigest()


def find_assignments(solutions_dir: Path, names: list[str] | None = None) -> list[Assignment]:
    """Assignments whose sources are in ``solutions_dir``; ``names`` picks some (by name, prefix or path)."""
    available = {p.stem: p for p in sorted(Path(solutions_dir).glob("*.ipynb"))}
    if not names:
        return [Assignment(name, path) for name, path in available.items()]
    chosen = []
    for wanted in names:
        stem = Path(wanted).stem
        matches = [name for name in available if name == stem] or [n for n in available if n.startswith(stem)]
        if len(matches) != 1:
            known = ", ".join(available) or "none"
            raise CourseError(f"assignment {wanted!r} matches {len(matches)} sources in {solutions_dir} (known: {known})")
        chosen.append(Assignment(matches[0], available[matches[0]]))
    return chosen


def nbgrader_config(root: Path, assignment: str = "", student: str = "", **settings):
    """A traitlets Config for an nbgrader converter working in ``root``.

    ``settings`` are ``"Class.trait": value`` pairs, e.g. ``{"Execute.timeout": 60}``.
    """
    from traitlets.config import Config

    config = Config()
    config.CourseDirectory.root = str(Path(root).resolve())
    config.CourseDirectory.course_id = COURSE_ID
    if assignment:
        config.CourseDirectory.assignment_id = assignment
    if student:
        config.CourseDirectory.student_id = student
    for key, value in settings.items():
        section, trait = key.split(".")
        setattr(config[section], trait, value)
    return config


def alembic_head() -> str:
    """The gradebook schema's version that nbgrader writes into every new gradebook, read in this process.

    nbgrader asks for it by running ``alembic heads`` in a subprocess each time it creates a
    gradebook: a Python start of about 2.5 s, paid by every grading worker for each assignment. The
    answer is fixed by the installed nbgrader, so it is read once from its migration scripts.
    """
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from nbgrader.dbutil import _temp_alembic_ini

    with _temp_alembic_ini("sqlite://") as alembic_ini:  # only the scripts are read: no database is opened
        return ScriptDirectory.from_config(Config(alembic_ini)).get_current_head()


def _read_alembic_head_in_process() -> None:
    """Make nbgrader use `alembic_head` (once per process; nbgrader's own way stays if it fails)."""
    import nbgrader.api as api

    if getattr(api.get_alembic_version, "reads_in_process", False):
        return
    subprocess_way = api.get_alembic_version
    try:
        head = alembic_head()
    except Exception:  # another nbgrader layout: keep its subprocess
        return

    def get_alembic_version() -> str:
        return head

    get_alembic_version.reads_in_process = True
    get_alembic_version.subprocess_way = subprocess_way
    api.get_alembic_version = get_alembic_version


def run_converter(converter_class, root: Path, assignment: str, student: str = "", name: str = "nbgrader",
                  **settings) -> list[str]:
    """Run one nbgrader converter (GenerateAssignment, Autograde, ...) in ``root``; returns its log lines.

    Raises `NbgraderError` with nbgrader's last error line when it fails.
    """
    from nbgrader.converters.base import NbGraderException
    from nbgrader.coursedir import CourseDirectory

    quiet_libraries()
    _read_alembic_head_in_process()
    config = nbgrader_config(root, assignment, student, **settings)
    logger, handler = capturing_logger(name)
    coursedir = CourseDirectory(config=config, log=logger)
    converter = converter_class(coursedir=coursedir, config=config, log=logger)
    converter.force = True
    try:
        converter.start()
    except NbGraderException as error:
        details = [e for e in handler.errors if not e.startswith("Please see")]
        reason = next((e.strip().splitlines()[-1] for e in reversed(details) if e.strip()), str(error))
        raise NbgraderError(reason, handler.lines) from error
    return handler.lines


def install_source(root: Path, assignment: Assignment) -> Path:
    """Copy the assignment's source notebook into ``root/source/<name>/`` (nbgrader's layout)."""
    target = CourseFolder(root).source(assignment.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(assignment.source_path, target)
    return target


def generate_assignment(root: Path, assignment: Assignment) -> Path:
    """nbgrader generate_assignment in ``root``: fills the gradebook and writes the release copy.

    Returns the path of the released notebook (as nbgrader wrote it, not yet normalised).
    """
    from nbgrader.converters import GenerateAssignment

    install_source(root, assignment)
    run_converter(GenerateAssignment, root, assignment.name, name="generate")
    return CourseFolder(root).release(assignment.name)


def write_course_config(root: Path, timeout: int) -> None:
    """Write ``nbgrader_config.py`` into the instructor's grading folder (kept if already there)."""
    path = CourseFolder(root).config
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(CONFIG_TEMPLATE.format(course_id=COURSE_ID, timeout=int(timeout)))


def db_url(root: Path) -> str:
    return CourseFolder(root).gradebook_url
