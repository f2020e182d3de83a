"""The leakage guard: a feature that carries its label's future is refused before training.

A real daily equity feature reaches a rank correlation of a few hundredths with the next day's
return (0.01-0.05: the seeds' best single features, the realistic synthetic market's planted
signal 0.017-0.049 across horizons); a forward return fed as a feature by mistake is far above
(``ret_5d`` against ``ret_1d``: 0.44). Before training, on an even sample of the *training*
dates (nothing later is read; every date of a small panel), three tests run on every feature:

1. **Threshold.** Its mean per-date RankIC with **every** training target (each of
   ``horizons``, either sign) must stay below ``leak_threshold`` (default 0.2) by two
   standard errors. Catches renamed forward returns and forward sums (a 10-day forward sum
   scores 1.0 with its own horizon and about 0.3 with the 1-day one), while a strong,
   persistent genuine feature's RankIC grows with the horizon (1-day 0.08 at persistence 0.9
   reaches 0.15 at 20 dates).
2. **Timing.** A genuine feature's edge fades from one date to the next no faster than the
   feature itself: if the feature's ranks keep a correlation ``p`` with the previous date's
   (its *persistence*), the feature a date older keeps about ``p`` times its edge on the
   label. A feature that contains the next close breaks this: an off-by-one 250-day momentum
   has persistence near 1 but no edge at all a date older. Refused when the edge lost beyond
   what the persistence explains is at least ``DECAY_SHARE`` of the edge and ``DECAY_Z``
   standard errors from 0 (paired per date), on a feature whose edge is ``TIMING_MIN_Z``
   standard errors from 0. Genuine fast-decaying signals pass: their persistence is as low
   as their edge's.
3. **Size.** A feature whose ranks and edge both vanish from one date to the next (persistence
   under ``FLEETING``, a date older under ``FLEETING`` of its edge) cannot be told from a
   leak by its timing: a date's leak of the next return and a genuine signal renewed every
   date have the same joint law with the labels. It is judged by what it would earn on this
   panel: the annualised Sharpe of its per-date RankIC series (mean / SD x sqrt(periods per
   year / horizon)), which counts the panel's stocks and its own cross-sectional noise, must
   stay below ``leak_sharpe`` (default 6: the best real daily features earn 1-4 on their own)
   by two standard errors. So the same leak is caught on 20 and on 500 stocks wherever it
   would earn more than any genuine feature does.

Each refusal names the column, the test and its scores in one line; ``allow_features`` vouches
for a column. Cost: ranks of (dates, stocks, features) blocks on about ``GUARD_CELLS``
stock-dates, per target, for the older feature and for the persistence, vectorised in torch;
the scores are a sidecar of the feature cache, so the trials of a study after the first read
them back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainers.errors import UserError

# The timing test (module docstring): judged only where the edge on its own date is this many
# standard errors from 0; refused when the edge lost beyond the feature's persistence is this
# many standard errors from 0 and at least this share of the edge.
TIMING_MIN_Z = 4.0
DECAY_Z = 3.0
DECAY_SHARE = 0.5
# The size test judges a feature whose persistence, and whose edge a date older (as a share of
# its edge), are both under this.
FLEETING = 0.2
# The threshold and size tests refuse a figure this many standard errors above the limit.
THRESHOLD_SES = 2.0
# Stock-dates sampled (dates evenly) for the guard: 128 dates of 1,000 stocks or more, 256 of
# 500, up to 6,400 (in practice every date) of a 20-stock panel: the mean of 128 per-date
# RankICs of 4,000 stocks has a standard error near 0.0014, while a 20-stock panel needs
# about 1,300 dates to see an off-by-one momentum leak of 0.06.
GUARD_CELLS = 128_000
MIN_GUARD_DATES = 128
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


def rank_corr(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor,
              *, min_stocks: int = 5) -> torch.Tensor:
    """(B, F) Spearman correlation along the stocks of two (B, S, F) tensors over the
    ``valid`` entries (NaN where fewer than ``min_stocks`` or one side is constant)."""
    ra, rb = _ranks(a, valid), _ranks(b, valid)
    m = valid.to(torch.float64)
    n = m.sum(dim=1)
    da = (ra - (ra * m).sum(dim=1, keepdim=True) / n.clamp(min=1).unsqueeze(1)) * m
    db = (rb - (rb * m).sum(dim=1, keepdim=True) / n.clamp(min=1).unsqueeze(1)) * m
    denom = (da.square().sum(dim=1) * db.square().sum(dim=1)).sqrt()
    return torch.where((n >= min_stocks) & (denom > 0),
                       (da * db).sum(dim=1) / denom.clamp(min=1e-300), torch.nan)


def guard_dates(train_dates: np.ndarray, n_stocks: int = 4000) -> np.ndarray:
    """An even sample of the training dates covering about GUARD_CELLS stock-dates (at least
    MIN_GUARD_DATES dates; all of them when fewer). Wider samples of a large panel add
    nothing to the guard's power and grow the ranking's allocator footprint."""
    train_dates = np.asarray(train_dates, dtype=np.int64)
    n = max(MIN_GUARD_DATES, GUARD_CELLS // max(int(n_stocks), 1))
    if len(train_dates) <= n:
        return train_dates
    pick = np.linspace(0, len(train_dates) - 1, n).round().astype(np.int64)
    return train_dates[np.unique(pick)]


def ic_series(x: torch.Tensor, y: torch.Tensor, present: torch.Tensor, dates: np.ndarray,
              *, x_dates: np.ndarray | None = None) -> np.ndarray:
    """(len(dates), F) per-date RankIC of each feature of the (D, S, F) panel with the (D, S)
    target, in blocks; ``x_dates`` (same length) takes the features from other dates (e.g.
    one date older) than the target and the presence."""
    x_dates = dates if x_dates is None else x_dates
    series = [np.zeros((0, x.shape[2]))]
    for i in range(0, len(dates), BLOCK_DATES):
        idx = torch.as_tensor(dates[i:i + BLOCK_DATES])
        xidx = torch.as_tensor(x_dates[i:i + BLOCK_DATES])
        series.append(per_date_rank_ic(x[xidx], y[idx], present[idx] & present[xidx]).numpy())
    return np.concatenate(series)


def persistence_series(x: torch.Tensor, present: torch.Tensor, dates: np.ndarray
                       ) -> np.ndarray:
    """(len(dates), F) Spearman correlation of each feature's values on each date with its
    values on the date before (stocks present, with a value, on both)."""
    series = [np.zeros((0, x.shape[2]))]
    for i in range(0, len(dates), BLOCK_DATES):
        idx = torch.as_tensor(dates[i:i + BLOCK_DATES])
        a, b = x[idx], x[idx - 1]
        both = (present[idx] & present[idx - 1]).unsqueeze(-1)
        series.append(rank_corr(a, b, both & torch.isfinite(a) & torch.isfinite(b)).numpy())
    return np.concatenate(series)


def mean_se(series: np.ndarray, *, dates: np.ndarray | None = None, horizon: int = 1
            ) -> tuple[np.ndarray, np.ndarray]:
    """Each column's mean over its finite rows and the standard error of that mean. An h-date
    target overlaps its neighbours', so the standard error counts at most one date per
    ``horizon`` dates of the span ``dates`` covers."""
    finite = np.isfinite(series)
    count = finite.sum(0)
    span = np.inf if dates is None or len(dates) == 0 else (
        (int(dates[-1]) - int(dates[0]) + 1) / horizon)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, series, 0.0).sum(0) / count
        var = np.where(finite, (series - mean) ** 2, 0.0).sum(0) / (count - 1)
        se = np.sqrt(var / np.minimum(count, max(span, 1.0)))
    mean[count == 0] = np.nan
    se[count < 2] = np.nan
    return mean, se


def rank_ic_stats(x: torch.Tensor, y: torch.Tensor, present: torch.Tensor,
                  dates: np.ndarray, *, x_dates: np.ndarray | None = None, horizon: int = 1
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(mean, standard error) over ``dates`` of each feature's per-date RankIC with the target
    (``ic_series``, ``mean_se``)."""
    return mean_se(ic_series(x, y, present, dates, x_dates=x_dates), dates=dates,
                   horizon=horizon)


