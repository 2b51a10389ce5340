"""Checkpoints as bytes: one ``torch.save`` blob (the cell writes it atomically to its store).

A checkpoint holds everything that makes resume exact: model and optimizer
state, the step (the sampler resumes from it), the curves so far, the grad
scaler, and the RNG states of torch (drop path draws from it) and of this
process's own GPU (not every visible one: a resume may see another count).
A phase of several ranks keeps model, optimizer and every rank's RNG states in
sharded DCP checkpoints instead (:mod:`scaling.train.shards`).
"""

from __future__ import annotations

import io
import logging
import zipfile
from typing import Any

import torch

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """The CPU stream and the current GPU's (the one this process trains on)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`; older checkpoints held a list of every visible GPU's."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    if isinstance(cuda, list | tuple):
        current = torch.cuda.current_device()
        if current >= len(cuda):
            log.warning("checkpoint has no CUDA stream for GPU %d; it starts afresh", current)
            return
        cuda = cuda[current]
    torch.cuda.set_rng_state(cuda)


def checkpoint_bytes(state: dict[str, Any]) -> bytes:
    """``state`` and this process's RNG states as one ``torch.save`` blob."""
    buf = io.BytesIO()
    torch.save({**state, "rng": rng_state()}, buf)
    return buf.getvalue()


def read_checkpoint(data: bytes, name: str) -> dict[str, Any]:
    """A checkpoint blob back as a dict (on the CPU); ``name`` is for the log.

    Raises ``ValueError`` when a record fails the CRC-32 ``torch.save`` stored with it:
    ``torch.load`` does not check them, and a flipped byte in a tensor loads silently.
    """
    bad = zipfile.ZipFile(io.BytesIO(data)).testzip()  # a damaged archive: BadZipFile
    if bad is not None:
        raise ValueError(f"its record {bad} fails its CRC-32 (flipped or overwritten bytes)")
    # tensors, numbers, strings, lists and dicts only: loads without unpickling code
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    log.info("resuming from %s at step %d", name, state.get("step", -1))
    return state


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
