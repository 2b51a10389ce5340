"""FLOPs of one SimMIM step, counted by torch's FlopCounterMode on the meta device.

Nothing is allocated and no GPU is needed: the model and a batch of one image
are meta tensors, and FlopCounterMode adds up the matmul / convolution /
attention FLOPs (2 per multiply-add) that the forward and backward dispatch.
Element-wise work (norms, softmax, GELU) is not counted, as usual for MFU. The
study planner multiplies the per-image figure by batch size × iterations.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.flop_counter import FlopCounterMode

from scaling.data.masking import check_mask_geometry
from scaling.model.simmim import build_simmim
from scaling.model.sizes import validate_sizes


@functools.cache
def _simmim_flops(name: str, img_size: int, mask_patch_size: int) -> tuple[float, float]:
    """(forward, backward) FLOPs of one image."""
    spec = validate_sizes(name, img_size)
    check_mask_geometry(
        image_size=img_size,
        mask_patch_size=mask_patch_size,
        model_patch_size=spec.patch_size,
        mask_ratio=None,
        section="pretrain",
        model=name,
    )
    grid = img_size // spec.patch_size
    with torch.device("meta"):
        model = build_simmim(name, img_size=img_size)
        images = torch.empty(1, 3, img_size, img_size)
        # which tokens are masked does not change the work: every token is encoded
        mask = torch.empty(1, grid, grid, dtype=torch.bool)
    with FlopCounterMode(display=False) as forward:
        loss = model(images, mask)
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    return float(forward.get_total_flops()), float(backward.get_total_flops())


def forward_flops(name: str, *, img_size: int, mask_patch_size: int = 32) -> float:
    """FLOPs of one SimMIM forward (encoder + decoder) of one image."""
    return _simmim_flops(name, img_size, mask_patch_size)[0]


def pretrain_flops_per_image(name: str, *, img_size: int, mask_patch_size: int = 32) -> float:
    """FLOPs of one SimMIM forward + backward of one image (about 3× the forward)."""
    return sum(_simmim_flops(name, img_size, mask_patch_size))
