"""Progress lines while a study runs, and the summary table at the end."""

from __future__ import annotations

import logging
import math
import shlex
import time
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import attrs
from hpo.config import StudySpec
from hpo.pruning import epochs_saved
from hpo.results import best_trials, trial_counts
from hpo.storage import mask_url

log = logging.getLogger("hpo")


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _fmt_value(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}"


class Progress:
    """One line per finished trial: done/target, elapsed, ETA, the trial's values, best so far."""

    def __init__(self, spec: StudySpec, *, target: int, announce: bool = True) -> None:
        self.spec = spec
        self.target = target
        self.announce = announce
        self.started = time.monotonic()
        self.durations: list[float] = []

    def trial_started(self, finished: int) -> None:
        if self.announce and not self.durations:
            log.info("[%d/%d] running trials...", finished, self.target)

    def trial_done(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.duration is not None:
            self.durations.append(trial.duration.total_seconds())
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        remaining = max(0, self.target - finished)
        eta = (sum(self.durations) / len(self.durations)) * remaining if self.durations else None
        names = self.spec.metric_names
        if trial.values:
            values = " ".join(f"{n}={_fmt_value(v)}" for n, v in zip(names, trial.values,
                                                                     strict=False))
        else:
            values = (trial.user_attrs.get(attrs.FAIL_REASON)
                      or trial.user_attrs.get(attrs.PRUNE_REASON) or "")
        best = best_trials(study)
        best_txt = ""
        if best and len(names) == 1:
            best_txt = f" | best #{best[0].number} {names[0]}={_fmt_value(best[0].values[0])}"
        elif best:
            best_txt = f" | pareto front: {len(best)} trial(s)"
        log.info("[%d/%d] trial %d %s in %s: %s | elapsed %s, eta %s%s", finished, self.target,
                 trial.number, trial.state.name, _fmt_duration(self.durations[-1]
                                                               if self.durations else None),
                 values, _fmt_duration(time.monotonic() - self.started), _fmt_duration(eta),
                 best_txt)
        if self.announce and len(self.durations) == 1 and remaining:
            # Once, after the first trial: what the whole study will take at this pace.
            log.info("expect about %s a trial here, so about %s for the %d trial(s) left of "
                     "this worker's share (more --workers, or a GPU, to go faster)",
                     _fmt_duration(self.durations[0]), _fmt_duration(eta), remaining)

    def done(self, study: optuna.Study) -> None:
        if self.announce:
            log.info("study %s reached its target of %d finished trials", study.study_name,
                     self.target)


def dashboard_command(url: str, study_name: str) -> str:
    return f"python -m hpo.dashboard --study {shlex.quote(study_name)} --storage " \
           f"{shlex.quote(mask_url(url))}"


def evaluate_command(url: str, study_name: str, output: Path) -> str:
    return f"python -m hpo.evaluate --study {shlex.quote(study_name)} --storage " \
           f"{shlex.quote(mask_url(url))} --output {shlex.quote(str(output))}"


def print_summary(study: optuna.Study, spec: StudySpec, url: str, target: int,
                  output: Path = Path("output")) -> None:
    trials = study.get_trials(deepcopy=False)
    counts = trial_counts(trials)
    finished = counts["complete"] + counts["pruned"]
    saved_epochs = epochs_saved(trials)[1]
    saved = f" (saved {saved_epochs} epochs)" if saved_epochs else ""
    stops = "".join(f", {counts[k]} {k}" for k in ("interrupted", "preempted", "environment",
                                                    "surplus") if counts[k])
    print(f"\nstudy {spec.name}: {finished}/{target} finished "
          f"({counts['complete']} complete, {counts['pruned']} pruned{saved}, "
          f"{counts['failed']} failed{stops}, "
          f"{counts['running']} running, {counts['waiting']} waiting)")
    best = best_trials(study)
    if best:
        names = spec.metric_names
        title = "best trial" if len(names) == 1 else "Pareto front"
        param_names = [p.name for p in spec.search_space]
        header = ["trial", *names, *param_names]
        rows = [[str(t.number), *(_fmt_value(v) for v in t.values),
                 *(_fmt_value(t.params[p]) if isinstance(t.params.get(p), float)
                   else str(t.params.get(p, "-")) for p in param_names)] for t in best]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        print(f"{title}:")
        print("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        for r in rows:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    from hpo.heldout import describe

    for line in describe(study, command=evaluate_command(url, spec.name, output)):
        print(line)
    print(f"\nwatch it in a browser: {dashboard_command(url, spec.name)}")
    if "***" in mask_url(url):
        print("(the password is masked above; the command reads it from $HPO_STORAGE if you "
              "leave --storage out)")
