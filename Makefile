# Two commands do everything on a fresh machine:
#   make repro   install, then run the pipeline (dvc repro) on params.yaml
#   make test    install, then run the test suite
VENV ?= .venv
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
PYTEST_ARGS ?=

.PHONY: install repro test test-fast ci-check plots

install:
	bash scripts/install.sh

repro: install
	dvc repro

test: export EXTRAS = dev,ray,s3
test: install
	python -m pytest $(PYTEST_ARGS)

test-fast: export EXTRAS = dev,ray,s3
test-fast: install
	python -m pytest -m "not slow" $(PYTEST_ARGS)

ci-check: install
	python -m finsent.pipeline.ci check

plots:
	dvc plots show -o metrics/html && echo "open metrics/html/index.html"
