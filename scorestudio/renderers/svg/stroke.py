"""Strokes as fill geometry: the outline of every stroke as closed chains of line edges, drawn by the
rasterizer's exact nonzero winding like any fill.

The outline of a run of stroked segments is the polyline's left offset (+h along the normal
(−u_y, u_x) of each edge, h = half the width) forward, an end cap, the right offset backward and a
start cap (two loops, left and right, for a closed contour). At every polyline vertex the two
offsets of each side are linked by a chain of at most two edges:

- on the **inner** side of a turn α, both offsets end at their intersection (the miter point)
  when h·tan(α/2) and h·sin α fit on both edges, else the chain detours through the vertex
  itself (the **pivot**);
- on the **outer** side, the miter point where the join is round (always inside a segment: a
  curve's stroke sweeps round) and the miter's overshoot h·(1/cos(α/2) − 1) stays within the
  flattening tolerance; the miter tip for a miter join within its limit (SVG's miter length /
  width = 1/cos(α/2)); else a chord (bevel), and for a round join the sector of the disc between
  the chord and the arc is added as a separate piece;
- caps: a chord across the end (butt), a half-turn arc (round), the square's three sides.

Why this is exact: the chains add up to the sum of the per-edge quads (all turning the same way,
winding −1 inside each), the bevel wedges on the outer sides and, where an inner side is
mitered, minus the kite between the vertex and the miter point, which the miter condition keeps
inside both quads of the turn (covered twice there). So the winding is ≤ −1 exactly on the union
of quads and wedges and 0 elsewhere, "nonzero" fills the stroke, and the offsets' loops at inner
corners and tight curves cancel out. A straight vertex is always mitered, so the pivot's two
edges are never collinear and no two edges of opposite directions overlap: the rasterizer finds a
pixel's boundary edge from the winding at the pixel alone, and overlapping opposite edges would
each look like a boundary (a seam). This is the construction of Skia's stroker (resvg's), with
winding instead of path simplification, except where a curve bends tighter than the half width
(the inner side pivots): there a round sweep covers more than the quads of the turn, and a whole
disc about the vertex (the round join's shape) is added, so the stroke stays the union of the
quads and discs instead of showing holes.

Sectors and discs are pieces in the outline's orientation, built only at the vertices that need
them (their cost follows their number); their arcs have as few edges per half turn as keep them
within ``flatten_tolerance`` of the circle. Unused chain points repeat the chain's last point:
zero-length edges add no winding, are never a nearest edge, and the rasterizer drops them before
rasterizing. Everything is differentiable w.r.t. the points and widths.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from scorestudio.renderers.svg.scene import CAPS, JOINS, SvgScene

_MITER, _ROUND = JOINS.index("miter"), JOINS.index("round")
_ROUND_CAP, _SQUARE = CAPS.index("round"), CAPS.index("square")


def arc_segments(scene: SvgScene, tolerance: float, cap: int) -> int:
    """J, the edges of a half-turn arc, so that arcs of the widest stroke stay within
    ``tolerance`` px of the circle: h·(1 − cos(π/2J)) ≤ tol, h = half the width (capped at ``cap``)."""
    h = float(scene.stroke.width.detach().abs().max()) / 2 if scene.stroke.width.numel() else 0.0
    if not h > tolerance:
        return 2
    if not math.isfinite(h):
        return cap
    return max(2, min(cap, math.ceil(math.pi / (2 * math.acos(1 - tolerance / h)))))


def stroke_edges(curve: Tensor, scene: SvgScene, arcs: int, tolerance: float,
                 joins: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Outline edges ``[N, P, E, 4]`` (x0, y0, x1, y1) of the strokes of ``scene``, and
    ``valid [P, E]``, from the flattened segments ``curve [N, P, S, K+1, 2]`` (:func:`polyline`)
    with at most ``arcs`` = J edges per half-turn arc and the flattening ``tolerance`` in px.
    ``joins [P, S, K]``: the join code at the vertex after each edge (default: round inside a
    segment, the path's join at the segment's end)."""
    stroke = scene.stroke
    h = (stroke.width.abs() / 2)[:, :, None, None, None]                   # [N, P, 1, 1, 1]
    a, b = curve[..., :-1, :], curve[..., 1:, :]                           # [N, P, S, K, 2]
    d = b - a
    u, length = _unit(d), d.norm(dim=-1, keepdim=True)
    k = curve.shape[-2] - 1
    nxt, prv = _neighbours(scene)
    stroked = stroke.stroked                                               # [P, S]
    joined = stroked & torch.gather(stroked, 1, nxt)                       # the segment's end is a join
    starts = stroked & ~torch.gather(stroked, 1, prv)                      # a run of stroked segments starts
    # The vertex after each edge: K − 1 inside the segment, then the junction with the next one.
    first = lambda t: _gather_segments(t[..., 0, :], nxt)[..., None, :]   # noqa: E731  next segment's first edge
    u_out = torch.cat([u[..., 1:, :], first(u)], -2)
    shorter = torch.minimum(length, torch.cat([length[..., 1:, :], first(length)], -2))
    inside = torch.arange(k, device=curve.device) < k - 1                  # [K]
    at_vertex = torch.cat([stroked[..., None].expand(-1, -1, k - 1), joined[..., None]], -1)   # [P, S, K]
    join = torch.where(inside, _ROUND, stroke.join[:, None, None]) if joins is None else joins   # inside: round sweep
    chains, pivot, arc = _vertex_chains(b, u, u_out, shorter, h, join, stroke.miter_limit[:, None, None],
                                        at_vertex, tolerance)          # [N, P, S, K, 2 sides, 3, 2]
    side = torch.tensor([1.0, -1.0], dtype=curve.dtype, device=curve.device)[:, None]    # [2, 1] left, right
    corner = a[..., 0, None, :] + side * h * _perp(u[..., 0, None, :])     # [N, P, S, 2, 2] unmitered starts
    after = _gather_segments(chains[..., -1, :, -1, :], prv)               # the previous junction's chain ends
    joined_before = torch.gather(joined, 1, prv)[None, :, :, None, None]
    begin = torch.cat([torch.where(joined_before, after, corner)[..., None, :, :], chains[..., :-1, :, -1, :]], -3)
    end = chains[..., :, 0, :]                                             # [N, P, S, K, 2, 2] offsets' ends
    left = torch.cat([begin[..., 0, :], end[..., 0, :]], -1)               # [N, P, S, K, 4]
    right = torch.cat([end[..., 1, :], begin[..., 1, :]], -1)              # backward
    links = torch.stack([_chain_edges(chains[..., 0, :, :]), _chain_edges(chains[..., 1, :, :].flip(-2))], -3)
    hs = h[..., 0, :, :]                                                   # [N, P, 1, 1]
    caps = torch.stack([_cap(b[..., -1, :], u[..., -1, :], hs, stroke.cap[:, None], arcs),
                        _cap(a[..., 0, :], -u[..., 0, :], hs, stroke.cap[:, None], arcs)], -3)
    n, p = curve.shape[:2]
    # Round sweeps: a disc where the inner side pivots (a bend tighter than the half width), else
    # the outer side's sector.
    disc = (pivot & (join == _ROUND)).any(0)
    discs = _pieces(disc, _discs, b, hs[..., 0], arcs, tolerance)
    sectors = _pieces(arc.any(0) & ~disc, _sectors, torch.stack([b, u, u_out], -2), hs[..., 0], arcs, tolerance)
    c = caps.shape[-2]
    edges = [torch.cat([left, right], -2), links, _chain_edges(caps), discs[0], sectors[0]]
    valid = [stroked[..., None].expand(-1, -1, 2 * k), at_vertex[..., None].expand(-1, -1, -1, 4),
             torch.stack([stroked & ~joined, starts], -1)[..., None].expand(-1, -1, -1, c - 1), discs[1], sectors[1]]
    return (torch.cat([e.reshape(n, p, -1, 4) for e in edges], 2), torch.cat([v.reshape(p, -1) for v in valid], 1))


