"""TrainConfig: every setting of one ATFT-GAT-FAN training, flat.

Field names are the study's parameter names and the standalone CLI flags
(``python -m trainers.atft_gat --hidden-size 128``). Model and optimisation fields take their
defaults from :class:`ModelConfig` and :class:`RuntimeConfig`, which validate them again when
the trainer builds those, so the two can never drift apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from trainers.atft_gat.model import ModelConfig
from trainers.errors import UserError
from trainers.runtime import RuntimeConfig, runtime_config_of

PHASE_KINDS = ("baseline", "graph", "finetune")
BASE_LOSSES = ("huber", "mse")
NAN_POLICIES = ("mask", "fill", "refuse")
# The keys of trainers.atft_gat.synthetic.DIFFICULTIES (a test keeps them equal); not imported
# from there so that the config does not load the generator.
MARKET_DIFFICULTIES = ("realistic", "easy")
# graph_k_max when it is 0: production's upper bound of graph_k, so a standalone run reuses
# the graph a production study cached.
GRAPH_K_MAX_DEFAULT = 20


@dataclass(frozen=True)
class TrainConfig:
    # -- data ---------------------------------------------------------------------------
    source: str = "synthetic"         # "synthetic" or a parquet/CSV panel path (README schema)
    n_stocks: int = 200               # synthetic market size
    n_dates: int = 500
    market_seed: int = 0              # the synthetic market's own seed (not the trial's)
    market_difficulty: str = "realistic"  # synthetic: "realistic" (calibrated) or "easy" (demos)
    features: tuple[str, ...] = ()    # () = every numeric non-target column
    nan_policy: str = "mask"          # what a NaN/inf feature does (see cache.spec); targets
                                      # are never filled, a missing one is masked
    missing_indicator: bool = False   # also feed a 0/1 "was imputed" channel per feature
    # The leakage guard (trainers/atft_gat/leakage.py): a feature whose training-date RankIC
    # with the scored target reaches this is refused, unless listed in allow_features.
    leak_threshold: float = 0.3
    allow_features: tuple[str, ...] = ()
    cache_dir: str = ""               # "" = the run's shared cache directory (ctx.cache_dir)
    val_fraction: float = 0.2
    # Last share of the usable dates held out as the test period: no trial, early stopping,
    # epoch selection, pruner or sampler reads it; only ``hpo.evaluate`` opens it, once.
    test_fraction: float = 0.2
    purge: int = 20                   # dates between train|val and val|test (>= horizon + lag)
    # 0: a label of date t is the return from the close of t (the synthetic market's and the
    # README's convention); 1: features computed at the close of t trade from t + 1.
    execution_lag: int = 0
    metric_horizon: int = 1           # the horizon whose predictions are scored
    # -- graph --------------------------------------------------------------------------
    graph_window: int = 60
    graph_k: int = 10
    graph_threshold: float = 0.3
    graph_source: str = "f_ret_1d_past"  # feature of realised past returns (known at t)
    # In-edges per stock the cached graph is built with, once; every graph_k <= it takes a
    # prefix of that graph without a rebuild. 0 = max(graph_k, GRAPH_K_MAX_DEFAULT). A study
    # sets it to its search space's upper bound of graph_k (hpo.objective).
    graph_k_max: int = 0
    # -- model (see ModelConfig) ---------------------------------------------------------
    hidden_size: int = ModelConfig.hidden_size
    lookback: int = ModelConfig.lookback
    use_vsn: bool = ModelConfig.use_vsn
    vsn_per_feature_grn: bool = ModelConfig.vsn_per_feature_grn
    lstm_layers: int = ModelConfig.lstm_layers
    use_temporal_attention: bool = ModelConfig.use_temporal_attention
    attn_heads: int = ModelConfig.attn_heads
    use_graph: bool = ModelConfig.use_graph
    gat_layers: int = ModelConfig.gat_layers
    gat_heads: int = ModelConfig.gat_heads
    gat_dropout: float = ModelConfig.gat_dropout
    graph_features: bool = ModelConfig.graph_features
    edge_dropout: float = ModelConfig.edge_dropout
    use_fan: bool = ModelConfig.use_fan
    fan_top_k: int = ModelConfig.fan_top_k
    dropout: float = ModelConfig.dropout
    horizons: tuple[int, ...] = ModelConfig.horizons
    quantiles: tuple[float, ...] = ModelConfig.quantiles
    grad_checkpointing: bool = ModelConfig.grad_checkpointing
    # -- loss -----------------------------------------------------------------------------
    base_loss: str = "huber"          # regression part on per-date z-scored targets
    huber_delta: float = 1.0
    rank_weight: float = 0.5          # lambda of the Spearman rank-preserving term
    ic_weight: float = 0.0            # weight of the (1 - Pearson IC) term
    quantile_weight: float = 0.1      # weight of the pinball loss of the quantile heads
    rank_strength: float = 1.0        # soft-rank regularisation (smaller = closer to hard)
    # -- optimisation (see RuntimeConfig) ----------------------------------------------------
    epochs: int = 5
    phases: tuple[str, ...] = ()      # e.g. ["baseline:1", "graph:3", "finetune:1"]
    finetune_lr_scale: float = 0.1    # lr multiplier during "finetune" phases
    batch_size: int = 256             # stock-day rows per step; whole dates are packed
    patience: int = 0                 # stop after this many epochs without a better RankIC
    select_fraction: float = 0.0      # last share of training dates that picks the best epoch
    max_steps_per_epoch: int = 0      # 0 = every training date once per epoch
    optimizer: str = RuntimeConfig.optimizer
    lr: float = RuntimeConfig.lr
    weight_decay: float = 1e-4
    scheduler: str = RuntimeConfig.scheduler
    warmup_steps: int = 20
    min_lr_ratio: float = RuntimeConfig.min_lr_ratio
    grad_clip: float = RuntimeConfig.grad_clip
    accumulation: int = RuntimeConfig.accumulation
    precision: str = RuntimeConfig.precision
    device: str = RuntimeConfig.device
    min_batch: int = 16

    def __post_init__(self) -> None:
        for name in ("features", "phases", "horizons", "quantiles", "allow_features"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        problems: list[str] = []

        def bad(name: str, allowed: str) -> None:
            problems.append(f"{name}={getattr(self, name)!r}: {allowed}")

        if self.nan_policy not in NAN_POLICIES:
            bad("nan_policy", f"allowed: {', '.join(NAN_POLICIES)}")
        if self.base_loss not in BASE_LOSSES:
            bad("base_loss", f"allowed: {', '.join(BASE_LOSSES)}")
        if not 0.0 < self.val_fraction < 1.0:
            bad("val_fraction", "must be in (0, 1)")
        if self.market_difficulty not in MARKET_DIFFICULTIES:
            bad("market_difficulty", f"allowed: {', '.join(MARKET_DIFFICULTIES)}")
        if self.n_stocks < 2 or self.n_dates < 2:
            problems.append(f"n_stocks={self.n_stocks}, n_dates={self.n_dates}: need >= 2 each")
        if not 0.0 < self.leak_threshold <= 1.0:
            bad("leak_threshold", "must be in (0, 1]; 1 switches the guard off")
        if not 0.0 <= self.test_fraction < 1.0:
            bad("test_fraction", "must be in [0, 1); 0 holds out no test period")
        elif 0.0 < self.val_fraction < 1.0 and self.val_fraction + self.test_fraction >= 0.9:
            bad("test_fraction", "val_fraction + test_fraction must stay below 0.9")
        if self.execution_lag not in (0, 1):
            bad("execution_lag", "must be 0 (trade at the close of t) or 1 (from t + 1)")
        elif self.horizons and self.purge < max(self.horizons) + self.execution_lag:
            bad("purge", f"must be >= the longest label horizon plus the execution lag "
                         f"({max(self.horizons)} + {self.execution_lag} dates), or training "
                         "labels overlap validation dates")
        if self.metric_horizon not in self.horizons:
            bad("metric_horizon", f"must be one of horizons {list(self.horizons)}")
        if self.graph_window < 2 or self.graph_k < 1:
            problems.append(f"graph_window={self.graph_window}, graph_k={self.graph_k}: "
                            "need graph_window >= 2 and graph_k >= 1")
        if self.graph_k_max < 0 or 0 < self.graph_k_max < self.graph_k:
            bad("graph_k_max", f"must be 0 (= max(graph_k, {GRAPH_K_MAX_DEFAULT})) or >= "
                               f"graph_k={self.graph_k}: the cached graph keeps graph_k_max "
                               "in-edges per stock")
        if not -1.0 <= self.graph_threshold <= 1.0:
            bad("graph_threshold", "a correlation, in [-1, 1]")
        for name in ("huber_delta", "rank_strength"):
            if getattr(self, name) <= 0:
                bad(name, "must be > 0")
        for name in ("rank_weight", "ic_weight", "quantile_weight"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if self.epochs < 1:
            bad("epochs", "must be >= 1")
        if self.batch_size < 1:
            bad("batch_size", "must be >= 1")
        if self.patience < 0 or self.max_steps_per_epoch < 0:
            problems.append("patience and max_steps_per_epoch must be >= 0")
        if not 0.0 <= self.select_fraction < 0.5:
            bad("select_fraction", "must be in [0, 0.5); 0 scores the last epoch")
        if not 0.0 < self.finetune_lr_scale <= 1.0:
            bad("finetune_lr_scale", "must be in (0, 1]")
        problems.extend(self._phase_problems())
        for build in (self.model_config, self.runtime_config):
            try:
                build()
            except UserError as exc:
                problems.append(str(exc))
        if problems:
            raise UserError("; ".join(problems))

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
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        return ModelConfig(**{n: getattr(self, n) for n in names})

    def runtime_config(self) -> RuntimeConfig:
        return runtime_config_of(self)
