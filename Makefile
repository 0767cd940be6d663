# The two quick-start commands are `make run` and `make test`; each builds the
# virtual environment in .venv first if it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test book env lint clean student

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[data,book,dev]"
	touch $(STAMP)

env: $(STAMP)

## The main job: train CRATE on real digits and report (see README); a second `make run` starts the
## demo run over (--overwrite), where `python -m minicrate quickstart` alone refuses to replace a run.
run: $(STAMP)
	$(PY) -m minicrate quickstart --overwrite

## The whole test suite, as CI runs it (installs headless Chromium for the book's browser test when root).
test: $(STAMP)
	bash scripts/ensure-chromium
	$(PY) -m pytest -n 2 --dist loadgroup --durations=15

## Build the Jupyter Book into book/_build/html.
book: $(STAMP)
	$(VENV)/bin/jupyter-book build -W -n --keep-going book

lint: $(STAMP)
	$(VENV)/bin/ruff check minicrate tests benchmarks

student: $(STAMP)
	$(PY) -m minicrate make-student exercises dist/student

clean:
	rm -rf book/_build dist .pytest_cache .hypothesis
