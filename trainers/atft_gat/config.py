"""TrainConfig: every setting of one ATFT-GAT-FAN training, flat.

Field names are the study's parameter names and the standalone CLI flags
(``python -m trainers.atft_gat --hidden-size 128``). The model's and the optimisation's
settings are declared (and checked) once, in :class:`ModelConfig` and :class:`RuntimeConfig`,
which this class extends; it adds the data, graph, loss and schedule settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date
from typing import ClassVar

from trainers.atft_gat.folds import CV, CV_KINDS, CV_WINDOWS, CVWindow, split_problems
from trainers.atft_gat.model import ModelConfig
from trainers.config import Checks
from trainers.metrics.book import MAX_FRACTION as MAX_LEG
from trainers.metrics.book import Book
from trainers.metrics.scoring import TRADING_DAYS_PER_YEAR, Scoring
from trainers.runtime import RuntimeConfig

PHASE_KINDS = ("baseline", "graph", "finetune")
BASE_LOSSES = ("huber", "mse")
NAN_POLICIES = ("mask", "fill", "refuse")
LEAK_GUARD_MODES = ("refuse", "warn")
# The keys of trainers.atft_gat.synthetic.DIFFICULTIES (a test keeps them equal); not imported
# from there so that the config does not load the generator.
MARKET_DIFFICULTIES = ("realistic", "easy")
# graph_k_max when it is 0: production's upper bound of graph_k, so a standalone run reuses
# the graph a production study cached.
GRAPH_K_MAX_DEFAULT = 20


def _iso_date(text: str) -> bool:
    """"" or a calendar date in ISO form."""
    if not text:
        return True
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return len(text) == 10


@dataclass(frozen=True)
class TrainConfig(ModelConfig, RuntimeConfig):
    # The settings a study file may put in its [portfolio] table (hpo.config).
    PORTFOLIO_FIELDS: ClassVar[tuple[str, ...]] = ("enter", "exit", "score_halflife",
                                                   "cost_bps")

    # -- data ---------------------------------------------------------------------------
    source: str = "synthetic"         # "synthetic" or a parquet/CSV panel path (README schema)
    n_stocks: int = 200               # synthetic market size
    n_dates: int = 500
    market_seed: int = 0              # the synthetic market's own seed (not the trial's)
    market_difficulty: str = "realistic"  # synthetic: "realistic" (calibrated) or "easy" (demos)
    features: tuple[str, ...] = ()    # () = every numeric non-target column
    date_column: str = "date"         # the panel's names of its date and stock columns
    code_column: str = "code"
    nan_policy: str = "mask"          # what a NaN/inf feature does (see cache.spec); targets
                                      # are never filled, a missing one is masked
    missing_indicator: bool = False   # also feed a 0/1 "was imputed" channel per feature
    # The leakage guard (trainers/atft_gat/leakage.py): a feature whose training-date RankIC
    # with any target is clearly above leak_threshold, whose edge fades faster than its values,
    # or that changes every date and would earn an annualised Sharpe above leak_sharpe on its
    # own, is refused unless listed in allow_features.
    leak_threshold: float = 0.2
    leak_sharpe: float = 6.0
    allow_features: tuple[str, ...] = ()
    # "refuse" (a suspect feature stops the trial in one line) or "warn" (the same line is
    # logged and kept as the trial attr leak_warning, and training goes on).
    leak_guard: str = "refuse"
    cache_dir: str = ""               # "" = the run's shared cache directory (ctx.cache_dir)
    val_fraction: float = 0.2
    # Last share of the usable dates held out as the test period: no trial, early stopping,
    # epoch selection, pruner or sampler reads it; only ``hpo.evaluate`` opens it, once.
    test_fraction: float = 0.2
    # Explicit split dates (ISO, e.g. "2019-01-02") instead of the fractions: the first date on
    # or after each starts its period; "" = use val_fraction / test_fraction.
    val_start: str = ""
    test_start: str = ""
    # Validation: "holdout" (one block before the test period) or "walk_forward" (cv_folds
    # consecutive blocks, each scored by a model trained only on the dates before it; see
    # trainers/atft_gat/folds.py). cv_window: "expanding" (every earlier date) or "rolling"
    # (as many dates as fold 1's training).
    cv: CV = CV.HOLDOUT
    cv_folds: int = 4
    cv_window: CVWindow = CVWindow.EXPANDING
    # Dates between train|val and val|test (>= horizon + lag); None = max(horizons) +
    # execution_lag, the least that keeps every training label out of validation.
    purge: int | None = None
    # 0: a label of date t is the return from the close of t (the synthetic market's
    # convention); 1: features computed at the close of t trade from t + 1. None = 0 for the
    # synthetic market, 1 for a file panel (trading at the close the features were computed
    # from is optimistic for real data).
    execution_lag: int | None = None
    # Annualisation factor of every Sharpe ratio; 0 = from the panel's calendar (dates per
    # year over its span; 252 for the synthetic market). The resolved value is recorded.
    periods_per_year: float = 0.0
    metric_horizon: int = 1           # the horizon whose predictions are scored
    # One-way cost per unit of traded notional, in basis points, charged by sharpe_net
    # (trainers.metrics.turnover): 5 is a liquid large cap's spread and impact at modest size.
    # A list (e.g. [5, 0, 10, 20]): the first is charged; the test report shows the net
    # Sharpe at each and the break-even cost.
    cost_bps: float | tuple[float, ...] = 5.0
    # -- portfolio ([portfolio] in a study file; trainers.metrics.book) ---------------------
    # How each date's scores become the long-short book every trading figure (Sharpe, net
    # Sharpe, turnover) is computed on, for the trials and the baselines alike: legs of the
    # top/bottom `enter` fraction; a held stock stays while in the top/bottom `exit` fraction
    # (None = enter: no hold band); scores smoothed over dates with this half-life (0 = off).
    enter: float = 0.2
    exit: float | None = None
    score_halflife: float = 0.0
    # -- graph --------------------------------------------------------------------------
    graph_window: int = 60
    graph_k: int = 10
    graph_threshold: float = 0.3
    graph_source: str = "f_ret_1d_past"  # feature of realised past returns (known at t)
    # In-edges per stock the cached graph is built with, once; every graph_k <= it takes a
    # prefix of that graph without a rebuild. 0 = max(graph_k, GRAPH_K_MAX_DEFAULT). A study
    # sets it to its search space's upper bound of graph_k (hpo.objective).
    graph_k_max: int = 0
    # -- loss -----------------------------------------------------------------------------
    base_loss: str = "huber"          # regression part on per-date z-scored targets
    huber_delta: float = 1.0
    rank_weight: float = 0.5          # lambda of the Spearman rank-preserving term
    ic_weight: float = 0.0            # weight of the (1 - Pearson IC) term
    quantile_weight: float = 0.1      # weight of the pinball loss of the quantile heads
    # Weight of the turnover penalty (loss.turnover_penalty): 1 - soft Spearman between the
    # scores of consecutive dates; > 0 trains on pairs of consecutive dates. 0 = off.
    turnover_weight: float = 0.0
    rank_strength: float = 1.0        # soft-rank regularisation (smaller = closer to hard)
    # -- optimisation (the runtime's settings are RuntimeConfig's) --------------------------
    epochs: int = 5
    phases: tuple[str, ...] = ()      # e.g. ["baseline:1", "graph:3", "finetune:1"]
    finetune_lr_scale: float = 0.1    # lr multiplier during "finetune" phases
    batch_size: int = 256             # stock-day rows per step; whole dates are packed
    patience: int = 0                 # stop after this many epochs without a better RankIC
    select_fraction: float = 0.0      # last share of training dates that picks the best epoch
    max_steps_per_epoch: int = 0      # 0 = every training date once per epoch
    # this workload's defaults of runtime settings
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    min_batch: int = 16

    def __post_init__(self) -> None:
        # The data-dependent defaults, resolved before the checks so that they are checked too
        # and every saved config holds the values the run used.
        for name, kind in (("cv", CV), ("cv_window", CVWindow)):  # a string from code
            value = getattr(self, name)
            if not isinstance(value, kind) and value in tuple(kind):
                object.__setattr__(self, name, kind(value))
        if self.execution_lag is None:
            object.__setattr__(self, "execution_lag", 0 if self.source == "synthetic" else 1)
        if self.exit is None:
            object.__setattr__(self, "exit", self.enter)
        if self.purge is None and isinstance(self.execution_lag, int) and self.horizons:
            object.__setattr__(self, "purge", max(self.horizons) + self.execution_lag)
        super().__post_init__()

    def _check(self, checks: Checks) -> None:
        need, add = checks.need, checks.add
        need(self.nan_policy in NAN_POLICIES, "nan_policy", f"allowed: {', '.join(NAN_POLICIES)}")
        for name in ("date_column", "code_column"):
            need(isinstance(getattr(self, name), str) and bool(getattr(self, name)), name,
                 "must be the name of a column of the panel")
        need(self.date_column != self.code_column, "code_column",
             "must differ from date_column")
        need(self.base_loss in BASE_LOSSES, "base_loss", f"allowed: {', '.join(BASE_LOSSES)}")
        need(isinstance(self.cv, CV), "cv", f"allowed: {', '.join(CV_KINDS)}")
        need(isinstance(self.cv_window, CVWindow), "cv_window",
             f"allowed: {', '.join(CV_WINDOWS)}")
        need(2 <= self.cv_folds <= 100, "cv_folds", "must be in [2, 100]")
        need(self.market_difficulty in MARKET_DIFFICULTIES, "market_difficulty",
             f"allowed: {', '.join(MARKET_DIFFICULTIES)}")
        if self.n_stocks < 2 or self.n_dates < 2:
            add(f"n_stocks={self.n_stocks}, n_dates={self.n_dates}: need >= 2 each")
        need(self.leak_guard in LEAK_GUARD_MODES, "leak_guard",
             f"allowed: {', '.join(LEAK_GUARD_MODES)}")
        need(0.0 < self.leak_threshold <= 1.0, "leak_threshold",
             "must be in (0, 1]; 1 switches the guard off")
        need(self.leak_sharpe > 0, "leak_sharpe",
             "must be > 0 (an annualised Sharpe ratio); a large value switches the size test off")
        # The split's rules, in their one home (folds.split_problems; date_split uses it too).
        horizon = max(self.horizons) if self.horizons and all(
            isinstance(h, int) for h in self.horizons) else None
        purge = self.purge if isinstance(self.purge, int) else None
        for name, _value, rule in split_problems(
                val_fraction=self.val_fraction, test_fraction=self.test_fraction,
                horizon=horizon, lag=self.execution_lag, purge=purge):
            need(False, "horizons" if name == "horizon" else name, rule)
        for name in ("val_start", "test_start"):
            need(_iso_date(getattr(self, name)), name,
                 'an ISO date such as "2019-01-02", or "" to use the fraction')
        if (_iso_date(self.val_start) and _iso_date(self.test_start) and self.val_start
                and self.test_start):
            need(self.val_start < self.test_start, "val_start",
                 f"must come before test_start={self.test_start!r}")
        need(self.periods_per_year == 0 or 1 <= self.periods_per_year <= 366 * 24,
             "periods_per_year", "0 (from the calendar) or the periods in a year, e.g. 252")
        need(bool(self.costs) and all(0.0 <= c < 1e4 for c in self.costs), "cost_bps",
             "basis points per unit traded, in [0, 10000) (0 charges nothing), or a non-empty "
             "list of them whose first is charged")
        need(isinstance(self.enter, int | float) and 0.0 < self.enter <= MAX_LEG, "enter",
             f"the fraction of stocks in each leg, in (0, {MAX_LEG}]")
        need(isinstance(self.exit, int | float) and isinstance(self.enter, int | float)
             and self.enter <= self.exit <= MAX_LEG, "exit",
             f"the hold band: in [enter, {MAX_LEG}] (enter = {self.enter}); a held stock "
             "stays while in the top/bottom exit fraction")
        need(isinstance(self.score_halflife, int | float) and self.score_halflife >= 0,
             "score_halflife", "dates, >= 0 (0 = no smoothing)")
        need(self.metric_horizon in self.horizons, "metric_horizon",
             f"must be one of horizons {list(self.horizons)}")
        if self.graph_window < 2 or self.graph_k < 1:
            add(f"graph_window={self.graph_window}, graph_k={self.graph_k}: "
                "need graph_window >= 2 and graph_k >= 1")
        need(self.graph_k_max == 0 or self.graph_k_max >= max(1, self.graph_k), "graph_k_max",
             f"must be 0 (= max(graph_k, {GRAPH_K_MAX_DEFAULT})) or >= graph_k={self.graph_k}: "
             "the cached graph keeps graph_k_max in-edges per stock")
        need(-1.0 <= self.graph_threshold <= 1.0, "graph_threshold", "a correlation, in [-1, 1]")
        for name in ("huber_delta", "rank_strength"):
            need(getattr(self, name) > 0, name, "must be > 0")
        for name in ("rank_weight", "ic_weight", "quantile_weight", "turnover_weight"):
            need(getattr(self, name) >= 0, name, "must be >= 0")
        need(self.epochs >= 1, "epochs", "must be >= 1")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        if self.patience < 0 or self.max_steps_per_epoch < 0:
            add("patience and max_steps_per_epoch must be >= 0")
        need(0.0 <= self.select_fraction < 0.5, "select_fraction",
             "must be in [0, 0.5); 0 scores the last epoch")
        need(0.0 < self.finetune_lr_scale <= 1.0, "finetune_lr_scale", "must be in (0, 1]")
        for problem in self._phase_problems():
            add(problem)
        need(not self.compile, "compile", "not supported by this workload (its batches change "
                                          "shape every step)")

    @property
    def costs(self) -> tuple[float, ...]:
        """Every cost of ``cost_bps`` (one for a number)."""
        return tuple(self.cost_bps) if isinstance(self.cost_bps, tuple) else (self.cost_bps,)

    @property
    def cost(self) -> float:
        """The cost ``sharpe_net`` charges: ``cost_bps``, or its first entry."""
        return self.costs[0] if self.costs else 0.0

    @property
    def book(self) -> Book:
        """The long-short book of every trading figure (``trainers.metrics.book``)."""
        return Book(enter=self.enter, exit=self.exit, halflife=self.score_halflife)

    @property
    def scoring(self) -> Scoring:
        """How this study scores a period (``trainers.metrics.scoring``): the scored horizon,
        the cost ``sharpe_net`` charges, the book and the annualisation the trainer resolved
        (252 for a model saved before it was recorded)."""
        return Scoring(horizon=self.metric_horizon, cost_bps=self.cost, book=self.book,
                       periods_per_year=self.periods_per_year or TRADING_DAYS_PER_YEAR)

    @property
    def reported_steps(self) -> int:
        """How many times a trial reports to the study (its pruners' steps): once per epoch,
        or once per fold under walk-forward validation."""
        return self.cv_folds if self.cv is CV.WALK_FORWARD else self.epochs

    def _phase_problems(self) -> list[str]:
        if not self.phases:
            return []
        try:
            plan = self.phase_plan()
        except ValueError as exc:
            return [str(exc)]
        total = len(plan)
        if total != self.epochs:
            return [f"epochs={self.epochs} but phases {list(self.phases)} add up to {total} "
                    f"epochs; set epochs = {total}"]
        if not self.use_graph and any(kind != "baseline" for kind in plan):
            return ["phases with the graph need use_graph = true"]
        return []

    def phase_plan(self) -> list[str]:
        """The phase kind of every epoch, in order (``graph`` everywhere without phases)."""
        if not self.phases:
            return ["graph" if self.use_graph else "baseline"] * self.epochs
        plan: list[str] = []
        for item in self.phases:
            kind, _, count = item.partition(":")
            if kind not in PHASE_KINDS or not count.isdigit() or int(count) < 1:
                raise ValueError(f"phase {item!r} must look like 'KIND:EPOCHS' with KIND in "
                                 f"{', '.join(PHASE_KINDS)} and EPOCHS >= 1")
            plan += [kind] * int(count)
        return plan

    @property
    def effective_graph_k_max(self) -> int:
        """In-edges per stock of the graph built and cached (see graph_k_max)."""
        return self.graph_k_max or max(self.graph_k, GRAPH_K_MAX_DEFAULT)

    def model_config(self) -> ModelConfig:
        """Only the model's settings, as :class:`ATFTGATFAN` takes them."""
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        return ModelConfig(**{n: getattr(self, n) for n in names})
