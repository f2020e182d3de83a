"""Where a panel comes from: parse the source argument, fingerprint it, read it.

Fingerprints (content hashes) are what cache keys are made of. A file's hash is its bytes'
BLAKE3 digest (tagged ``blake3:``), each 32 MB block hashed on every core (a few seconds for
the seed-sized 16.6 GB panel in the page cache; disk speed otherwise); because
hashing gigabytes on every trainer start-up would still be slow, the hash
is remembered in ``<cache_root>/.source-hashes.json`` against the file's (size, mtime_ns,
ctime_ns, inode, device) and recomputed only when one of those changes. ctime cannot be set
by users (``touch -d`` and ``cp -p`` change it), so an edited file is always rehashed.
Hashing reads raw bytes; only a build parses the file.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import polars as pl

from cache._io import atomic_write_json
from cache.errors import CacheError

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)
SYNTHETIC_PREFIX = "synthetic"
SYNTHETIC_EXAMPLE = "synthetic:n_stocks=500,n_dates=750,seed=0"
MEMO_NAME = ".source-hashes.json"
DIGEST_BYTES = 20  # 160-bit digests: collisions are out of reach, names stay short
# A file hash is "<FILE_HASH>:<hex>"; memo entries made with another algorithm are rehashed.
FILE_HASH = "blake3"
HASH_CHUNK = 32 << 20  # bytes read and hashed at a time

# The panel generator behind ``synthetic:key=value,...`` sources: a callable that takes the
# options as keywords and returns a polars DataFrame, raising ValueError/TypeError (or a
# CacheError) for bad options; or ``"module:function"``, imported on first use, so that
# ``import cache`` imports no generator. The default is the ATFT-GAT synthetic market
# (``trainers.atft_gat.generate_panel``); assign another entry to plug in your own.
GENERATORS: dict[str, str | Callable[..., pl.DataFrame]] = {
    SYNTHETIC_PREFIX: "trainers.atft_gat:generate_panel",
}

log = logging.getLogger("cache")


def new_hash() -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=DIGEST_BYTES)


@dataclass
class Source:
    """A resolved source: a parquet/CSV file, an in-memory frame, or the synthetic market."""

    kind: str  # "parquet" | "csv" | "dataframe" | "synthetic"
    id: str
    path: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    frame: pl.DataFrame | None = None
    stat_signature: list[int] | None = None  # file sources: taken when the hash was made
    # The source's names of the key columns that are not ``date``/``code`` (CacheSpec's
    # date_column/code_column) -> the key name; everything past the reader sees key names.
    renames: dict[str, str] = field(default_factory=dict)

    def source_name(self, column: str) -> str:
        """The name ``column`` (a key name or any other column) has in the source."""
        back = {key: src for src, key in self.renames.items()}
        return back.get(column, column)

    def canonical_names(self, names: list[str]) -> list[str]:
        """The source's column names as the cache sees them, or a CacheError naming a mapped
        key column that is absent, or a column that would take a key column's name."""
        for src, key in self.renames.items():
            option = "date_column" if key == "date" else "code_column"
            if src not in names:
                raise CacheError(f"{self.describe_short()} has no column {src!r} ({option}); "
                                 f"found {', '.join(names) or 'no columns'}; set [data] "
                                 f"{option} to the column that holds the {key}s")
            if key in names:
                raise CacheError(f"{self.describe_short()} has both {src!r} ({option}) and a "
                                 f"column {key!r}: drop or rename {key!r}, or set {option} = "
                                 f"{key!r}")
        return [self.renames.get(n, n) for n in names]

    def canonical(self, frame: pl.DataFrame, *, whole: bool = False) -> pl.DataFrame:
        """``frame`` (read from the source; ``whole``: all its columns, so a mapped key
        column must be among them) with its key columns under the key names."""
        if not self.renames:
            return frame
        if whole:
            self.canonical_names(list(frame.columns))
        return frame.rename({s: k for s, k in self.renames.items() if s in frame.columns})

    def describe_short(self) -> str:
        return f"{self.kind} {self.path}" if self.path is not None else f"source {self.id}"

    def describe(self) -> dict[str, Any]:
        """The manifest's record of the source (no content hash: the caller adds it)."""
        out: dict[str, Any] = {"kind": self.kind, "id": self.id}
        if self.path is not None:
            out["path"] = str(self.path)
            if self.stat_signature is not None:
                out["size"] = self.stat_signature[0]
                out["mtime_ns"] = self.stat_signature[1]
        if self.options:
            out["options"] = self.options
        return out


def resolve_source(source: str | Path | pl.DataFrame, *, source_id: str | None,
                   renames: dict[str, str] | None = None) -> Source:
    """The source; ``renames`` (source name -> key name) maps a panel's key columns."""
    resolved = _resolve(source, source_id=source_id)
    if renames:
        resolved.renames = dict(renames)
        if resolved.frame is not None:
            resolved.frame = resolved.canonical(resolved.frame, whole=True)
    return resolved


