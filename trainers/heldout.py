"""The held-out capability: what a workload offers so that ``hpo.evaluate`` can open its test
period once, after the study has chosen, without knowing the workload.

A workload that holds out a test period sets ``Workload.heldout`` to an instance of a subclass
of :class:`HeldOut`, overriding the methods below. The protocol, in the order ``hpo.evaluate``
uses it, for each trial of the best trial / front:

1. ``load(trial_dir)`` -> the trained model, whatever the workload needs to predict (raise
   ``UserError`` when the trial saved none); ``check(trained)`` raises ``UserError`` when the
   study holds out no test period (e.g. ``test_fraction = 0``).
2. ``digest(trial_dir)`` -> SHA-256 of the saved model: part of the report's identity.
3. ``predict(trial_dir, trained, cache_dir)`` -> :class:`Prediction`: the test rows
   ``date, code, pred, target`` (the schema of the trial's validation ``predictions.parquet``),
   the study's date split (``trainers.attrs.DATE_SPLIT``'s value, checked against the one the
   study recorded) and the dates of each period.
4. ``validation(trial_dir)`` -> the validation rows the trial was scored on (default: its
   ``predictions.parquet``).
5. ``score(frame, trained)`` -> ``(metrics, bootstrap)``: ``{name: {"value", "se"}}`` for every
   name in ``reported`` and the bootstrap's settings; the same function scores validation and
   test, so the two columns are comparable.
6. Optional ``moments(frame, trained, net=False)`` -> ``{"n_obs", "skew", "kurtosis",
   "periods_per_year"}`` of the long-short returns (``net``: after costs): with it the report
   gains the deflated Sharpe ratio of the chosen trial's validation Sharpe and the PSR of its
   test Sharpe.
7. Optional ``baselines(trained, prediction)`` -> ``{"validation": {name: metrics},
   "test": {name: metrics}}`` (``metrics`` as ``score``'s values or plain numbers, a ``label``
   key names the row in tables; a None entry is left out), or None. An optional ``"frames"``
   key, ``{period: {name: rows}}``, holds a baseline's prediction rows (the schema of step 3)
   for the paired comparison of step 9; it is not written to the report.
8. Optional ``describe(trained)`` -> extra report fields (e.g. the scored horizon).
9. Optional ``compare(rows_a, rows_b, trained)`` -> ``{name: {"value", "se"}}``: every
   figure of ``a`` minus ``b`` on the same dates, with a paired standard error. With it and
   baseline frames, the report says by how much the chosen trial beats its best baseline.
10. Optional ``tear_sheet(frames, trained, out_dir, title, report_lines)`` -> the files
   written: a human-readable sheet of the test period (``frames``: label -> test rows, the
   chosen trial first, then each baseline; ``report_lines``: the report's console lines);
   ``hpo.evaluate`` attaches them to the study as artifacts.
11. Optional ``returns(rows, trained, trial_attrs)`` -> a frame ``date, ret``: the per-date
   return of a strategy built on the rows (for the ranking workloads the long-short, with the
   book the trial recorded in its user attrs ``trial_attrs``). With it the report gains the
   probability of backtest overfitting over the trials' validation returns and the effective
   number of trials of the deflated Sharpe ratio.
12. Optional ``score_new(trained, source, dates, cache_dir)`` -> an object with ``frame``
   (``date, code, score``), ``skipped`` and ``dates``: the model on a panel the study never
   saw, through the training pipeline (``hpo.predict``); ``dates`` is ``last``, ``all`` or
   ``START:END``. A panel that does not fit the model is a one-line ``UserError``.
13. Optional ``refit(trained, trial_dir, out_dir, request)`` -> a mapping with ``fit``
   (first and last fit date), ``through``, ``fit_dates`` and ``epochs``: the trial's
   configuration trained again, with ``request.seed``, on every date through
   ``request.through`` (None: the panel's last), its model written to ``out_dir`` in the
   format ``load`` reads (``hpo.refit``; ``hpo.predict --model refit`` scores with it).
14. Optional ``members(trial_dir)`` -> ``[(model file, trained), ...]``: the models whose
   mean standardised score is the trial's ensemble (a walk-forward trial's fold models), for
   ``hpo.predict --fold-ensemble``; [] when the trial has none.
15. Optional ``live(trained, source, cache_dir, split, validation, state)`` -> the model and
   the baselines on the dates of ``source`` after the study's test period whose label is
   realised, and the trial's ``validation`` rows, as per-date figures: ``{"after", "series":
   {name: frame}, "labels", "validation": frame, "periods_per_year", "horizon",
   "cost_bps"}``, frames ``date, rank_ic, long_short, long_short_net, turnover``
   (``hpo.monitor``); ``split`` is the study's recorded date split; ``state`` a folder kept
   between runs where the workload keeps what it scored and fitted, so a run scores only the
   dates after the last one scored.
16. Optional ``costs(frame, trained)`` -> the rows' figures at every cost of the study's cost
   list and the break-even cost (``ranking_costs``): the report's cost table.
17. Optional ``baseline_new(trained, scored, split, cache_dir, name)`` -> ``date, code,
   pred`` rows of the baseline ``name`` (fitted as the report's, on the training dates of the
   study's recorded ``split``) on the dates ``score_new`` scored (``scored``, its own return
   value), realised returns or not: with it ``hpo.predict --blend`` scores with the report's
   blend of the model and that baseline.

``selection_metric`` (a user attr every trial writes) picks the chosen trial of a Pareto front,
in the workload's natural direction for it; ``table`` is what the compact tables show.
:func:`ranking_score` and :func:`ranking_moments` are the cross-sectional implementations.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainers.metrics import registry
from trainers.metrics.scoring import SCORING, Scoring

# The trial's validation predictions, written by the trainer: date, code, pred, target.
VALIDATION_PREDICTIONS = "predictions.parquet"
# Bytes read per step while hashing a model file.
_HASH_CHUNK = 1 << 20
# Defaults: the cross-sectional ranking figures (trainers.metrics.predictions_metrics_with_se).
RANKING_REPORTED = registry.reported()
RANKING_TABLE = registry.table()


@dataclass(frozen=True)
class Prediction:
    """A trial's model on the study's test period (step 3 of the protocol)."""

    frame: Any  # polars.DataFrame: date, code, pred, target
    split: Mapping[str, Any]  # the study's date split: period -> [first, last] ISO dates
    dates: Mapping[str, np.ndarray] = field(default_factory=dict)  # "validation"/"test"
    context: Any = None  # the workload's own, handed back to its ``baselines``


@dataclass(frozen=True)
class RefitRequest:
    """What ``hpo.refit`` asks of a workload's ``refit`` (step 13 of the protocol)."""

    seed: int  # the trial's seed
    through: str | None  # the last date the refit may read (ISO); None: the panel's last
    trial_attrs: Mapping[str, Any]  # the trial's user attrs (its selected epoch, ...)
    cache_dir: Path  # the study's data caches
    progress: bool = True


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def read_validation(trial_dir: Path) -> Any:
    """The trial's validation rows (``predictions.parquet``)."""
    import polars as pl

    return pl.read_parquet(Path(trial_dir) / VALIDATION_PREDICTIONS)


