"""What a pruner kind declares: its [pruner] keys, its objectives, its step and its builder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class Key:
    """One [pruner] key: its default (whose type is the key's type) and the values allowed,
    ``low`` to ``high`` inclusive (``high`` None: no upper bound)."""

    name: str
    default: int | float
    low: int | float
    high: int | float | None = None

    @property
    def type(self) -> type:
        return type(self.default)

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this key, or None when it is allowed."""
        if self.high is None:
            return None if value >= self.low else f"must be >= {self.low}, got {value!r}"
        if self.low <= value <= self.high:
            return None
        return f"must be in [{self.low}, {self.high}], got {value!r}"


@dataclass(frozen=True)
class PrunerKind:
    """One value of [pruner] ``name``.

    ``build`` takes the parsed [pruner] table (a ``PrunerSpec``) and returns the Optuna
    pruner the study runs. ``single_objective``: built on ``trial.report``, which Optuna
    refuses in a multi-objective study. ``first_step``: the Optuna step our epoch 1 is
    reported at (epoch ``e`` at ``e - 1 + first_step``). Trainers count epochs from 1, and
    Optuna's pruners disagree on what a step is: the percentile family's warm-up counts
    steps from 0 (``n_warmup_steps = 2`` first judges step 2, the third epoch if steps start
    at 0), successive halving counts steps done (``min_resource = 2`` first judges step 2,
    after two epochs if steps start at 1). Each kind reports the step that makes its keys
    mean epochs as the README says.
    """

    name: str
    keys: tuple[Key, ...]
    build: Callable[[Any], optuna.pruners.BasePruner]
    single_objective: bool
    first_step: int = 1
    # Judges each step's own figure (the trainer's ``instance`` values, one per fold of
    # walk-forward validation) instead of the running one.
    per_instance: bool = False

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys)

    def step(self, epoch: int) -> int:
        """The Optuna step a 1-based ``epoch`` is reported at."""
        return int(epoch) - 1 + self.first_step
