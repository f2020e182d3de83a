"""The leakage guard: a feature that carries its label's future is refused before training.

A real daily equity feature reaches a rank correlation of a few hundredths with the next day's
return (0.01-0.05: the seeds' best single features, the realistic synthetic market's planted
signal 0.017-0.049 across horizons); a forward return fed as a feature by mistake is far above
(``ret_5d`` against ``ret_1d``: 0.44). Before training, on an even sample of the *training*
dates (nothing later is read), two tests run on every feature:

1. **Threshold.** Its mean per-date RankIC with **every** training target (each of
   ``horizons``, either sign) must stay below ``leak_threshold`` (default 0.1: twice the best
   real daily feature, and below each leak measured on the realistic market: a renamed 20-day
   forward return scores 0.19 with the 1-day target and 1.0 with its own, the target plus
   4.5 sd of noise 0.19). The easy synthetic market plants features far stronger than real
   ones (0.12 with the 20-day return), so its default is 0.2.
2. **Timing.** A leak's information is about its label's own date; a genuine feature's is
   known a date earlier too. So a feature whose RankIC with the shortest-horizon target is
   clearly non-zero (at least ``TIMING_MIN_IC`` and ``TIMING_MIN_Z`` standard errors) but
   keeps less than ``TIMING_COLLAPSE`` of it when the feature is taken one date older is
   refused. This catches a weak leak under the threshold (``0.12 * zscore(target) + noise``:
   0.098 on its own date, ~0 a date older) while every genuine feature of the synthetic
   markets keeps its edge (``f_own`` 0.040 vs 0.040 on the easy market).

Each refusal names the column, the test and its scores in one line; ``allow_features`` vouches
for a column. Cost: ranks of (dates, stocks, features) blocks on at most ``GUARD_DATES``
dates, once per target plus once for the older feature, vectorised in torch; the scores are a
sidecar of the feature cache, so the trials of a study after the first read them back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainers.errors import UserError

# The timing test (module docstring): judged only where the RankIC is this large and this many
# standard errors from 0; refused when the older feature keeps under this share of it.
TIMING_MIN_IC = 0.05
TIMING_MIN_Z = 4.0
TIMING_COLLAPSE = 0.25
# The threshold test refuses a RankIC this many standard errors above the threshold.
THRESHOLD_SES = 2.0
# Training dates sampled (evenly) for the guard: the mean of 128 per-date RankICs of 4,000
# stocks has a standard error near 0.0014, far below any threshold worth setting.
GUARD_DATES = 128
# Dates ranked per pass: bounds the (dates, stocks, features) temporaries to ~100 MB at a
# 4,000 x 300 panel.
BLOCK_DATES = 8
SIDECAR = "feature_rank_ic"


def _ranks(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Ordinal ranks 0..n-1 of the valid entries along dim 1 (invalid ones sort last)."""
    keyed = torch.where(valid, values, torch.inf)
    order = keyed.argsort(dim=1)
    ranks = torch.empty_like(order)
    positions = torch.arange(values.shape[1]).view(1, -1, *([1] * (values.dim() - 2)))
    ranks.scatter_(1, order, positions.expand_as(order))
    return ranks.to(torch.float64)


def feature_rank_ic(x: torch.Tensor, y: torch.Tensor, present: torch.Tensor,
                    *, min_stocks: int = 5) -> np.ndarray:
    """Mean over dates of each feature's Spearman correlation with the target.

    x: (B, S, F) raw features (NaN = missing); y: (B, S) target; present: (B, S). A date and
    feature pair counts where at least ``min_stocks`` stocks have both values. Ties take
    ordinal ranks (enough for a guard). Returns (F,) float64, NaN for a feature with no
    countable date.
    """
    ic = per_date_rank_ic(x, y, present, min_stocks=min_stocks)  # (B, F)
    counted = torch.isfinite(ic)
    total = torch.where(counted, ic, 0.0).sum(dim=0)
    k = counted.sum(dim=0)
    return torch.where(k > 0, total / k.clamp(min=1), torch.nan).numpy()


