"""Architectures of the embedded prior: a small SD-style VAE and UNet (diffusers) and the probe CNN.

All sizes live in :data:`SIZES`, so the training script, the tests ("tiny") and the model card
name one preset instead of repeating numbers. The shipped prior uses the "default" preset:

* VAE: 64x64 RGB <-> 8x8x4 latents (factor 8, like Stable Diffusion).
* UNet: eps-prediction on 8x8x4 latents, cross-attention on the 384-d per-token
  all-MiniLM-L6-v2 states.
* Probe: a GroupNorm CNN with shape / colour / kind / view heads (see
  :mod:`scorestudio.metrics.probe`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor, nn

TEXT_DIM = 384  # all-MiniLM-L6-v2 hidden size
TEXT_MAX_LENGTH = 32


@dataclass(frozen=True)
class VaeSize:
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    norm_num_groups: int
    latent_channels: int = 4


@dataclass(frozen=True)
class UnetSize:
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention_heads: int
    cross_attn_from: int  # index of the first down block with cross-attention (lower resolutions)
    norm_num_groups: int


@dataclass(frozen=True)
class ProbeSize:
    channels: tuple[int, ...]  # one stride-2 stage each
    feature_dim: int
    norm_num_groups: int


@dataclass(frozen=True)
class ArchSizes:
    image_size: int
    vae: VaeSize
    unet: UnetSize
    probe: ProbeSize


SIZES: dict[str, ArchSizes] = {
    # Shipped: see MODEL_CARD.md for the step-time measurements that picked these.
    "default": ArchSizes(
        image_size=64,
        vae=VaeSize(block_out_channels=(16, 32, 64, 128), layers_per_block=1, norm_num_groups=8),
        unet=UnetSize(block_out_channels=(64, 128, 128), layers_per_block=1, attention_heads=4,
                      cross_attn_from=0, norm_num_groups=32),
        probe=ProbeSize(channels=(32, 64, 128, 192), feature_dim=256, norm_num_groups=8),
    ),
    # Unit tests: seconds per step on CPU, same structure (factor-8 VAE, 3-level UNet).
    "tiny": ArchSizes(
        image_size=32,
        vae=VaeSize(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4),
        unet=UnetSize(block_out_channels=(16, 16, 16), layers_per_block=1, attention_heads=2,
                      cross_attn_from=1, norm_num_groups=4),
        probe=ProbeSize(channels=(8, 16), feature_dim=16, norm_num_groups=4),
    ),
}


def build_vae(size: ArchSizes) -> AutoencoderKL:
    """SD-style ``AutoencoderKL``: images ``[N, 3, S, S]`` in [-1, 1] <-> latents
    ``[N, 4, S/f, S/f]`` with f = 2 ** (len(block_out_channels) - 1).

    ``scaling_factor`` starts at 1 and is set from data after training (1 / std of latents).
    """
    v = size.vae
    n = len(v.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=v.block_out_channels,
        layers_per_block=v.layers_per_block,
        latent_channels=v.latent_channels,
        norm_num_groups=v.norm_num_groups,
        sample_size=size.image_size,
        scaling_factor=1.0,
    )


def vae_factor(size: ArchSizes) -> int:
    """Spatial downsampling factor of the VAE of ``size``."""
    return 2 ** (len(size.vae.block_out_channels) - 1)


def build_unet(size: ArchSizes) -> UNet2DConditionModel:
    """``UNet2DConditionModel`` on latents ``[N, 4, s, s]`` (s = image_size / vae factor),
    conditioned on text states ``[N, 32, 384]``; down blocks from ``cross_attn_from`` on (and the
    mid block) have cross-attention."""
    u = size.unet
    n = len(u.block_out_channels)
    down = tuple("CrossAttnDownBlock2D" if i >= u.cross_attn_from else "DownBlock2D" for i in range(n))
    up = tuple("CrossAttnUpBlock2D" if b == "CrossAttnDownBlock2D" else "UpBlock2D" for b in reversed(down))
    return UNet2DConditionModel(
        sample_size=size.image_size // vae_factor(size),
        in_channels=size.vae.latent_channels,
        out_channels=size.vae.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=u.block_out_channels,
        layers_per_block=u.layers_per_block,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=u.attention_heads,  # diffusers' legacy name: the number of heads
        norm_num_groups=u.norm_num_groups,
    )


def _conv_block(c_in: int, c_out: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(groups, c_out), nn.SiLU())


@dataclass
class ProbeConfig:
    """Everything needed to rebuild a probe (saved as the probe folder's config.json)."""

    resolution: int
    channels: tuple[int, ...]
    feature_dim: int
    norm_num_groups: int
    shapes: tuple[str, ...]
    colors: tuple[str, ...]
    kinds: tuple[str, ...]
    views: tuple[str, ...]
    # "image": RGB [N, 3, H, W] in [0, 1] (resized to ``resolution``); "latent": a prior's
    # model-space latents [N, in_channels, resolution, resolution], used as they are (the
    # distilled latent probe of :mod:`scorestudio.tools.train_latent_probe`).
    space: str = "image"
    in_channels: int = 3

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> ProbeConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class ProbeNet(nn.Module):
    """CNN over images ``[N, 3, R, R]`` in [0, 1]: GroupNorm conv stages (two convs each, the
    first strided), global average pooling, an MLP to ``feature_dim`` features and four linear
    heads (shape, colour, kind, view). GroupNorm, not BatchNorm, so features do not depend on the
    other images of a batch (the repulsion kernel compares images of one batch)."""

    def __init__(self, cfg: ProbeConfig) -> None:
        super().__init__()
        if cfg.space not in ("image", "latent"):
            raise ValueError(f"probe space {cfg.space!r}: use 'image' or 'latent'")
        self.cfg = cfg
        layers, c_in = [], cfg.in_channels
        for c in cfg.channels:
            layers += [_conv_block(c_in, c, 2, cfg.norm_num_groups), _conv_block(c, c, 1, cfg.norm_num_groups)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.neck = nn.Sequential(nn.Linear(c_in, cfg.feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict({
            "shape": nn.Linear(cfg.feature_dim, len(cfg.shapes)),
            "color": nn.Linear(cfg.feature_dim, len(cfg.colors)),
            "kind": nn.Linear(cfg.feature_dim, len(cfg.kinds)),
            "view": nn.Linear(cfg.feature_dim, len(cfg.views)),
        })

    def features(self, images: Tensor) -> Tensor:
        """Penultimate features ``[N, feature_dim]`` of images ``[N, 3, H, W]`` in [0, 1]
        (resized to the probe resolution if needed) or, for a latent probe, of latents ``[N, C, r, r]``;
        differentiable w.r.t. the input."""
        r = self.cfg.resolution
        if self.cfg.space == "latent":
            if images.shape[1:] != (self.cfg.in_channels, r, r):
                raise ValueError(f"this latent probe takes latents [N, {self.cfg.in_channels}, {r}, {r}], got "
                                 f"{list(images.shape)}: it was distilled for another prior's latent space")
            h = self.body(images)
        else:
            if images.shape[-2:] != (r, r):
                images = F.interpolate(images, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
            h = self.body(images * 2 - 1)
        return self.neck(h.mean(dim=(2, 3)))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Logits ``{"shape": [N, 13], "color": [N, 8], "kind": [N, 2], "view": [N, 4]}``."""
        f = self.features(images)
        return {name: head(f) for name, head in self.heads.items()}


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def cast_state_dict(module: nn.Module, dtype: torch.dtype) -> dict[str, Tensor]:
    """A contiguous copy of ``module``'s floating-point state in ``dtype`` (for export)."""
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in module.state_dict().items()}