@dataclass(frozen=True)
class GuardScores:
    """What the guard measured: every feature against every target, and the timing and size
    tests' figures on the shortest-horizon target."""

    features: tuple[str, ...]
    targets: tuple[str, ...]
    ic: np.ndarray  # (H, F) mean RankIC with each target
    ic_se: np.ndarray  # (H, F) its standard error (non-overlapping dates of each horizon)
    timing_target: str
    now: np.ndarray  # (F,) RankIC with the timing target (dates with an older feature date)
    now_se: np.ndarray  # (F,) its standard error over dates
    older: np.ndarray  # (F,) RankIC of the feature one date older with the same target
    persistence: np.ndarray  # (F,) rank correlation of the feature with itself a date older
    excess: np.ndarray  # (F,) edge lost a date older beyond the persistence (sign of now)
    excess_se: np.ndarray  # (F,) its standard error (paired per date)
    sharpe: np.ndarray  # (F,) annualised Sharpe of the per-date RankIC (sign of now)
    sharpe_se: np.ndarray  # (F,) its standard error

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in (
            "ic", "ic_se", "now", "now_se", "older", "persistence", "excess", "excess_se",
            "sharpe", "sharpe_se")}

    def strongest(self) -> dict[str, float]:
        """Each feature's RankIC of largest magnitude over the targets (with its sign)."""
        pick = np.nanargmax(np.where(np.isfinite(self.ic), np.abs(self.ic), -1.0), axis=0)
        values = self.ic[pick, np.arange(len(self.features))]
        return {f: round(float(v), 6) for f, v in zip(self.features, values, strict=True)}


