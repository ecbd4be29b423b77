"""Differentiable rasterizer of 3-D Gaussian splats: a vectorised PyTorch one, gsplat on CUDA.

    out = rasterize(splats, cameras, width, height, background, cfg)   # RasterOut
    out.rgb [B, 3, H, W], out.alpha [B, H, W], out.depth [B, H, W]

K scenes (particles) of G splats each are seen by B = K·V particle-major cameras
(:class:`~scorestudio.data.cameras.CameraBatch`). Both backends follow 3DGS (Kerbl et al. 2023):
EWA projection (:mod:`.projection`), a splat's alpha ``min(0.99, o·exp(−½ dᵀΣ⁻¹d))`` counted only
where it reaches 1/255, depth-sorted front-to-back compositing per view that stops before the
transmittance would fall below 1e-4, then the background behind ``1 − alpha``.

The PyTorch backend, per call:

1. **Project** every active splat into every view of its scene (autograd).
2. **Bin** (no grad): each splat covers the tiles of the bounding box of its alpha ≥ 1/255 ellipse;
   (view, tile, splat) pairs are listed in per-view depth order and stably sorted by tile, so
   each tile's splats come front to back. ``tile_size: 0`` makes the whole image one tile
   (dense evaluation of every visible splat at every pixel).
3. **Composite** tiles in chunks of at most ``chunk_elements`` (pixel, splat) entries, padded to
   the chunk's longest list (tiles sorted by length, so padding stays small). Inside a tile the
   exponent is one batched matrix product: ``log o − ½ dᵀΣ⁻¹d`` is a quadratic in the pixel's
   tile-centred coordinates, ``[1, x, y, x², xy, y²] · coef(splat)``. The compositing has a
   hand-written backward (:class:`Composite`) that keeps two numbers per (pixel, splat) entry,
   the alpha and the transmittance in front of it, where autograd would keep a dozen.

Gradients reach means, covariances (scales, rotations), opacities, colours and depths; the
screen-space gradients of the splat centres (3DGS's densification signal) are read back with
:meth:`RasterOut.screen_gradient` after ``backward``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from scorestudio.data.cameras import CameraBatch
from scorestudio.renderers.gaussians.projection import covariance_3d, focal_length, project
from scorestudio.utils.config import ConfigError

ALPHA_MIN = 1.0 / 255.0        # splats fainter than this at a pixel are skipped there (3DGS, gsplat)
ALPHA_MAX = 0.99               # a single splat never hides what is behind it completely
TRANSMITTANCE_MIN = 1e-4       # a pixel stops compositing before its transmittance falls below this
BACKENDS = ("auto", "torch", "gsplat")
# A chunk of tiles pads every tile's splat list to the longest; a tile whose list is shorter than
# this fraction of it (less a few entries) starts the next chunk.
PADDING_RATIO, PADDING_SLACK = 0.75, 4


@dataclass
class RasterizerConfig:
    backend: str = "auto"            # auto: gsplat on CUDA when it imports, else torch; or torch / gsplat
    tile_size: int = 8               # px per tile side (torch backend); 0 = the whole image is one tile
    eps2d: float = 0.3               # px² added to every projected covariance (3DGS's screen-space filter)
    near: float = 0.01               # scene units: splats closer to the camera plane are not drawn
    chunk_elements: int = 1 << 21    # (pixel, splat) entries composited at once (torch backend)


@dataclass
class Splats:
    """K scenes of G splats (a fixed number of slots; ``active`` says which are drawn)."""

    means: Tensor        # [K, G, 3] world positions
    quats: Tensor        # [K, G, 4] rotations (w, x, y, z), normalised by the rasterizer
    scales: Tensor       # [K, G, 3] axis standard deviations, scene units
    opacities: Tensor    # [K, G] in (0, 1)
    colors: Tensor       # [K, G, C] or per view [B, G, C]
    active: Tensor       # bool [K, G]


@dataclass
class RasterOut:
    """B renders; ``screen_points`` keeps the projected centres whose gradients densification reads."""

    rgb: Tensor          # [B, C, H, W] over the background
    alpha: Tensor        # [B, H, W] accumulated opacity
    depth: Tensor        # [B, H, W] expected depth of the visible splats (0 where alpha is 0)
    visible: Tensor      # bool [B, G]: the splat touched the image
    radii: Tensor        # [B, G] 3σ radius on screen, px (0 where not visible)
    # (first view, projected centres [v, g, 2] with a retained gradient, their slots [g] or None = all G)
    screen_points: list = field(default_factory=list)
    size: tuple = (0, 0)  # (width, height)

    def screen_gradient(self) -> Tensor:
        """``[B, G]``: the norm of each splat centre's loss gradient in normalised device
        coordinates (pixels × size / 2, as 3DGS measures it), 0 where none flowed."""
        width, height = self.size
        out = torch.zeros(self.visible.shape, device=self.visible.device)
        for first, points, slots in self.screen_points:
            if points.grad is None:
                continue
            grad = points.grad * torch.tensor([0.5 * width, 0.5 * height], device=points.device)
            rows = slice(first, first + points.shape[0])
            if slots is None:
                out[rows] = grad.norm(dim=-1)
            else:
                out[rows, slots] = grad.norm(dim=-1)
        return out


def check_config(cfg: RasterizerConfig, path: str) -> None:
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"{path}.backend={cfg.backend!r}: use one of {', '.join(BACKENDS)}")
    if cfg.tile_size < 0 or cfg.chunk_elements < 1 or cfg.eps2d < 0 or cfg.near <= 0:
        raise ConfigError(f"{path}: tile_size ≥ 0, chunk_elements ≥ 1, eps2d ≥ 0 and near > 0 are needed, got "
                          f"{cfg.tile_size}, {cfg.chunk_elements}, {cfg.eps2d}, {cfg.near}")


def resolve_backend(cfg: RasterizerConfig, device: torch.device) -> str:
    """The backend ``cfg.backend`` means on ``device``: auto is gsplat on CUDA when importable."""
    if cfg.backend == "auto":
        from scorestudio.renderers.gaussians import gsplat_backend

        return "gsplat" if device.type == "cuda" and gsplat_backend.available() else "torch"
    return cfg.backend


def rasterize(splats: Splats, cameras: CameraBatch, width: int, height: int, background: Tensor,
              cfg: RasterizerConfig) -> RasterOut:
    """Render the K scenes of ``splats`` through the K·V particle-major ``cameras`` over
    ``background`` (``[C]`` or ``[B, C]``)."""
    if len(cameras) % splats.means.shape[0]:
        raise ValueError(f"{len(cameras)} cameras for {splats.means.shape[0]} scenes: need V per scene")
    if resolve_backend(cfg, splats.means.device) == "gsplat":
        from scorestudio.renderers.gaussians.gsplat_backend import rasterize_gsplat

        return rasterize_gsplat(splats, cameras, width, height, background, cfg)
    return rasterize_torch(splats, cameras, width, height, background, cfg)


# ---- the PyTorch backend ----------------------------------------------------------------------------


def per_view(x: Tensor, views: int, total: int) -> Tensor:
    """``x [K, ...]`` repeated for the V views of each scene ``[K·V, ...]`` (already per view: as is)."""
    return x if x.shape[0] == total else x.repeat_interleave(views, dim=0)


def rasterize_torch(splats: Splats, cameras: CameraBatch, width: int, height: int, background: Tensor,
                    cfg: RasterizerConfig) -> RasterOut:
    b = len(cameras)
    views = b // splats.means.shape[0]
    covs = covariance_3d(splats.scales, splats.quats)
    proj = project(per_view(splats.means, views, b), per_view(covs, views, b), cameras.c2w,
                   focal_length(cameras.fovy, height), width, height, cfg.near, cfg.eps2d)
    if proj.means2d.requires_grad:
        proj.means2d.retain_grad()
    xx, xy, yy = proj.cov2d.unbind(-1)
    det = xx * yy - xy * xy
    conic = torch.stack([yy / det, -xy / det, xx / det], dim=-1)              # Σ⁻¹ as (A, B, C)
    opacity = per_view(splats.opacities, views, b)
    with torch.no_grad():
        reach = 2 * torch.log((opacity * 255).clamp_min(1.0))               # dᵀΣ⁻¹d where alpha = 1/255
        extent = torch.stack([(reach * xx).sqrt(), (reach * yy).sqrt()], dim=-1)   # half box, px
        u, v = proj.means2d.unbind(-1)
        visible = (per_view(splats.active, views, b) & proj.in_front & (reach > 0)
                   & (u + extent[..., 0] > 0) & (u - extent[..., 0] < width)
                   & (v + extent[..., 1] > 0) & (v - extent[..., 1] < height))
        lam = 0.5 * (xx + yy) + (0.25 * (xx - yy) ** 2 + xy * xy).sqrt()
        radii = torch.where(visible, 3 * lam.sqrt(), torch.zeros_like(lam))
    colors = per_view(splats.colors, views, b)
    feats = torch.cat([colors, proj.depth[..., None]], dim=-1)                # depth composited as a channel
    tile = cfg.tile_size or max(width, height)
    bins = bin_splats(proj.means2d.detach(), extent, proj.depth.detach(), visible, width, height, tile)
    image = composite_tiles(bins, proj.means2d, conic, opacity, feats, width, height, tile, cfg.chunk_elements)
    c = colors.shape[-1]
    alpha = image[..., c]
    bg = background.to(image).expand(b, c) if background.dim() == 1 else background.to(image)
    rgb = image[..., :c] + (1 - alpha)[..., None] * bg[:, None, None, :]
    depth = image[..., c + 1] / alpha.clamp_min(1e-10)
    return RasterOut(rgb=rgb.permute(0, 3, 1, 2), alpha=alpha, depth=depth, visible=visible, radii=radii,
                     screen_points=[(0, proj.means2d, None)] if proj.means2d.requires_grad else [],
                     size=(width, height))


@dataclass
class Bins:
    """(view, tile, splat) pairs sorted by (view, tile) and, within a tile, front to back."""

    splat: Tensor        # long [M]: flat splat index view · G + slot
    start: Tensor        # long [B·T]: first pair of each tile
    count: Tensor        # long [B·T]: pairs of each tile
    tiles_x: int
    tiles_y: int


@torch.no_grad()
def bin_splats(means2d: Tensor, extent: Tensor, depth: Tensor, visible: Tensor, width: int, height: int,
               tile: int) -> Bins:
    """Pairs of every visible splat (``means2d [B, G, 2]``, half box ``extent [B, G, 2]`` px,
    ``depth [B, G]``) with the ``tile``² tiles its box touches."""
    b, g = visible.shape
    tiles_x, tiles_y = math.ceil(width / tile), math.ceil(height / tile)
    low = ((means2d - extent) / tile).floor()
    high = ((means2d + extent) / tile).floor()
    limit = torch.tensor([tiles_x - 1, tiles_y - 1], device=means2d.device, dtype=means2d.dtype)
    low = torch.minimum(torch.maximum(low, torch.zeros_like(low)), limit).long()   # [B, G, 2]
    high = torch.minimum(torch.maximum(high, torch.zeros_like(high)), limit).long()
    span = high - low + 1
    n = torch.where(visible, span[..., 0] * span[..., 1], torch.zeros_like(span[..., 0]))
    order = torch.where(visible, depth, torch.full_like(depth, math.inf)).argsort(dim=1, stable=True)
    flat = (order + torch.arange(b, device=order.device)[:, None] * g).flatten()   # per-view depth order
    counts = n.flatten()[flat]
    pair_splat = flat.repeat_interleave(counts)
    offset = torch.arange(len(pair_splat), device=flat.device) - (counts.cumsum(0) - counts).repeat_interleave(counts)
    width_tiles = span[..., 0].flatten()[pair_splat]
    lows = low.flatten(0, 1)[pair_splat]
    tile_id = (lows[:, 1] + offset // width_tiles) * tiles_x + lows[:, 0] + offset % width_tiles
    key = torch.div(pair_splat, g, rounding_mode="floor") * (tiles_x * tiles_y) + tile_id
    key, perm = key.sort(stable=True)
    count = torch.bincount(key, minlength=b * tiles_x * tiles_y)
    return Bins(splat=pair_splat[perm], start=count.cumsum(0) - count, count=count, tiles_x=tiles_x, tiles_y=tiles_y)


def tile_pixels(tile: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[T², 6]``: the features (1, x, y, x², xy, y²) of a tile's pixel centres (row-major) in
    coordinates centred on the tile, which keeps the expanded quadratic well conditioned."""
    axis = torch.arange(tile, device=device, dtype=dtype) + 0.5 - 0.5 * tile
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    x, y = x.flatten(), y.flatten()
    return torch.stack([torch.ones_like(x), x, y, x * x, x * y, y * y], dim=-1)


