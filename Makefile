# `make train` and `make test` set up whatever is missing (venv, pinned torch, the package,
# MNIST) and skip what is already there.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mnistfx-installed

.PHONY: setup data train test test-all check bench clean
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

data: $(STAMP)
	$(BIN)/mnistfx data

train: data
	$(BIN)/mnistfx train tuned

test: data
	$(BIN)/python -m pytest -q

# lint, format, types, and the fast tier of tests (no real MNIST, no compiling): under a minute
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -m fast

bench: data
	$(BIN)/mnistfx bench

test-all: data
	$(BIN)/python -m pytest -q -m ''

clean:
	rm -rf $(VENV) runs .pytest_cache
