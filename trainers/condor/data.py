"""Synthetic underlying paths with implied volatility, IV rank and iron-condor targets.

Generator (per path, daily steps, ``dt = 1/252``), seeded by ``data_seed`` only so every trial
of a study sees the same market:

* **Volatility regimes**: a 3-state Markov chain (calm / normal / stressed at 12%, 20%, 40%
  annualised) that stays put with probability 0.99 a day (regimes last ~100 days on
  average) and otherwise jumps to one of the other two states.
* **Stochastic volatility inside a regime** (Heston-like): ``sigma_t = level[regime] *
  exp(x_t)`` with ``x_t`` a mean-reverting AR(1) (phi 0.97, vol-of-vol 0.08), and a
  leverage effect: the return shock is correlated -0.5 with the vol shock.
* **Returns**: ``r_t = (mu - sigma_t^2 / 2) dt + sigma_t sqrt(dt) z_t`` (log returns, GBM
  with the stochastic sigma).
* **Implied volatility**: the market's forward-looking estimate of the volatility over an
  option's life: ``IV_t = sqrt(mean(sigma^2 over t+1..t+H)) * (1 + premium) + noise`` with a
  10% variance-risk premium and N(0, 0.01) noise, floored at 1%. It uses the latent
  ``sigma`` (what a well-informed market could know), not the realised path.
* **IV rank**: ``IVR_t = (IV_t - min) / (max - min)`` over the trailing ``ivr_window``
  (252) days including t.

Targets for an option opened at day t expiring at t+H (``H = horizon``), from the forward
cumulative log return ``c_k = log S_{t+k} - log S_t``, k = 0..H (``c_0 = 0``):

* **strike offsets** in % of spot, from the forward realised range: short put / short call
  at the 10% / 90% quantiles of ``c`` (``100 (1 - e^q10)``, ``100 (e^q90 - 1)``, floored at
  0 so a short strike never sits inside spot), long put / long call (the wings) at its
  minimum / maximum (``100 (1 - e^min c)``, ``100 (e^max c - 1)``);
* **probability of profit**: 1 when the price stayed strictly inside the short strikes of
  a standard condor on every day until expiry, else 0. The standard condor sells its short
  strikes one long-run expected move away, ``m = 20% * sqrt(H / 252)`` (5.6% of spot at
  H = 20): a fixed width, so whether it survives depends on the volatility to come, which
  IV, realised vol and the regime reveal. (Strikes at one *IV-implied* move would make the
  outcome almost independent of the inputs, since IV already prices the coming vol.)
* **regime**: the IV-rank bin at expiry (``IVR_{t+H}`` in [0, 1/3), [1/3, 2/3), [2/3, 1]):
  low / mid / high-IV regime, a forecast the model must make from today's window.

Inputs for day t are the ``seq_len`` days up to and including t, each with 8 features (daily
return, absolute return, 5- and 20-day realised vol, IV, IVR, IV minus 20-day realised vol,
20-day momentum), standardised with the training split's statistics.

Split: by time within each path. Training anchors come first; validation anchors start
``2 * horizon + seq_len`` days later (the purge gap), so no validation input window overlaps a
training label (a label looks up to 2H days ahead: IVR at t+H needs IV at t+H, which looks H
further).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TRADING_DAYS = 252
REGIME_VOLS = (0.12, 0.20, 0.40)  # annualised vol of the calm / normal / stressed regimes
REGIME_STAY = 0.99  # daily probability of staying in the regime (~100-day regimes)
VOL_AR, VOL_OF_VOL = 0.97, 0.08  # AR(1) of log-vol around the regime level
LEVERAGE = -0.5  # correlation of return and vol shocks (down moves raise vol)
DRIFT = 0.05  # annual drift of the underlying
VARIANCE_PREMIUM = 0.10  # IV over expected vol: option sellers are paid for the risk
IV_NOISE = 0.01  # absolute noise on IV (vol points / 100)
IV_FLOOR = 0.01
SHORT_QUANTILES = (0.10, 0.90)  # forward-range quantiles of the short put / short call
STANDARD_VOL = 0.20  # long-run vol that sets the standard condor's short-strike width
N_REGIMES = 3
N_FEATURES = 8
STRIKE_NAMES = ("short_put", "short_call", "long_put", "long_call")


@dataclass(frozen=True)
class CondorData:
    """Standardised features of every path and day plus targets per (path, anchor day)."""

    features: torch.Tensor  # (P, D, F) float32, standardised with training statistics
    strikes: torch.Tensor  # (P, D, 4) float32, % of spot (NaN where undefined)
    pop: torch.Tensor  # (P, D) float32 in {0, 1}
    regime: torch.Tensor  # (P, D) int64 in {0, 1, 2}
    train_index: torch.Tensor  # (N_train, 2) int64 (path, anchor day)
    val_index: torch.Tensor  # (N_val, 2) int64
    seq_len: int


def _simulate_path(rng: np.random.Generator, n_days: int) -> tuple[np.ndarray, np.ndarray]:
    """Daily log returns and latent annualised vol: two (n_days,) arrays."""
    dt = 1.0 / TRADING_DAYS
    regime = np.empty(n_days, dtype=np.int64)
    regime[0] = rng.integers(N_REGIMES)
    stay = rng.random(n_days) < REGIME_STAY
    jump = rng.integers(1, N_REGIMES, size=n_days)  # shift to one of the *other* regimes
    for t in range(1, n_days):
        regime[t] = regime[t - 1] if stay[t] else (regime[t - 1] + jump[t]) % N_REGIMES
    vol_shock = rng.standard_normal(n_days)
    ret_shock = LEVERAGE * vol_shock + np.sqrt(1 - LEVERAGE**2) * rng.standard_normal(n_days)
    log_vol = np.zeros(n_days)
    for t in range(1, n_days):
        log_vol[t] = VOL_AR * log_vol[t - 1] + VOL_OF_VOL * vol_shock[t]
    sigma = np.asarray(REGIME_VOLS)[regime] * np.exp(log_vol)
    returns = (DRIFT - 0.5 * sigma**2) * dt + sigma * np.sqrt(dt) * ret_shock
    return returns, sigma


def _trailing(x: np.ndarray, window: int, fn) -> np.ndarray:
    """``fn`` over the trailing ``window`` values ending at each day (NaN before)."""
    out = np.full(x.shape, np.nan)
    if len(x) >= window:
        out[window - 1:] = fn(np.lib.stride_tricks.sliding_window_view(x, window), axis=-1)
    return out


def _path_arrays(
    rng: np.random.Generator, *, n_days: int, horizon: int, ivr_window: int
) -> dict[str, np.ndarray]:
    """Features and targets of one path, indexed by day (NaN where the lookback or the
    look-ahead runs off the path)."""
    returns, sigma = _simulate_path(rng, n_days)
    log_price = np.concatenate([[0.0], np.cumsum(returns)])[1:]  # log S_t / S_0, (D,)
    nan = np.full(n_days, np.nan)

    # IV_t: expected vol over days t+1..t+H, plus premium and noise.
    fwd_var = nan.copy()
    fwd_var[: n_days - horizon] = np.lib.stride_tricks.sliding_window_view(
        sigma[1:] ** 2, horizon
    ).mean(axis=-1)[: n_days - horizon]
    iv = np.sqrt(fwd_var) * (1 + VARIANCE_PREMIUM) + IV_NOISE * rng.standard_normal(n_days)
    iv = np.where(np.isnan(iv), np.nan, np.maximum(iv, IV_FLOOR))
    lo, hi = _trailing(iv, ivr_window, np.min), _trailing(iv, ivr_window, np.max)
    ivr = np.clip((iv - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)
    ivr[np.isnan(lo)] = np.nan

    rv5 = np.sqrt(_trailing(returns**2, 5, np.mean) * TRADING_DAYS)
    rv20 = np.sqrt(_trailing(returns**2, 20, np.mean) * TRADING_DAYS)
    momentum = nan.copy()
    momentum[20:] = log_price[20:] - log_price[:-20]
    features = np.stack(
        [100 * returns, 100 * np.abs(returns), rv5, rv20, iv, ivr, iv - rv20, momentum], axis=-1
    )  # (D, F)

    # Forward path c_k = log S_{t+k} - log S_t, k = 0..H, for every t with t + H < D.
    strikes = np.full((n_days, 4), np.nan)
    pop = nan.copy()
    n_fwd = n_days - horizon
    window = np.lib.stride_tricks.sliding_window_view(log_price, horizon + 1)[:n_fwd]
    fwd = window - window[:, :1]  # (n_fwd, H + 1)
    q_lo, q_hi = np.quantile(fwd, SHORT_QUANTILES, axis=1)
    strikes[:n_fwd] = np.stack([
        np.maximum(0.0, 100 * (1 - np.exp(q_lo))),
        np.maximum(0.0, 100 * (np.exp(q_hi) - 1)),
        100 * (1 - np.exp(fwd.min(axis=1))),
        100 * (np.exp(fwd.max(axis=1)) - 1),
    ], axis=-1)
    move = STANDARD_VOL * np.sqrt(horizon / TRADING_DAYS)  # fraction of spot
    inside = np.abs(np.exp(fwd[:, 1:]) - 1) < move
    pop[:n_fwd] = inside.all(axis=1).astype(np.float64)
    pop[np.isnan(iv)] = np.nan
    # Regime at expiry: IVR bin of day t+H.
    regime = np.full(n_days, -1, dtype=np.int64)
    ivr_exp = ivr[horizon:]
    ok = ~np.isnan(ivr_exp)
    regime[:n_fwd][ok] = np.minimum((ivr_exp[ok] * N_REGIMES).astype(np.int64), N_REGIMES - 1)
    return {"features": features, "strikes": strikes, "pop": pop, "regime": regime}


def build_data(
    *, n_paths: int, n_days: int, seq_len: int, horizon: int, ivr_window: int,
    val_fraction: float, data_seed: int,
) -> CondorData:
    rng = np.random.default_rng(data_seed)
    paths = [
        _path_arrays(rng, n_days=n_days, horizon=horizon, ivr_window=ivr_window)
        for _ in range(n_paths)
    ]
    features = np.stack([p["features"] for p in paths])  # (P, D, F)
    # An anchor is usable when its whole input window has features and all targets exist.
    window_ok = np.stack([
        _trailing(np.isfinite(p["features"]).all(axis=-1).astype(np.float64), seq_len, np.min)
        == 1.0
        for p in paths
    ])  # (P, D)
    target_ok = np.stack([(p["regime"] >= 0) & np.isfinite(p["pop"]) for p in paths])
    usable = window_ok & target_ok
    first = int(np.argmax(usable.any(axis=0))) if usable.any() else n_days
    last = int(np.nonzero(usable.any(axis=0))[0].max()) if usable.any() else -1
    span = last - first + 1
    purge = 2 * horizon + seq_len
    n_val_days = int(round(span * val_fraction))
    train_end = last - n_val_days - purge  # last training anchor day
    if span <= 0 or n_val_days < 1 or train_end < first:
        raise ValueError("too few usable days for a train/val split")  # caught by the config
    days = np.arange(n_days)
    train_mask = usable & (days <= train_end)[None, :]
    val_mask = usable & (days > train_end + purge)[None, :]

    # Standardise with statistics of the days the training windows can see.
    seen = np.zeros_like(usable)
    for lag in range(seq_len):
        seen[:, : n_days - lag] |= train_mask[:, lag:]
    mean = np.nanmean(features[seen], axis=0)
    std = np.nanstd(features[seen], axis=0)
    features = np.nan_to_num((features - mean) / np.where(std > 0, std, 1.0))

    return CondorData(
        features=torch.tensor(features, dtype=torch.float32),
        strikes=torch.tensor(np.stack([p["strikes"] for p in paths]), dtype=torch.float32),
        pop=torch.tensor(np.nan_to_num(np.stack([p["pop"] for p in paths])),
                         dtype=torch.float32),
        regime=torch.tensor(np.maximum(np.stack([p["regime"] for p in paths]), 0)),
        train_index=torch.tensor(np.argwhere(train_mask), dtype=torch.long),
        val_index=torch.tensor(np.argwhere(val_mask), dtype=torch.long),
        seq_len=seq_len,
    )


def gather_windows(data: CondorData, index: torch.Tensor) -> torch.Tensor:
    """Input windows of the anchors ``index`` (B, 2): (B, seq_len, F), oldest day first."""
    offsets = torch.arange(-data.seq_len + 1, 1, device=index.device)  # (T,)
    days = index[:, 1:2] + offsets  # (B, T)
    return data.features[index[:, 0:1], days]


def gather_targets(
    data: CondorData, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Strikes (B, 4), pop (B,), regime (B,) of the anchors ``index`` (B, 2)."""
    p, t = index[:, 0], index[:, 1]
    return data.strikes[p, t], data.pop[p, t], data.regime[p, t]
