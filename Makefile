# regsearch: `make run` starts the whole service locally; `make test` installs and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast bench clean

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

# The trainer runs on any Keras backend: its tests run on JAX first (all but those marked one_backend),
# then the whole suite on TensorFlow, the default (its summary is the last line).
test: install
	KERAS_BACKEND=jax $(BIN)/python -m pytest -q -ra -m "not one_backend" tests/trainer
	$(BIN)/python -m pytest -q -ra

bench: install
	$(BIN)/python benchmarks/trainer_throughput.py
	$(BIN)/python benchmarks/coordination.py

clean:
	rm -rf $(VENV) build *.egg-info regsearch.db
