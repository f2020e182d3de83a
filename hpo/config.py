"""Study files (``studies/*.toml``) parsed and validated into a frozen :class:`StudySpec`.

Every problem in a file is collected before failing, each naming the file, the key, the
value received and what is allowed, and they are reported together in one ``UserError``.
The workload's own config class checks the ``[trainer]``/``[data]`` settings and the
search-space names, so a misspelled hyperparameter is an error, never silently ignored.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo.pruners import PRUNER_KEYS as PRUNER_KEYS  # re-exported: the study file's keys
from hpo.pruners import SINGLE_OBJECTIVE_PRUNERS as SINGLE_OBJECTIVE_PRUNERS
from hpo.pruners import PrunerSpec, pruner_problems
from hpo.samplers import SAMPLERS as SAMPLERS  # re-exported: the study file's names
from hpo.space import PARAM_TYPES as PARAM_TYPES  # re-exported
from hpo.space import Param as Param
from hpo.space import is_number, parse_param
from trainers.config import config_problems, unknown_key_problem
from trainers.errors import UserError

STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"

DIRECTIONS = ("maximize", "minimize")

# Which model scores a walk-forward trial's test period: its last fold's, or the mean of every
# fold model's standardised scores (the K models its validation figures come from).
TEST_MODELS = ("last_fold", "fold_ensemble")

_TOP_KEYS = {
    "name", "description", "workload", "n_trials", "timeout_s", "objectives", "sampler",
    "pruner", "trainer", "data", "portfolio", "search_space", "enqueue", "storage", "evaluate",
    "run",
}


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "tpe"
    seed: int | None = 0
    n_startup_trials: int = 10


@dataclass(frozen=True)
class StorageSpec:
    """Crash-safety settings (see hpo.storage): heartbeats and retries of dead trials."""

    heartbeat_interval: int = 30
    grace_period: int = 120
    max_retry: int = 2

    def problems(self) -> list[tuple[str, str]]:
        """``(setting, what is wrong)`` of every bad setting: the one rule for the study
        file's [storage] and ``hpo.run``'s flags."""
        out = []
        if self.heartbeat_interval < 1:
            out.append(("heartbeat_interval",
                        f"must be >= 1 second, got {self.heartbeat_interval}"))
        elif self.grace_period <= self.heartbeat_interval:
            out.append(("grace_period", f"({self.grace_period} s) must be longer than the "
                                        f"heartbeat interval ({self.heartbeat_interval} s), or "
                                        "live trials would be failed as dead"))
        if self.max_retry < 0:
            out.append(("max_retry", f"must be >= 0, got {self.max_retry}"))
        return out


@dataclass(frozen=True)
class EvaluateSpec:
    """When the held-out test period is opened (see hpo.evaluate). ``auto``: ``hpo.run``
    opens it when the study first reaches its target; after that only
    ``hpo.evaluate --reopen`` looks again. Not part of the fingerprint: it changes no trial."""

    auto: bool = True
    # Blocks of the validation dates for the PBO (even): C(16, 8) = 12,870 CSCV splits.
    pbo_blocks: int = 16
    # A walk-forward study's test row: "last_fold" (its last fold's model) or "fold_ensemble"
    # (the mean of every fold model's per-date standardised scores); both are reported.
    test_model: str = "last_fold"
    # The chosen configuration trained with this many seeds (its own and N - 1 more) and
    # their averaged scores reported on test beside the single model (hpo.heldout.seeds); 1 = off.
    seeds: int = 1

    def problems(self) -> list[tuple[str, str]]:
        """``(setting, what is wrong)`` of every bad setting: the one rule for the study
        file's [evaluate] and ``hpo.evaluate``'s flags."""
        out = []
        if self.pbo_blocks < 2 or self.pbo_blocks % 2:
            out.append(("pbo_blocks", f"must be even and >= 2, got {self.pbo_blocks}"))
        if self.test_model not in TEST_MODELS:
            out.append(("test_model", f"got {self.test_model!r}; allowed: "
                                      f"{', '.join(TEST_MODELS)}"))
        if self.seeds < 1:
            out.append(("seeds", f"must be >= 1 (1: no seeds ensemble), got {self.seeds}"))
        return out


@dataclass(frozen=True)
class RunSpec:
    """How a running trial shows its progress (trainers.progress) and how it is stopped; not
    in the fingerprint. ``progress`` false (or ``hpo.run --quiet``) shows none; ``bars``
    false prints plain lines even on a terminal (``None``: bars on a terminal).
    ``checkpoint_every_s``: step checkpoints inside an epoch at most this often (0: at epoch
    ends only; recipes that can resume mid-epoch); ``preempt_grace_s``: after SIGTERM, the
    worker exits 143 at most this long later even if its trial has not reached a step."""

    progress: bool = True
    progress_every_s: float = 30.0
    bars: bool | None = None
    checkpoint_every_s: float = 300.0
    preempt_grace_s: float = 20.0


@dataclass(frozen=True)
class Enqueued:
    name: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class StudySpec:
    name: str
    path: Path
    description: str
    workload: str
    objectives: tuple[Objective, ...]
    search_space: tuple[Param, ...]
    trainer: Mapping[str, Any]
    data: Mapping[str, Any]
    sampler: SamplerSpec
    pruner: PrunerSpec
    storage: StorageSpec
    n_trials: int
    timeout_s: float | None
    enqueue: tuple[Enqueued, ...] = field(default=())
    # [portfolio]: the long-short book's settings (the workload's portfolio_fields), fixed
    # settings like [data]'s.
    portfolio: Mapping[str, Any] = field(default_factory=dict)
    evaluate: EvaluateSpec = field(default_factory=EvaluateSpec)
    run: RunSpec = field(default_factory=RunSpec)

    @property
    def metric_names(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def fixed_settings(self) -> dict[str, Any]:
        return {**self.data, **self.portfolio, **self.trainer}

    def fingerprint(self) -> str:
        """Hash of what makes trials comparable: workload, objectives, space, fixed settings.

        A study whose stored fingerprint differs from its file's was made by a different
        experiment; mixing the two would show stale results as current.
        """
        return hashlib.sha256(json.dumps(self.fingerprint_content(), sort_keys=True,
                                         default=str).encode()).hexdigest()[:16]

    def fingerprint_content(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "objectives": [[o.metric, o.direction] for o in self.objectives],
            "search_space": {p.name: p.to_json() for p in self.search_space},
            "fixed": {k: self.fixed_settings()[k] for k in sorted(self.fixed_settings())},
        }


def available_studies(directory: Path = STUDIES_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.toml"))


def resolve_study_path(name_or_path: str, directory: Path = STUDIES_DIR) -> Path:
    """A study name in ``studies/`` or a path to a .toml file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.parent != Path("."):
        if candidate.is_file():
            return candidate
        raise UserError(f"study file {str(candidate)!r} does not exist")
    path = directory / f"{name_or_path}.toml"
    if path.is_file():
        return path
    names = ", ".join(available_studies(directory)) or "(none)"
    raise UserError(f"unknown study {name_or_path!r}; available: {names} "
                    "(or pass a path to a .toml file)")


