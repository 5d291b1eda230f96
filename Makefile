# `make lab` opens the course, `make test` runs the test suite, `make site` builds the course's website.
# Each installs what is missing first: into the active virtual/conda environment if there is one,
# otherwise into a new .venv here. A learner's `make lab` installs the course alone; `make test` adds
# the grader (nbgrader) and the test tools.
.DEFAULT_GOAL := help
SHELL := /bin/bash

ifneq ($(VIRTUAL_ENV)$(CONDA_PREFIX),)
  PY := python
  STAMPS := .course-installed
  VENV :=
else
  PY := .venv/bin/python
  STAMPS := .venv/.course-installed
  VENV := .venv/bin/python
endif
LAB_STAMP := $(STAMPS)-lab
DEV_STAMP := $(STAMPS)-dev

PYTEST_ARGS ?=
LAB_ARGS ?=
SITE_ARGS ?=

.PHONY: help lab test lint install sandbox-tools browser-tools site clean
help:
	@echo "make lab    open the course in JupyterLab (installs what is missing first)"
	@echo "make test   run the linter and the whole test suite (installs what is missing first)"
	@echo "make site   build the course site (every lesson executed) into _build/html"

# Only without an active environment: a file target named after the interpreter would otherwise be
# taken for a missing file (and create .venv) whenever `python` is not a file in this folder.
ifneq ($(VENV),)
$(VENV):
	python3 -m venv .venv
endif

$(LAB_STAMP): pyproject.toml constraints.txt | $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $@

$(DEV_STAMP): pyproject.toml constraints.txt | $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

install: $(DEV_STAMP)

# The grader runs student code in bubblewrap (`course grade --sandbox=required`); its tests need it.
# Installed only where that is harmless: as root with Debian's apt-get (CI); elsewhere one line says so.
sandbox-tools:
	@if command -v bwrap >/dev/null 2>&1 && command -v prlimit >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing bubblewrap (the grader's sandbox)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap util-linux >/dev/null; \
	else echo "note: the grading sandbox tests need bubblewrap, prlimit and setpriv (Debian/Ubuntu: sudo apt-get install bubblewrap util-linux)"; fi

# The browser test (tests/lessons/test_browser.py) drives Debian's Chromium with Playwright (the dev extra).
# Installed only as root with apt-get (CI); elsewhere one line says so and the test is skipped.
browser-tools:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium (the browser test's browser)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "note: the browser test needs chromium (Debian/Ubuntu: sudo apt-get install chromium)"; fi

# `make lab LAB_ARGS="--port 9000 --no-browser"`; `python -m course_lib.lab --help` lists the options.
lab: $(LAB_STAMP)
	$(PY) -m course_lib.lab $(LAB_ARGS)

lint: $(DEV_STAMP)
	$(PY) -m ruff check .

test: $(DEV_STAMP) sandbox-tools browser-tools lint
	$(PY) -m pytest $(PYTEST_ARGS)

# `make site` builds the course site into _build/html with Jupyter Book 1: every lesson executed, quick and
# offline; SITE_ARGS="--full" runs the full lessons, SITE_ARGS="--lesson 01 03" builds some (book/build.py --help).
site: $(DEV_STAMP)
	$(PY) book/build.py $(SITE_ARGS)

clean:
	rm -rf .venv .course-installed-lab .course-installed-dev .pytest_cache _build