def per_date_rank_ic(x: torch.Tensor, y: torch.Tensor, present: torch.Tensor,
                     *, min_stocks: int = 5) -> torch.Tensor:
    """(B, F) Spearman correlation of each feature with the target on each date (NaN where
    fewer than ``min_stocks`` stocks have both values, or one side is constant)."""
    ok_y = present & torch.isfinite(y)  # (B, S)
    valid = ok_y.unsqueeze(-1) & torch.isfinite(x)  # (B, S, F)
    rx = _ranks(x, valid)
    ry = _ranks(y, ok_y).unsqueeze(-1)  # (B, S, 1), ranks among the stocks with a target
    m = valid.to(torch.float64)
    n = m.sum(dim=1)  # (B, F)
    mean_x = (rx * m).sum(dim=1) / n.clamp(min=1)
    mean_y = (ry * m).sum(dim=1) / n.clamp(min=1)
    dx = (rx - mean_x.unsqueeze(1)) * m
    dy = (ry - mean_y.unsqueeze(1)) * m
    cov = (dx * dy).sum(dim=1)
    denom = (dx.square().sum(dim=1) * dy.square().sum(dim=1)).sqrt()
    return torch.where((n >= min_stocks) & (denom > 0), cov / denom.clamp(min=1e-300),
                       torch.nan)  # (B, F)


def guard_dates(train_dates: np.ndarray) -> np.ndarray:
    """An even sample of at most GUARD_DATES of the training dates (all when fewer)."""
    train_dates = np.asarray(train_dates, dtype=np.int64)
    if len(train_dates) <= GUARD_DATES:
        return train_dates
    pick = np.linspace(0, len(train_dates) - 1, GUARD_DATES).round().astype(np.int64)
    return train_dates[np.unique(pick)]


