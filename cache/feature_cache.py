"""The on-disk cache format, and :class:`FeatureCache`, its memory-mapped reader.

A cache is one directory ``<cache_root>/<key>/``::

    data.arrow     Arrow IPC file, uncompressed, ONE record batch, columns
                     features    fixed_size_list<float32>[n_features]  (rows)
                     targets     fixed_size_list<float32>[n_targets]   (rows)
                     date_index  int32                                 (rows)
                     code_index  int32                                 (rows)
                     valid       uint8 0/1, only under nan_policy "mask" (rows)
                     target_valid fixed_size_list<uint8>[n_targets], only under "mask"
                     feature_valid uint8 0/1, only under "mask" (rows)
    index.npz      unique_dates (n_dates,) datetime64[D], codes (n_codes,) str,
                   date_offsets (n_dates + 1,) int64
    manifest.json  schema, counts, format version, source and spec hashes (see build)
    sidecars/      arrays derived from this cache (e.g. correlation graphs)

A fixed-size list's values are one contiguous child buffer, so the whole feature block is a
(rows, n_features) row-major float32 array inside the file: mapping the file gives it to
numpy and torch without a copy. One column per feature would need a transposing copy (the
"column by column" fill measured at ~0.6 GB/s), which is why the list layout was chosen.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from cache._io import atomic_write_bytes
from cache._source import new_hash
from cache.errors import CacheError

if TYPE_CHECKING:
    import torch

FORMAT_NAME = "hpo-feature-cache"
FORMAT_VERSION = 2  # 2: feature_valid column under "mask"
DATA_FILE = "data.arrow"
INDEX_FILE = "index.npz"
MANIFEST_FILE = "manifest.json"
SIDECAR_DIR = "sidecars"
META_KEY = b"hpo_cache_key"
META_VERSION = b"hpo_cache_format_version"
SIDECAR_META = "__sidecar__"
MANIFEST_KEYS = ("key", "rows", "feature_names", "target_names", "files", "source", "spec",
                 "nan", "schema", "created_at")
_SIDECAR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the cache at ``path``, checked for format and version."""
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CacheError(f"no feature cache at {path} (no {MANIFEST_FILE}); build one with "
                         "python -m cache.build")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise CacheError(f"cache manifest {manifest_path} is unreadable ({exc}); delete {path} "
                         "and rebuild") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CacheError(f"{manifest_path} is not a feature-cache manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CacheError(f"cache {path} was written by cache format version {version}, this "
                         f"code reads version {FORMAT_VERSION}; delete it and rebuild (python "
                         "-m cache.build, or load_or_build builds a new one beside it)")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise CacheError(f"cache manifest {manifest_path} lacks {', '.join(missing)}; delete "
                         f"{path} and rebuild")
    return manifest


def _mapped_view(mm: mmap.mmap, base: int, array: pa.Array, dtype: np.dtype,
                 shape: tuple[int, ...], name: str) -> np.ndarray:
    """A numpy view of ``array``'s data buffer inside the mapping ``mm`` (no copy).

    Arrow hands back buffers as addresses; their offset from the mapping's base address is
    where numpy must look. Anything outside the mapping (which would mean Arrow copied) or
    any null is refused: the file is then not one this code wrote.
    """
    values = array.flatten() if isinstance(array, pa.FixedSizeListArray) else array
    if array.null_count or values.null_count:
        raise CacheError(f"cache column {name!r} has nulls; the file is damaged, rebuild it")
    data = values.buffers()[1]
    count = int(np.prod(shape))
    start = data.address - base + values.offset * dtype.itemsize
    if len(values) != count or start < 0 or start + count * dtype.itemsize > len(mm):
        raise CacheError(f"cache column {name!r} does not lie where expected in the file; "
                         "the file is damaged, rebuild it")
    return np.frombuffer(mm, dtype=dtype, count=count, offset=start).reshape(shape)


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