def chunks(count: list[int], order: list[int], per_tile: int, budget: int) -> list[list[int]]:
    """Tiles ``order`` (longest lists first) cut into runs whose padded size (tiles × pixels per
    tile × longest list) stays within ``budget`` entries (at least one tile a run), and whose
    lists are not much shorter than the run's longest (padding is computed like real entries)."""
    runs, current = [], []
    for t in order:
        longest = count[current[0]] if current else 0
        if current and ((len(current) + 1) * per_tile * longest > budget
                        or count[t] < PADDING_RATIO * longest - PADDING_SLACK):
            runs.append(current)
            current = []
        current.append(t)
    if current:
        runs.append(current)
    return runs


def composite_tiles(bins: Bins, means2d: Tensor, conic: Tensor, opacity: Tensor, feats: Tensor,
                    width: int, height: int, tile: int, chunk_elements: int) -> Tensor:
    """``[B, H, W, F + 1]`` for ``feats [B, G, F]`` = (colour, depth): per pixel the composited
    colour Σ w·colour, the accumulated alpha Σ w, then Σ w·depth."""
    b, g, f = feats.shape
    n_tiles = bins.tiles_x * bins.tiles_y
    per_tile = tile * tile
    count = bins.count.tolist()
    order = [t for t in sorted(range(len(count)), key=lambda t: -count[t]) if count[t] > 0]
    pixels = tile_pixels(tile, feats.device, feats.dtype)
    flat_means, flat_conic = means2d.reshape(b * g, 2), conic.reshape(b * g, 3)
    flat_log_opacity = opacity.reshape(b * g).log()
    flat_feats = torch.cat([feats, torch.ones_like(feats[..., :1])], dim=-1).reshape(b * g, f + 1)   # + alpha
    tiles_done, values = [], []
    for run in chunks(count, order, per_tile, chunk_elements):
        ids = torch.tensor(run, device=feats.device)
        slot = torch.arange(count[run[0]], device=feats.device)
        valid = slot[None] < bins.count[ids][:, None]                                        # [R, L]
        splat = bins.splat[torch.where(valid, bins.start[ids][:, None] + slot[None], torch.zeros_like(slot))]
        within = ids % n_tiles
        centre = torch.stack([within % bins.tiles_x, torch.div(within, bins.tiles_x, rounding_mode="floor")], -1)
        mu = flat_means[splat] - ((centre + 0.5) * tile).to(feats.dtype)[:, None, :]        # tile-centred
        coef = quadratic_coefficients(mu, flat_conic[splat], flat_log_opacity[splat], valid)
        values.append(Composite.apply(coef, flat_feats[splat], pixels))                     # [R, T², F + 1]
        tiles_done.append(ids)
    full = torch.zeros(b * n_tiles, per_tile, f + 1, device=feats.device, dtype=feats.dtype)
    if values:
        full = full.index_put((torch.cat(tiles_done),), torch.cat(values))
    image = full.view(b, bins.tiles_y, bins.tiles_x, tile, tile, f + 1).permute(0, 1, 3, 2, 4, 5)
    image = image.reshape(b, bins.tiles_y * tile, bins.tiles_x * tile, f + 1)[:, :height, :width]
    # channels: colour (f − 1), Σ w·depth, alpha → colour, alpha, Σ w·depth
    return torch.cat([image[..., :f - 1], image[..., f:], image[..., f - 1:f]], dim=-1)