def rank_ic_stats(x: torch.Tensor, y: torch.Tensor, present: torch.Tensor,
                  dates: np.ndarray, *, x_dates: np.ndarray | None = None, horizon: int = 1
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(mean, standard error) over ``dates`` of each feature's per-date RankIC with the target
    of (D, S, F) / (D, S) / (D, S) panels, in blocks. ``x_dates`` (same length) takes the
    features from other dates (e.g. one date older) than the target and the presence. An
    h-date target overlaps its neighbours', so the standard error counts at most one date per
    ``horizon`` dates of the span the sample covers."""
    x_dates = dates if x_dates is None else x_dates
    series = []
    for i in range(0, len(dates), BLOCK_DATES):
        idx = torch.as_tensor(dates[i:i + BLOCK_DATES])
        xidx = torch.as_tensor(x_dates[i:i + BLOCK_DATES])
        present_both = present[idx] & present[xidx]
        series.append(per_date_rank_ic(x[xidx], y[idx], present_both))
    if not series:
        nan = np.full(x.shape[2], np.nan)
        return nan, nan
    ic = torch.cat(series).numpy()  # (dates, F)
    finite = np.isfinite(ic)
    count = finite.sum(0)
    span = (int(dates[-1]) - int(dates[0]) + 1) / horizon
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, ic, 0.0).sum(0) / count
        var = np.where(finite, (ic - mean) ** 2, 0.0).sum(0) / (count - 1)
        se = np.sqrt(var / np.minimum(count, max(span, 1.0)))
    mean[count == 0] = np.nan
    se[count < 2] = np.nan
    return mean, se


@dataclass(frozen=True)
class GuardScores:
    """What the guard measured: every feature against every target, and the timing test's
    figures on the shortest-horizon target."""

    features: tuple[str, ...]
    targets: tuple[str, ...]
    ic: np.ndarray  # (H, F) mean RankIC with each target
    ic_se: np.ndarray  # (H, F) its standard error (non-overlapping dates of each horizon)
    timing_target: str
    now: np.ndarray  # (F,) RankIC with the timing target (dates with an older feature date)
    now_se: np.ndarray  # (F,) its standard error over dates
    older: np.ndarray  # (F,) RankIC of the feature one date older with the same target

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"ic": self.ic, "ic_se": self.ic_se, "now": self.now, "now_se": self.now_se,
                "older": self.older}

    def strongest(self) -> dict[str, float]:
        """Each feature's RankIC of largest magnitude over the targets (with its sign)."""
        pick = np.nanargmax(np.where(np.isfinite(self.ic), np.abs(self.ic), -1.0), axis=0)
        values = self.ic[pick, np.arange(len(self.features))]
        return {f: round(float(v), 6) for f, v in zip(self.features, values, strict=True)}


def guard_scores(x: torch.Tensor, y: torch.Tensor, present: torch.Tensor, dates: np.ndarray,
                 *, features: tuple[str, ...], targets: tuple[str, ...],
                 horizons: tuple[int, ...], timing_index: int) -> GuardScores:
    """Both tests' figures on ``dates`` of a (D, S, F) / (D, S, H) / (D, S) panel whose
    targets span ``horizons`` dates; ``timing_index`` is the target of the timing test (the
    shortest horizon)."""
    stats = [rank_ic_stats(x, y[:, :, h], present, dates, horizon=horizons[h])
             for h in range(y.shape[2])]
    ic = np.stack([s[0] for s in stats])
    ic_se = np.stack([s[1] for s in stats])
    later = np.asarray(dates)[np.asarray(dates) >= 1]  # a date with a date before it
    y_t = y[:, :, timing_index]
    now, now_se = rank_ic_stats(x, y_t, present, later)
    older, _ = rank_ic_stats(x, y_t, present, later, x_dates=later - 1)
    return GuardScores(features=tuple(features), targets=tuple(targets), ic=ic, ic_se=ic_se,
                       timing_target=targets[timing_index], now=now, now_se=now_se,
                       older=older)


def timing_flags(scores: GuardScores) -> np.ndarray:
    """(F,) True where the timing test refuses the feature (module docstring)."""
    now, se, older = scores.now, scores.now_se, scores.older
    with np.errstate(invalid="ignore"):
        judged = (np.abs(now) >= TIMING_MIN_IC) & (np.abs(now) >= TIMING_MIN_Z * se)
        kept = np.sign(older) == np.sign(now)
        collapsed = ~kept | (np.abs(older) < TIMING_COLLAPSE * np.abs(now))
    return np.isfinite(now) & np.isfinite(older) & judged & collapsed


def check_features(scores: GuardScores, *, threshold: float, allow: tuple[str, ...]) -> None:
    """UserError naming every feature a test refuses and that is not allowed (and every name
    in ``allow`` that is not a feature: a typo there would switch nothing off)."""
    unknown = [name for name in allow if name not in scores.features]
    if unknown:
        raise UserError(f"allow_features lists {', '.join(unknown)}, which is not a feature "
                        f"of the panel; features: {', '.join(scores.features)}")
    found: list[tuple[float, str]] = []
    timing = timing_flags(scores)
    for j, name in enumerate(scores.features):
        if name in allow:
            continue
        # clearly above: by more than THRESHOLD_SES standard errors (a small panel's genuine
        # feature can stray above the threshold with a long, overlapping target)
        margin = np.abs(scores.ic[:, j]) - THRESHOLD_SES * np.nan_to_num(scores.ic_se[:, j])
        margin = np.where(np.isfinite(margin), margin, -1.0)
        h = int(np.argmax(margin))
        if margin[h] >= threshold:
            found.append((abs(scores.ic[h, j]),
                          f"{name} (threshold test: RankIC {scores.ic[h, j]:+.3f} "
                          f"± {scores.ic_se[h, j]:.3f} with {scores.targets[h]})"))
        elif timing[j]:
            found.append((abs(scores.now[j]),
                          f"{name} (timing test: RankIC {scores.now[j]:+.3f} with "
                          f"{scores.timing_target} on its own date, {scores.older[j]:+.3f} "
                          "when one date older)"))
    if found:
        listed = ", ".join(text for _, text in sorted(found, key=lambda item: -item[0]))
        raise UserError(
            f"feature(s) {listed} look like the future leaking in, on the training dates: a "
            f"real feature stays below leak_threshold {threshold} with every target and keeps "
            "its edge when a date older. Drop it, or list it in allow_features if it is truly "
            "known at the close of each date")