def _vertex_chains(v: Tensor, u_in: Tensor, u_out: Tensor, shorter: Tensor, h: Tensor, join: Tensor, limit: Tensor,
                   joined: Tensor, tolerance: float) -> tuple[Tensor, Tensor, Tensor]:
    """The chains linking the offsets at vertices ``v [..., 2]`` between edges of unit directions
    ``u_in``, ``u_out`` (the shorter edge ``shorter [..., 1]`` px long), half width ``h``, join codes
    ``join`` and miter limits ``limit`` (broadcasting against ``v[..., 0]``); ``joined``: False where
    the stroke ends (the chains are not drawn; their first points are the unmitered corners, for
    the cap). Returns per side (left +h, right −h) the 3 points from the in-edge's offset end to the
    out-edge's offset start ``[..., 2, 3, 2]``, where the inner side pivots and where the outer side
    needs a round arc (bool ``[...]``, no gradient); see the module docstring."""
    n_in, n_out = _perp(u_in), _perp(u_out)
    cos = (n_in * n_out).sum(-1, keepdim=True)                             # cos α for a turn α
    outer = _outer(u_in, u_out)                                            # [..., 1] ±1
    joined, rounds = joined[..., None], (join == _ROUND)[..., None]
    turnable = (cos > -0.999) & joined                                     # the miter point is near
    # Mitering the inner side takes the kite (vertex, in-edge's corner, miter point, out-edge's corner)
    # off the outline: it must lie in both edges' quads, h·tan(α/2) and h·sin α ≤ the shorter edge.
    shorter2 = shorter * shorter
    inner_ok = turnable & (h * h * (1 - cos) <= shorter2 * (1 + cos)) & (h * h * (1 - cos * cos) <= shorter2)
    tiny = turnable & rounds & ((1 + cos) * (h + tolerance) ** 2 >= 2 * h * h)   # h/cos(α/2) ≤ h + tol
    sharp = turnable & (join == _MITER)[..., None] & ((1 + cos) * limit[..., None] ** 2 >= 2)   # within the limit
    miter = (n_in + n_out) / torch.where(turnable, 1 + cos, 1.0)           # h·miter: the miter point
    # Outer side: the miter point (a turn the tolerance hides), the tip (miter join), else a chord.
    e_out, f_out = v + outer * h * n_in, v + outer * h * n_out
    tip = torch.where(sharp | tiny, v + outer * h * miter, e_out)
    outer_chain = torch.stack([torch.where(tiny, tip, e_out), tip, torch.where(tiny, tip, f_out)], -2)
    # Inner side: the miter point, or a detour through the vertex.
    mid = torch.where(inner_ok, v - outer * h * miter, v)
    inner_chain = torch.stack([torch.where(inner_ok, mid, v - outer * h * n_in), mid,
                               torch.where(inner_ok, mid, v - outer * h * n_out)], -2)
    left = (outer > 0)[..., None]
    chains = torch.stack([torch.where(left, outer_chain, inner_chain), torch.where(left, inner_chain, outer_chain)], -3)
    return chains, (joined & ~inner_ok)[..., 0], (joined & rounds & ~tiny)[..., 0]