def guard_scores(x: torch.Tensor, y: torch.Tensor, present: torch.Tensor, dates: np.ndarray,
                 *, features: tuple[str, ...], targets: tuple[str, ...],
                 horizons: tuple[int, ...], timing_index: int,
                 periods_per_year: float = 252.0) -> GuardScores:
    """The three tests' figures on ``dates`` of a (D, S, F) / (D, S, H) / (D, S) panel whose
    targets span ``horizons`` dates; ``timing_index`` is the target of the timing and size
    tests (the shortest horizon)."""
    stats = [rank_ic_stats(x, y[:, :, h], present, dates, horizon=horizons[h])
             for h in range(y.shape[2])]
    ic = np.stack([s[0] for s in stats])
    ic_se = np.stack([s[1] for s in stats])
    later = np.asarray(dates)[np.asarray(dates) >= 1]  # a date with a date before it
    y_t = y[:, :, timing_index]
    horizon = horizons[timing_index]
    now_t = ic_series(x, y_t, present, later)
    older_t = ic_series(x, y_t, present, later, x_dates=later - 1)
    now, now_se = mean_se(now_t, dates=later, horizon=horizon)
    older, _ = mean_se(older_t, dates=later, horizon=horizon)
    persistence, _ = mean_se(persistence_series(x, present, later))
    sign = np.where(now < 0, -1.0, 1.0)
    # the edge a date older falls short of what the feature's persistence predicts, per date
    excess, excess_se = mean_se(sign * (np.clip(persistence, 0.0, 1.0) * now_t - older_t),
                                dates=later, horizon=horizon)
    edge = sign * now_t
    with np.errstate(invalid="ignore", divide="ignore"):
        per_date = now * sign / np.nanstd(edge, axis=0, ddof=1)
        count = np.minimum(np.isfinite(edge).sum(0),
                           max((int(later[-1]) - int(later[0]) + 1) / horizon, 1.0)
                           if len(later) else 0)
        scale = np.sqrt(periods_per_year / horizon)
        sharpe = per_date * scale
        sharpe_se = np.sqrt((1.0 + per_date ** 2 / 2.0) / count) * scale
    return GuardScores(features=tuple(features), targets=tuple(targets), ic=ic, ic_se=ic_se,
                       timing_target=targets[timing_index], now=now, now_se=now_se,
                       older=older, persistence=persistence, excess=excess,
                       excess_se=excess_se, sharpe=sharpe, sharpe_se=sharpe_se)


def timing_flags(scores: GuardScores) -> np.ndarray:
    """(F,) True where the timing test refuses the feature (module docstring)."""
    now, se = scores.now, scores.now_se
    with np.errstate(invalid="ignore"):
        judged = np.abs(now) >= TIMING_MIN_Z * se
        decayed = ((scores.excess >= DECAY_Z * scores.excess_se)
                   & (scores.excess >= DECAY_SHARE * np.abs(now)))
    return np.isfinite(now) & np.isfinite(scores.excess) & judged & decayed


def size_flags(scores: GuardScores, ceiling: float) -> np.ndarray:
    """(F,) True where the size test refuses the feature (module docstring)."""
    with np.errstate(invalid="ignore"):
        fleeting = ((scores.persistence < FLEETING)
                    & (np.sign(scores.now) * scores.older < FLEETING * np.abs(scores.now)))
        earns = scores.sharpe - THRESHOLD_SES * scores.sharpe_se >= ceiling
    return np.isfinite(scores.sharpe) & np.isfinite(scores.sharpe_se) & fleeting & earns


def check_features(scores: GuardScores, *, threshold: float, allow: tuple[str, ...],
                   sharpe_ceiling: float = 6.0) -> None:
    """UserError naming every feature a test refuses and that is not allowed (and every name
    in ``allow`` that is not a feature: a typo there would switch nothing off)."""
    unknown = [name for name in allow if name not in scores.features]
    if unknown:
        raise UserError(f"allow_features lists {', '.join(unknown)}, which is not a feature "
                        f"of the panel; features: {', '.join(scores.features)}")
    found: list[tuple[float, str]] = []
    timing = timing_flags(scores)
    size = size_flags(scores, sharpe_ceiling)
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
                          f"when one date older, although its persistence is "
                          f"{scores.persistence[j]:.2f})"))
        elif size[j]:
            found.append((abs(scores.now[j]),
                          f"{name} (size test: RankIC {scores.now[j]:+.3f} with "
                          f"{scores.timing_target}, gone a date later, would earn an "
                          f"annualised Sharpe of {scores.sharpe[j]:.1f} ± "
                          f"{scores.sharpe_se[j]:.1f} on this panel, above leak_sharpe "
                          f"{sharpe_ceiling:g})"))
    if found:
        listed = ", ".join(text for _, text in sorted(found, key=lambda item: -item[0]))
        raise UserError(
            f"feature(s) {listed} look like the future leaking in, on the training dates: a "
            f"real feature stays below leak_threshold {threshold} with every target, keeps "
            "as much of its edge a date older as it keeps of its values, and earns less than "
            "leak_sharpe. Drop it, or list it in allow_features if it is truly known at the "
            "close of each date")
