"""Checkpoints through the results store: one ``torch.save`` blob, written atomically.

A checkpoint holds everything that makes resume exact: model and optimizer
state, the step (the sampler resumes from it), the curves so far, the grad
scaler, and the RNG states of torch (drop path draws from it) and CUDA.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import torch

from scaling.store import ResultStore

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(store: ResultStore, rel: str, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save({**state, "rng": rng_state()}, buf)
    store.write_bytes(rel, buf.getvalue())
    log.debug("checkpoint %s (%.1f MB)", rel, buf.tell() / 1e6)


def load_checkpoint(store: ResultStore, rel: str) -> dict[str, Any] | None:
    data = store.read_bytes(rel)
    if data is None:
        return None
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    log.info("resuming from %s at step %d", rel, state.get("step", -1))
    return state


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