def load_study_spec(name_or_path: str, *, directory: Path = STUDIES_DIR,
                    check_workload: bool = True) -> StudySpec:
    path = resolve_study_path(name_or_path, directory)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: malformed TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    return parse_study(raw, path=path, check_workload=check_workload)


class _Problems:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(f"[{key}] {message}")

    def raise_if_any(self) -> None:
        if self.items:
            n = len(self.items)
            raise UserError(f"{self.path}: {n} problem{'s' if n > 1 else ''}: "
                            + "; ".join(self.items))


def _table(raw: Mapping[str, Any], key: str, problems: _Problems) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        problems.add(key, f"must be a table, got {value!r}")
        return {}
    return value


def _simple(cls: type, raw: Mapping[str, Any], key: str, problems: _Problems) -> Any:
    kwargs, issues = config_problems(cls, _table(raw, key, problems), where=key)
    for issue in issues:
        head, _, rest = issue.partition(": ")
        problems.add(head, rest)
    return cls(**kwargs)


def _plain_table(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def parse_study(raw: Mapping[str, Any], *, path: Path, check_workload: bool = True) -> StudySpec:
    problems = _Problems(path)
    for key in sorted(set(raw) - _TOP_KEYS):
        problems.add(key, unknown_key_problem(key, sorted(_TOP_KEYS), where="key")
                     .removeprefix("key: "))

    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ \t"):
        problems.add("name", f"must be a non-empty string without spaces or slashes, "
                             f"got {name!r}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        problems.add("description", f"must be a string, got {description!r}")
        description = ""

    workload_name = raw.get("workload")
    workload = None
    if not isinstance(workload_name, str):
        problems.add("workload", f"must name a workload, got {workload_name!r}")
    elif check_workload:
        from trainers.registry import get_workload

        try:
            workload = get_workload(workload_name)
        except UserError as exc:
            problems.add("workload", str(exc))

    objectives: list[Objective] = []
    raw_objectives = raw.get("objectives")
    if raw_objectives is None and workload is not None and workload.default_objectives:
        # No [[objectives]]: the workload's defaults for these settings (sharpe_net on a file
        # panel for the ranking workload).
        settings = {**_plain_table(raw.get("data")), **_plain_table(raw.get("portfolio")),
                    **_plain_table(raw.get("trainer"))}
        raw_objectives = [{"metric": m, "direction": d}
                          for m, d in workload.default_objectives(settings)]
    if not isinstance(raw_objectives, list) or not raw_objectives:
        problems.add("objectives", "need at least one [[objectives]] table with metric and "
                                   f"direction, got {raw_objectives!r}")
    else:
        for i, obj in enumerate(raw_objectives):
            key = f"objectives[{i}]"
            if not isinstance(obj, dict):
                problems.add(key, f"must be a table, got {obj!r}")
                continue
            for extra in sorted(set(obj) - {"metric", "direction"}):
                problems.add(key, f"unknown key {extra!r}; allowed: direction, metric")
            metric, direction = obj.get("metric"), obj.get("direction")
            if direction not in DIRECTIONS:
                problems.add(f"{key}.direction", f"got {direction!r}; allowed: maximize, "
                                                 "minimize")
            if not isinstance(metric, str):
                problems.add(f"{key}.metric", f"must be a metric name, got {metric!r}")
            elif workload is not None and metric not in workload.metrics:
                problems.add(f"{key}.metric", f"unknown metric {metric!r} for workload "
                             f"{workload.name!r}; allowed: {', '.join(sorted(workload.metrics))}")
            if isinstance(metric, str) and direction in DIRECTIONS:
                objectives.append(Objective(metric, direction))
        metrics = [o.metric for o in objectives]
        if len(set(metrics)) != len(metrics):
            problems.add("objectives", f"a metric appears twice: {metrics}")

    space_raw = _table(raw, "search_space", problems)
    params = [p for n, r in space_raw.items() if (p := parse_param(n, r, problems))]

    trainer = _table(raw, "trainer", problems)
    data = _table(raw, "data", problems)
    portfolio = _table(raw, "portfolio", problems)
    for a, b in (("trainer", data), ("trainer", portfolio), ("data", portfolio)):
        table = {"trainer": trainer, "data": data}[a]
        other = "data" if b is data else "portfolio"
        for key in sorted(set(table) & set(b)):
            problems.add(f"{a}.{key}", f"also set in [{other}]; set it in one place")
    for p in params:
        if p.name in trainer or p.name in data or p.name in portfolio:
            problems.add(f"search_space.{p.name}", "is also a fixed setting in [trainer]/[data]/"
                                                   "[portfolio]; remove one of them")
    if workload is not None and portfolio:
        allowed = workload.portfolio_fields
        for key in sorted(set(portfolio) - set(allowed)):
            problems.add(f"portfolio.{key}", "is not a portfolio setting of the "
                         f"{workload.name} workload; allowed: "
                         f"{', '.join(allowed) or 'none (it builds no long-short book)'}")

    sampler = _simple(SamplerSpec, raw, "sampler", problems)
    if sampler.name not in SAMPLERS:
        problems.add("sampler.name", f"got {sampler.name!r}; allowed: {', '.join(SAMPLERS)}")
    pruner = _simple(PrunerSpec, raw, "pruner", problems)
    raw_pruner = raw.get("pruner", {})
    for key, problem in pruner_problems(pruner, raw_pruner if isinstance(raw_pruner, dict)
                                        else {}, n_objectives=len(objectives)):
        problems.add(key, problem)
    storage = _simple(StorageSpec, raw, "storage", problems)
    evaluate = _simple(EvaluateSpec, raw, "evaluate", problems)
    run = _simple(RunSpec, raw, "run", problems)
    if not run.progress_every_s > 0:
        problems.add("run.progress_every_s", f"must be > 0 seconds, got {run.progress_every_s}")
    if not run.checkpoint_every_s >= 0:
        problems.add("run.checkpoint_every_s",
                     f"must be >= 0 seconds (0: at epoch ends only), got {run.checkpoint_every_s}")
    if not run.preempt_grace_s > 0:
        problems.add("run.preempt_grace_s", f"must be > 0 seconds, got {run.preempt_grace_s}")
    for key, problem in evaluate.problems():
        problems.add(f"evaluate.{key}", problem)
    for key, problem in storage.problems():
        problems.add(f"storage.{key}", problem)
    if sampler.name == "grid":
        for p in params:
            if p.kind == "float" and p.step is None:
                problems.add(f"search_space.{p.name}", "the grid sampler needs a step for "
                                                       "float parameters (or use choices)")

    n_trials = raw.get("n_trials")
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        problems.add("n_trials", f"must be a positive integer, got {n_trials!r}")
        n_trials = 1
    timeout = raw.get("timeout_s", 0)
    if not is_number(timeout) or timeout < 0:
        problems.add("timeout_s", f"must be a number of seconds >= 0 (0 = none), got {timeout!r}")
        timeout = 0

    enqueued: list[Enqueued] = []
    raw_enqueue = raw.get("enqueue", [])
    if not isinstance(raw_enqueue, list):
        problems.add("enqueue", f"must be a list of [[enqueue]] tables, got {raw_enqueue!r}")
        raw_enqueue = []
    for i, item in enumerate(raw_enqueue):
        key = f"enqueue[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("params"), dict):
            problems.add(key, "must be a table with name and params = { ... }")
            continue
        for extra in sorted(set(item) - {"name", "params"}):
            problems.add(key, f"unknown key {extra!r}; allowed: name, params")
        enqueued.append(Enqueued(name=str(item.get("name", f"enqueued_{i}")),
                                 params=dict(item["params"])))

    if workload is not None:
        _check_trainer_settings(workload, params, trainer, {**data, **portfolio}, enqueued,
                                problems)

    problems.raise_if_any()
    return StudySpec(
        name=name, path=path, description=description, workload=workload_name,
        objectives=tuple(objectives), search_space=tuple(params), trainer=trainer, data=data,
        portfolio=portfolio, sampler=sampler, pruner=pruner, storage=storage,
        evaluate=evaluate, run=run,
        n_trials=n_trials,
        timeout_s=float(timeout) or None, enqueue=tuple(enqueued),
    )


def _check_trainer_settings(workload: Any, params: list[Param], trainer: dict, data: dict,
                            enqueued: list[Enqueued], problems: _Problems) -> None:
    """Build the workload's config from the file's settings, so bad keys fail before any trial."""
    from trainers.config import field_types, from_mapping

    fields = field_types(workload.config_cls)
    for p in params:
        if p.name not in fields:
            problems.add(f"search_space.{p.name}", unknown_key_problem(
                p.name, list(fields), where="x").removeprefix("x: ")
                + f" (fields of the {workload.name} trainer)")
    for table, values in (("trainer", trainer), ("data", data)):
        for key in values:
            if key not in fields:
                problems.add(table, unknown_key_problem(key, list(fields), where="x")
                             .removeprefix("x: "))
    if problems.items:
        return
    sample = {**data, **trainer, **{p.name: p.midpoint() for p in params}}
    try:
        from_mapping(workload.config_cls, sample, where="settings")
    except UserError as exc:
        problems.add("trainer", str(exc))
    for i, item in enumerate(enqueued):
        try:
            from_mapping(workload.config_cls, {**sample, **item.params},
                         where=f"enqueue[{i}]")
        except UserError as exc:
            problems.add(f"enqueue[{i}]", str(exc))
