# qengine developer entry points. `make run` and `make test` work in a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
RUN_DIR := .run

.PHONY: run test lint bench bench-big clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test,dev]'
	touch $(STAMP)

## run: fill a queue, process it, show its status (embedded file backend, ./.run)
run: $(STAMP)
	$(PY) scripts/demo.py --root $(RUN_DIR)

## test: install test dependencies and run the whole suite
test: $(STAMP)
	bash scripts/ensure-services.sh
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

## bench: peers and qengine in the same run (separate venv for the peers)
bench:
	test -x .bench-venv/bin/python || $(PYTHON) -m venv .bench-venv
	.bench-venv/bin/python -m pip install --quiet -e . -r benchmarks/requirements.txt
	.bench-venv/bin/python benchmarks/bench_file.py $(BENCH_ARGS)

bench-big:
	$(MAKE) bench BENCH_ARGS=--big

clean:
	rm -rf $(VENV) .bench-venv $(RUN_DIR) build *.egg-info
