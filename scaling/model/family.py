"""A model family: everything mimscale knows about one kind of timm encoder, in one record.

A :class:`Family` says how a registered size's numbers (widths, depths, heads,
patch, window) turn into the encoder's stride and feature width, which image and
window sizes it runs at, which fine-tuning window keeps pre-training's geometry,
and — through functions that import torch and timm only when called — how to
build it, how SimMIM splits it into "embed" (patch embedding) and "encode" (the
rest), how "encode" splits into activation-checkpointing regions, and how a
pre-trained state dict adapts to a fine-tuning resolution.
Each family is one module (:mod:`scaling.model.swinv2`, :mod:`scaling.model.vit`)
that defines ``FAMILY``; :mod:`scaling.model.sizes` registers it. Adding a family
is one such module and one line in that registry. Importing a family module
imports no torch, so loading a study and ``mimscale plan`` / ``status`` stay light.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scaling.model.sizes import ModelSpec

Tensor = Any  # torch.Tensor, without importing torch here
Module = Any  # torch.nn.Module
Segment = Callable[[Tensor], Tensor]

CHECKPOINTING: tuple[str, ...] = ("none", "block", "stage")
"""Activation checkpointing of the encoder: ``none`` keeps every activation for the
backward; ``block`` keeps only each block's input and recomputes one block at a
time; ``stage`` keeps each stage's input and recomputes a whole stage (a ViT's one
stage counts as four runs of blocks). Either recomputes the forward once more."""


def check_checkpointing(mode: str, key: str) -> None:
    """Raise ModelError naming ``key`` unless ``mode`` is in :data:`CHECKPOINTING`."""
    from scaling.errors import ModelError

    if mode not in CHECKPOINTING:
        raise ModelError(f"{key}: must be one of {CHECKPOINTING}, got {mode!r}")


def run_segments(segments: Sequence[Segment], x: Tensor, mode: str) -> Tensor:
    """Run ``segments`` in order, each one checkpointed region unless ``mode`` is none.

    Exact: torch's non-reentrant checkpoint saves and restores the CPU and CUDA RNG
    states and the autocast state around the recomputation, so drop-path draws and
    every op repeat; on the CPU the gradients are bit-identical to a plain backward.
    Without grad (validation, ``no_grad``) nothing is checkpointed.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    if mode == "none" or not torch.is_grad_enabled():
        for segment in segments:
            x = segment(x)
        return x
    for segment in segments:
        x = checkpoint(segment, x, use_reentrant=False)
    return x


def chain(modules: Sequence[Segment]) -> Segment:
    """One segment that runs ``modules`` in order (a checkpoint region of several blocks)."""

    def run(x: Tensor) -> Tensor:
        for module in modules:
            x = module(x)
        return x

    return run


@dataclass(frozen=True, kw_only=True)
class Family:
    """One registered encoder family (torch-free fields; torch only inside the callables)."""

    name: str
    """Registry name, e.g. ``swinv2``: the ``family`` of a :class:`ModelSpec`."""
    stride: Callable[[ModelSpec], int]
    """Pixels per feature of the last stage (the SimMIM decoder's PixelShuffle factor)."""
    num_features: Callable[[ModelSpec], int]
    """Channels of the encoder's final features."""
    check_image: Callable[[ModelSpec, int, int, str], None]
    """``(spec, img_size, window, key)``: raise ModelError unless the encoder runs there."""
    finetune_window: Callable[[ModelSpec, int, int], int]
    """``(spec, finetune_img, pretrain_img)`` → the fine-tuning window (0: no windows)."""
    pretrained_windows: Callable[[ModelSpec, int], tuple[int, ...]]
    """``(spec, pretrain_img)`` → per-stage windows of pre-training (for the bias MLP)."""
    build: Callable[..., Module]
    """``build(spec, img_size=, window_size=, pretrained_window_sizes=, num_classes=,
    drop_path_rate=)`` → the timm module."""
    encoder_type: Callable[[], type]
    """The timm class (imported when called): which family a built encoder belongs to."""
    embed: Callable[[Module, Tensor], Tensor]
    """SimMIM's split, part 1: images (B, 3, H, W) → patch tokens in the family's layout."""
    encode: Callable[..., Tensor]
    """SimMIM's split, part 2: ``(encoder, tokens, checkpointing="none")`` → final features
    (B, C, H/stride, W/stride), the body checkpointed as :data:`CHECKPOINTING` says."""
    segments: Callable[[Module, str], list[Segment]]
    """``(encoder, mode)`` → the encoder's body as checkpoint regions of ``mode``, in order."""
    blocks: Callable[[Module], list[Module]]
    """The encoder's (or classifier's) transformer blocks, in order: FSDP2's shard units."""
    adapt_state: Callable[[Module, dict[str, Tensor]], dict[str, Tensor]] = lambda m, s: s
    """Adapt a pre-trained encoder state to a (fine-tuning) model, e.g. resample positions."""
