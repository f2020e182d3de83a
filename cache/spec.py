"""What goes into a feature cache: which columns, and what to do with missing values."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cache.errors import CacheError

DATE_COLUMN = "date"
CODE_COLUMN = "code"
KEY_COLUMNS = (DATE_COLUMN, CODE_COLUMN)
DEFAULT_TARGETS = ("ret_1d", "ret_5d", "ret_10d", "ret_20d")
NAN_POLICIES = ("refuse", "mask", "fill")


@dataclass(frozen=True)
class CacheSpec:
    """The feature configuration of a cache; part of the cache key.

    Attributes:
        feature_columns: the feature columns in the order they take in the feature block;
            None takes every numeric column that is neither ``date``/``code`` nor a target
            nor forward-looking (``ret_<h>d``, or a word starting fwd/forward/future/label/
            target: see ``cache._panel.forward_looking``), in the panel's column order
            (skipped columns are logged). Naming a column here uses it whatever its name.
        target_columns: forward-return columns stored as the target block. A parquet or CSV
            source must name them (a user's panel has no standard label names, and guessing
            one would make a label a feature or a feature a label); None means the synthetic
            market's ``ret_1d, ret_5d, ret_10d, ret_20d`` for in-memory and synthetic sources.
        nan_policy: what a NaN, inf or null in a FEATURE does:
            ``"refuse"`` fails the build with a CacheError naming each column and its count;
            ``"mask"`` keeps the row and stores the value as NaN (the trainer imputes and
            masks it); ``"fill"`` replaces it with ``fill_value``. A non-finite target is
            stored as NaN under every policy (never filled, never refused) and counted in
            the manifest's ``nan.bad_values``.
        fill_value: the replacement under ``"fill"`` (ignored otherwise, and then not part
            of the key).
        date_column, code_column: the source's names of the key columns, read as ``date`` and
            ``code`` (a panel with ``trade_date`` and ``ticker`` needs no rewrite). Part of the
            key only when they differ from the defaults, so existing caches keep their keys.
    """

    feature_columns: tuple[str, ...] | None = None
    target_columns: tuple[str, ...] | None = None
    nan_policy: str = "refuse"
    fill_value: float = 0.0
    date_column: str = DATE_COLUMN
    code_column: str = CODE_COLUMN

    def __post_init__(self) -> None:
        # Lists are accepted for convenience; the frozen spec keeps tuples so it hashes.
        if self.feature_columns is not None and not isinstance(self.feature_columns, tuple):
            object.__setattr__(self, "feature_columns", tuple(self.feature_columns))
        if self.target_columns is not None and not isinstance(self.target_columns, tuple):
            object.__setattr__(self, "target_columns", tuple(self.target_columns))
        problems = self._problems()
        if problems:
            raise CacheError("invalid cache spec: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        """Every problem at once, so one run shows all of them."""
        problems: list[str] = []
        if self.nan_policy not in NAN_POLICIES:
            problems.append(
                f"nan_policy={self.nan_policy!r} is not one of {', '.join(NAN_POLICIES)}"
            )
        if not isinstance(self.fill_value, int | float) or not math.isfinite(self.fill_value):
            problems.append(f"fill_value={self.fill_value!r} must be a finite number")
        if self.target_columns is not None and not self.target_columns:
            problems.append("target_columns is empty; give at least one target column")
        features = self.feature_columns or ()
        if self.feature_columns is not None and not features:
            problems.append("feature_columns is empty; give at least one column or None")
        targets = self.target_columns or ()
        for kind, names in (("feature_columns", features), ("target_columns", targets)):
            bad = [n for n in names if not isinstance(n, str) or not n]
            if bad:
                problems.append(f"{kind} holds non-string or empty names: {bad!r}")
            dups = sorted({n for n in names if names.count(n) > 1})
            if dups:
                problems.append(f"{kind} lists {', '.join(dups)} more than once")
            keys = [n for n in names if n in KEY_COLUMNS]
            if keys:
                problems.append(f"{kind} may not include the key column(s) {', '.join(keys)}")
        both = sorted(set(features) & set(targets))
        if both:
            problems.append(f"{', '.join(both)} is both a feature and a target")
        for kind, name in (("date_column", self.date_column), ("code_column", self.code_column)):
            if not isinstance(name, str) or not name:
                problems.append(f"{kind}={name!r} must be a column name")
            elif name in (*features, *targets):
                problems.append(f"{kind}={name!r} is also a feature or target column")
        if self.date_column == self.code_column:
            problems.append(f"date_column and code_column are both {self.date_column!r}")
        return problems

    def renames(self) -> dict[str, str]:
        """Source name -> key name, for the key columns whose source name differs."""
        return {src: key for src, key in ((self.date_column, DATE_COLUMN),
                                          (self.code_column, CODE_COLUMN)) if src != key}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in the manifest and hashed into the key.

        ``fill_value`` is left out unless the policy uses it, so changing it under
        ``"refuse"`` or ``"mask"`` does not rebuild an identical cache.
        """
        out: dict[str, Any] = {
            "feature_columns": list(self.feature_columns) if self.feature_columns else None,
            "target_columns": list(self.target_columns or DEFAULT_TARGETS),
            "nan_policy": self.nan_policy,
        }
        if self.nan_policy == "fill":
            out["fill_value"] = float(self.fill_value)
        if self.renames():
            out["key_columns"] = [self.date_column, self.code_column]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CacheSpec:
        feats = data.get("feature_columns")
        return cls(
            feature_columns=tuple(feats) if feats is not None else None,
            target_columns=tuple(data.get("target_columns") or DEFAULT_TARGETS),
            nan_policy=data.get("nan_policy", "refuse"),
            fill_value=float(data.get("fill_value", 0.0)),
            **dict(zip(("date_column", "code_column"),
                       data.get("key_columns") or KEY_COLUMNS, strict=True)),
        )
