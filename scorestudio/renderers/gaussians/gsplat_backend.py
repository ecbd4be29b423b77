"""Optional gsplat backend of :func:`scorestudio.renderers.gaussians.rasterize` (``backend: gsplat``).

gsplat (nerfstudio's CUDA rasterizer, ``pip install gsplat``) implements the same 3DGS image
formation as the PyTorch backend (EWA splats with the 0.3 px² filter, alpha ≥ 1/255, alpha ≤ 0.99,
transmittance cut-off 1e-4) in fused kernels. Its cameras are OpenCV's (x right, y down, looking
along +z, world-to-camera matrices): :func:`opencv_viewmats` converts ours. It renders one scene
at a time here, so the K particles are K calls over their V views each. gsplat is imported on
first use only; the test suite does not need it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from scorestudio.data.cameras import CameraBatch
from scorestudio.renderers.gaussians.projection import focal_length

INSTALL_HINT = ("the 'gsplat' Gaussian rasterizer backend needs gsplat and CUDA: pip install gsplat "
                "(its kernels build on first use, which needs the CUDA toolkit), or set backend: torch")


def available() -> bool:
    from importlib.util import find_spec

    return find_spec("gsplat") is not None


def _gsplat() -> Any:
    try:
        import gsplat
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return gsplat


def opencv_viewmats(c2w: Tensor) -> Tensor:
    """World-to-camera ``[B, 4, 4]`` in OpenCV's frame of OpenGL camera-to-world ``c2w [B, 4, 4]``."""
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], device=c2w.device, dtype=c2w.dtype))
    return flip @ torch.linalg.inv(c2w)


def intrinsics(cameras: CameraBatch, width: int, height: int) -> Tensor:
    """Pinhole matrices ``[B, 3, 3]`` with the principal point at the image centre (pixel centres at
    +½, as :func:`~scorestudio.data.cameras.get_rays`)."""
    f = focal_length(cameras.fovy, height)
    k = torch.zeros(len(cameras), 3, 3, device=f.device, dtype=f.dtype)
    k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2], k[:, 2, 2] = f, f, 0.5 * width, 0.5 * height, 1.0
    return k


def rasterize_gsplat(splats, cameras: CameraBatch, width: int, height: int, background: Tensor, cfg):
    """:func:`~scorestudio.renderers.gaussians.rasterize` with gsplat's kernels (CUDA tensors)."""
    from scorestudio.renderers.gaussians.rasterizer import RasterOut, per_view

    gsplat = _gsplat()
    k_scenes, g = splats.opacities.shape
    b = len(cameras)
    views = b // k_scenes
    viewmats, ks = opencv_viewmats(cameras.c2w), intrinsics(cameras, width, height)
    colors = per_view(splats.colors, views, b)
    bg = background.expand(b, colors.shape[-1]) if background.dim() == 1 else background
    rgb, alpha, depth, points = [], [], [], []
    visible = torch.zeros(b, g, dtype=torch.bool, device=colors.device)
    radii = torch.zeros(b, g, device=colors.device)
    for k in range(k_scenes):
        rows = slice(k * views, (k + 1) * views)
        slots = splats.active[k].nonzero()[:, 0]
        render, acc, meta = gsplat.rasterization(
            splats.means[k, slots], torch.nn.functional.normalize(splats.quats[k, slots], dim=-1),
            splats.scales[k, slots], splats.opacities[k, slots], colors[rows][:, slots], viewmats[rows], ks[rows],
            width, height, near_plane=cfg.near, eps2d=cfg.eps2d, packed=False, render_mode="RGB+ED",
            rasterize_mode="classic", backgrounds=bg[rows])
        rgb.append(render[..., :-1])
        depth.append(render[..., -1])
        alpha.append(acc[..., 0])
        r = meta["radii"]
        r = r.max(-1).values if r.dim() == 3 else r          # gsplat ≥ 1.5 gives a radius per axis
        visible[rows, slots] = r > 0
        radii[rows, slots] = r.to(radii.dtype)
        if meta["means2d"].requires_grad:
            meta["means2d"].retain_grad()
            points.append((k * views, meta["means2d"], slots))
    return RasterOut(rgb=torch.cat(rgb).permute(0, 3, 1, 2), alpha=torch.cat(alpha), depth=torch.cat(depth),
                     visible=visible, radii=radii, screen_points=points, size=(width, height))
