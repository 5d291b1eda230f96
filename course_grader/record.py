"""What grading one submission produces: a `GradeRecord`.

A record is plain data (strings, numbers, dicts) so that it can travel between processes (a local
process pool today, a cluster of grading machines later) and be stored as JSON next to the
gradebook. The graded notebook travels inside it as JSON text.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``: how a record names the exact notebook bytes it graded."""
    return hashlib.sha256(data).hexdigest()


class Status:
    """Every submission ends in exactly one of these; anything but GRADED carries a reason."""

    GRADED = "graded"  # ran to the end; points are the tests' verdicts
    TAMPERED = "tampered"  # graded after restoring deleted or edited read-only/test cells
    DELEGATED = "delegated"  # an answer reaches the reference it should re-implement (reported; in the verdict
    # process it meets a stub, so the question scores 0) or uses what its question rules out (scores 0)
    METADATA_MISSING = "metadata_missing"  # nbgrader metadata stripped: cells matched by content, then graded
    TIMEOUT = "timeout"  # a cell ran past its time limit; the cells after it still ran
    KILLED = "killed"  # a resource limit (memory, CPU time, file size) stopped the student's code
    KERNEL_DIED = "kernel_died"  # the kernel died; cells from that one on count as failed
    MISSING = "missing"  # the submission folder has no notebook of that name
    FAILED = "failed"  # could not be graded at all (corrupt notebook, nbgrader refused it)
    ERROR = "error"  # the grader itself crashed on this submission (rerun grades it again)

    #: When several apply, the record shows the most serious one (the message lists them all).
    SEVERITY = (ERROR, FAILED, MISSING, KILLED, KERNEL_DIED, TIMEOUT, TAMPERED, DELEGATED, METADATA_MISSING,
                GRADED)

    @classmethod
    def most_serious(cls, statuses: list[str]) -> str:
        present = set(statuses) or {cls.GRADED}
        return next(status for status in cls.SEVERITY if status in present)


#: Statuses whose points came from running the tests (possibly with a caveat in the message).
SCORED_STATUSES = (Status.GRADED, Status.TAMPERED, Status.DELEGATED, Status.METADATA_MISSING, Status.TIMEOUT, Status.KILLED,
                   Status.KERNEL_DIED)


@dataclass
class GradeRecord:
    """The outcome of grading one student's notebook for one assignment.

    ``scores`` and ``max_scores`` map each graded test cell's ``grade_id`` to its points, in notebook
    order. ``graded_notebook`` is the executed notebook (nbformat JSON) or None when nothing ran.
    """

    student: str
    assignment: str
    notebook: str
    status: str
    message: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    max_scores: dict[str, float] = field(default_factory=dict)
    submission_sha256: str = ""
    source_sha256: str = ""
    timestamp: str | None = None
    duration_s: float = 0.0
    log: str = ""
    graded_notebook: str | None = None

    @property
    def total(self) -> float:
        return float(sum(self.scores.values()))

    @property
    def max_total(self) -> float:
        return float(sum(self.max_scores.values()))

    def to_json(self, with_notebook: bool = False) -> str:
        data = asdict(self)
        if not with_notebook:
            data.pop("graded_notebook")
        return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> GradeRecord:
        data = json.loads(text)
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})
