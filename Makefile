# vidal: make demo (install + run the embedded default), make test (install + tests)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: install demo test lint bench clean

# The venv is made once and reused; reinstalled when the project's dependencies change.
$(STAMP): pyproject.toml setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m pipeline.demo

test: $(STAMP)
	$(PY) -m pytest -q tests

# ruff's rules (pyproject [tool.ruff.lint]) and ruff's layout: `ruff format` is the only formatter
LINT_PATHS := contracts pipeline stages model vidal tests bench setup.py
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf runs bench/out
