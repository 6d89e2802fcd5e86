# regsearch: `make run` starts the whole service locally; `make test` installs and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-tools test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The quick start runs offline on the shipped 600-image CIFAR-10 subset. For a real search point it at a
# full copy in the official layout (`make run REGSEARCH_DATA_DIR=/data/cifar10`), or set it empty to let
# Keras download CIFAR-10 (`make run REGSEARCH_DATA_DIR=`).
REGSEARCH_DATA_DIR ?= $(CURDIR)/tests/data
export REGSEARCH_DATA_DIR

run: install
	@echo "regsearch: data from $${REGSEARCH_DATA_DIR:-keras.datasets download}"
	$(BIN)/regsearch serve

# What the tests run besides Python, installed once here (never inside a test): Debian's chromium (the
# pages, headless) and docker-compose (the compose file's schema check, no engine needed). Needs root
# and apt-get; without them the tests that need these tools skip (and fail under CI).
TEST_TOOLS := /usr/bin/chromium:chromium /usr/bin/docker-compose:docker-compose

test-tools:
	@missing="$$(for pair in $(TEST_TOOLS); do [ -x "$${pair%%:*}" ] || echo "$${pair#*:}"; done)"; \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing $$missing (Debian)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends $$missing >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null 2>&1; apt-get install -y -qq --no-install-recommends $$missing >/dev/null 2>&1 || \
	    echo "test-tools: apt-get could not install" $$missing; }; \
	fi

# The trainer runs on any Keras backend: its tests run on JAX first (all but those marked one_backend),
# then the whole suite on TensorFlow, the default (its summary is the last line).
test: install test-tools
	KERAS_BACKEND=jax $(BIN)/python -m pytest -q -ra -m "not one_backend" tests/trainer
	$(BIN)/python -m pytest -q -ra

bench: install
	$(BIN)/python benchmarks/trainer_throughput.py
	$(BIN)/python benchmarks/coordination.py

clean:
	rm -rf $(VENV) build *.egg-info regsearch.db
