"""trial -> sampled params -> trainer config -> train -> objective values (and every artifact).

The objective is the only place where Optuna meets a trainer: trainers get a
:class:`StudyTrialContext`, which forwards attrs and per-epoch reports to the trial, and return
a metrics dict; the values go back to Optuna in the study's objective order.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
import traceback
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna

from hpo import attrs
from hpo.attrs import EPOCHS_PLANNED as EPOCHS_PLANNED_ATTR
from hpo.attrs import PRUNED_AT as PRUNED_AT_ATTR
from hpo.config import SINGLE_OBJECTIVE_PRUNERS, Param, PrunerSpec, RunSpec, StudySpec
from hpo.faults import EnvironmentFault, environment_fault
from hpo.pruners import get_kind
from hpo.pruning import MOASHAPruner, epoch_values_key
from hpo.records import set_trial_attr, trial_attrs
from hpo.study import trial_dir, trial_seed
from trainers.config import from_mapping, to_mapping
from trainers.context import (
    Report,
    TrialContext,
    atomic_write_bytes,
    atomic_write_json,
    resume_point,
)
from trainers.errors import StopRequested, TrialFailed, TrialPruned, UserError
from trainers.progress import ProgressRecord
from trainers.registry import get_workload

# The trainer's attr (and the study's) holding the calendar split every trial shares.
SPLIT_ATTR = "date_split"
# Trial attrs that belong to one attempt; a retried trial inherits its predecessor's user and
# system attrs from Optuna, so these are cleared to keep the dashboard truthful.
_PER_ATTEMPT_ATTRS = ("history", "epoch", "fail_reason", "prune_reason", "oom_retries",
                      attrs.PROGRESS,
                      PRUNED_AT_ATTR, "mo_asha")


def suggest(trial: optuna.Trial, param: Param) -> Any:
    if param.kind == "categorical":
        return trial.suggest_categorical(param.name, list(param.choices))
    if param.kind == "int":
        step = param.step if not param.log else 1
        return trial.suggest_int(param.name, int(param.low), int(param.high), step=int(step),
                                 log=param.log)
    return trial.suggest_float(param.name, float(param.low), float(param.high),
                               step=param.step, log=param.log)


def space_maxima(space: Sequence[Param], settings: dict[str, Any], *, fields: set[str],
                 explicit: set[str]) -> dict[str, Any]:
    """``<name>_max`` settings for a trainer that sizes something once for every value a study
    can sample: for each numeric search-space parameter ``name`` whose config has a field
    ``<name>_max`` that the study file or an enqueued trial does not set (``explicit``), the
    larger of its upper bound and its value in ``settings`` (an enqueued value may lie past
    the bound). E.g. graph_k -> graph_k_max: the ATFT-GAT graph is built once with that many
    in-edges per stock and every trial takes its graph_k from it.
    """
    maxima: dict[str, Any] = {}
    for p in space:
        name = f"{p.name}_max"
        if name not in fields or name in explicit:
            continue
        values = [v for v in p.choices if isinstance(v, int | float) and not isinstance(v, bool)]
        upper = p.high if p.kind != "categorical" else max(values, default=None)
        if upper is None:
            continue
        current = settings.get(p.name, upper)
        maxima[name] = max(upper, current) if isinstance(current, int | float) else upper
    return maxima


def retry_history(trial: optuna.Trial) -> list[int]:
    """Numbers of the trials this one retries, oldest first (empty for a fresh trial).

    Optuna 5's helper needs a FrozenTrial (a live Trial has no system attrs). The one Optuna
    read when it created the trial already holds them, which saves a query per trial; without
    it (another Optuna version) the trial is read from storage.
    """
    frozen = getattr(trial, "_cached_frozen_trial", None)
    if frozen is None:
        frozen = trial.study._storage.get_trial(trial._trial_id)
    return list(optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(frozen))


class StudyTrialContext(TrialContext):
    """A TrialContext whose attrs and reports land on the Optuna trial as user attrs."""

    def __init__(self, trial: optuna.Trial, *, output_dir: Path, seed: int,
                 predecessors: list[tuple[int, Path]], metric_names: list[str],
                 directions: list[str], pruner: PrunerSpec, max_epochs: int | None,
                 cache_dir: Path, run: RunSpec | None = None) -> None:
        # The newest predecessor with a checkpoint is the one to resume from.
        resume = next((d for _, d in reversed(predecessors) if (d / "checkpoint.pt").exists()),
                      None)
        run = run or RunSpec()
        super().__init__(output_dir, trial_number=trial.number, seed=seed, resume_dir=resume,
                         cache_dir=cache_dir, progress=run.progress,
                         progress_every_s=run.progress_every_s, progress_bars=run.bars,
                         checkpoint_every_s=run.checkpoint_every_s)
        self.trial = trial
        self._predecessors = dict((d, n) for n, d in predecessors)
        self._metric_names = list(metric_names)
        self._pruner = pruner
        self._max_epochs = max_epochs
        self._rungs: list[dict[str, int]] = []

    def set_attr(self, key: str, value: Any) -> None:
        super().set_attr(key, value)
        set_trial_attr(self.trial, key, self.attrs[key])

    def on_progress(self, record: ProgressRecord) -> None:
        # At most every progress_every_s, and at each phase's end: never once per step.
        self.set_attr(attrs.PROGRESS, record.to_attr())
        try:  # the trial's dashboard note; its learning curve replaces it at the end
            from optuna_dashboard import save_note

            save_note(self.trial, f"### Progress (trial {self.trial.number})\n\n"
                                  f"{record.line()} (as of {record.time})\n")
        except Exception:  # noqa: BLE001 - a note is a convenience, never a failure
            pass

    def report(self, epoch: int, metrics: Mapping[str, Any], *,
               instance: Mapping[str, Any] | None = None) -> Report:
        report = super().report(epoch, metrics, instance=instance)
        self._to_study(report)
        return report

    def _to_study(self, report: Report) -> None:
        """The step to the study: the history attr, the epoch's objective vector, the pruners
        (a single-objective one on the step's own figure where it pairs steps, else on the
        running one)."""
        epoch, metrics = report.step, report.figures
        set_trial_attr(self.trial, attrs.HISTORY, self.history)
        self.trial.set_user_attr("epoch", int(epoch))
        vector = [_finite_or_none(metrics.get(name)) for name in self._metric_names]
        # Written through at once (one small row per epoch, not one growing attr): other
        # workers' MO-ASHA rungs read it while this trial still trains. A system attr, because
        # Optuna's intermediate values are single-valued, refused by trial.report in a
        # multi-objective study, and, written through the storage anyway, make TPE crash once
        # such a trial is pruned (it asks the study for its one direction).
        self.trial.study._storage.set_trial_system_attr(
            self.trial._trial_id, epoch_values_key(epoch), vector)
        kind = get_kind(self._pruner.name)
        if kind.per_instance and len(self._metric_names) == 1:
            # The step's own figure (a fold's), not the running one.
            own = report.instance
            if own is None:
                self.set_attr(kind.name, "not applied: the trainer reports no per-fold "
                                         "figures (set [data] cv = \"walk_forward\")")
                return
            vector = [_finite_or_none(own.get(self._metric_names[0]))]
        if len(self._metric_names) == 1 and vector[0] is not None:
            # The learning-curve path optuna-dashboard plots (single-objective studies only).
            # At the step that makes the pruner's keys mean epochs (hpo.pruners: Optuna's
            # median warm-up counts steps from 0, our epochs from 1).
            self.trial.report(vector[0], step=kind.step(int(epoch)))
            if self._pruner.name in SINGLE_OBJECTIVE_PRUNERS and self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned by the {self._pruner.name} pruner at epoch "
                                         f"{epoch}")
        pruner = self.trial.study.pruner
        if isinstance(pruner, MOASHAPruner):  # it owns the decision; Optuna's should_prune
            missing = [n for n in self._metric_names if n not in metrics]  # refuses MO studies
            if missing:
                # Not reported is not "diverged": ranked as the worst, every trial but the
                # first would be pruned. Without the numbers the rule stands aside.
                self.set_attr("mo_asha", f"not applied: the trainer reports no {missing} per "
                                         "epoch")
                return
            stop = pruner.prune(self.trial.study,
                                self.trial.storage.get_trial(self.trial._trial_id))
            decision = pruner.last
            if decision is not None:
                self._rungs.append({"epoch": decision.rung, "place": decision.position + 1,
                                    "of": decision.n_at_rung, "kept": decision.n_kept})
                self.set_attr("mo_asha", self._rungs)
            if stop and decision is not None:
                raise optuna.TrialPruned(decision.reason())

    def restore(self) -> dict[str, Any] | None:
        own_exists = self.checkpoint_path.exists()
        state = super().restore()
        if state is not None:
            source = (self.trial.number if own_exists
                      else self._predecessors.get(self.resume_dir, None))
            self.set_attr("resumed_from", {"trial": source, "epoch": int(state.get("epoch", 0))})
        return state

    def resume_line(self, state: Mapping[str, Any]) -> str:
        own = self.checkpoint_path.exists()
        source = self.trial.number if own else self._predecessors.get(self.resume_dir, None)
        whose = "its own checkpoint" if own else f"trial {source}"
        return f"trial {self.trial.number} resumes {whose} at {resume_point(state)}"


def _finite_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class Objective:
    """Callable handed to ``study.optimize``; returns the values in objective order."""

    def __init__(self, spec: StudySpec, *, output_dir: Path) -> None:
        self.spec = spec
        self.output_dir = Path(output_dir)
        self.workload = get_workload(spec.workload)
        self.stop_requested: str | None = None
        self.current_ctx: StudyTrialContext | None = None
        self._artifact_store: Any = None

    def request_stop(self, reason: str) -> None:
        """Called from a signal handler: the running trial stops at its next step."""
        self.stop_requested = reason
        if self.current_ctx is not None:
            self.current_ctx.request_stop(reason)

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        spec = self.spec
        inherited = trial_attrs(trial)
        for key in _PER_ATTEMPT_ATTRS:
            if key in inherited:
                set_trial_attr(trial, key, None)
        params = {p.name: suggest(trial, p) for p in spec.search_space}
        overrides = dict(trial.user_attrs.get(attrs.ENQUEUED_OVERRIDES) or {})
        settings = {**spec.fixed_settings(), **overrides, **params}
        settings.update(space_maxima(
            spec.search_space, settings,
            fields={f.name for f in dataclasses.fields(self.workload.config_cls)},
            explicit={*spec.fixed_settings(), *overrides}))
        config = from_mapping(self.workload.config_cls, settings, where=f"trial {trial.number}")

        out = trial_dir(self.output_dir, spec.name, trial.number)
        history = retry_history(trial)
        predecessors = [(n, trial_dir(self.output_dir, spec.name, n)) for n in history]
        seed = trial_seed(spec.sampler.seed, spec.name, history[0] if history else trial.number)
        single = spec.metric_names[0] if len(spec.objectives) == 1 else None
        # The steps a trial reports: its epochs, or its folds under walk-forward validation.
        max_epochs = self.workload.reported_steps(config)
        ctx = StudyTrialContext(trial, output_dir=out, seed=seed, predecessors=predecessors,
                                metric_names=spec.metric_names, directions=spec.directions,
                                pruner=spec.pruner,
                                max_epochs=max_epochs if isinstance(max_epochs, int) else None,
                                cache_dir=self.output_dir / "cache", run=spec.run)
        self.current_ctx = ctx
        if self.stop_requested:
            ctx.request_stop(self.stop_requested)
        ctx.set_attr("output_dir", str(out))
        for key in (attrs.STOPPED_BY, attrs.ENVIRONMENT_FAULT):
            if trial.user_attrs.get(key):  # a retry copies the stopped trial's attrs
                ctx.set_attr(key, None)
        ctx.set_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        ctx.set_attr("seed", seed)
        if history:
            ctx.set_attr("retry_of", history[-1])
        if isinstance(max_epochs, int):
            ctx.set_attr(EPOCHS_PLANNED_ATTR, max_epochs)

        started = time.perf_counter()
        try:
            metrics = self.workload.train(config, ctx)
        except TrialPruned as exc:
            if single is not None:
                self._record_pruned(trial, ctx, out, str(exc))
                raise optuna.TrialPruned(str(exc)) from None
            ctx.set_attr("fail_reason", str(exc))
            raise TrialFailed(str(exc)) from None
        except TrialFailed as exc:
            ctx.set_attr("fail_reason", str(exc))
            self._publish(trial, out)
            raise
        except (StopRequested, KeyboardInterrupt) as exc:
            ctx.set_attr("fail_reason", f"interrupted ({exc or 'signal'}); retried later")
            self._record_stop(trial, ctx, str(exc) or "SIGINT")
            self._enqueue_retry(trial)
            raise StopRequested(str(exc) or "interrupted") from None
        except optuna.TrialPruned as exc:
            self._record_pruned(trial, ctx, out, str(exc))
            raise
        except UserError as exc:  # ends the run with exit 2; the trial keeps the reason
            ctx.set_attr("fail_reason", str(exc))
            raise
        except Exception as exc:  # a crash in one trial must not end an overnight study
            fault = environment_fault(exc, where=out)
            if fault is not None:  # the machine's, not the trial's: queued again, not charged
                ctx.set_attr("fail_reason", f"environment: {fault}; retried later")
                ctx.set_attr(attrs.ENVIRONMENT_FAULT, fault)
                self._enqueue_retry(trial)
                raise EnvironmentFault(fault) from None
            ctx.set_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            atomic_write_bytes(out / "traceback.txt", traceback.format_exc().encode(),
                               durable=False)
            self._publish(trial, out)
            raise TrialFailed(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self.current_ctx = None

        elapsed = time.perf_counter() - started
        values = []
        for name in spec.metric_names:
            value = metrics.get(name)
            if value is None or not math.isfinite(float(value)):
                reason = f"metric {name!r} is {value!r}; the trainer could not compute it"
                ctx.set_attr("fail_reason", reason)
                raise TrialFailed(reason)
            values.append(float(value))
        self._record_split(trial, ctx.attrs.get(SPLIT_ATTR))
        for name, value in metrics.items():
            ctx.set_attr(name, float(value) if value is not None else None)
        ctx.set_attr("train_seconds", round(elapsed, 3))
        atomic_write_json(out / "metrics.json", {
            "study": spec.name, "trial": trial.number, "params": params,
            "overrides": overrides, "objectives": dict(zip(spec.metric_names, values,
                                                           strict=True)),
            "metrics": metrics, "config": to_mapping(config), "attrs": ctx.attrs,
            "history": ctx.history,
        }, durable=False)  # the study storage holds the same values durably
        self._publish(trial, out)
        return values[0] if single is not None else values

    def _record_split(self, trial: optuna.Trial, split: Any) -> None:
        """The study's date split (train | purge | validation | purge | test) as a study user
        attr, set by the first trial that reports one; a trial scored on other dates fails,
        since its objectives could not be compared with the others'."""
        if split is None:
            return
        study = trial.study
        known = study.user_attrs.get(SPLIT_ATTR)
        if known is None:
            study.set_user_attr(SPLIT_ATTR, split)
        elif known != split:
            reason = (f"trial {trial.number} was split into {split}, the study's earlier trials "
                      f"into {known}; the data changed under the study: start a new study")
            raise TrialFailed(reason)

    def _record_pruned(self, trial: optuna.Trial, ctx: StudyTrialContext, out: Path,
                       reason: str) -> None:
        """A pruned trial keeps why, where, and its last epoch's metrics (objectives included)
        as user attrs: Optuna stores no values for a pruned multi-objective trial."""
        ctx.set_attr("prune_reason", reason)
        last = ctx.history[-1] if ctx.history else {}
        if "epoch" in last:
            ctx.set_attr(PRUNED_AT_ATTR, int(last["epoch"]))
        for name, value in last.items():
            if name != "epoch" and (value is None or isinstance(value, int | float)):
                ctx.set_attr(name, value)
        self._publish(trial, out)

    def _publish(self, trial: optuna.Trial, out: Path) -> None:
        """Dashboard artifacts of a finished or failed trial (metrics.json, learning curve,
        checkpoint, traceback); best effort, never raises."""
        from hpo.artifacts import upload_trial_artifacts

        upload_trial_artifacts(trial, trial_dir=out, output_dir=self.output_dir,
                               metric_names=self.spec.metric_names, store=self._store())

    def _store(self) -> Any:
        """The artifact store, created once per worker (and again if its directory went)."""
        from hpo.artifacts import artifact_dir, artifact_store

        if self._artifact_store is None or not artifact_dir(self.output_dir).is_dir():
            self._artifact_store = artifact_store(self.output_dir)
        return self._artifact_store

    @staticmethod
    def _record_stop(trial: optuna.Trial, ctx: StudyTrialContext, reason: str) -> None:
        """``stopped_by`` the signal; a SIGTERM (a scheduler's preemption) also counts in
        ``preempted``, carried over to the retries, which never count it as a failure."""
        ctx.set_attr(attrs.STOPPED_BY, reason)
        if reason != "SIGTERM":
            return
        seen = trial.user_attrs.get(attrs.PREEMPTED) or {"count": 0, "times": []}
        ctx.set_attr(attrs.PREEMPTED, {
            "count": int(seen.get("count", 0)) + 1,
            "times": [*seen.get("times", []),
                      datetime.now(UTC).isoformat(timespec="seconds")]})

    def _enqueue_retry(self, trial: optuna.Trial) -> None:
        """Queue a copy of an interrupted trial (same params, retry history kept) to run again."""
        study = trial.study
        frozen = study._storage.get_trial(trial._trial_id)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)(study, frozen)
