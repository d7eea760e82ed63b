# The two commands of the README. Both do all set-up first (idempotent).
VENV ?= .venv

.PHONY: demo test setup

setup:
	bash scripts/setup.sh

# Main job on the embedded default recipe (recipes/fashion-mnist.yaml), shortened to 3 epochs to stay within
# 15 minutes on 2 cores (the recipe trains 15; README: Two commands).
demo: setup
	$(VENV)/bin/prokt-deploy run --epochs 3

# The test suite (what CI runs).
# test_resume.py runs in a process of its own: its in-process Ctrl-C test (SIGINT to itself mid-epoch)
# crashed natively (SIGSEGV) after the rest of the suite had run in the same process (2026-12-02, AMD EPYC;
# alone it passed 7 of 7 times). Not yet understood: see the note in tests/test_resume.py.
test: setup
	$(VENV)/bin/python -m pytest -q -n auto --dist loadfile --durations=15 --ignore=tests/test_resume.py
	$(VENV)/bin/python -m pytest -q tests/test_resume.py