class HeldOut:
    """A workload's held-out capability (module docstring: the protocol), as a base class.

    Subclass it and override ``load``, ``digest``, ``predict`` and ``score`` (required) and
    whichever optional capabilities the workload has (``OPTIONAL``); ``supports(name)`` says
    whether a subclass overrides one, and ``hpo`` asks it before calling. ``check`` and
    ``validation`` have defaults. ``selection_metric``, ``reported`` and ``table`` are class
    attributes; ``table`` must name reported figures (checked when the subclass is made).
    """

    selection_metric: str = "sharpe"
    reported: tuple[str, ...] = RANKING_REPORTED
    table: tuple[str, ...] = RANKING_TABLE
    REQUIRED = ("load", "digest", "predict", "score")
    OPTIONAL = ("moments", "baselines", "describe", "compare", "tear_sheet", "returns",
                "costs", "score_new", "refit", "members", "live", "baseline_new")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        missing = [m for m in cls.table if m not in cls.reported]
        if missing:
            raise ValueError(f"{cls.__name__}.table names {missing}, which are not in "
                             "reported")

    def supports(self, capability: str) -> bool:
        """Whether this workload has the optional ``capability`` (it overrides the method)."""
        if capability not in self.OPTIONAL:
            raise ValueError(f"{capability!r} is not an optional held-out capability; "
                             f"they are {', '.join(self.OPTIONAL)}")
        return getattr(type(self), capability) is not getattr(HeldOut, capability)

    def _absent(self, capability: str) -> NotImplementedError:
        return NotImplementedError(f"{type(self).__name__} has no {capability!r} capability "
                                   f"(ask supports({capability!r}) first)")

    # -- required: steps 1, 2, 3 and 5 --------------------------------------------------------
    def load(self, trial_dir: Path) -> Any:
        raise self._absent("load")

    def digest(self, trial_dir: Path) -> str:
        raise self._absent("digest")

    def predict(self, trial_dir: Path, trained: Any, cache_dir: Path) -> Prediction:
        raise self._absent("predict")

    def score(self, frame: Any, trained: Any) -> tuple[dict[str, Any], dict[str, int]]:
        raise self._absent("score")

    # -- with defaults: steps 1 and 4 --------------------------------------------------------
    def check(self, trained: Any) -> None:
        return None

    def validation(self, trial_dir: Path) -> Any:
        return read_validation(trial_dir)

    # -- optional: steps 6 to 15 --------------------------------------------------------------
    def moments(self, frame: Any, trained: Any, *, net: bool = False) -> dict[str, float]:
        raise self._absent("moments")

    def baselines(self, trained: Any, prediction: Prediction) -> dict[str, Any] | None:
        raise self._absent("baselines")

    def describe(self, trained: Any) -> dict[str, Any]:
        raise self._absent("describe")

    def compare(self, rows_a: Any, rows_b: Any, trained: Any) -> dict[str, Any]:
        raise self._absent("compare")

    def tear_sheet(self, frames: Mapping[str, Any], trained: Any, out_dir: Path, title: str,
                   report_lines: Any = ()) -> list[Path]:
        raise self._absent("tear_sheet")

    def returns(self, rows: Any, trained: Any, trial_attrs: Any) -> Any:
        raise self._absent("returns")

    def costs(self, frame: Any, trained: Any) -> dict[str, Any]:
        raise self._absent("costs")

    def score_new(self, trained: Any, source: str, dates: str, cache_dir: Path) -> Any:
        raise self._absent("score_new")

    def refit(self, trained: Any, trial_dir: Path, out_dir: Path,
              request: RefitRequest) -> Mapping[str, Any]:
        raise self._absent("refit")

    def members(self, trial_dir: Path) -> list[tuple[Path, Any]]:
        raise self._absent("members")

    def live(self, trained: Any, source: str, cache_dir: Path, split: Mapping[str, Any],
             validation: Any, state: Path | None = None) -> dict[str, Any]:
        raise self._absent("live")

    def baseline_new(self, trained: Any, scored: Any, split: Mapping[str, Any],
                     cache_dir: Path, name: str) -> Any:
        raise self._absent("baseline_new")


