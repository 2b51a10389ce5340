"""SimMIM: a masked encoder, a 1×1-conv + PixelShuffle decoder and a masked L1 loss.

Follows the released code (microsoft/SimMIM ``models/simmim.py``): a learned
mask token replaces the patch embeddings of masked tokens right after the patch
embedding (for a ViT before the class token and the absolute position embedding
are added, so masked tokens still carry their position), the encoder's final
features (B, C, H/stride, W/stride) go through Conv2d(C, stride²·3, 1) and
PixelShuffle(stride), and the loss is the L1 distance on masked pixels only::

    loss = Σ |x̂ − x| · m / (Σ m + 1e-5) / 3

with ``m`` the token mask upsampled by the patch size. The target ``x`` is the
normalised image, optionally normalised once more per pixel over a sliding
k×k window (``norm_target``, k = 47 in the released SwinV2 config).

The encoder is timm's, unmodified; its family record
(:class:`~scaling.model.family.Family`) says how to split it into "embed" (patch
embedding) and "encode" (the rest), and "encode" into activation-checkpointing
regions (``checkpointing``: per block or per stage, exact — see
:func:`~scaling.model.family.run_segments`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from scaling.errors import ModelError
from scaling.model.build import create_encoder
from scaling.model.family import Family, check_checkpointing
from scaling.model.sizes import FAMILIES, get_spec


def _family_of(encoder: nn.Module) -> Family:
    for family in FAMILIES.values():
        if isinstance(encoder, family.encoder_type()):
            return family
    valid = ", ".join(f.encoder_type().__name__ for f in FAMILIES.values())
    raise TypeError(f"SimMIM supports {valid}, not {type(encoder).__name__}")


def upsample_mask(mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Token mask (B, h, w) → pixel mask (B, 1, h·patch, w·patch), same dtype."""
    return mask.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2).unsqueeze(1)


def norm_targets(images: torch.Tensor, window: int) -> torch.Tensor:
    """Normalise every pixel by the mean and unbiased std of its window×window neighbourhood.

    Windows are clipped at the border (padding is not counted), as in the
    released SimMIM code; ``window`` must be odd so the window is centred.
    """
    if window % 2 != 1:
        raise ModelError(f"pretrain.norm_target_window: must be odd, got {window}")
    x = images.float()
    pool = dict(kernel_size=window, stride=1, padding=window // 2)
    mean = F.avg_pool2d(x, **pool, count_include_pad=False)
    mean_sq = F.avg_pool2d(x * x, **pool, count_include_pad=False)
    # pixels inside each clipped window: (1, 1, H, W)
    count = F.avg_pool2d(torch.ones_like(x[:1, :1]), **pool, count_include_pad=True) * window**2
    var = (mean_sq - mean * mean) * (count / (count - 1))
    return (x - mean) / (var.clamp(min=0.0) + 1e-6).sqrt()


def masked_l1_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor
) -> torch.Tensor:
    """SimMIM's loss: mean L1 over masked pixels and channels (in float32)."""
    m = pixel_mask.float()  # (B, 1, H, W), broadcast over channels
    l1 = (reconstruction.float() - target.float()).abs()
    return (l1 * m).sum() / (m.sum() + 1e-5) / target.shape[1]


