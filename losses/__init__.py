"""Rank-preserving losses for cross-sectional models (one row = one date's stocks)."""

from losses.spearman import (
    DEFAULT_STRENGTH,
    hard_rank,
    rank_preserving_loss,
    soft_rank,
    spearman_loss,
)

__all__ = [
    "DEFAULT_STRENGTH",
    "hard_rank",
    "rank_preserving_loss",
    "soft_rank",
    "spearman_loss",
]
