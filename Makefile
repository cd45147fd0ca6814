# `make test` and `make demo` are the two set-up commands in the README. Both create (or reuse)
# the virtual environment in $(VENV) and install the project into it from its own files.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: test demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.test-installed: $(BIN)/python setup.cfg pyproject.toml
	$(PIP) install -e '.[test]'
	touch $@

$(VENV)/.demo-installed: $(BIN)/python setup.cfg pyproject.toml
	$(PIP) install -e '.[demo]'
	touch $@

test: $(VENV)/.test-installed
	$(BIN)/pytest $(PYTEST_ARGS)

demo: $(VENV)/.demo-installed
	$(BIN)/elastic-kernels demo

bench: $(VENV)/.test-installed
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info