def _pieces(where: Tensor, make, at: Tensor, h: Tensor, arcs: int, tolerance: float) -> tuple[Tensor, Tensor]:
    """Closed polygons ``make`` builds at the vertices marked in ``where [P, S, K]`` (gathered, so
    that their cost follows their number): edges ``[N, P, D·V, 4]`` and valid ``[P, D·V]``, D the
    most pieces of one path. ``at [N, P, S, K, ...]`` holds what ``make(at, h, steps)`` needs per
    vertex, h ``[N, P, 1]`` the half widths, ``steps [N, P, 1]`` the arc edges per half turn for
    ``tolerance`` (at most ``arcs``)."""
    n, p = at.shape[:2]
    where = where.reshape(p, -1)
    count = int(where.sum(1).max()) if where.numel() else 0
    order = torch.argsort((~where).to(torch.int8), dim=1, stable=True)[:, :count]
    ok = torch.gather(where, 1, order)                                     # [P, D]
    flat = at.reshape(n, p, -1, *at.shape[4:])
    idx = order.view(1, p, count, *([1] * (flat.ndim - 3))).expand(n, -1, -1, *flat.shape[3:])
    sel = torch.gather(flat, 2, idx)                                       # [N, P, D, ...]
    cos = (1 - tolerance / h.detach().clamp_min(1e-12)).clamp(-1, 1)
    steps = torch.ceil(math.pi / (2 * torch.acos(cos))).clamp(2, arcs)    # h·(1 − cos(π/2J)) ≤ tol
    poly = _oriented(make(sel, h, steps, arcs))                            # [N, P, D, V, 2]
    edges = torch.cat([poly, poly.roll(-1, -2)], -1)
    return edges.reshape(n, p, -1, 4), ok[..., None].expand(-1, -1, poly.shape[-2]).reshape(p, -1)


def _discs(v: Tensor, h: Tensor, steps: Tensor, arcs: int) -> Tensor:
    """Discs about ``v [N, P, D, 2]`` of radius ``h [N, P, 1]``: regular polygons of 2·steps edges
    inscribed in the circles, as 2J points ``[N, P, D, 2J, 2]`` (the rest repeat the first)."""
    j = torch.arange(2 * arcs, dtype=v.dtype, device=v.device)
    angle = torch.where(j < 2 * steps[..., None], j, 0.0) * (math.pi / steps[..., None])   # [N, P, 1, 2J]
    return v[..., None, :] + h[..., None, None] * torch.stack([angle.cos(), angle.sin()], -1)


