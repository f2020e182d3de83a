# The two commands of the README. Each sets everything up first (scripts/setup.sh is idempotent).
.PHONY: setup demo test lint

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/python -m hpo.run --study demo

test: setup
	.venv/bin/python -m pytest

lint: setup
	.venv/bin/ruff check .
