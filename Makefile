# make demo | make test | make bench: each creates .venv and installs the package when needed.
#
# The venv's interpreter: PYTHON=... (command line or environment) wins; otherwise .ci/find_python
# picks the newest Python 3.13 or 3.12 that runs here (on PATH, or installed by pyenv), because
# jax 0.12 needs Python >= 3.12 and is about 1.5x faster on CPU than jax 0.10.2, the newest for
# 3.11 (benchmarks/RESULTS.md, "Python stacks"). 3.13 is preferred over 3.12: every dependency
# installs from wheels and the tests pass on both, and 3.13 measured as fast as 3.12 (within
# noise). Without either, it falls back to python3 and says so. PyTorch (the optional check of
# the weight importer against PyTorch) is installed only on Python 3.11, the one CPU wheel here.
# The venv is recreated when its Python version differs from the chosen interpreter's (e.g. an
# old 3.11 .venv once 3.13 is found, or after PYTHON=... names another version).
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTHON_RECORD := $(VENV)/.python-version
ifeq ($(origin PYTHON),undefined)
# evaluated once, on first use (so `make clean` does not look for an interpreter)
PYTHON = $(eval PYTHON := $(shell .ci/find_python))$(PYTHON)
endif

.PHONY: demo demo-full test bench bench-stacks clean FORCE

# Holds the chosen interpreter's version; rewritten (making the stamp stale) only when it changes.
# A venv built by another version is removed first.
$(PYTHON_RECORD): FORCE
	@want=$$($(PYTHON) -c 'import platform; print(platform.python_version())') \
	  || { echo "PYTHON=$(PYTHON) does not run" >&2; exit 1; }; \
	have=$$(test -x $(BIN)/python && $(BIN)/python -c 'import platform; print(platform.python_version())' 2>/dev/null); \
	if [ -n "$$have" ] && [ "$$have" != "$$want" ]; then \
	  echo "$(VENV) has Python $$have; recreating it with $(PYTHON) (Python $$want)"; rm -rf $(VENV); \
	fi; \
	mkdir -p $(VENV); \
	echo "$$want" | cmp -s - $@ || echo "$$want" > $@

$(STAMP): pyproject.toml $(PYTHON_RECORD)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	@$(BIN)/python -c 'import platform, jax; print("installed: Python", platform.python_version(), "jax", jax.__version__)'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m experiments.sane --config=experiments/configs/sane_shapes.py --workdir=workdir/demo

# every stage at its full size (the protocol of the numbers in docs/)
demo-full: $(STAMP)
	$(BIN)/python -m experiments.sane --config=experiments/configs/sane_shapes.py:full --workdir=workdir/demo-full

# The suite runs in TEST_WORKERS processes (pytest-xdist; 2 for this 2-core machine): one takes the modules
# that share the session's dataset and trained model (tests/conftest.py, SESSION_MODULES), the other the rest.
# Each process holds only its own compiled programs (one process for the whole suite once accumulated enough
# to crash XLA's CPU compiler).
TEST_WORKERS ?= 2

# The suite's processes use jemalloc as their malloc (LD_PRELOAD) where it is installed: XLA's CPU
# compiler, about half of the suite's time, allocates heavily, and the suite took about 6% less time
# with it over three pairs of runs (benchmarks/RESULTS.md, "Test suite").
# MALLOC_PRELOAD=path names another library; empty turns it off. Only the allocator changes: the
# same programs compute the same values.
MALLOC_PRELOAD ?= $$(.ci/find_jemalloc)

# Debian packages the suite uses, installed here when missing and possible (root with apt-get):
# chromium, in which the HTML report test screenshots the page (without it that one test skips and
# says why), and libjemalloc2 (above; without it the suite runs on the system's malloc).
test: $(STAMP)
	@missing=; command -v chromium >/dev/null 2>&1 || missing=chromium; \
	  [ -n "$$(.ci/find_jemalloc)" ] || missing="$${missing:+$$missing }libjemalloc2"; \
	  if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $$missing for the test suite"; apt-get update -qq >/dev/null 2>&1; \
	    for package in $$missing; do apt-get install -y -qq $$package >/dev/null 2>&1 || \
	      echo "$$package could not be installed: the suite runs without it"; done; fi
	LD_PRELOAD="$(MALLOC_PRELOAD)$${LD_PRELOAD:+ $$LD_PRELOAD}" $(BIN)/python -m pytest -q -n $(TEST_WORKERS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.saliency_throughput

# The same workload under several venvs (e.g. a Python 3.11 one and .venv):
#   make bench-stacks STACKS="/path/to/py311-venv .venv"
STACKS ?= $(VENV)
bench-stacks: $(STAMP)
	bash benchmarks/python_stacks.sh $(STACKS)

clean:
	rm -rf $(VENV) workdir .pytest_cache .cache
