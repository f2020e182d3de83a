"""The cache's one error type.

A :class:`CacheError` is a mistake the user can fix (a bad source, a damaged or outdated
cache), with a one-line message that says how. ``python -m cache.build``/``cache.info``
print it as ``error: ...`` and exit with code 2; the trainers and ``hpo`` treat it like their
own ``UserError``. It is a ``ValueError`` so code that uses the cache alone can catch it
without importing anything from here.
"""

from __future__ import annotations


class CacheError(ValueError):
    """A problem in the cache's input, with a message that says how to fix it."""
