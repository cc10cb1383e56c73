# meshproxy: the README's commands. Each target does its own set-up (virtualenv, dependencies,
# compiling the Cython extensions), so `make demo` and `make test` work on a fresh Debian machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
DURATION ?= 0
PYTEST_ARGS ?=

.PHONY: help venv build demo test test-py bench bench-ci profile debug clean distclean sysdeps wheel

help:
	@echo "make demo [DURATION=20]  run the demo mesh (Ctrl-C stops it)"
	@echo "make test                run the whole test suite"
	@echo "make bench / bench-ci    load benchmarks vs direct, nginx, haproxy (BENCH_ARGS=--update-docs)"
	@echo "make profile             flame graphs of the sidecar under load (py-spy, perf)"
	@echo "make build               (re)compile the Cython hot path in place"
	@echo "make debug               debug build (annotated HTML, line tracing)"

# Debian packages the build and the tests use; installed only when missing (needs root).
SYSDEPS_BIN = gcc:gcc curl:curl
sysdeps:
	@missing=""; \
	for pair in $(SYSDEPS_BIN); do bin=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$bin >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	$(PYTHON) -c 'import sysconfig,os,sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"],"Python.h")))' \
	  || missing="$$missing python3-dev"; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing:$$missing"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "please install:$$missing (sudo apt-get install$$missing)"; exit 1; fi; fi

$(VENV)/.installed: pyproject.toml setup.py | sysdeps
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "setuptools>=68" wheel "Cython>=3.0"
	$(PIP) install -q --no-build-isolation -e ".[test]"
	touch $@

venv: $(VENV)/.installed

build: venv
	$(PY) setup.py -q build_ext --inplace -j 2

demo: build
	$(PY) -m demo --duration $(DURATION)

test: build
	$(PY) -m pytest $(PYTEST_ARGS)

# The whole suite on the pure-Python twins.
test-py: build
	MESHPROXY_NO_EXTENSIONS=1 $(PY) -m pytest $(PYTEST_ARGS)

bench: build
	$(PIP) install -q --no-build-isolation -e ".[test,bench]"
	$(PY) bench/run.py --full $(BENCH_ARGS)
	$(PY) bench/routes_bench.py --duration 5 --rounds 3
	$(PY) -m pytest bench/test_tools.py -q
	$(PY) -m pytest bench/test_micro.py bench/test_balancer_micro.py --benchmark-only -q

# What CI runs after the tests (about 3 minutes): fails only on ratios judged within its own run.
bench-ci: build
	$(PIP) install -q --no-build-isolation -e ".[test,bench]"
	$(PY) -m pytest bench/test_tools.py -q
	$(PY) bench/run.py --ci --check --no-plots
	$(PY) bench/routes_bench.py --duration 3 --rounds 2
	$(PY) -m pytest bench/test_micro.py --benchmark-only -q --benchmark-max-time=0.1

profile: build
	$(PIP) install -q py-spy
	$(PY) bench/profiler.py --seconds 15

debug: venv
	MESHPROXY_DEBUG=1 $(PY) setup.py -q build_ext --inplace --force -j 2

wheel: venv
	$(PIP) wheel --no-deps -w dist .

clean:
	rm -rf build dist *.egg-info
	find meshproxy -name '*.so' -delete
	find meshproxy/_core -name '*.c' -delete -o -name '*.html' -delete

distclean: clean
	rm -rf $(VENV)
