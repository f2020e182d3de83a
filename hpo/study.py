"""Create or load a study from its StudySpec: directions, metric names, fingerprint, sampler."""

from __future__ import annotations

import hashlib
import logging
import shutil
import socket
import zlib
from pathlib import Path
from typing import Any

import optuna

from hpo import attrs
from hpo.config import StudySpec
from hpo.pruners import get_kind
from hpo.records import record, set_record
from hpo.samplers import BUILDERS, build_sampler
from hpo.storage import mask_url, open_storage
from trainers.errors import UserError

log = logging.getLogger("hpo")

FINGERPRINT_ATTR = "fingerprint"
SPEC_ATTR = "spec"  # a record (hpo.records): long
TARGET_ATTR = "n_trials_target"
# numpy's RandomState (behind every Optuna sampler) takes seeds below 2**32.
_SEED_MODULUS = 2**32


def host_seed_offset() -> int:
    """A stable per-host number, so two hosts started at the same moment on the same study
    (same stored-trial count, both worker 0) do not draw the same points."""
    return zlib.crc32(socket.gethostname().encode())


def sampler_seed(seed: int, *, n_stored: int, worker_index: int) -> int:
    """The seed a sampler gets: the study file's ``seed``, moved past the trials already
    stored (a restarted study draws new points instead of re-proposing its first ones), and
    apart per worker and per host.

    The parts are hashed together, not added: with a sum, seed 0 resumed after 4 trials drew
    exactly the points of a fresh seed-4 study (found by scripts/bench_search.py, whose
    "independent" seeds shared trials). Deterministic: the same parts give the same seed on
    every run.
    """
    return hashed_seed(seed, n_stored, worker_index, host_seed_offset())


def trial_seed(seed: int | None, study_name: str, number: int) -> int:
    """The seed a trial's trainer gets: the study file's ``seed``, the study's name and the
    trial's number hashed together (``number`` is the original trial's for a retry, so a
    resumed run repeats the interrupted one). A sum let studies share seeds: seed 0's trial 4
    trained with seed-4 trial 0's. The same on every host, unlike :func:`sampler_seed`."""
    return hashed_seed(seed, study_name, number)


def hashed_seed(*parts: object) -> int:
    """A seed below ``_SEED_MODULUS`` from ``parts`` (blake2b of their ``:``-joined text)."""
    text = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") % _SEED_MODULUS


