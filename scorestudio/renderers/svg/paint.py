"""Gradient paints: the colour of linear and radial SVG gradients at pixel centres.

Written with torch ops so that the colour is differentiable w.r.t. the stops (offsets and
colours), the gradient geometry and its transform; the rasterizer evaluates it only at the pixels
of the tiles a gradient-painted path covers. Colours are interpolated as straight (not
premultiplied) RGBA between stops, in sRGB, as SVG's default ``color-interpolation`` says.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scorestudio.renderers.svg.scene import FLAT, LINEAR, SPREADS, Gradient

_REFLECT, _REPEAT = SPREADS.index("reflect"), SPREADS.index("repeat")


def merge_paints(paints: list, n: int, counts: list, like: Tensor) -> Gradient:
    """One :class:`Gradient` for layers made of several groups of paths (e.g. fills then
    strokes): ``paints[i]`` is a Gradient of ``counts[i]`` paths or None (flat colours); stops are
    padded to the largest K by repeating each path's last stop."""
    k = max((g.stops.shape[2] for g in paints if g is not None), default=1)
    parts = [_flat(n, c, like) if g is None else g for g, c in zip(paints, counts)]
    stops = [torch.cat([g.stops, g.stops[:, :, -1:].expand(-1, -1, k - g.stops.shape[2], -1)], 2) for g in parts]
    return Gradient(torch.cat([g.kind for g in parts]), torch.cat([g.geometry for g in parts], 1),
                    torch.cat([g.transform for g in parts], 1), torch.cat(stops, 1),
                    torch.cat([g.spread for g in parts]))


def _flat(n: int, p: int, like: Tensor) -> Gradient:
    """A Gradient of ``p`` flat paths (identity transform, one stop)."""
    eye = torch.eye(2, 3, dtype=like.dtype, device=like.device).expand(n, p, 2, 3)
    return Gradient(torch.full((p,), FLAT, dtype=torch.long, device=like.device), like.new_zeros(n, p, 6), eye,
                    like.new_zeros(n, p, 1, 5), torch.zeros(p, dtype=torch.long, device=like.device))


def gradient_rgba(kind: Tensor, geometry: Tensor, transform: Tensor, stops: Tensor, spread: Tensor,
                  x: Tensor, y: Tensor) -> Tensor:
    """Straight RGBA ``[m, 4, X]`` of m gradients at the points ``x, y [m, X]`` (canvas px).

    ``kind [m]``, ``geometry [m, 6]``, ``transform [m, 2, 3]``, ``stops [m, K, 5]``, ``spread
    [m]`` as in :class:`~scorestudio.renderers.svg.scene.Gradient`. Where a radial gradient has no
    circle through a point (a focal circle outside the end circle) the paint is transparent.
    """
    gx, gy = _to_gradient_space(transform, x, y)
    lin = _linear_offset(geometry, gx, gy)
    rad, ok = _radial_offset(geometry, gx, gy)
    is_linear = (kind == LINEAR)[:, None]
    t = _spread(torch.where(is_linear, lin, rad), spread[:, None])
    rgba = _interpolate(stops, t)
    ok = is_linear | ok
    return rgba * torch.where(ok, 1.0, 0.0).to(rgba.dtype)[:, None]


def _to_gradient_space(m: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Canvas points → gradient space through the inverse of the affine maps ``m [m, 2, 3]``."""
    a, c, e = (m[:, 0, i, None] for i in range(3))
    b, d, f = (m[:, 1, i, None] for i in range(3))
    det = a * d - b * c
    dx, dy = x - e, y - f
    return (d * dx - c * dy) / det, (a * dy - b * dx) / det


def _linear_offset(geo: Tensor, gx: Tensor, gy: Tensor) -> Tensor:
    """Offset along (x1, y1) → (x2, y2); a zero-length vector paints the last stop (as SVG says)."""
    x1, y1, x2, y2 = (geo[:, i, None] for i in range(4))
    vx, vy = x2 - x1, y2 - y1
    length2 = vx * vx + vy * vy
    t = ((gx - x1) * vx + (gy - y1) * vy) / torch.where(length2 > 0, length2, 1.0)
    return torch.where(length2 > 0, t, torch.ones_like(t))


def _radial_offset(geo: Tensor, gx: Tensor, gy: Tensor) -> tuple[Tensor, Tensor]:
    """Offset t of the largest circle through the point among the circles interpolated from the
    focal circle (t = 0) to the end circle (t = 1) with a radius ≥ 0: |p − f − t(c − f)| =
    fr + t(r − fr), i.e. A t² − 2 B t + C = 0; and whether there is one."""
    cx, cy, r, fx, fy, fr = (geo[:, i, None] for i in range(6))
    cdx, cdy, dr = cx - fx, cy - fy, r - fr
    pdx, pdy = gx - fx, gy - fy
    a = cdx * cdx + cdy * cdy - dr * dr
    b = pdx * cdx + pdy * cdy + fr * dr
    c = pdx * pdx + pdy * pdy - fr * fr
    disc = b * b - a * c
    root = disc.clamp_min(1e-12).sqrt()
    safe_a = torch.where(a.abs() > 1e-9, a, 1.0)
    hi = torch.maximum((b + root) / safe_a, (b - root) / safe_a)
    lo = torch.minimum((b + root) / safe_a, (b - root) / safe_a)
    linear = c / (2 * torch.where(b.abs() > 1e-12, b, 1e-12))            # A = 0: one root
    hi = torch.where(a.abs() > 1e-9, hi, linear)
    t = torch.where(fr + hi * dr >= 0, hi, lo)
    ok = (disc >= 0) & (fr + t * dr >= 0)
    return t, ok


def _spread(t: Tensor, spread: Tensor) -> Tensor:
    """pad (clamp to [0, 1]), reflect (triangle wave) or repeat (sawtooth)."""
    repeat = t - torch.floor(t)
    u = t - 2 * torch.floor(t / 2)
    reflect = torch.where(u > 1, 2 - u, u)
    return torch.where(spread == _REPEAT, repeat, torch.where(spread == _REFLECT, reflect, t.clamp(0, 1)))


def _interpolate(stops: Tensor, t: Tensor) -> Tensor:
    """Straight RGBA ``[m, 4, X]`` at offsets ``t [m, X]`` from ``stops [m, K, 5]``: the first
    stop's colour before it, the last one's after it, linear in between."""
    offsets, colors = stops[..., 0], stops[..., 1:]                       # [m, K], [m, K, 4]
    k = offsets.shape[1]
    i = ((t[..., None] >= offsets[:, None, :]).sum(-1) - 1)               # [m, X] stop at or left of t
    lo, hi = i.clamp(0, k - 1), (i + 1).clamp(0, k - 1)
    o_lo, o_hi = torch.gather(offsets, 1, lo), torch.gather(offsets, 1, hi)
    gap = o_hi - o_lo
    w = torch.where((i >= 0) & (i < k - 1) & (gap > 0), (t - o_lo) / torch.where(gap > 0, gap, 1.0), 0.0)
    c_lo = torch.gather(colors, 1, lo[..., None].expand(-1, -1, 4))
    c_hi = torch.gather(colors, 1, hi[..., None].expand(-1, -1, 4))
    return (c_lo + w[..., None] * (c_hi - c_lo)).transpose(1, 2)
