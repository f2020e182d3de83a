"""Study files (``studies/*.toml``) parsed and validated into a frozen :class:`StudySpec`.

Every problem in a file is collected before failing, each naming the file, the key, the
value received and what is allowed, and they are reported together in one ``UserError``.
The workload's own config class checks the ``[trainer]``/``[data]`` settings and the
search-space names, so a misspelled hyperparameter is an error, never silently ignored.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo.pruners import PRUNER_KEYS as PRUNER_KEYS  # re-exported: the study file's keys
from hpo.pruners import SINGLE_OBJECTIVE_PRUNERS as SINGLE_OBJECTIVE_PRUNERS
from hpo.pruners import PrunerSpec, pruner_problems
from trainers.config import config_problems, unknown_key_problem
from trainers.errors import UserError

STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"

DIRECTIONS = ("maximize", "minimize")
SAMPLERS = ("tpe", "nsga2", "gp", "random", "grid")
PARAM_TYPES = ("float", "int", "categorical")

_TOP_KEYS = {
    "name", "description", "workload", "n_trials", "timeout_s", "objectives", "sampler",
    "pruner", "trainer", "data", "search_space", "enqueue", "storage", "evaluate", "run",
}


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str


@dataclass(frozen=True)
class Param:
    """One search-space dimension; ``kind`` is "float", "int" or "categorical"."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def to_json(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"type": self.kind, "choices": list(self.choices)}
        return {"type": self.kind, "low": self.low, "high": self.high, "log": self.log,
                "step": self.step}

    def midpoint(self) -> Any:
        """A value the sampler can draw from the middle of the range, used to validate the
        trainer config before any trial (the first choice of a categorical).

        The middle on the scale the sampler draws from: the geometric mean when ``log``,
        else the arithmetic mean, moved down onto the grid ``low + k * step`` when there is
        a step (an int's step is 1 at least), so it is always a legal point.
        """
        if self.kind == "categorical":
            return self.choices[0]
        assert self.low is not None and self.high is not None
        if self.log:
            middle = math.sqrt(self.low * self.high)
            return math.floor(middle) if self.kind == "int" else middle
        step = self.step if self.step is not None else (1 if self.kind == "int" else None)
        if step is None:
            return (self.low + self.high) / 2
        # points on the grid past low; rounded first so 0.3 / 0.1 = 2.9999... counts 3
        n_steps = math.floor(round((self.high - self.low) / step, 9))
        value = self.low + (n_steps // 2) * step
        return int(value) if self.kind == "int" else float(value)

    def grid_values(self) -> list[Any]:
        if self.kind == "categorical":
            return list(self.choices)
        assert self.low is not None and self.high is not None and self.step is not None
        n = int(round((self.high - self.low) / self.step))
        values = [self.low + i * self.step for i in range(n + 1)]
        return [int(v) for v in values] if self.kind == "int" else values


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


@dataclass(frozen=True)
class EvaluateSpec:
    """When the held-out test period is opened (see hpo.evaluate). ``auto``: ``hpo.run``
    opens it when the study first reaches its target; after that only
    ``hpo.evaluate --reopen`` looks again. Not part of the fingerprint: it changes no trial."""

    auto: bool = True
    pbo_blocks: int = 16  # blocks of the validation dates for the PBO (even)


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
    evaluate: EvaluateSpec = field(default_factory=EvaluateSpec)
    run: RunSpec = field(default_factory=RunSpec)

    @property
    def metric_names(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def fixed_settings(self) -> dict[str, Any]:
        return {**self.data, **self.trainer}

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


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse_param(name: str, raw: Any, problems: _Problems) -> Param | None:
    key = f"search_space.{name}"
    if not isinstance(raw, dict):
        problems.add(key, f"must be a table like {{ type = \"float\", low = 0.0, high = 1.0 }}, "
                          f"got {raw!r}")
        return None
    kind = raw.get("type")
    if kind not in PARAM_TYPES:
        problems.add(f"{key}.type", f"got {kind!r}; allowed: {', '.join(PARAM_TYPES)}")
        return None
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log",
                                                                  "step"}
    for extra in sorted(set(raw) - allowed):
        problems.add(key, unknown_key_problem(extra, sorted(allowed), where="key")
                     .removeprefix("key: "))
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            problems.add(f"{key}.choices", f"must be a non-empty list, got {choices!r}")
            return None
        if any(isinstance(c, dict | list) for c in choices):
            problems.add(f"{key}.choices", f"choices must be strings, numbers or booleans, "
                                           f"got {choices!r}")
            return None
        if len({json.dumps(c) for c in choices}) != len(choices):
            problems.add(f"{key}.choices", f"duplicate choices in {choices!r}")
            return None
        return Param(name=name, kind=kind, choices=tuple(choices))
    low, high = raw.get("low"), raw.get("high")
    log, step = raw.get("log", False), raw.get("step")
    ok = True
    for bound_name, bound in (("low", low), ("high", high)):
        if not _number(bound) or (kind == "int" and not float(bound).is_integer()):
            what = "an integer" if kind == "int" else "a number"
            problems.add(f"{key}.{bound_name}", f"must be {what}, got {bound!r}")
            ok = False
        elif not math.isfinite(bound):
            problems.add(f"{key}.{bound_name}", f"must be finite, got {bound!r}")
            ok = False
    if not isinstance(log, bool):
        problems.add(f"{key}.log", f"must be true or false, got {log!r}")
        ok = False
    if step is not None and (not _number(step) or step <= 0):
        problems.add(f"{key}.step", f"must be a positive number, got {step!r}")
        ok = False
    if not ok:
        return None
    if low > high:
        problems.add(key, f"low {low!r} > high {high!r}; low must not exceed high")
        return None
    if log and low <= 0:
        problems.add(f"{key}.low", f"log scale needs low > 0, got {low!r}")
        return None
    if log and step is not None and not (kind == "int" and step == 1):
        problems.add(key, "log and step cannot be combined (use one or the other)")
        return None
    if kind == "int":
        low, high = int(low), int(high)
        step = int(step) if step is not None else 1
    else:
        low, high = float(low), float(high)
    return Param(name=name, kind=kind, low=low, high=high, log=bool(log), step=step)


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
    params = [p for n, r in space_raw.items() if (p := _parse_param(n, r, problems))]

    trainer = _table(raw, "trainer", problems)
    data = _table(raw, "data", problems)
    for key in sorted(set(trainer) & set(data)):
        problems.add(f"trainer.{key}", "also set in [data]; set it in one place")
    for p in params:
        if p.name in trainer or p.name in data:
            problems.add(f"search_space.{p.name}", "is also a fixed setting in [trainer]/[data];"
                                                   " remove one of them")

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
    if evaluate.pbo_blocks < 2 or evaluate.pbo_blocks % 2:
        problems.add("evaluate.pbo_blocks", f"must be even and >= 2, got {evaluate.pbo_blocks}")
    if storage.heartbeat_interval < 1 or storage.grace_period <= storage.heartbeat_interval:
        problems.add("storage", "need heartbeat_interval >= 1 and grace_period > "
                                f"heartbeat_interval, got {storage.heartbeat_interval} and "
                                f"{storage.grace_period}")
    if storage.max_retry < 0:
        problems.add("storage.max_retry", f"must be >= 0, got {storage.max_retry}")
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
    if not _number(timeout) or timeout < 0:
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
        _check_trainer_settings(workload, params, trainer, data, enqueued, problems)

    problems.raise_if_any()
    return StudySpec(
        name=name, path=path, description=description, workload=workload_name,
        objectives=tuple(objectives), search_space=tuple(params), trainer=trainer, data=data,
        sampler=sampler, pruner=pruner, storage=storage, evaluate=evaluate, run=run,
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
