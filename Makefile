# Two entry points for newcomers: `make demo` and `make test`.
# Both create .venv, install torch (CPU build, pinned) first, then the package.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_output

.PHONY: demo test lint install clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/eegfmri demo $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/ruff check bids_app tests benchmarks
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: $(STAMP)
	$(BIN)/ruff check bids_app tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
