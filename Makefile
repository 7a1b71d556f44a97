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

.PHONY: install demo test bench browser
install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/synthpool demo

test: $(BIN)/.installed browser
	$(BIN)/python -m pytest -q -m "not slow"

# The report test renders HTML in a real headless browser; install Debian's Chromium if we can.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the report rendering test will be skipped"; }

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks
