# `make train` and `make test` set up whatever is missing (venv, pinned torch, the package,
# MNIST) and skip what is already there.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mnistfx-installed

.PHONY: setup data train test test-all check docs bench clean
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

# the documentation site, built strictly: a warning or a broken reference fails it (open docs/_build/html/index.html)
docs: $(STAMP)
	$(BIN)/python -m sphinx -W --keep-going -n -b html docs docs/_build/html

bench: data
	$(BIN)/mnistfx bench

test-all: data
	$(BIN)/python -m pytest -q -m ''

clean:
	rm -rf $(VENV) runs .pytest_cache docs/_build
