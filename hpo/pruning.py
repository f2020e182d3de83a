"""The machinery pruning shares: per-epoch objective vectors, pruned-trial counts, MO-ASHA's rule.

The pruner kinds a study file can name, each with its keys and its Optuna pruner, are the
modules of :mod:`hpo.pruners`; ``mo_asha`` there builds :class:`MOASHAPruner`, an Optuna pruner
object that owns the rule below; the objective asks it at each epoch (Optuna's own
``should_prune`` refuses multi-objective studies).

Optuna's ``trial.report`` / ``should_prune`` refuse multi-objective studies, so every epoch's
objective vector is stored here as a trial system attr ``epoch_values:<epoch>`` (one small row
per epoch, written through at once, so workers on other hosts see it before the trial ends).
The MO-ASHA rule (Schmucker et al. 2021, "Multi-objective asynchronous successive halving")
reads those rows at its rungs:

* rungs are at epochs ``min_epochs * eta**k``;
* a trial reaching a rung goes on only if it is in the top ``1/eta`` of all trials that reached
  that rung so far (itself included; the best one always goes on), ranked by non-dominated
  sorting and, inside a front, by an epsilon-net order;
* it never waits: with fewer than ``min_trials_at_rung`` trials at the rung it goes on.

Why the epsilon-net and not NSGA-II's crowding distance: a rung holds few trials (3 to a few
dozen) and the production study has three objectives. In a front of three or four points in 3-D
nearly every point is extreme in some objective, so crowding distance gives them all infinity
and the tie-break becomes the trial number. The epsilon-net (greedy farthest-point order in
objectives normalised over the rung) gives every front a strict order that spreads the kept
trials over the front, whatever its size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from hpo import attrs

EPOCH_VALUES_PREFIX = "epoch_values:"


def epoch_values_key(epoch: int) -> str:
    return f"{EPOCH_VALUES_PREFIX}{int(epoch)}"


def epoch_values(system_attrs: Mapping[str, Any]) -> dict[int, list[float | None]]:
    """A trial's stored per-epoch objective vectors, by epoch (1-based)."""
    out = {}
    for key, value in system_attrs.items():
        if key.startswith(EPOCH_VALUES_PREFIX) and isinstance(value, list):
            out[int(key[len(EPOCH_VALUES_PREFIX):])] = value
    return dict(sorted(out.items()))


def rung_epochs(*, min_epochs: int, eta: int, max_epochs: int) -> list[int]:
    """The rung epochs below ``max_epochs`` (a rung at the last epoch would save nothing)."""
    rungs, epoch = [], min_epochs
    while epoch < max_epochs:
        rungs.append(epoch)
        epoch *= eta
    return rungs


def to_minimisation(values: Sequence[float | None], directions: Sequence[str]) -> np.ndarray:
    """One objective vector in "smaller is better" form; a missing or NaN value becomes +inf
    (worse than any real value), so a trial that diverged is dominated by every other."""
    out = np.empty(len(directions))
    for i, (v, d) in enumerate(zip(values, directions, strict=True)):
        if v is None or not math.isfinite(float(v)):
            out[i] = math.inf
        else:
            out[i] = -float(v) if d == "maximize" else float(v)
    return out


def nondominated_ranks(points: np.ndarray) -> np.ndarray:
    """Front index of each row of ``points`` (n, m), minimisation: 0 = not dominated."""
    n = len(points)
    if n == 0:
        return np.zeros(0, dtype=int)
    le = (points[:, None, :] <= points[None, :, :]).all(axis=2)
    lt = (points[:, None, :] < points[None, :, :]).any(axis=2)
    dominates = le & lt  # dominates[i, j]: i dominates j
    ranks = np.full(n, -1)
    remaining = np.ones(n, dtype=bool)
    front = 0
    while remaining.any():
        dominated = (dominates[remaining][:, remaining]).any(axis=0)
        idx = np.flatnonzero(remaining)[~dominated]
        ranks[idx] = front
        remaining[idx] = False
        front += 1
    return ranks


def epsilon_net_order(points: np.ndarray) -> list[int]:
    """Row indices of ``points`` (n, m; finite, normalised) in epsilon-net order.

    The first is the point closest to the ideal point (the origin after normalisation: the
    most balanced trial); each next one is the point farthest from all chosen so far. Ties go
    to the lower index (the earlier trial), so the order is deterministic.
    """
    n = len(points)
    if n == 0:
        return []
    order = [int(np.argmin(np.linalg.norm(points, axis=1)))]
    dist = np.linalg.norm(points - points[order[0]], axis=1)
    chosen = np.zeros(n, dtype=bool)
    chosen[order[0]] = True
    while len(order) < n:
        candidates = np.where(chosen, -np.inf, dist)
        nxt = int(np.argmax(candidates))
        order.append(nxt)
        chosen[nxt] = True
        dist = np.minimum(dist, np.linalg.norm(points - points[nxt], axis=1))
    return order


def rank_at_rung(records: Mapping[int, Sequence[float | None]],
                 directions: Sequence[str]) -> list[int]:
    """The keys of ``records`` (trial -> objective vector at one rung), best first.

    Sorted by front (non-dominated sorting), then by epsilon-net order inside each front in
    objectives min-max normalised over the rung's finite values. Vectors with a missing value
    come last, by key.
    """
    keys = sorted(records)
    pts = np.array([to_minimisation(records[k], directions) for k in keys]).reshape(
        len(keys), len(directions))
    finite = np.isfinite(pts).all(axis=1)
    good = [k for k, ok in zip(keys, finite, strict=True) if ok]
    bad = [k for k, ok in zip(keys, finite, strict=True) if not ok]
    if not good:
        return bad
    fin = pts[finite]
    low, span = fin.min(axis=0), np.ptp(fin, axis=0)
    norm = (fin - low) / np.where(span > 0, span, 1.0)
    ranks = nondominated_ranks(fin)
    ordered: list[int] = []
    for front in range(int(ranks.max()) + 1):
        members = np.flatnonzero(ranks == front)
        ordered += [good[members[i]] for i in epsilon_net_order(norm[members])]
    return ordered + bad