# exp() of a padding entry's exponent is exactly 0 (float32 and float64): its alpha is skipped.
PADDING_EXPONENT = -1e4


def quadratic_coefficients(mu: Tensor, conic: Tensor, log_opacity: Tensor, valid: Tensor) -> Tensor:
    """``[R, 6, L]``: coefficients on (1, x, y, x², xy, y²) of ``log o − ½ (p − μ)ᵀ Σ⁻¹ (p − μ)``,
    whose exp is the splat's alpha before clamping, for centres ``mu [R, L, 2]``, inverse
    covariances ``conic [R, L, 3]`` (A, B, C) and ``log_opacity [R, L]``; padding (``~valid``)
    gets an exponent whose exp is 0."""
    mx, my = mu.unbind(-1)
    a, bb, c = conic.unbind(-1)
    constant = log_opacity - 0.5 * (a * mx * mx + 2 * bb * mx * my + c * my * my)
    constant = torch.where(valid, constant, torch.full_like(constant, PADDING_EXPONENT))
    return torch.stack([constant, a * mx + bb * my, c * my + bb * mx, -0.5 * a, -bb, -0.5 * c], dim=1)


class Composite(torch.autograd.Function):
    """Front-to-back compositing of one chunk of tiles.

    Inputs: ``coef [R, 6, L]`` (:func:`quadratic_coefficients`), ``feats [R, L, F]``, ``pixels
    [P, 6]`` (:func:`tile_pixels`). Output ``[R, P, F]``: Σ_i w_i feats_i with
    w_i = α_i Π_{j<i}(1 − α_j), α_i = min(0.99, exp(pixels · coef_i)) where that reaches 1/255
    (else 0), and w_i = 0 once the transmittance would fall below 1e-4. Written out because
    autograd would keep a dozen (pixel, splat) temporaries; this keeps two.
    """

    @staticmethod
    def forward(ctx, coef, feats, pixels):
        alpha = torch.threshold(torch.matmul(pixels, coef).exp_(), ALPHA_MIN, 0.0).clamp_max_(ALPHA_MAX)
        through = torch.cumprod(1 - alpha, dim=-1)
        front = torch.cat([torch.ones_like(through[..., :1]), through[..., :-1]], dim=-1)
        front.masked_fill_(through < TRANSMITTANCE_MIN, 0.0)            # the pixel stopped before this splat
        ctx.save_for_backward(coef, feats, pixels, alpha, front)
        return torch.bmm(alpha * front, feats)

    @staticmethod
    def backward(ctx, grad_out):
        coef, feats, pixels, alpha, front = ctx.saved_tensors
        weight = alpha * front
        grad_feats = torch.bmm(weight.transpose(1, 2), grad_out)                                  # [R, L, F]
        grad_weight = torch.bmm(grad_out, feats.transpose(1, 2))                                  # [R, P, L]
        # w_j depends on α_i (i < j) through 1 − α_i: ∂w_j/∂α_i = −w_j / (1 − α_i)
        spent = (grad_weight * weight).cumsum(-1)
        grad_alpha = grad_weight * front - (spent[..., -1:] - spent) / (1 - alpha)
        # α = exp(exponent) where it is neither skipped nor clamped; elsewhere constant
        grad_exponent = grad_alpha * alpha.masked_fill(alpha >= ALPHA_MAX, 0.0)
        return torch.matmul(pixels.transpose(0, 1), grad_exponent), grad_feats, None


__all__ = ["ALPHA_MAX", "ALPHA_MIN", "BACKENDS", "TRANSMITTANCE_MIN", "Bins", "Composite", "RasterOut",
           "RasterizerConfig", "Splats", "bin_splats", "check_config", "composite_tiles", "rasterize",
           "rasterize_torch", "resolve_backend"]
