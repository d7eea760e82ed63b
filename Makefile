# The two commands of the README. Both do all set-up first (idempotent).
VENV ?= .venv

.PHONY: demo test setup

setup:
	bash scripts/setup.sh

# Main job on the embedded default recipe (recipes/fashion-mnist.yaml).
demo: setup
	$(VENV)/bin/prokt-deploy run

# The test suite (what CI runs).
test: setup
	$(VENV)/bin/python -m pytest -q