@dataclass(frozen=True)
class RungDecision:
    prune: bool
    rung: int
    position: int  # 0-based place of the trial among those at the rung (best first)
    n_at_rung: int
    n_kept: int

    def reason(self) -> str:
        return (f"pruned by mo_asha at epoch {self.rung}: place {self.position + 1} of "
                f"{self.n_at_rung} trials at this rung, only the top {self.n_kept} go on")


@dataclass(frozen=True)
class MOASHA:
    """The MO-ASHA stopping rule over stored per-epoch objective vectors (pure: no storage)."""

    directions: tuple[str, ...]
    min_epochs: int = 1
    eta: int = 3
    min_trials_at_rung: int = 3

    def is_rung(self, epoch: int, *, max_epochs: int) -> bool:
        return epoch in rung_epochs(min_epochs=self.min_epochs, eta=self.eta,
                                    max_epochs=max_epochs)

    def decide(self, trial: int, epoch: int,
               records: Mapping[int, Sequence[float | None]]) -> RungDecision:
        """Whether ``trial`` stops at rung ``epoch``; ``records`` holds the vectors at this
        rung of every trial that reached it (``trial``'s own included)."""
        n = len(records)
        if n < self.min_trials_at_rung:
            return RungDecision(False, epoch, 0, n, n)
        order = rank_at_rung(records, self.directions)
        keep = max(1, n // self.eta)  # the top 1/eta; the best always goes on
        position = order.index(trial)
        return RungDecision(position >= keep, epoch, position, n, keep)


class MOASHAPruner(optuna.pruners.BasePruner):
    """MO-ASHA as an Optuna pruner object that owns its decision (``[pruner] name =
    "mo_asha"``). ``prune(study, trial)`` looks at the trial's newest stored objective vector
    (system attr ``epoch_values:<epoch>``); when that epoch is a rung (``min_epochs * eta**k``
    below the trial's ``epochs_planned``) it ranks the vector against every trial that reached
    the rung (:func:`records_at`, :class:`MOASHA`) in the study's directions, keeps the
    decision in ``last`` and returns whether the trial stops. Optuna's ``Trial.should_prune``
    refuses multi-objective studies, so the objective calls ``prune`` itself."""

    def __init__(self, *, min_epochs: int = 1, eta: int = 3, min_trials_at_rung: int = 3
                 ) -> None:
        self.min_epochs, self.eta, self.min_trials_at_rung = min_epochs, eta, min_trials_at_rung
        self.last: RungDecision | None = None

    def rule(self, study: Any) -> MOASHA:
        return MOASHA(tuple(d.name.lower() for d in study.directions),
                      min_epochs=self.min_epochs, eta=self.eta,
                      min_trials_at_rung=self.min_trials_at_rung)

    def prune(self, study: Any, trial: Any) -> bool:
        self.last = None
        vectors = epoch_values(trial.system_attrs)
        if not vectors:
            return False
        epoch = max(vectors)
        planned = trial.user_attrs.get(attrs.EPOCHS_PLANNED)
        rule = self.rule(study)
        if not rule.is_rung(epoch, max_epochs=int(planned) if planned else epoch + 1):
            return False
        records = records_at(study.get_trials(deepcopy=False), epoch)
        records[trial.number] = vectors[epoch]  # this trial's own, whatever else was read
        self.last = rule.decide(trial.number, epoch, records)
        return self.last.prune


def records_at(trials: Iterable[Any], epoch: int) -> dict[int, list[float | None]]:
    """Trial number -> stored objective vector at ``epoch``, for the trials that reached it.

    ``trials`` are FrozenTrials of any state: a trial pruned at this rung, a finished one and
    a running one all count (asynchronous: each is ranked against who got there first). A
    retried trial is created with a copy of its predecessor's system attrs (Optuna's retry
    callback), so it holds the same vectors: only the newest of a retry chain is kept (its
    ``retry_history`` names the earlier numbers), and one run is never counted twice.
    """
    key = epoch_values_key(epoch)
    out, superseded = {}, set()
    for t in trials:
        value = t.system_attrs.get(key)
        if isinstance(value, list):
            out[t.number] = value
        superseded.update(t.system_attrs.get(attrs.RETRY_HISTORY) or [])
    return {n: v for n, v in out.items() if n not in superseded}


def epochs_saved(trials: Iterable[Any]) -> tuple[int, int]:
    """(pruned trials, epochs they did not train) over FrozenTrials, from the attrs a pruned
    trial records; trials pruned without a known plan count as pruned with 0 epochs saved."""
    from optuna.trial import TrialState

    n, saved = 0, 0
    for t in trials:
        if t.state != TrialState.PRUNED:
            continue
        n += 1
        planned, at = t.user_attrs.get(attrs.EPOCHS_PLANNED), t.user_attrs.get(attrs.PRUNED_AT)
        if isinstance(planned, int) and isinstance(at, int):
            saved += max(0, planned - at)
    return n, saved
