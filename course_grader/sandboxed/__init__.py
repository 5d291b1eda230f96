"""The grader's only code that runs inside a student's sandbox: the kernel factory and the verdict
harness. Standard library only at import time; the sandbox sees this folder and nothing else of
``course_grader``."""