def make_sampler(spec: StudySpec, *, n_stored: int = 0, worker_index: int = 0
                 ) -> optuna.samplers.BaseSampler:
    s = spec.sampler
    seed = None if s.seed is None else sampler_seed(s.seed, n_stored=n_stored,
                                                    worker_index=worker_index)
    if s.name not in BUILDERS:
        raise UserError(f"unknown sampler {s.name!r}; allowed: {', '.join(BUILDERS)}")
    return build_sampler(s, spec.search_space, seed)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The Optuna pruner of the study's [pruner] kind (see hpo.pruners): ``none`` a
    NopPruner, ``mo_asha`` the MOASHAPruner the objective asks each epoch (hpo.pruning)."""
    return get_kind(spec.pruner.name).build(spec.pruner)


def _describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    changes = []
    for key in ("workload", "objectives", "search_space", "fixed"):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            names = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            changes.append(f"{key} ({', '.join(names)})")
        else:
            changes.append(f"{key} ({a} -> {b})")
    return ", ".join(changes) or "unknown"


def trial_dir(output_dir: Path, study_name: str, number: int) -> Path:
    """Where trial ``number`` of a study writes its files."""
    return Path(output_dir) / study_name / f"trial_{number}"


def _only_failures(study: optuna.Study) -> bool:
    """True when every trial of ``study`` ended FAIL (or there is none): nothing finished,
    nothing running or waiting."""
    return all(t.state == optuna.trial.TrialState.FAIL
               for t in study.get_trials(deepcopy=False))


def _drop_failed_study(study: optuna.Study, storage: Any, output: Path | None) -> int:
    """Delete a study of failed trials and their trial directories; the number dropped."""
    numbers = [t.number for t in study.get_trials(deepcopy=False)]
    optuna.delete_study(study_name=study.study_name, storage=storage)
    if output is not None:
        for n in numbers:
            shutil.rmtree(trial_dir(output, study.study_name, n), ignore_errors=True)
    return len(numbers)


def open_study(spec: StudySpec, url: str, *, force: bool, target: int, worker_index: int = 0,
               quiet: bool = False, output: Path | None = None) -> optuna.Study:
    """Load the study named by ``spec`` or create it; refuse an incompatible existing study.

    Checked before anything is written: directions must match, and the stored fingerprint
    (workload, objectives, search space, fixed settings) must equal the file's unless
    ``force``. A study whose every trial failed (or that has none) holds nothing worth
    keeping: a changed file re-creates it (its trial directories under ``output`` go too)
    instead of being refused. The sampler seed is mixed with the number of trials already
    stored, so a restarted seeded study draws new points instead of re-proposing its first
    ones.
    """
    s = spec.storage
    storage = open_storage(url, heartbeat_interval=s.heartbeat_interval,
                           grace_period=s.grace_period, max_retry=s.max_retry)
    directions = [optuna.study.StudyDirection[d.upper()] for d in spec.directions]
    existing = None
    try:
        existing = optuna.load_study(study_name=spec.name, storage=storage)
    except KeyError:
        pass
    if existing is not None and _only_failures(existing) and (
            list(existing.directions) != directions
            or existing.user_attrs.get(FINGERPRINT_ATTR) not in (None, spec.fingerprint())):
        dropped = _drop_failed_study(existing, storage, output)
        log.info("study %s had no finished trial (%d failed); re-created from the changed %s",
                 spec.name, dropped, spec.path)
        existing = None
    if existing is not None:
        if list(existing.directions) != directions:
            have = [d.name.lower() for d in existing.directions]
            raise UserError(
                f"study {spec.name!r} in {mask_url(url)} has directions {have} but "
                f"{spec.path} asks for {spec.directions}; use a new study name (name = ... in "
                "the file) or another storage")
        stored = existing.user_attrs.get(FINGERPRINT_ATTR)
        if stored is not None and stored != spec.fingerprint():
            change = _describe_change(record(existing, SPEC_ATTR) or {},
                                      spec.fingerprint_content())
            if not force:
                raise UserError(
                    f"study {spec.name!r} was created from a different version of {spec.path} "
                    f"(changed: {change}); its {len(existing.trials)} trials would not be "
                    "comparable. Use a new study name, or --force to continue anyway")
            log.warning("study file changed (%s); continuing because of --force", change)
            existing.set_user_attr(FINGERPRINT_ATTR, spec.fingerprint())
            set_record(existing, SPEC_ATTR, spec.fingerprint_content())
        n_stored = len(existing.get_trials(deepcopy=False))
        existing.sampler = make_sampler(spec, n_stored=n_stored, worker_index=worker_index)
        existing.pruner = make_pruner(spec)
        if existing.user_attrs.get(TARGET_ATTR) != target:
            existing.set_user_attr(TARGET_ATTR, target)
        return existing

    try:
        study = optuna.create_study(
            study_name=spec.name, storage=storage, directions=directions,
            sampler=make_sampler(spec, n_stored=0, worker_index=worker_index),
            pruner=make_pruner(spec),
        )
    except optuna.exceptions.DuplicatedStudyError:
        # Another host created it between our check and our create: use theirs.
        return open_study(spec, url, force=force, target=target, worker_index=worker_index,
                          quiet=quiet)
    study.set_metric_names(spec.metric_names)
    study.set_user_attr(FINGERPRINT_ATTR, spec.fingerprint())
    set_record(study, SPEC_ATTR, spec.fingerprint_content())
    study.set_user_attr(TARGET_ATTR, target)
    study.set_user_attr("workload", spec.workload)
    # short, for `optuna studies` (the study file's full content is the record hpo:spec)
    study.set_user_attr("objectives", [f"{o.metric} ({o.direction})" for o in spec.objectives])
    study.set_user_attr("description", spec.description)
    # -- dashboard note (hpo.artifacts): the description shown on the study page --
    from hpo.artifacts import save_study_note

    save_study_note(study)
    # -- end dashboard note --
    space = {p.name for p in spec.search_space}
    for item in spec.enqueue:
        params = {k: v for k, v in item.params.items() if k in space}
        overrides = {k: v for k, v in item.params.items() if k not in space}
        study.enqueue_trial(params, user_attrs={attrs.ENQUEUED_NAME: item.name,
                                                attrs.ENQUEUED_OVERRIDES: overrides})
    if not quiet:
        log.info("created study %s (%d enqueued trials)", spec.name, len(spec.enqueue))
    return study
