"""How a grading run executes students' kernels: `GradingOptions`, one picklable value that every
executor and worker receives with each job (time limits, sandbox, resource limits, warm kernels).

Kept apart from `autograde` so that the process that plans a run and stores its records never
imports what only a worker needs (torch, the probes, nbconvert's executor).
"""
from __future__ import annotations

from dataclasses import dataclass

from .sandbox import (DEFAULT_CPU_SECONDS, DEFAULT_MAX_FILE_MB, DEFAULT_MAX_PROCESSES, DEFAULT_MEMORY_MB,
                      DEFAULT_SANDBOX, DEFAULT_SCRATCH_MB, SANDBOX_MODES)

#: Time limits of one cell (seconds): answer, test and student cells; read-only set-up cells (importing
#: torch on a busy machine is slow).
DEFAULT_CELL_TIMEOUT_S = 120
DEFAULT_SETUP_TIMEOUT_S = 300


@dataclass(frozen=True)
class GradingOptions:
    """How a student's kernel runs.

    Time limits (seconds) of one cell: read-only set-up cells, and all the others; the sandbox mode
    (`sandbox.SANDBOX_MODES`) and the kernel's resource limits; output kept per cell (KiB); whether
    kernels are forked from a warm kernel factory (`warm`) or started from scratch.
    """

    timeout: int = DEFAULT_CELL_TIMEOUT_S
    setup_timeout: int = DEFAULT_SETUP_TIMEOUT_S
    sandbox: str = DEFAULT_SANDBOX
    memory_mb: int = DEFAULT_MEMORY_MB
    cpu_seconds: int = DEFAULT_CPU_SECONDS
    max_processes: int = DEFAULT_MAX_PROCESSES
    max_file_mb: int = DEFAULT_MAX_FILE_MB
    scratch_mb: int = DEFAULT_SCRATCH_MB
    max_output_kb: int = 1024
    probe_seed: int = 0  # inputs of the grader's own checks; 0: a fresh random seed per submission
    warm_kernels: bool = True

    @property
    def limits(self):
        from .sandbox import Limits

        return Limits(self.memory_mb, self.cpu_seconds, self.max_processes, self.max_file_mb,
                      scratch_mb=self.scratch_mb)

    def __post_init__(self) -> None:
        for name in ("timeout", "setup_timeout", "max_output_kb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.sandbox not in SANDBOX_MODES:
            raise ValueError(f"sandbox must be one of {', '.join(SANDBOX_MODES)}, got {self.sandbox!r}")
        self.limits  # building `Limits` checks the resource limits the same way


__all__ = ["DEFAULT_CELL_TIMEOUT_S", "DEFAULT_SETUP_TIMEOUT_S", "GradingOptions"]