class FeatureCache:
    """A built cache, memory-mapped: every array below is a view onto the file's pages.

    The mapping is private copy-on-write: pages are shared with the page cache (and so with
    every other process reading the cache) until written. The numpy arrays are read-only so
    that a stray in-place write fails loudly; the tensors from :meth:`features_torch` are
    writable, and a write to one changes only this process's copy of that page, never the
    file or another reader.

    Attributes:
        features: (rows, n_features) float32, C-contiguous.
        targets: (rows, n_targets) float32, C-contiguous.
        valid: (rows,) bool under nan_policy "mask" (False where any feature or target of
            the row was NaN/inf/null; those values read 0), else None.
        target_valid: (rows, n_targets) bool under "mask": False where that target was
            NaN/inf/null (so a 1-day model can keep rows that only lack ret_20d), else None.
        feature_valid: (rows,) bool under "mask": False where a feature of the row was
            NaN/inf/null (targets ignored), else None.
        date_index, code_index: (rows,) int32 into ``unique_dates`` / ``codes``; rows are
            sorted by (date, code).
        unique_dates: (n_dates,) datetime64[D], ascending.
        codes: sorted stock codes.
        date_offsets: (n_dates + 1,) int64; date i owns rows [date_offsets[i],
            date_offsets[i + 1]).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.key: str = self.manifest["key"]
        self.feature_names: tuple[str, ...] = tuple(self.manifest["feature_names"])
        self.target_names: tuple[str, ...] = tuple(self.manifest["target_names"])
        rows = int(self.manifest["rows"])
        data_path = self.path / DATA_FILE
        expected_bytes = self.manifest["files"][DATA_FILE]
        try:
            actual_bytes = data_path.stat().st_size
        except FileNotFoundError:
            raise CacheError(f"cache {self.path} has no {DATA_FILE}; rebuild it") from None
        if actual_bytes != expected_bytes:
            raise CacheError(f"cache file {data_path} has {actual_bytes} bytes, its manifest "
                             f"says {expected_bytes}; the cache is damaged, rebuild it")
        fd = os.open(data_path, os.O_RDONLY)
        try:
            self._mm = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
        finally:
            os.close(fd)  # the mapping keeps its own reference to the file
        whole = pa.py_buffer(self._mm)
        try:
            reader = pa.ipc.open_file(whole)  # reads from the buffer: zero-copy slices
            batch = reader.get_batch(0) if reader.num_record_batches == 1 else None
        except (pa.ArrowInvalid, OSError) as exc:
            raise CacheError(f"cache file {data_path} is not a readable Arrow file ({exc}); "
                             "rebuild it") from exc
        meta = reader.schema.metadata or {}
        if (batch is None or meta.get(META_KEY, b"").decode() != self.key
                or batch.num_rows != rows):
            raise CacheError(f"cache file {data_path} does not match its manifest; rebuild it")
        base = whole.address
        n_feat, n_targ = len(self.feature_names), len(self.target_names)

        def view(name: str, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
            return _mapped_view(self._mm, base, batch.column(name), np.dtype(dtype), shape,
                                name)

        self._features_rw = view("features", np.float32, (rows, n_feat))
        self._targets_rw = view("targets", np.float32, (rows, n_targ))
        self.features = _read_only(self._features_rw)
        self.targets = _read_only(self._targets_rw)
        self.date_index = _read_only(view("date_index", np.int32, (rows,)))
        self.code_index = _read_only(view("code_index", np.int32, (rows,)))
        has_valid = "valid" in batch.schema.names
        # uint8 0/1 reinterpreted as bool: same bytes, no copy.
        self.valid = (_read_only(view("valid", np.uint8, (rows,)).view(np.bool_))
                      if has_valid else None)
        self.target_valid = (
            _read_only(view("target_valid", np.uint8, (rows, n_targ)).view(np.bool_))
            if has_valid else None)
        self.feature_valid = (
            _read_only(view("feature_valid", np.uint8, (rows,)).view(np.bool_))
            if "feature_valid" in batch.schema.names else None)
        try:
            with np.load(self.path / INDEX_FILE, allow_pickle=False) as index:
                self.unique_dates = index["unique_dates"].astype("datetime64[D]")
                self.codes: list[str] = index["codes"].tolist()
                self.date_offsets = index["date_offsets"].astype(np.int64)
        except (OSError, ValueError, KeyError) as exc:
            raise CacheError(f"cache index {self.path / INDEX_FILE} is unreadable ({exc}); "
                             "rebuild the cache") from exc
        if len(self.date_offsets) != len(self.unique_dates) + 1 or self.date_offsets[-1] != rows:
            raise CacheError(f"cache index of {self.path} does not match its data; rebuild it")

    # -- shape -------------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_dates(self) -> int:
        return len(self.unique_dates)

    def __len__(self) -> int:
        return self.n_rows

    def __repr__(self) -> str:
        return (f"FeatureCache(key={self.key!r}, rows={self.n_rows}, "
                f"features={len(self.feature_names)}, dates={self.n_dates}, "
                f"codes={len(self.codes)}, path={str(self.path)!r})")

    # -- slicing -----------------------------------------------------------------------
    def cross_section(self, i: int) -> slice:
        """The rows of the i-th date (negative i counts from the end), without a scan."""
        n = self.n_dates
        if not -n <= i < n:
            raise IndexError(f"date position {i} out of range for {n} dates")
        i %= n
        return slice(int(self.date_offsets[i]), int(self.date_offsets[i + 1]))

    def date_position(self, date: str | np.datetime64) -> int:
        """Position of ``date`` in ``unique_dates``; KeyError when the panel lacks it."""
        day = np.datetime64(date, "D")
        i = int(np.searchsorted(self.unique_dates, day))
        if i == self.n_dates or self.unique_dates[i] != day:
            raise KeyError(f"date {day} is not in the cache ({self.unique_dates[0]} .. "
                           f"{self.unique_dates[-1]})")
        return i

    # -- torch -------------------------------------------------------------------------
    def features_torch(self, *, device: str | torch.device = "cpu", pin: bool = False,
                       non_blocking: bool = True) -> torch.Tensor:
        """All features as a (rows, n_features) float32 tensor.

        On CPU without ``pin`` the tensor shares the mapped pages (no copy). ``pin=True``
        returns a page-locked CPU copy, for repeated fast host-to-device transfers. On CUDA
        the rows stream through pinned staging buffers with non-blocking copies; with
        ``non_blocking`` the call returns once the last copy is queued (work on the same
        stream is ordered after it; synchronize before using it from another stream).
        """
        from cache._torch import to_torch

        return to_torch(self._features_rw, device=device, pin=pin, non_blocking=non_blocking)

    def targets_torch(self, *, device: str | torch.device = "cpu", pin: bool = False,
                      non_blocking: bool = True) -> torch.Tensor:
        """All targets as a (rows, n_targets) float32 tensor; see :meth:`features_torch`."""
        from cache._torch import to_torch

        return to_torch(self._targets_rw, device=device, pin=pin, non_blocking=non_blocking)

    # -- sidecars ----------------------------------------------------------------------
    def _sidecar_path(self, name: str, params: dict[str, Any]) -> tuple[Path, str]:
        if not isinstance(name, str) or not _SIDECAR_NAME.fullmatch(name):
            raise ValueError(f"sidecar name {name!r} must be 1-64 letters, digits, '_', '.' "
                             "or '-', starting with a letter or digit")
        try:
            params_json = json.dumps(params, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"sidecar params must be JSON-able with finite numbers: {exc}"
                             ) from exc
        h = new_hash()
        h.update(json.dumps([self.key, name, params_json]).encode())
        return self.path / SIDECAR_DIR / f"{name}-{h.hexdigest()[:24]}.npz", params_json

    def save_sidecar(self, name: str, arrays: dict[str, np.ndarray], *,
                     params: dict[str, Any]) -> None:
        """Store arrays derived from this cache with the parameters that made them.

        The file lives in this cache's directory (so it goes when the cache goes) and is
        named by a hash of (cache key, name, params); it is written atomically, so
        concurrent writers of the same sidecar leave one complete file.
        """
        path, params_json = self._sidecar_path(name, params)
        if SIDECAR_META in arrays:
            raise ValueError(f"array name {SIDECAR_META!r} is reserved")
        for key, value in arrays.items():
            if np.asarray(value).dtype.hasobject:
                raise ValueError(f"sidecar array {key!r} has dtype object; store numbers")
        meta = json.dumps({"key": self.key, "name": name, "params": json.loads(params_json)})
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()},
                 **{SIDECAR_META: np.frombuffer(meta.encode(), dtype=np.uint8)})
        atomic_write_bytes(path, buf.getvalue())

    def load_sidecar(self, name: str, *, params: dict[str, Any]) -> dict[str, np.ndarray] | None:
        """The arrays saved under ``name`` with exactly these params, or None."""
        path, params_json = self._sidecar_path(name, params)
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(stored[SIDECAR_META].tobytes().decode())
            if (meta.get("key") != self.key or meta.get("name") != name
                    or meta.get("params") != json.loads(params_json)):
                return None  # a hash-prefix collision: treat as absent
            return {k: stored[k] for k in stored.files if k != SIDECAR_META}


def cache_dirs(cache_root: Path) -> list[Path]:
    """The finished cache directories under ``cache_root`` (not temp or lock dirs)."""
    return sorted(p.parent for p in Path(cache_root).glob(f"*/{MANIFEST_FILE}")
                  if not p.parent.name.startswith("."))


def open_cache(path: str | Path) -> FeatureCache:
    """Open a built cache directory (``<cache_root>/<key>``) without building anything."""
    return FeatureCache(Path(path))