class SimMIM(nn.Module):
    """A timm encoder with a mask token, SimMIM's linear decoder and its masked L1 loss.

    ``encoder_stride`` and ``patch_size`` default to the encoder's own (SwinV2:
    patch × 2^(stages − 1); ViT: the patch). ``checkpointing`` (``none``, ``block``,
    ``stage``) trades a second forward of the encoder for its activation memory.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        encoder_stride: int | None = None,
        patch_size: int | None = None,
        in_chans: int = 3,
        norm_target: bool = False,
        norm_target_window: int = 47,
        checkpointing: str = "none",
    ) -> None:
        super().__init__()
        family = _family_of(encoder)
        check_checkpointing(checkpointing, "pretrain.activation_checkpointing")
        self.checkpointing = checkpointing
        self._embed, self._encode = family.embed, family.encode
        if norm_target and norm_target_window % 2 != 1:
            raise ModelError(f"pretrain.norm_target_window: must be odd, got {norm_target_window}")
        self.encoder = encoder
        self.patch_size = patch_size or encoder.patch_embed.patch_size[0]
        # timm's own record of the last stage's stride (SwinV2: patch × 2 per merging)
        encoder_stride = encoder_stride or int(encoder.feature_info[-1]["reduction"])
        self.encoder_stride = encoder_stride
        self.norm_target = norm_target
        self.norm_target_window = norm_target_window
        embed_dim = encoder.patch_embed.proj.out_channels
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Sequential(
            nn.Conv2d(encoder.num_features, encoder_stride**2 * in_chans, kernel_size=1),
            nn.PixelShuffle(encoder_stride),
        )

    def embed(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Patch embeddings with the mask token at masked positions.

        ``mask`` is (B, H/patch, W/patch), nonzero = masked. Returns the family's
        token layout: (B, h, w, C) for SwinV2, (B, L, C) for ViT.
        """
        tokens = self._embed(self.encoder, images)
        masked = mask.reshape(*tokens.shape[:-1], 1).bool()  # (B, h, w, 1) or (B, L, 1)
        return torch.where(masked, self.mask_token.to(tokens.dtype), tokens)

    def reconstruct(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The decoder's prediction of every pixel: (B, 3, H, W)."""
        tokens = self.embed(images, mask)
        features = self._encode(self.encoder, tokens, self.checkpointing)  # (B, C, H/s, W/s)
        return self.decoder(features)  # (B, s²·3, H/s, W/s) → (B, 3, H, W)

    def loss(
        self, reconstruction: torch.Tensor, images: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Masked L1 between ``reconstruction`` and the (optionally window-normalised) images."""
        # float32 throughout: both helpers cast, and autocast leaves elementwise ops alone
        target = norm_targets(images, self.norm_target_window) if self.norm_target else images
        return masked_l1_loss(reconstruction, target, upsample_mask(mask, self.patch_size))

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The SimMIM loss of a batch: images (B, 3, H, W), token mask (B, H/p, W/p)."""
        return self.loss(self.reconstruct(images, mask), images, mask)


def build_simmim(
    name: str,
    *,
    img_size: int,
    drop_path_rate: float = 0.0,
    norm_target: bool = False,
    norm_target_window: int = 47,
    checkpointing: str = "none",
) -> SimMIM:
    """SimMIM around the registered encoder ``name`` (see ``scaling.model.sizes.MODEL_SIZES``)."""
    spec = get_spec(name)
    return SimMIM(
        create_encoder(name, img_size=img_size, drop_path_rate=drop_path_rate),
        encoder_stride=spec.encoder_stride,
        patch_size=spec.patch_size,
        norm_target=norm_target,
        norm_target_window=norm_target_window,
        checkpointing=checkpointing,
    )


def set_checkpointing(model: nn.Module, mode: str) -> None:
    """Activation checkpointing of a SimMIM model or a timm classifier (fine-tuning).

    SimMIM checkpoints its encode path per ``block`` or per ``stage``; a classifier runs
    timm's own forward, which checkpoints per block for either mode.
    """
    check_checkpointing(mode, "pretrain.activation_checkpointing")
    if isinstance(model, SimMIM):
        model.checkpointing = mode
    elif mode == "none" and isinstance(getattr(model, "encoder", None), nn.Module):
        return  # another MIM method (MAE, LocalMIM) around an encoder: nothing to switch
    else:
        _family_of(model).encoder_type()  # a registered family, or TypeError
        model.set_grad_checkpointing(mode != "none")


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The encoder's transformer blocks of a MIM model (SimMIM, MAE, LocalMIM) or a
    classifier's: FSDP2's shard units."""
    encoder = model.encoder if isinstance(getattr(model, "encoder", None), nn.Module) else model
    return _family_of(encoder).blocks(encoder)
