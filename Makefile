# Two commands on a fresh machine (see README.md):
#   make quickstart   set up .venv and run the quickstart study end to end
#   make test         set up .venv (+ Chromium for the report tests) and run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup quickstart test test-fast lint bench
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

quickstart: setup
	$(BIN)/mimscale run studies/quickstart.toml

test: setup
	bash scripts/ensure_chromium.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	BROWSER_PATH=$${BROWSER_PATH:-/usr/bin/chromium} $(BIN)/pytest -q -m "slow or not slow" --durations=15

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

test-fast: setup
	BROWSER_PATH=$${BROWSER_PATH:-/usr/bin/chromium} $(BIN)/pytest -q