def _resolve(source: str | Path | pl.DataFrame, *, source_id: str | None) -> Source:
    if isinstance(source, pl.DataFrame):
        return Source("dataframe", source_id or "dataframe", frame=source)
    if isinstance(source, str) and (source == SYNTHETIC_PREFIX
                                    or source.startswith(SYNTHETIC_PREFIX + ":")):
        options = parse_synthetic(source)
        canonical = SYNTHETIC_PREFIX + ":" + ",".join(f"{k}={v}" for k, v in options.items())
        return Source("synthetic", source_id or canonical, options=options)
    if not isinstance(source, str | Path):
        raise CacheError(
            f"source must be a parquet/CSV path, a polars DataFrame or {SYNTHETIC_EXAMPLE!r}; "
            f"got {type(source).__name__}"
        )
    path = Path(source).expanduser().resolve()
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        kind = "parquet"
    elif name.endswith(CSV_SUFFIXES):
        kind = "csv"
    else:
        raise CacheError(
            f"source {str(source)!r} is neither parquet ({', '.join(PARQUET_SUFFIXES)}) nor "
            f"CSV ({', '.join(CSV_SUFFIXES)}) nor {SYNTHETIC_EXAMPLE!r}"
        )
    return Source(kind, source_id or str(path), path=path)


def _parse_value(text: str) -> Any:
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_synthetic(text: str) -> dict[str, Any]:
    """``synthetic:n_stocks=500,n_dates=750,seed=0`` -> keyword arguments, key order kept.

    Options left out take the generator's defaults; values are ints, floats, true/false or
    strings by their look.
    """
    body = text[len(SYNTHETIC_PREFIX) + 1:] if ":" in text else ""
    options: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in body.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise CacheError(f"synthetic option {item!r} is not name=value; e.g. "
                             f"{SYNTHETIC_EXAMPLE}")
        options[name.strip()] = _parse_value(value.strip())
    return options


def _generator(name: str) -> tuple[str, Callable[..., pl.DataFrame]]:
    """``GENERATORS[name]`` and its name for messages, importing it if it is a string."""
    target = GENERATORS[name]
    if not isinstance(target, str):
        return getattr(target, "__qualname__", repr(target)), target
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CacheError(f"the {name} source needs {module_name}, which cannot be "
                         f"imported: {exc}") from exc
    try:
        return f"{module_name}.{attr}", getattr(module, attr)
    except AttributeError as exc:
        raise CacheError(f"the {name} source needs {module_name}.{attr}, which "
                         f"{module_name} does not define") from exc


def generate_synthetic(options: dict[str, Any]) -> pl.DataFrame:
    label, generate = _generator(SYNTHETIC_PREFIX)
    try:
        frame = generate(**options)
    except CacheError:
        raise
    except (TypeError, ValueError) as exc:  # an unknown option, or a value out of range
        raise CacheError(f"synthetic source {options}: {_first_line(exc)}") from exc
    if not isinstance(frame, pl.DataFrame):
        raise CacheError(f"{label} returned {type(frame).__name__}, not a polars DataFrame")
    return frame


