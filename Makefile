# Two entry points for newcomers: `make demo` and `make test`.
# `make image` builds the container image (docker, or podman/buildah without a daemon);
# `make image-test` runs the demo inside it as a non-root user and validates the outputs;
# `make image-sif` converts it to a Singularity/Apptainer SIF.
# Both create .venv, install torch (CPU build, pinned) first, then the package.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_output

.PHONY: demo test lint install clean image image-test image-sif

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

# Environment knobs: IMAGE, BASE_IMAGE, BASE_PYTHON, TORCH_VARIANT, TORCH_WHEELHOUSE
# (see scripts/build_image.sh and docs/installation.md).
image:
	bash scripts/build_image.sh

image-test:
	bash scripts/image_test.sh

image-sif:
	bash scripts/image_sif.sh

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
