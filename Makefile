# The two commands of the README. Each sets everything up first (scripts/setup.sh is idempotent).
.PHONY: setup demo test test-optuna-storage test-slurm test-reference lint

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

# hpo.launch slurm --submit on a real one-node SLURM cluster the test starts (slurm-wlm and
# munge from apt where this host allows it), outside `make test` and CI. ~1 minute.
test-slurm: setup
	@command -v slurmctld >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
		&& apt-get install -y -q slurm-wlm munge >/dev/null) || true
	HPO_TEST_SLURM=1 .venv/bin/python -m pytest -v tests/hpo/test_slurm.py

# The tear sheet's figures against quantstats and alphalens (installed here, outside `make
# test`: they are not dependencies of the service). Seconds, once installed.
test-reference: setup
	.venv/bin/python -m pip install -q -e '.[reference]'
	.venv/bin/python -m pytest -v tests/trainers/test_tearsheet_reference.py

lint: setup
	.venv/bin/ruff check .
