# qengine developer entry points. `make run` and `make test` work in a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
RUN_DIR := .run

.PHONY: run test test-pure test-compiled lint bench bench-big clean

# The compiled build (QENGINE_COMPILE, see setup.py) is built in a copy of the tree, so the
# sources here stay the ones Python imports (a compiled module would shadow edits to them).
COMPILED_DIR := build/compiled
COMPILED_SRC := setup.py setup.cfg pyproject.toml scripts/qengine_build.py \
	$(wildcard queue_engine/*.py queue_engine/*/*.py queue_engine/*/*/*.py)

# copied afresh on every run (the build is redone only when the package changes)
COMPILED_TESTS := tests workers daemons scripts config.ini.example

$(STAMP): setup.cfg pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	QENGINE_COMPILE=0 $(PIP) install --quiet -e '.[test,dev]'
	touch $(STAMP)

## run: fill a queue, process it, show its status (embedded file backend, ./.run)
run: $(STAMP)
	$(PY) scripts/demo.py --root $(RUN_DIR)

## test: install test dependencies and run the whole suite, on the pure-Python package and
## on the compiled build
test: test-pure test-compiled

test-pure: $(STAMP)
	bash scripts/ensure-services.sh
	$(PY) -m pytest -q

$(COMPILED_DIR)/.built: $(STAMP) $(COMPILED_SRC)
	rm -rf $(COMPILED_DIR)
	mkdir -p $(COMPILED_DIR)
	cp -r queue_engine setup.py setup.cfg pyproject.toml README.md $(COMPILED_DIR)/
	find $(COMPILED_DIR) -name __pycache__ -prune -exec rm -rf {} +
	cd $(COMPILED_DIR) && QENGINE_COMPILE=require ../../$(PY) setup.py -q build_ext --inplace
	touch $@

## test-compiled: the whole suite again, importing the compiled build (needs a C compiler)
test-compiled: $(STAMP)
	@if ! command -v "$${CC:-cc}" >/dev/null 2>&1; then \
		echo "test-compiled: SKIPPED, no C compiler ($${CC:-cc}) to build the compiled modules" >&2; \
	else \
		$(MAKE) --no-print-directory $(COMPILED_DIR)/.built && \
		rm -rf $(addprefix $(COMPILED_DIR)/,$(COMPILED_TESTS)) && \
		cp -r $(COMPILED_TESTS) $(COMPILED_DIR)/ && \
		bash scripts/ensure-services.sh && \
		cd $(COMPILED_DIR) && PYTHONPATH="$$PWD" ../../$(PY) -m pytest -q -p no:cacheprovider; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

## bench: peers and qengine in the same run (separate venv for the peers); the compiled
## build's row needs build/compiled (built here where a C compiler is found)
bench: $(STAMP)
	-@command -v "$${CC:-cc}" >/dev/null 2>&1 && $(MAKE) --no-print-directory $(COMPILED_DIR)/.built
	test -x .bench-venv/bin/python || $(PYTHON) -m venv .bench-venv
	.bench-venv/bin/python -m pip install --quiet -e . -r benchmarks/requirements.txt
	.bench-venv/bin/python benchmarks/bench_file.py $(BENCH_ARGS)

bench-big:
	$(MAKE) bench BENCH_ARGS=--big

clean:
	rm -rf $(VENV) .bench-venv $(RUN_DIR) build *.egg-info
