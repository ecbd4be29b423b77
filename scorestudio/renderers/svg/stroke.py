"""Strokes as fill geometry: the outline of every stroke as a union of small polygons, drawn by the
rasterizer's exact nonzero winding like any fill.

Why a union of pieces rather than an offset curve: offsetting a polyline by ± half the width
makes loops wherever the stroke is wider than a curve's radius or at inner corners, and the
winding of such loops is wrong. Pieces that all turn the same way (negative shoelace area, as
every quad below) have a winding number ≤ −1 inside each piece and add up, so "nonzero" gives
their union exactly; the rasterizer's anti-aliasing only uses edges that separate filled from
unfilled pixels, so the pieces' inner edges leave no seam.

Pieces that merely touch are not enough: the rasterizer finds a pixel's boundary edge from the
winding at the pixel alone, so a pixel inside one piece, near a side that another piece
continues, would see that side as the boundary (a seam). So every side shared by two pieces is
covered by a third piece that overlaps both: the **connector** at each polyline vertex, a pentagon
(ahead and behind along the mean direction by c = min(h, the two edges' lengths), the two outer
corners, and h·cos(α/2) to the inside for a turn α) that also fills the outer gap of the turn. A
pixel near a shared side is then inside two pieces (winding ±2, no boundary there), or nearer the
stroke's true outline than the shared side.

For every stroked segment (``[N, P, S]``), flattened into K line edges (``polyline``):

- K **quads** of the stroke width along the edges, and K − 1 connectors inside the segment (a
  curve turns little there: the connector's bevel-like outer side stays within
  h·(1 − cos(α/2)) of the round sweep of a curve's stroke, far below a pixel);
- at the segment's end, when the next segment of its contour is stroked, a connector and the
  path's **join** piece (a miter wedge within the miter limit, a disc for round, nothing more for
  bevel); else the end **cap** (a disc for round, a square of side 2h centred on the end for
  square: both overlap the quad they cap);
- the start cap where a run of stroked segments begins.

Every piece is a polygon of V vertices (unused vertices repeat the last one: zero-length edges
add no winding and are never a nearest edge); discs have 2J edges, J per half turn, from
``flatten_tolerance`` like K. Everything is differentiable w.r.t. the points and widths.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scorestudio.renderers.svg.scene import CAPS, JOINS, SvgScene

_ROUND, _BEVEL = JOINS.index("round"), JOINS.index("bevel")
_BUTT, _ROUND_CAP, _SQUARE = (CAPS.index(c) for c in ("butt", "round", "square"))


def arc_segments(scene: SvgScene, tolerance: float, cap: int) -> int:
    """J, the edges of a half-turn arc, so that arcs of the widest stroke stay within
    ``tolerance`` px of the circle: h·(1 − cos(π/2J)) ≤ tol, h = half the width (capped at ``cap``)."""
    h = float(scene.stroke.width.detach().abs().max()) / 2 if scene.stroke.width.numel() else 0.0
    if not h > tolerance:
        return 2
    if not math.isfinite(h):
        return cap
    return max(2, min(cap, math.ceil(math.pi / (2 * math.acos(1 - tolerance / h)))))


def stroke_edges(curve: Tensor, scene: SvgScene, arcs: int) -> tuple[Tensor, Tensor]:
    """Outline edges ``[N, P, E, 4]`` (x0, y0, x1, y1) of the strokes of ``scene``, and
    ``valid [P, E]``, from the flattened segments ``curve [N, P, S, K+1, 2]`` (:func:`polyline`)
    with ``arcs`` = J edges per half-turn arc."""
    stroke = scene.stroke
    h = (stroke.width.abs() / 2)[:, :, None, None, None]                   # [N, P, 1, 1, 1]
    a, b = curve[..., :-1, :], curve[..., 1:, :]                           # [N, P, S, K, 2]
    d = b - a
    u, length = _unit(d), d.norm(dim=-1, keepdim=True)
    n = _perp(u)
    quads = torch.stack([a + h * n, b + h * n, b - h * n, a - h * n], -2)  # [N, P, S, K, 4, 2]
    k = curve.shape[-2] - 1
    inner = _connector(b[..., :-1, :], u[..., :-1, :], u[..., 1:, :], h,
                       torch.minimum(length[..., :-1, :], length[..., 1:, :]))   # [N, P, S, K−1, 5, 2]
    nxt, prv = _neighbours(scene)
    hs = h[..., 0, :, :]                                                   # [N, P, 1, 1]
    first = lambda t: torch.gather(t[..., 0, :], 2, nxt[None, :, :, None].expand(t.shape[0], -1, -1, t.shape[-1]))  # noqa: E731
    v, u_in, u_out = curve[..., -1, :], u[..., -1, :], first(u)
    junction = _connector(v, u_in, u_out, hs, torch.minimum(length[..., -1, :], first(length)))
    vertices = 2 * arcs
    join = _join(v, u_in, u_out, hs, stroke.miter_limit[:, None], stroke.join[:, None], vertices)
    end_cap = _cap(v, u_in, hs, stroke.cap[:, None], vertices)
    start_cap = _cap(curve[..., 0, :], u[..., 0, :], hs, stroke.cap[:, None], vertices)
    stroked = stroke.stroked                                               # [P, S]
    joined = stroked & torch.gather(stroked, 1, nxt)
    starts = stroked & ~torch.gather(stroked, 1, prv)
    capped = stroke.cap[:, None] != _BUTT
    end = torch.where(joined[None, :, :, None, None], join, end_cap)
    pieces = [(quads, stroked[..., None].expand(-1, -1, k)),
              (inner, stroked[..., None].expand(-1, -1, k - 1)),
              (junction[..., None, :, :], joined[..., None]),
              (end[..., None, :, :], ((joined & (stroke.join[:, None] != _BEVEL)) | (stroked & ~joined & capped))[..., None]),
              (start_cap[..., None, :, :], (starts & capped)[..., None])]
    edges, valid = zip(*(_polygon_edges(_oriented(poly), ok) for poly, ok in pieces))
    return torch.cat(edges, 2), torch.cat(valid, 1)


def _neighbours(scene: SvgScene) -> tuple[Tensor, Tensor]:
    """The next and previous segment of every segment in its contour (cyclic), long ``[P, S]``."""
    nxt = scene.segment_ends() // 3
    prv = torch.empty_like(nxt).scatter_(1, nxt, torch.arange(nxt.shape[1], device=nxt.device).expand_as(nxt))
    return nxt, prv


def _unit(d: Tensor) -> Tensor:
    """``d / |d|``, 0 for zero-length vectors (with a finite gradient)."""
    length2 = (d * d).sum(-1, keepdim=True)
    return d * torch.where(length2 > 0, length2.clamp_min(1e-30).rsqrt(), 0.0)


def _perp(u: Tensor) -> Tensor:
    """``u`` turned by +90° in (x, y): (−u_y, u_x)."""
    return torch.stack([-u[..., 1], u[..., 0]], -1)


def _cross(a: Tensor, b: Tensor) -> Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _outer(u_in: Tensor, u_out: Tensor) -> Tensor:
    """±1 ``[..., 1]``: the side (of the normals ``_perp(u)``) away from which the turn from
    direction ``u_in`` to ``u_out`` bends, i.e. the outer side of the turn."""
    return torch.where(_cross(u_in, u_out) > 0, -1.0, 1.0).to(u_in.dtype)[..., None]


def _connector(v: Tensor, u_in: Tensor, u_out: Tensor, h: Tensor, c: Tensor) -> Tensor:
    """Connector pentagons ``[..., 5, 2]`` at vertices ``v [..., 2]`` between edges of unit
    directions ``u_in``, ``u_out`` (see the module docstring): ahead by c, the outer corners of
    the out- and in-edge, behind by c, inside by h·cos(α/2). Star-shaped about v, so simple for
    any turn."""
    side = _outer(u_in, u_out)
    mean = u_in + u_out
    along = _unit(mean)
    c = torch.minimum(c, h)
    inward = v - side * h * _perp(along) * (mean.norm(dim=-1, keepdim=True) / 2)
    return torch.stack([v + c * along, v + side * h * _perp(u_out), v + side * h * _perp(u_in), v - c * along,
                        inward], -2)


def _join(v: Tensor, u_in: Tensor, u_out: Tensor, h: Tensor, limit: Tensor, kind: Tensor, vertices: int) -> Tensor:
    """The join piece beyond the connector ``[..., vertices, 2]`` at ``v`` between edges of unit
    directions ``u_in``/``u_out``, by the join codes ``kind`` (broadcasting against ``v[..., 0]``,
    like ``limit``): a disc (round); the wedge v, outer corners and miter tip (miter within
    ``limit``: SVG's miter length / width = 1/cos(α/2) for a turn α; beyond it, a bevel, which the
    connector already is)."""
    side = _outer(u_in, u_out)
    n_in, n_out = _perp(u_in), _perp(u_out)
    a, b = v + side * h * n_in, v + side * h * n_out
    cos = (n_in * n_out).sum(-1, keepdim=True)
    miter_ok = (1 + cos) / 2 * limit[..., None] ** 2 >= 1                  # cos²(α/2) · limit² ≥ 1
    tip = v + side * h * (n_in + n_out) / torch.where(miter_ok, 1 + cos, 1.0)
    miter = torch.stack([v, a, torch.where(miter_ok, tip, a)] + [b] * (vertices - 3), -2)
    kind = kind[..., None, None]
    return torch.where(kind == _ROUND, _disc(v, h, vertices), miter)


def _cap(v: Tensor, f: Tensor, h: Tensor, kind: Tensor, vertices: int) -> Tensor:
    """Cap pieces ``[..., vertices, 2]`` at the end ``v`` of a stroke along ``f`` (unit): a disc
    (round) or a square of side 2h centred on v (square; half of it lies over the stroke). Butt
    caps draw nothing (their piece is never valid)."""
    n = _perp(f)
    square = torch.stack([v + h * (f + n), v + h * (n - f), v - h * (f + n), v + h * (f - n)]
                         + [v + h * (f - n)] * (vertices - 4), -2)
    return torch.where(kind[..., None, None] == _ROUND_CAP, _disc(v, h, vertices), square)


def _disc(center: Tensor, radius: Tensor, vertices: int) -> Tensor:
    """Regular polygons ``[..., vertices, 2]`` inscribed in circles about ``center [..., 2]``."""
    angle = torch.arange(vertices, dtype=center.dtype, device=center.device) * (2 * math.pi / vertices)
    return center[..., None, :] + radius[..., None, :] * torch.stack([angle.cos(), angle.sin()], -1)


def _oriented(poly: Tensor) -> Tensor:
    """Polygons ``[..., V, 2]`` in the quads' orientation (negative shoelace area); the choice
    is made without gradient, the vertices keep theirs."""
    area = _cross(poly, poly.roll(-1, -2)).sum(-1).detach()
    return torch.where((area > 0)[..., None, None], poly.flip(-2), poly)


def _polygon_edges(poly: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Closed polygons ``[N, P, S, G, V, 2]`` → edges ``[N, P, S·G·V, 4]``; ``valid [P, S, G]``
    → ``[P, S·G·V]``."""
    edges = torch.cat([poly, poly.roll(-1, -2)], -1)
    n, p = edges.shape[:2]
    v = poly.shape[-2]
    return edges.reshape(n, p, -1, 4), valid[..., None].expand(*valid.shape, v).reshape(p, -1)
