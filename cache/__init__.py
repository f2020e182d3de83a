"""Arrow feature cache: the one way trainers get (date, code) panel features.

    from cache import CacheSpec, load_or_build
    spec = CacheSpec(target_columns=("ret_1d",), nan_policy="mask")  # a file names targets
    fc = load_or_build("panel.parquet", Path("output/cache"), spec)
    x = fc.features_torch()                  # (dates, stocks, features) float32, no copy
    window = fc.features[d - 19 : d + 1]     # a 20-date window of every stock: a slice

A source (parquet, CSV, polars DataFrame or the synthetic market) is checked against the
data contract once, streamed into an uncompressed Arrow IPC file of one record batch per date
(the training layout), and from then on only memory-mapped. See ``cache.core`` for keys,
invalidation and crash safety, ``cache.feature_cache`` for the file layout. A mistake in the
input is a :class:`CacheError` (a ``ValueError``) with a one-line message. The package stands
alone: it imports nothing of ``trainers`` or ``hpo`` (the synthetic market's generator is
named in ``GENERATORS`` and imported only when a ``synthetic:...`` source is built).
"""

from __future__ import annotations

from cache._panel import forward_looking
from cache._source import GENERATORS
from cache.core import build_cache, cache_key, check_source, load_or_build, source_columns
from cache.errors import CacheError
from cache.feature_cache import FORMAT_VERSION, FeatureCache, open_cache
from cache.spec import DEFAULT_TARGETS, NAN_POLICIES, CacheSpec

__all__ = [
    "DEFAULT_TARGETS",
    "FORMAT_VERSION",
    "GENERATORS",
    "NAN_POLICIES",
    "CacheError",
    "CacheSpec",
    "FeatureCache",
    "build_cache",
    "cache_key",
    "check_source",
    "forward_looking",
    "load_or_build",
    "open_cache",
    "source_columns",
]
