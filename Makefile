# The two commands of the README. Each sets everything up first (scripts/setup.sh is idempotent).
.PHONY: setup demo test test-optuna-storage lint

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/python -m hpo.run --study demo

test: setup
	.venv/bin/python -m pytest

# Optuna's own storage tests against our storage, the full matrix: SQLite and PostgreSQL,
# heartbeats on and off (`make test` runs heartbeats on only). Takes ~10 minutes.
test-optuna-storage: setup
	HPO_OPTUNA_SUITE=full .venv/bin/python -m pytest -v -s tests/hpo/test_optuna_storage_suite.py

lint: setup
	.venv/bin/ruff check .