def ranking_score(frame: Any, scoring: Scoring = SCORING, *,
                  reported: tuple[str, ...] = RANKING_REPORTED
                  ) -> tuple[dict[str, Any], dict[str, int]]:
    """Cross-sectional figures with moving-block bootstrap SEs of ``date, pred, target`` rows
    (``trainers.metrics.predictions_metrics_with_se``), limited to ``reported``."""
    from trainers.metrics import predictions_metrics_with_se

    raw = predictions_metrics_with_se(frame, scoring=scoring)
    boot = {k: int(v) for k, v in raw.pop("bootstrap").items()}
    return {name: raw[name] for name in reported}, boot


def ranking_compare(a: Any, b: Any, scoring: Scoring = SCORING, *,
                    reported: tuple[str, ...] = RANKING_REPORTED) -> dict[str, Any]:
    """Figures of rows ``a`` minus those of rows ``b`` with paired moving-block bootstrap SEs
    (``trainers.metrics.paired_difference``), limited to ``reported``."""
    from trainers.metrics import paired_difference

    raw = paired_difference(a, b, scoring=scoring)
    return {name: raw[name] for name in reported if name in raw}


def ranking_returns(frame: Any, scoring: Scoring = SCORING) -> Any:
    """``date, ret, ret_net``: the per-date long-short of the rows' book (``scoring``'s; each
    date's book traded against the previous date's, whatever the scored horizon), gross and
    net of ``scoring.cost_bps`` (NaN net without a ``code`` column)."""
    import polars as pl

    from trainers.metrics import per_date_metrics

    codes = frame["code"].to_numpy() if "code" in frame.columns else None
    per_date = per_date_metrics(frame["date"].to_numpy(), frame["pred"].to_numpy(),
                                frame["target"].to_numpy(), codes=codes,
                                scoring=scoring.replace(horizon=1))
    return pl.DataFrame({"date": per_date["date"], "ret": per_date["long_short"],
                         "ret_net": per_date["long_short_net"]})


