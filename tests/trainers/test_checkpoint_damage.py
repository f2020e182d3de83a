"""Checkpoints carry their length and BLAKE3 digest; a damaged one is passed over for the
previous good one, or the run starts from scratch, and the trial says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainers.context import (
    CHECKPOINT_DAMAGED,
    PREVIOUS_CHECKPOINT_NAME,
    TrialContext,
)


def _two_epochs(tmp_path: Path) -> TrialContext:
    ctx = TrialContext(tmp_path / "run", progress=False)
    for epoch in (1, 2):
        ctx.report(epoch, {"loss": 1.0 / epoch})
        ctx.checkpoint({"x": float(epoch)}, epoch=epoch)
    return ctx


def test_a_good_checkpoint_restores_and_the_previous_one_is_kept(tmp_path: Path) -> None:
    ctx = _two_epochs(tmp_path)
    assert (ctx.output_dir / PREVIOUS_CHECKPOINT_NAME).exists()
    state = TrialContext(ctx.output_dir, progress=False).restore()
    assert state["epoch"] == 2 and state["x"] == 2.0


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, damage: str) -> None:
    ctx = _two_epochs(tmp_path)
    data = bytearray(ctx.checkpoint_path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # one bit in the middle: same length, loads or not, the digest says no
        data[len(data) // 2] ^= 0x01
    ctx.checkpoint_path.write_bytes(bytes(data))
    again = TrialContext(ctx.output_dir, progress=False)
    state = again.restore()
    assert state["epoch"] == 1 and state["x"] == 1.0
    [record] = again.attrs[CHECKPOINT_DAMAGED]
    assert record["file"].endswith("checkpoint.pt")
    assert ("bytes, its checksum says" in record["reason"]) == (damage == "truncate")
    assert ("BLAKE3" in record["reason"]) == (damage == "flip")


def test_with_every_checkpoint_damaged_the_run_starts_over(tmp_path: Path) -> None:
    ctx = _two_epochs(tmp_path)
    for path in (ctx.checkpoint_path, ctx.output_dir / PREVIOUS_CHECKPOINT_NAME):
        path.write_bytes(path.read_bytes()[:100])
    again = TrialContext(ctx.output_dir, progress=False)
    assert again.restore() is None
    assert len(again.attrs[CHECKPOINT_DAMAGED]) == 2


def test_a_checkpoint_without_a_checksum_still_loads(tmp_path: Path) -> None:
    """Files written before checksums resume as before."""
    ctx = _two_epochs(tmp_path)
    ctx.checkpoint_path.with_name("checkpoint.pt.sum").unlink()
    assert TrialContext(ctx.output_dir, progress=False).restore()["epoch"] == 2
