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

.PHONY: help lab test install clean
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

lab: $(STAMP)
	$(PY) -m jupyter lab notebooks/

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf .venv .course-installed .pytest_cache