def ensemble_scores(frames: list[Any], column: str = "pred") -> Any:
    """Rows whose ``column`` is the mean over ``frames`` (the same rows scored by several
    models) of each model's per-date standardised score: z-scored across the date's stocks (a
    constant date reads 0), so no model weighs more for its scale. The other columns (e.g.
    ``target``) and the row order are the first frame's; a row some model did not score is
    dropped."""
    import polars as pl

    def z(frame: Any, i: int) -> Any:
        value = pl.col(column)
        score = ((value - value.mean().over("date")) / value.std(ddof=0).over("date"))
        return frame.select("date", "code", score.fill_nan(0.0).alias(f"z{i}"))

    first = frames[0]
    others = [c for c in first.columns if c not in ("date", "code", column)]
    out = first.select("date", "code", *others)
    for i, frame in enumerate(frames):
        out = out.join(z(frame, i), on=["date", "code"], how="inner", maintain_order="left")
    zs = [f"z{i}" for i in range(len(frames))]
    return out.select("date", "code", (pl.sum_horizontal(zs) / len(frames)).alias(column),
                      *others).select(first.columns)


def ranking_costs(frame: Any, costs: tuple[float, ...],
                  scoring: Scoring = SCORING) -> dict[str, Any]:
    """The net Sharpe ratio (with its bootstrap SE) of ``date, code, pred, target`` rows at
    each cost of ``costs`` (bps per unit traded; ``scoring``'s own cost is not used), and the
    break-even cost: the cost at which the mean net long-short return is zero,
    ``1e4 * sum(long_short) / sum(turnover)`` over the scored dates (0 when the book loses
    before costs; None when it never trades)."""
    import math

    from trainers.metrics import per_date_metrics, predictions_metrics_with_se

    at = {}
    for cost in costs:
        raw = predictions_metrics_with_se(frame, scoring=scoring.replace(cost_bps=cost))
        at[f"{cost:g}"] = {"value": raw["sharpe_net"]["value"], "se": raw["sharpe_net"]["se"]}
    per_date = per_date_metrics(frame["date"].to_numpy(), frame["pred"].to_numpy(),
                                frame["target"].to_numpy(), codes=frame["code"].to_numpy(),
                                scoring=scoring.replace(cost_bps=0.0))
    gross = per_date["long_short"].to_numpy()
    traded = np.nan_to_num(per_date["turnover"].to_numpy(), nan=0.0)[np.isfinite(gross)]
    total, spent = float(np.nansum(gross)), float(traded.sum())
    if spent <= 0:
        even = None
    else:
        even = max(0.0, 1e4 * total / spent) if math.isfinite(total) else None
    return {"grid_bps": [float(c) for c in costs], "sharpe_net": at, "break_even_bps": even}


def ranking_moments(frame: Any, scoring: Scoring = SCORING, *,
                    net: bool = False) -> dict[str, float]:
    """Skewness, kurtosis, non-overlapping periods and periods per year of the long-short
    returns of ``date, pred, target`` rows (``trainers.metrics.sharpe_moments``); ``net``:
    of the returns net of ``scoring.cost_bps`` (needs a ``code`` column)."""
    from trainers.metrics import sharpe_moments

    codes = frame["code"].to_numpy() if "code" in frame.columns else None
    return sharpe_moments(frame["date"].to_numpy(), frame["pred"].to_numpy(),
                          frame["target"].to_numpy(), codes=codes, scoring=scoring, net=net)
