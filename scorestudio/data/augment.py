"""Random perspective + resized crop of the renderings a guidance sees (VectorFusion's
augmentation), keyed per (particle, step) so a particle's draw depends on nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from scorestudio.utils.seeding import per_particle_rand


@dataclass
class AugmentConfig:
    enabled: bool = False            # VectorFusion augments the renderings seen by the guidance
    distortion: float = 0.5          # perspective: corners move inwards by up to this × the half-size
    crop_scale: list = field(default_factory=lambda: [0.7, 0.9])   # area fraction of the square crop


def homographies(src: Tensor, dst: Tensor) -> Tensor:
    """Projective maps ``[N, 3, 3]`` taking the 4 points ``src [N, 4, 2]`` to ``dst [N, 4, 2]``."""
    x, y = src.unbind(-1)
    u, v = dst.unbind(-1)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -x * u, -y * u], -1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -x * v, -y * v], -1)
    h = torch.linalg.solve(torch.cat([rows_u, rows_v], 1), torch.cat([u, v], 1))
    return torch.cat([h, torch.ones_like(h[:, :1])], 1).view(-1, 3, 3)


def augment(images: Tensor, particle_ids: Tensor, step: int, seed: int, cfg: AugmentConfig) -> Tensor:
    """Random perspective, then a random square resized crop, of images ``[N, 3, H, W]`` (white
    fill outside), drawn from the stream (seed, "augment", step, particle). Differentiable."""
    n, _, h, w = images.shape
    draws = per_particle_rand((11,), seed, particle_ids.tolist(), "augment", step).to(images)  # [N, 11]
    corners = images.new_tensor([[-1, -1], [1, -1], [1, 1], [-1, 1]]).expand(n, 4, 2)
    moved = corners - corners * cfg.distortion * draws[:, :8].view(n, 4, 2)   # inwards
    lo, hi = cfg.crop_scale
    side = (lo + (hi - lo) * draws[:, 8]).sqrt()                               # [N], of the full side
    center = (1 - side)[:, None] * (2 * draws[:, 9:11] - 1)                   # [N, 2]
    ys, xs = torch.meshgrid(torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=images.device),
                            torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=images.device), indexing="ij")
    out_xy = torch.stack([xs, ys], -1).reshape(1, -1, 2) * side[:, None, None] + center[:, None]
    homog = torch.cat([out_xy, torch.ones_like(out_xy[..., :1])], -1) @ homographies(moved, corners).transpose(1, 2)
    grid = (homog[..., :2] / homog[..., 2:]).view(n, h, w, 2)
    return F.grid_sample(images - 1, grid, align_corners=False) + 1
