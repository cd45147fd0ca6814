# `make test` and `make demo` are the two set-up commands in the README. Both create (or reuse)
# the virtual environment in $(VENV) and install the project into it from its own files.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: test test-lowest lint demo bench dist clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# The JupyterLab extension (labextension/) is built by the install (setup.py, with npm), again
# whenever its sources change.
LABEXTENSION := $(wildcard setup.py labextension/package.json labextension/package-lock.json \
	labextension/tsconfig.json labextension/src/* labextension/schema/* labextension/style/*)

# helm-sdkpy carries Helm's own Go library, to render and install the chart in tests (no helm
# binary is packaged for PyPI or Debian). Its metadata asks for Python 3.12, but it runs on 3.11.
$(VENV)/.test-installed: $(BIN)/python setup.cfg pyproject.toml $(LABEXTENSION)
	$(PIP) install -e '.[test]'
	$(PIP) install --ignore-requires-python --no-deps helm-sdkpy==0.1.32
	touch $@

$(VENV)/.demo-installed: $(BIN)/python setup.cfg pyproject.toml $(LABEXTENSION)
	$(PIP) install -e '.[demo]'
	touch $@

# Lint, types and the layer contracts (DESIGN section 5) first: they take seconds, the tests minutes.
lint: $(VENV)/.test-installed
	$(BIN)/ruff check elastic_kernels tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# Two pytest workers (pytest-xdist), a file each at a time so that a module's shared fixtures
# start once: the tests wait on kernels, pods and timers more than they compute, so two workers
# take two thirds of the time of one, even on CI's two cores (PYTEST_WORKERS=0: one process).
PYTEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

test: lint
	$(BIN)/pytest $(XDIST) $(PYTEST_ARGS)
	$(MAKE) test-lowest

# The upstream-facing tests again, on the oldest jupyter_server/jupyter_client/tornado/pyzmq the
# project supports (ci/lowest-constraints.txt); the full run above has the newest releases.
LOWEST_VENV ?= .venv-lowest
LOWEST_TESTS ?= tests/test_upstream_door.py tests/gateway tests/test_end_to_end.py \
	tests/test_offline_buffer.py tests/test_pod_death.py tests/test_provisioner.py

$(LOWEST_VENV)/.installed: setup.cfg pyproject.toml ci/lowest-constraints.txt
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip --disable-pip-version-check -q install --upgrade pip
	$(LOWEST_VENV)/bin/python -m pip --disable-pip-version-check -q install \
		-c ci/lowest-constraints.txt -e '.[test]'
	touch $@

test-lowest: $(LOWEST_VENV)/.installed
	$(LOWEST_VENV)/bin/pytest -q -p no:cacheprovider $(XDIST) $(LOWEST_TESTS)

demo: $(VENV)/.demo-installed
	$(BIN)/elastic-kernels demo

# The benchmarks run on the test environment plus the bench extra (matplotlib, for REPORT.png).
$(VENV)/.bench-installed: $(VENV)/.test-installed setup.cfg pyproject.toml
	$(PIP) install -e '.[bench]'
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python -m bench

# The sdist and the wheel (built from that sdist, in an isolated environment) in dist/, checked
# as PyPI would check them. `pip install dist/elastic_kernels-*.whl ipykernel` in any virtualenv
# then runs `elastic-kernels demo --no-lab`: the CRDs, kernelspecs and launcher are package data.
dist: $(VENV)/.test-installed
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

clean:
	rm -rf $(VENV) $(LOWEST_VENV) build dist *.egg-info
	rm -rf labextension/node_modules labextension/lib elastic_kernels/labextension
