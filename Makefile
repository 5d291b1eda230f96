# Two commands do all set-up:  `make lab` opens the course, `make test` runs the test suite.
# Both install what is missing first: into the active virtual/conda environment if there is one,
# otherwise into a new .venv here.
.DEFAULT_GOAL := help
SHELL := /bin/bash

ifneq ($(VIRTUAL_ENV)$(CONDA_PREFIX),)
  PY := python
  STAMP := .course-installed
else
  PY := .venv/bin/python
  STAMP := .venv/.course-installed
endif

PYTEST_ARGS ?=

.PHONY: help lab test install sandbox-tools clean
help:
	@echo "make lab    open the course in JupyterLab (installs what is missing first)"
	@echo "make test   run the whole test suite (installs what is missing first)"

$(PY):
	python3 -m venv .venv

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The grader runs student code in bubblewrap (`course grade --sandbox=required`); its tests need it.
# Installed only where that is harmless: as root with Debian's apt-get (CI); elsewhere one line says so.
sandbox-tools:
	@if command -v bwrap >/dev/null 2>&1 && command -v prlimit >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing bubblewrap (the grader's sandbox)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap util-linux >/dev/null; \
	else echo "note: the grading sandbox tests need bubblewrap, prlimit and setpriv (Debian/Ubuntu: sudo apt-get install bubblewrap util-linux)"; fi

# `make lab LAB_ARGS="--port 9000 --no-browser"`; `python -m course_lib.lab --help` lists the options.
LAB_ARGS ?=
lab: $(STAMP)
	$(PY) -m course_lib.lab $(LAB_ARGS)

test: $(STAMP) sandbox-tools
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf .venv .course-installed .pytest_cache
