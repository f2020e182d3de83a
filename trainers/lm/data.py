"""Byte-level text data: a corpus file, or Python's own standard library as the default.

Tokenizer: one token per byte (vocabulary 256), so any file is valid input and nothing has
to be trained or downloaded; ``decode(encode(text)) == text`` for every UTF-8 text.

Default corpus (``corpus = ""``): the ``*.py`` source files of the running interpreter's
standard library (``sysconfig.get_paths()["stdlib"]``), every machine with Python has
them. Files are taken in sorted order of their path relative to that directory, skipping
``site-packages``/``dist-packages`` (installed third-party code, which differs between
machines) and ``__pycache__``, joined with a newline, and cut at ``corpus_max_bytes``. The
text is therefore fixed for one Python version; another version gives a slightly
different corpus, which is recorded as the ``corpus_source`` attr of every run.

Split: the first ``1 - val_fraction`` of the bytes train, the rest validate (a contiguous
tail, so no validation window overlaps a training one except at the single boundary).
"""

from __future__ import annotations

import math
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from trainers.errors import UserError

VOCAB_SIZE = 256
_SKIP_PARTS = {"site-packages", "dist-packages", "__pycache__"}


@dataclass(frozen=True)
class TextData:
    train: torch.Tensor  # (N_train,) uint8 byte tokens
    val: torch.Tensor  # (N_val,) uint8
    source: str  # where the text came from (path or the stdlib directory)


def encode(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)


def decode(tokens: torch.Tensor) -> str:
    return bytes(tokens.to(torch.uint8).tolist()).decode("utf-8", errors="replace")


def stdlib_corpus(*, max_bytes: int) -> tuple[bytes, str]:
    """The default corpus: concatenated standard-library sources, at most ``max_bytes``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        (p for p in root.rglob("*.py") if not _SKIP_PARTS & set(p.relative_to(root).parts)),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    parts, size = [], 0
    for path in files:
        try:
            chunk = path.read_bytes() + b"\n"
        except OSError:  # unreadable file: skip it, the corpus stays deterministic per machine
            continue
        parts.append(chunk)
        size += len(chunk)
        if size >= max_bytes:
            break
    return b"".join(parts)[:max_bytes], f"python stdlib {root}"


def load_text(*, corpus: str, max_bytes: int, val_fraction: float, block_size: int) -> TextData:
    if corpus:
        path = Path(corpus)
        if not path.is_file():
            raise UserError(f"corpus={corpus!r} is not a readable file; give a text file path "
                            "or leave it empty for the standard-library default")
        raw, source = path.read_bytes()[:max_bytes], str(path)
    else:
        raw, source = stdlib_corpus(max_bytes=max_bytes)
    tokens = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    n_val = math.ceil(len(tokens) * val_fraction)
    train, val = tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val:]
    # Each split needs at least one window of block_size inputs plus the shifted target.
    if min(len(train), len(val)) <= block_size:
        raise UserError(
            f"corpus {source!r} has {len(tokens)} bytes; with val_fraction={val_fraction} "
            f"each split needs more than block_size={block_size} bytes: use a larger "
            "corpus or corpus_max_bytes, or a smaller block_size"
        )
    return TextData(train=train.clone(), val=val.clone(), source=source)


def windows(tokens: torch.Tensor, starts: torch.Tensor, block_size: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-byte targets at ``starts`` (B,): two (B, block_size) int64 tensors."""
    idx = starts[:, None] + torch.arange(block_size + 1)  # (B, T + 1)
    chunk = tokens[idx].long()
    return chunk[:, :-1], chunk[:, 1:]


def eval_starts(n_tokens: int, *, block_size: int, n_windows: int) -> torch.Tensor:
    """Evenly spaced validation windows: the same bytes are scored in every trial."""
    last = n_tokens - block_size - 1
    return torch.linspace(0, last, min(n_windows, last + 1)).round().long()


def unigram_cross_entropy(train: torch.Tensor, val: torch.Tensor) -> float:
    """Validation cross-entropy (nats/byte) of the training byte frequencies (add-one
    smoothed): the score of a model that ignores context, the baseline to beat."""
    counts = torch.bincount(train.long(), minlength=VOCAB_SIZE).double() + 1.0
    log_p = torch.log(counts / counts.sum())
    return float(-log_p[val.long()].mean())