def _sectors(at: Tensor, h: Tensor, steps: Tensor, arcs: int) -> Tensor:
    """The round sweep of a turn on its outer side, from ``at [N, P, D, 3, 2]`` (vertex, unit
    direction in, out): the sector of the disc of radius ``h`` between the two edges' outer corners,
    ``[N, P, D, J + 2, 2]`` (vertex, then the arc, ``steps`` edges per half turn)."""
    v, u_in, u_out = at.unbind(-2)
    n_in, n_out = _perp(u_in), _perp(u_out)
    side = _outer(u_in, u_out)
    theta = torch.atan2(_cross(n_in, n_out), (n_in * n_out).sum(-1))[..., None]   # [N, P, D, 1] n_in → n_out
    turns = torch.ceil(theta.detach().abs() / (math.pi / steps[..., None])).clamp_min(1)
    t = (torch.arange(arcs + 1, dtype=v.dtype, device=v.device) / turns).clamp_max(1)    # [N, P, D, J + 1]
    phi = (t * theta)[..., None]
    arc = v[..., None, :] + (side * h[..., None])[..., None] * (n_in[..., None, :] * phi.cos()
                                                                 + _perp(n_in)[..., None, :] * phi.sin())
    arc = torch.where(t[..., None] < 1, arc, (v + side * h[..., None] * n_out)[..., None, :])
    return torch.cat([v[..., None, :], arc], -2)


def _cap(v: Tensor, f: Tensor, h: Tensor, kind: Tensor, arcs: int) -> Tensor:
    """Cap chains ``[..., C, 2]`` (C = max(J + 1, 4)) at the end ``v`` of a stroke along ``f``
    (unit), from the left corner v + h·n to the right one v − h·n (n the normal of f) around the
    end: a chord (butt), a half-turn arc (round), three sides of the square (square); ``kind``
    the cap codes broadcasting against ``v[..., 0]``."""
    n = _perp(f)
    c = max(arcs + 1, 4)
    left, right = v + h * n, v - h * n
    phi = (torch.arange(c, dtype=v.dtype, device=v.device) * (math.pi / arcs)).clamp_max(math.pi)[:, None]
    arc = v[..., None, :] + h[..., None] * (n[..., None, :] * phi.cos() + f[..., None, :] * phi.sin())
    arc = torch.where(phi < math.pi, arc, right[..., None, :])
    square = torch.stack([left, left + h * f, right + h * f] + [right] * (c - 3), -2)
    butt = torch.stack([left] + [right] * (c - 1), -2)
    kind = kind[..., None, None]
    return torch.where(kind == _ROUND_CAP, arc, torch.where(kind == _SQUARE, square, butt))


def _chain_edges(points: Tensor) -> Tensor:
    """The edges ``[..., C − 1, 4]`` between consecutive ``points [..., C, 2]``."""
    return torch.cat([points[..., :-1, :], points[..., 1:, :]], -1)


def _gather_segments(t: Tensor, index: Tensor) -> Tensor:
    """``t [N, P, S, ...]`` at the segments ``index [P, S]`` of the same path."""
    idx = index.view(1, *index.shape, *([1] * (t.ndim - 3)))
    return torch.gather(t, 2, idx.expand(t.shape[0], -1, -1, *t.shape[3:]))


def _neighbours(scene: SvgScene) -> tuple[Tensor, Tensor]:
    """The next and previous segment of every segment in its contour (cyclic), long ``[P, S]``."""
    nxt = scene.segment_ends() // 3
    prv = torch.empty_like(nxt).scatter_(1, nxt, torch.arange(nxt.shape[1], device=nxt.device).expand_as(nxt))
    return nxt, prv


def _unit(d: Tensor) -> Tensor:
    """``d / |d|``; (1, 0) for zero-length vectors (a zero-length subpath's caps are drawn along x,
    as resvg draws them), with a zero gradient there."""
    length2 = (d * d).sum(-1, keepdim=True)
    unit = d * length2.clamp_min(1e-30).rsqrt()
    return torch.where(length2 > 0, unit, torch.tensor([1.0, 0.0], dtype=d.dtype, device=d.device))


def _perp(u: Tensor) -> Tensor:
    """``u`` turned by +90° in (x, y): (−u_y, u_x)."""
    return torch.stack([-u[..., 1], u[..., 0]], -1)


def _cross(a: Tensor, b: Tensor) -> Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _outer(u_in: Tensor, u_out: Tensor) -> Tensor:
    """±1 ``[..., 1]``: the side (of the normals ``_perp(u)``) away from which the turn from
    direction ``u_in`` to ``u_out`` bends, i.e. the outer side of the turn."""
    return torch.where(_cross(u_in, u_out) > 0, -1.0, 1.0).to(u_in.dtype)[..., None]


def _oriented(poly: Tensor) -> Tensor:
    """Polygons ``[..., V, 2]`` in the outline's orientation (negative shoelace area, as the quads
    of the module docstring); the choice is made without gradient, the vertices keep theirs."""
    area = _cross(poly, poly.roll(-1, -2)).sum(-1).detach()
    return torch.where((area > 0)[..., None, None], poly.flip(-2), poly)