# -- fingerprints -------------------------------------------------------------------------
def _stat_signature(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _hash_file(path: Path) -> str:
    """BLAKE3 of the file's bytes, read in HASH_CHUNK blocks (the next block is read while
    this one is hashed on every core). Not a memory map: a map's touched pages count in the
    process's resident set, which then reports the whole file (16.6 GB for a seed-sized
    panel)."""
    digest = blake3.blake3(max_threads=blake3.blake3.AUTO)
    buffers = [memoryview(bytearray(HASH_CHUNK)) for _ in range(2)]
    try:
        with open(path, "rb", buffering=0) as f, ThreadPoolExecutor(1) as reader:
            pending = reader.submit(f.readinto, buffers[0])
            i = 0
            while n := pending.result():
                i ^= 1
                pending = reader.submit(f.readinto, buffers[i])
                digest.update(buffers[i ^ 1][:n])
    except OSError as exc:
        raise CacheError(f"cannot read source {path}: {exc.strerror or exc}") from exc
    return f"{FILE_HASH}:{digest.hexdigest(length=DIGEST_BYTES)}"


def _read_memo(memo_path: Path) -> dict[str, Any]:
    try:
        data = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        return {}  # missing or damaged memo: rehashing is always correct
    return data if isinstance(data, dict) else {}


def file_content_hash(source: Source, *, cache_root: Path, rehash: bool = False) -> str:
    """The file's content hash, from the memo while its stat signature is unchanged."""
    assert source.path is not None
    try:
        signature = _stat_signature(source.path)
    except FileNotFoundError:
        raise CacheError(_missing_source_message(source.path, cache_root)) from None
    if not source.path.is_file():
        raise CacheError(f"source {source.path} is not a file")
    memo_path = cache_root / MEMO_NAME
    memo = _read_memo(memo_path)
    entry = memo.get(str(source.path))
    if (not rehash and isinstance(entry, dict) and entry.get("signature") == signature
            and str(entry.get("hash", "")).startswith(f"{FILE_HASH}:")):
        source.stat_signature = signature
        return str(entry["hash"])
    digest = _hash_file(source.path)
    if _stat_signature(source.path) != signature:
        raise CacheError(f"source {source.path} changed while it was being hashed; try again")
    source.stat_signature = signature
    # Forget files that are gone so the memo stays small; a lost concurrent update only
    # costs a rehash later, so no lock is taken.
    memo = {p: e for p, e in memo.items() if Path(p).exists()}
    memo[str(source.path)] = {"signature": signature, "hash": digest}
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(memo_path, memo)
    except OSError as exc:
        # A read-only cache root still works; the file is just hashed again next time.
        log.debug("could not record the hash of %s in %s: %s", source.path, memo_path, exc)
    return digest


def check_unchanged(source: Source) -> None:
    """After a build read the file: refuse if it changed since it was hashed."""
    if source.path is None or source.stat_signature is None:
        return
    try:
        now = _stat_signature(source.path)
    except FileNotFoundError:
        now = None
    if now != source.stat_signature:
        raise CacheError(f"source {source.path} changed while the cache was being built; "
                         "try again")


def _missing_source_message(path: Path, cache_root: Path) -> str:
    # Without the file its key cannot be checked, so an old cache is never reused silently.
    built = []
    if cache_root.is_dir():
        for manifest in sorted(cache_root.glob("*/manifest.json")):
            try:
                if (not manifest.parent.name.startswith(".") and
                        json.loads(manifest.read_text())["source"].get("path") == str(path)):
                    built.append(str(manifest.parent))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
    hint = (f"; caches built from it earlier (open one with cache.open_cache): "
            f"{', '.join(built)}" if built else "")
    return f"source {path} does not exist, so its cache key cannot be checked{hint}"


def frame_content_hash(frame: pl.DataFrame, columns: list[str]) -> str:
    """Hash of the named columns' names, types and Arrow buffers (zero-copy exports).

    Only the columns that go into the cache count, so an unrelated extra column does not
    rebuild. Categoricals are hashed as strings: an Arrow dictionary array's buffers hold
    only its indices. A frame equal in content but laid out differently (other chunking,
    sliced string buffers) may hash differently: that rebuilds needlessly, never reuses
    wrongly, because every logical byte is in some buffer.
    """
    h = new_hash()
    h.update(f"rows={frame.height}".encode())
    for name in columns:
        series = frame.get_column(name)
        if isinstance(series.dtype, pl.Categorical | pl.Enum):
            series = series.cast(pl.String)
        h.update(json.dumps([name, str(series.dtype)]).encode())
        array = series.rechunk().to_arrow()
        h.update(f"offset={array.offset},len={len(array)}".encode())
        for buf in array.buffers():
            if buf is not None:
                h.update(buf)
    return h.hexdigest()


# -- reading ------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_not_empty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise CacheError(f"source {path} is empty (0 bytes)")


def file_schema(source: Source) -> dict[str, pl.DataType]:
    """Column names and types without reading the data (CSV: header only, types unknown)."""
    assert source.path is not None
    _check_not_empty(source.path)
    try:
        if source.kind == "parquet":
            schema = dict(pl.read_parquet_schema(source.path))
        else:
            schema = dict(pl.read_csv(source.path, n_rows=0, infer_schema=False).schema)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise CacheError(f"cannot read {source.kind} {source.path}: {_first_line(exc)}") from exc
    return dict(zip(source.canonical_names(list(schema)), schema.values(), strict=True))


def read_file(source: Source, columns: list[str] | None, *, string_columns: tuple[str, ...],
              ) -> pl.DataFrame:
    """Parse the file; ``columns`` None reads every column (CSV types from the whole file)."""
    assert source.path is not None
    named = [source.source_name(c) for c in columns] if columns is not None else None
    try:
        if source.kind == "parquet":
            return source.canonical(pl.read_parquet(source.path, columns=named))
        # Codes stay strings ("0001" must not become 1); dates are parsed by the panel
        # check so a bad one is reported by value. Types are inferred from every row so
        # a float late in an integer-looking column does not fail the read.
        return source.canonical(pl.read_csv(
            source.path,
            columns=named,
            schema_overrides={source.source_name(c): pl.String for c in string_columns},
            infer_schema_length=None,
        ))
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise CacheError(f"cannot read {source.kind} {source.path}: {_first_line(exc)}") from exc

