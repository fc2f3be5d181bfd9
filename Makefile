# hookscope: every target does its own set-up on a fresh machine.
#   make demo   - run the main job on the embedded nats-server
#   make test   - run every test tier (CI=true: no tier may be skipped)
#   make test-fast - the unit tiers only, for the inner loop
#   make bench  - benchmarks, apart from the tests
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast durations bench sysdeps venv clean

# setup.py builds the collector's span decoder in C (collector/_fastspans.c)
# into the tree; a changed source is built again.
$(STAMP): pyproject.toml setup.py collector/_fastspans.c collector/fastspans_wire.h collector/fastspans_rows.h
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m emitter.launcher install $(VENV) 2>/dev/null || true
	touch $@

venv: $(STAMP)

# Debian's slurm, munge and chromium for the integration tiers (root only;
# a developer without root gets those tiers skipped, with the reason).
sysdeps:
	@if [ "$$(id -u)" = 0 ]; then bash deploy/install-sysdeps.sh; \
	else echo "sysdeps: not root, so the Slurm and browser tiers will be skipped (CI requires them)"; fi

test: $(STAMP) sysdeps
	$(PY) -m pytest $(PYTEST_ARGS)

# The inner loop: unit tiers only (no Slurm, browser, interop or slow end-to-end tests).
test-fast: $(STAMP)
	$(PY) -m pytest -q -x --fast -m "not slurm and not browser and not slow and not interop" $(PYTEST_ARGS)

# Re-record which tests test-fast leaves out (tests/helpers/durations.py).
durations: $(STAMP)
	$(PY) -m pytest -q -m "not slurm and not browser" --durations=0 $(PYTEST_ARGS) \
		| $(PY) -m tests.helpers.durations

demo: $(STAMP)
	$(PY) -m dashboards.demo

bench: $(STAMP)
	@for b in tests/bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) artifacts demo-out .pytest_cache build collector/_fastspans*.so
