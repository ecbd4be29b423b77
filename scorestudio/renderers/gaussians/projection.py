"""3-D Gaussians seen by pinhole cameras: covariances, EWA projection, spherical-harmonic colours.

Cameras follow :mod:`scorestudio.data.cameras` (OpenGL camera frame: x right, y up, looking along
−z; pixel (row, col) has its centre at ``(col + ½, row + ½)`` and row 0 at the top), so a
Gaussian's centre lands on the pixel whose ray :func:`~scorestudio.data.cameras.get_rays` shoots
through it. The projected footprint is the EWA splat of Zwicker et al. as 3DGS writes it: the
camera-space covariance pushed through the Jacobian of the perspective map at the centre, plus
``eps2d`` px² (a low-pass filter that keeps every splat at least about a pixel wide).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814            # Y_0^0
SH_C1 = 0.4886025119029199             # |Y_1^m| / (x, y, z)
# 3DGS limits the Jacobian to 1.3 × the half field of view: centres far outside the image would
# otherwise give huge, numerically useless splats at the border.
FRUSTUM_SLACK = 1.3


def quaternion_to_rotation(quats: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` of quaternions ``[..., 4]`` (w, x, y, z), normalised here."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).unflatten(-1, (3, 3))


def rotation_to_quaternion(rotation: Tensor) -> Tensor:
    """Unit quaternions ``[..., 4]`` (w, x, y, z, w ≥ 0) of rotation matrices ``[..., 3, 3]``: from
    the largest of the four diagonal combinations, which keeps the division well conditioned."""
    m = rotation
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    squares = torch.stack([1 + trace, 1 + 2 * m[..., 0, 0] - trace, 1 + 2 * m[..., 1, 1] - trace,
                           1 + 2 * m[..., 2, 2] - trace], dim=-1)                       # 4 q_i²
    pairs = torch.stack([
        torch.stack([squares[..., 0], m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], squares[..., 1], m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1], squares[..., 2], m[..., 2, 1] + m[..., 1, 2]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] + m[..., 1, 2], squares[..., 3]], -1),
    ], dim=-2)                                                                           # row i: 4 q_i · q
    best = squares.argmax(-1)[..., None, None].expand(*squares.shape[:-1], 1, 4)
    quats = torch.nn.functional.normalize(pairs.gather(-2, best)[..., 0, :], dim=-1)
    return torch.where(quats[..., :1] < 0, -quats, quats)


def covariance_3d(scales: Tensor, quats: Tensor) -> Tensor:
    """World covariances ``R S² Rᵀ`` ``[..., 3, 3]`` of axis scales ``[..., 3]`` and quaternions ``[..., 4]``."""
    m = quaternion_to_rotation(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def focal_length(fovy: Tensor, height: int) -> Tensor:
    """Focal length in pixels ``[B]`` of vertical fields of view ``fovy`` ``[B]`` (degrees)."""
    return 0.5 * height / torch.tan(0.5 * torch.deg2rad(fovy))


@dataclass
class Projection:
    """B views of G Gaussians on the image plane."""

    means2d: Tensor     # [B, G, 2] pixel coordinates (x = column, y = row)
    cov2d: Tensor       # [B, G, 3] (xx, xy, yy) of the dilated 2-D covariance, px²
    depth: Tensor       # [B, G] distance along the viewing axis, scene units
    in_front: Tensor    # bool [B, G]: beyond the near plane


def project(means: Tensor, covs: Tensor, c2w: Tensor, focal: Tensor, width: int, height: int,
            near: float, eps2d: float) -> Projection:
    """EWA projection of Gaussians ``means [B, G, 3]``, ``covs [B, G, 3, 3]`` (world) into views with
    camera-to-world ``c2w [B, 4, 4]`` and focal lengths ``focal [B]`` (px)."""
    rot, origin = c2w[:, None, :3, :3], c2w[:, None, :3, 3]
    cam = ((means - origin)[..., None, :] @ rot)[..., 0, :]                 # [B, G, 3] camera frame
    x, y, depth = cam[..., 0], cam[..., 1], -cam[..., 2]
    in_front = depth > near
    d = torch.where(in_front, depth, torch.full_like(depth, near))         # keeps the maths finite behind
    f = focal[:, None]
    means2d = torch.stack([f * x / d + 0.5 * width, -f * y / d + 0.5 * height], dim=-1)
    lim_x = FRUSTUM_SLACK * 0.5 * width / f
    lim_y = FRUSTUM_SLACK * 0.5 * height / f
    tx = torch.maximum(torch.minimum(x / d, lim_x), -lim_x)
    ty = torch.maximum(torch.minimum(y / d, lim_y), -lim_y)
    zero = torch.zeros_like(d)
    jac = torch.stack([f / d, zero, f * tx / d, zero, -f / d, -f * ty / d], dim=-1).unflatten(-1, (2, 3))
    m = jac @ rot.transpose(-1, -2)                                          # [B, G, 2, 3]: world → pixels
    cov = m @ covs @ m.transpose(-1, -2)
    cov2d = torch.stack([cov[..., 0, 0] + eps2d, cov[..., 0, 1], cov[..., 1, 1] + eps2d], dim=-1)
    return Projection(means2d, cov2d, depth, in_front)


def sh_to_rgb(coeffs: Tensor, dirs: Tensor) -> Tensor:
    """3DGS colours ``max(Σ_lm c_lm Y_lm(dir) + ½, 0)`` ``[..., 3]`` of spherical-harmonic
    coefficients ``[..., (d+1)², 3]`` (degree d ≤ 1) seen along unit ``dirs [..., 3]``."""
    rgb = SH_C0 * coeffs[..., 0, :]
    if coeffs.shape[-2] > 1:
        x, y, z = dirs[..., 0:1], dirs[..., 1:2], dirs[..., 2:3]
        rgb = rgb - SH_C1 * y * coeffs[..., 1, :] + SH_C1 * z * coeffs[..., 2, :] - SH_C1 * x * coeffs[..., 3, :]
    return (rgb + 0.5).clamp_min(0.0)


def sh_coefficients(degree: int) -> int:
    """Coefficients per colour channel of spherical harmonics up to ``degree``."""
    return (degree + 1) ** 2


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """The degree-0 coefficient ``[..., 3]`` whose colour is ``rgb`` (3DGS's RGB2SH)."""
    return (rgb - 0.5) / SH_C0


def logit(p: Tensor | float) -> Tensor:
    """Inverse sigmoid of probabilities in (0, 1)."""
    p = torch.as_tensor(p, dtype=torch.float32)
    return torch.log(p) - torch.log1p(-p)


__all__ = ["SH_C0", "SH_C1", "Projection", "covariance_3d", "focal_length", "logit", "project",
           "quaternion_to_rotation", "rgb_to_sh", "rotation_to_quaternion", "sh_coefficients", "sh_to_rgb"]
