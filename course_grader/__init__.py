"""Releasing, autograding and giving feedback on the course's exercises (nbgrader underneath).

The `course` command (`cli`) drives it:

- `release`: exercises/ generated from solutions/ by nbgrader's generate_assignment, normalised so
  the same source always gives the same bytes;
- `autograde.grade_submission`: one pure step, ``(assignment source, submitted notebook) ->
  GradeRecord``, in its own temporary nbgrader course folder; `submission` checks and repairs
  what students changed (edited or deleted cells, stripped metadata), `audit` reads the answers for
  patched test machinery and calls to the reference, `sandbox` runs the student's kernel in
  bubblewrap with resource limits, `preprocessors` add per-cell time limits and output caps, survive
  a dead kernel and stop warnings from costing points, and `verdicts` compares the student's outputs
  on fresh inputs with the reference in the grader's own process;
- `orchestrator`: runs those steps in a process pool (`jobs`; each job carries its `options`) and
  is the only writer of the instructor's folder (`gradebook`: nbgrader's gradebook.db; `export`: the
  grades CSV); it never imports what only a worker needs (torch, the probes);
- `feedback`: nbgrader's feedback pages, with every hidden test removed.
"""
