"""Opening a study that must already exist, for the commands that only read one.

``hpo.status``, ``hpo.export``, ``hpo.dashboard``, ``hpo.evaluate`` and ``hpo.predict`` never
create a study: a
mistyped path or name is a one-line UserError that says what exists, not an empty new database.
"""

from __future__ import annotations

from pathlib import Path

import optuna

from hpo.storage import mask_url, open_storage, resolve_url
from trainers.errors import UserError


def open_existing_storage(url: str) -> optuna.storages.RDBStorage:
    """Open the storage at ``url`` without creating an empty SQLite file where none exists."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise UserError(f"no study database at {path}; run `python -m hpo.run --study NAME` "
                            "first, or pass --storage (or set $HPO_STORAGE)")
    return open_storage(url)


def load_existing_study(storage: optuna.storages.BaseStorage, name: str,
                        url: str) -> optuna.Study:
    """The study ``name``; an unknown name is a UserError listing the studies that exist."""
    names = sorted(optuna.study.get_all_study_names(storage))
    if name not in names:
        have = ", ".join(names) if names else "(none)"
        raise UserError(f"unknown study {name!r} in {mask_url(url)}; studies there: {have}")
    return optuna.load_study(study_name=name, storage=storage)


def open_existing_study(name: str, *, storage: str | None, output: Path
                        ) -> tuple[optuna.Study, optuna.storages.RDBStorage, str]:
    """The study ``name`` in the storage a read-only command's ``--storage`` / ``--output``
    name (``$HPO_STORAGE``, else the embedded database under ``output``): the study, its
    storage and the resolved URL."""
    url = resolve_url(storage, output)
    opened = open_existing_storage(url)
    return load_existing_study(opened, name, url), opened, url


def study_for_command(name: str, *, storage: str | None, output: Path) -> optuna.Study:
    """``open_existing_study``'s study, with Optuna's own logging down to warnings (what
    every read-only command and ``hpo.api`` does before working on it)."""
    study = open_existing_study(name, storage=storage, output=output)[0]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return study
