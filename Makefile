# Two entry points for people: `make demo` (set up and run the main job) and `make test`.
# Everything installs into .venv; torch is pinned to the CPU build (see README for CUDA).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,simulation]'
	touch $@

.PHONY: install demo test bench test-tools
install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/synthpool demo

# One worker per usable core (pytest-xdist; nproc honours CPU affinity, where xdist's `auto`
# would count the host's cores whenever psutil is installed); a module's tests share a worker, so
# a federation a module's fixture starts runs once.
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
test: $(BIN)/.installed test-tools
	$(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadscope

# Real tools some tests drive (headless Chromium renders the report; nginx fronts the Fleet API;
# docker-compose and shellcheck validate deploy/). Installed from Debian when we can; tests that
# need a missing one skip with the reason.
TEST_TOOLS := chromium nginx shellcheck docker-compose
test-tools:
	@missing=""; for t in $(TEST_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	      || echo "could not install$$missing: the tests that need them will be skipped"; \
	  else echo "not installed:$$missing: the tests that need them will be skipped"; fi; \
	fi
