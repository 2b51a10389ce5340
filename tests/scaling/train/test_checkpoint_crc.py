"""A flipped byte inside a checkpoint's tensors is damage, not weights (found by an
adversarial pass over the CLI's inputs: ``torch.load`` does not check the CRC-32 of the
records ``torch.save`` writes, so every one of 20 random flips loaded, and
``mimscale export`` wrote the flipped weights with exit 0)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import torch

from scaling.cell.context import load_checkpoint, previous_name
from scaling.study.store import ResultStore
from scaling.train.checkpoint import checkpoint_bytes, read_checkpoint


def _state(value: float) -> dict:
    return {"step": 7, "state": {"encoder": {"w": torch.full((64, 64), value)}}}


@pytest.mark.parametrize("seed", range(8))
def test_a_flipped_byte_in_a_tensor_fails_the_crc(seed: int) -> None:
    data = bytearray(checkpoint_bytes(_state(1.0)))
    start = bytes(data).index(torch.full((64, 64), 1.0).numpy().tobytes()[:64])
    data[start + random.Random(seed).randrange(64 * 64 * 4)] ^= 0x01
    with pytest.raises(ValueError, match=r"its record archive/data/\d+ fails its CRC-32"):
        read_checkpoint(bytes(data), "checkpoint.pt")


def test_an_intact_checkpoint_reads_back() -> None:
    state = read_checkpoint(checkpoint_bytes(_state(1.0)), "checkpoint.pt")
    assert state["step"] == 7 and torch.equal(state["state"]["encoder"]["w"], torch.ones(64, 64))


def test_a_flipped_checkpoint_falls_back_to_the_previous_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ResultStore(str(tmp_path))
    rel = "stages/pretrain/x/checkpoint.pt"
    store.write_bytes(previous_name(rel), checkpoint_bytes(_state(2.0)))
    data = bytearray(checkpoint_bytes(_state(1.0)))
    data[len(data) // 2] ^= 0x01  # inside the 16 KiB tensor record
    store.write_bytes(rel, bytes(data))
    with caplog.at_level(logging.WARNING):
        state = load_checkpoint(store, rel)
    assert torch.equal(state["state"]["encoder"]["w"], torch.full((64, 64), 2.0))
    damaged = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert damaged and "fails its CRC-32" in damaged[0] and damaged[0].startswith(str(tmp_path))
