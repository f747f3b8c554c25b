# Task runner: `make test`, `make lint`, `make bench`, `make demo`.
PYTHON := .venv/bin/python

.PHONY: test lint bench demo

test:
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check segengine tests benchmarks

bench:
	$(PYTHON) -m benchmarks --scale 1m

demo:
	$(PYTHON) -m segengine demo
