"""Dashed strokes (``stroke-dasharray``, ``stroke-dashoffset``): every run of stroked segments is
cut by arc length along its flattened polyline into dashes, and each dash is stroked as an open
polyline with caps at both ends (:mod:`~scorestudio.renderers.svg.stroke`).

The pattern restarts at the start of every run of stroked segments (an SVG subpath), shifted by
the offset; a dash keeps the polyline's own vertices, so a dash over a corner is joined there by
the path's join (a round sweep inside a curve). The cut points are interpolated along the edges
they fall on, so the outline is differentiable w.r.t. the points and the width; the dash lengths
are fixed. Zero-length dashes draw their caps (a dot for round caps, as SVG says).

The dashes of a path depend on its geometry, so they are cut per scene and per path in Python:
dashed paths are few in files, and a path is cut into at most :data:`MAX_DASHES_PER_PATH` dashes.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from scorestudio.renderers.svg.scene import JOINS, Stroke, SvgScene
from scorestudio.renderers.svg.stroke import stroke_edges

# Dashes cut from one path of one scene: a dash array much shorter than the path (a hostile or
# diverged file) would otherwise make millions of pieces.
MAX_DASHES_PER_PATH = 10_000
_ROUND = JOINS.index("round")
_EPS = 1e-6  # px: cut points this close to a vertex take the vertex's place


def dashed(stroke: Stroke) -> Tensor:
    """Paths with a usable dash array ``[P]`` bool: some positive entry, none negative (SVG
    draws a dash array with a negative value or a zero sum solid)."""
    if stroke.dash.shape[1] == 0:
        return torch.zeros(stroke.dash.shape[0], dtype=torch.bool, device=stroke.dash.device)
    return (stroke.dash.sum(1) > 0) & (stroke.dash >= 0).all(1)


def dash_edges(curve: Tensor, scene: SvgScene, arcs: int, tolerance: float) -> tuple[Tensor, Tensor]:
    """Outline edges of the dashes of the dashed paths (:func:`dashed`), ``[N, P, E, 4]``, and
    ``valid [P, E]`` (False for the other paths), from ``curve [N, P, S, K+1, 2]``
    (:func:`~scorestudio.renderers.svg.rasterizer.polyline`). Scenes with fewer dash edges than
    another are padded with zero-length edges."""
    n, p = curve.shape[:2]
    which = dashed(scene.stroke).nonzero(as_tuple=True)[0].tolist()
    blocks = {i: [_path_dashes(curve, scene, b, i, arcs, tolerance) for b in range(n)] for i in which}
    e = max((x.shape[0] for per in blocks.values() for x in per), default=0)
    edges = curve.new_zeros(n, p, e, 4)
    valid = torch.zeros(p, e, dtype=torch.bool, device=curve.device)
    for i, per in blocks.items():
        for b, x in enumerate(per):
            pad = x[:1, :2].repeat(1, 2).expand(e - x.shape[0], 4) if len(x) else curve[b, i, 0, :1].repeat(1, 2).expand(e, 4)
            edges[b, i] = torch.cat([x, pad])
        valid[i] = True
    return edges, valid


def _path_dashes(curve: Tensor, scene: SvgScene, b: int, i: int, arcs: int, tolerance: float) -> Tensor:
    """Outline edges ``[E, 4]`` of the dashes of path ``i`` in scene ``b`` (unused ones as
    zero-length edges)."""
    stroke = scene.stroke
    pattern = stroke.dash[i]
    pattern = pattern[: 2 * int((pattern > 0).nonzero().max() // 2 + 1)]    # without the 0-padding
    dashes = []
    for run in _runs(scene, i):
        points, junction = _run_polyline(curve[b, i], run)
        dashes += _cut(points, junction, pattern, float(stroke.dash_offset[i]), int(stroke.join[i]))
    if not dashes:
        return curve.new_zeros(0, 4)
    return _outline(dashes, stroke, b, i, curve, arcs, tolerance)


def _runs(scene: SvgScene, i: int) -> list:
    """The runs of consecutive stroked segments of path ``i`` (segment indices in drawing order);
    a closed, fully stroked contour is one run from its first segment."""
    stroked = scene.stroke.stroked[i].tolist()
    nxt = (scene.segment_ends()[i] // 3).tolist()
    prv = {j: s for s, j in enumerate(nxt)}
    runs, seen = [], set()
    starts = [s for s in range(len(nxt)) if stroked[s] and not stroked[prv[s]]]
    closed = [s for s in range(len(nxt)) if stroked[s] and (s == 0 or nxt[s - 1] != s) and s not in starts]
    for s in starts + closed:
        if s in seen:
            continue
        run = []
        while stroked[s] and s not in seen:
            seen.add(s)
            run.append(s)
            s = nxt[s]
        runs.append(run)
    return runs


def _run_polyline(curve: Tensor, run: list) -> tuple[Tensor, list]:
    """The polyline of a run, ``[V, 2]`` from ``curve [S, K+1, 2]``, and which of its vertices
    are segment junctions."""
    k = curve.shape[1] - 1
    points = torch.cat([curve[run[0], :1]] + [curve[s, 1:] for s in run])
    junction = [v % k == 0 for v in range(points.shape[0])]
    return points, junction


def _cut(points: Tensor, junction: list, pattern: Tensor, offset: float, join: int) -> list:
    """The dashes of one polyline ``points [V, 2]``: a list of (points ``[W, 2]``, join codes of
    the W − 2 inner vertices)."""
    length = (points[1:] - points[:-1]).norm(dim=-1)                      # [V − 1]
    along = torch.cat([length.new_zeros(1), length.cumsum(0)])           # [V] arc length at each vertex
    marks = along.detach().tolist()
    total = marks[-1]
    ends = torch.cat([pattern.new_zeros(1), pattern.cumsum(0)]).tolist()
    period = ends[-1]
    x = -(offset % period)
    if (total - x) / period * len(pattern) / 2 > MAX_DASHES_PER_PATH:
        raise ValueError(f"a stroke-dasharray of period {period:.3g} px cuts a {total:.3g} px path into more "
                         f"than MAX_DASHES_PER_PATH = {MAX_DASHES_PER_PATH} dashes "
                         "(scorestudio.renderers.svg.dash); use longer dashes")
    dashes = []
    while x <= total:
        for j in range(0, len(pattern), 2):
            lo, hi = max(x + ends[j], 0.0), min(x + ends[j + 1], total)
            if lo <= hi and x + ends[j + 1] >= 0 and x + ends[j] <= total:
                dashes.append(_dash(points, along, marks, junction, lo, hi, join))
        x += period
    return dashes


def _dash(points: Tensor, along: Tensor, marks: list, junction: list, lo: float, hi: float, join: int):
    """The dash from arc length ``lo`` to ``hi``: its points (the cut points and the polyline's
    vertices between them) and the join codes of its inner vertices."""
    inner = [v for v, m in enumerate(marks) if lo + _EPS < m < hi - _EPS]
    first, last = _at(points, along, marks, lo), _at(points, along, marks, hi)
    if hi - lo <= _EPS and not inner:                                    # a dot: give the caps a direction
        v = min(max(int(torch.searchsorted(along.detach(), torch.tensor(lo, dtype=along.dtype))), 1), len(marks) - 1)
        tangent = points[v] - points[v - 1]
        tangent = tangent / tangent.norm().clamp_min(1e-12) * _EPS
        return torch.stack([first - tangent, first + tangent]), []
    pts = torch.cat([first[None], points[inner], last[None]])
    return pts, [join if junction[v] else _ROUND for v in inner]


def _at(points: Tensor, along: Tensor, marks: list, x: float) -> Tensor:
    """The point at arc length ``x`` on the polyline (interpolated, differentiable)."""
    v = min(max(int(torch.searchsorted(along.detach(), torch.tensor(x, dtype=along.dtype), right=True)), 1),
            len(marks) - 1)
    span = along[v] - along[v - 1]
    t = ((x - along[v - 1]) / torch.where(span > 0, span, torch.ones_like(span))).clamp(0, 1)
    return points[v - 1] + t * (points[v] - points[v - 1])


def _outline(dashes: list, stroke: Stroke, b: int, i: int, curve: Tensor, arcs: int, tolerance: float) -> Tensor:
    """Stroke the dashes as open polylines of one scene: each dash one segment (its longest edge
    split so that all have the same number of edges) followed by an unstroked closing segment."""
    k = max(pts.shape[0] - 1 for pts, _ in dashes)
    segments, joins = [], []
    for pts, codes in dashes:
        pts, codes = _split_longest(pts, codes, k)
        segments += [pts, pts[:1].expand(k + 1, 2)]
        joins += [codes + [_ROUND], [_ROUND] * k]                         # the last vertex: the dash's end
    d = len(dashes)
    contour = torch.arange(d, device=curve.device).repeat_interleave(2)[None]
    scene = SvgScene(curve.new_zeros(1, 1, 6 * d, 2), curve.new_zeros(1, 1, 4), 1, 1, contour=contour,
                     stroke=Stroke(stroke.color[b:b + 1, i:i + 1], stroke.width[b:b + 1, i:i + 1],
                                   stroked=torch.tensor([[True, False] * d], device=curve.device),
                                   join=stroke.join[i:i + 1], miter_limit=stroke.miter_limit[i:i + 1],
                                   cap=stroke.cap[i:i + 1]))
    codes = torch.tensor(joins, device=curve.device)[None]               # [1, 2D, K]
    edges, valid = stroke_edges(torch.stack(segments)[None, None], scene, arcs, tolerance, codes)
    edges, valid = edges[0, 0], valid[0]
    return torch.where(valid[:, None], edges, edges[:1, :2].detach().repeat(1, 2))


def _split_longest(pts: Tensor, codes: list, k: int) -> tuple[Tensor, Optional[list]]:
    """``pts [W, 2]`` with its longest edge cut into equal parts so that it has ``k`` edges; the
    new inner vertices lie on a straight edge (round code: the outline miters them)."""
    extra = k - (pts.shape[0] - 1)
    if extra == 0:
        return pts, codes
    e = int((pts[1:] - pts[:-1]).detach().norm(dim=-1).argmax())
    t = torch.arange(1, extra + 1, dtype=pts.dtype, device=pts.device)[:, None] / (extra + 1)
    middle = pts[e] + t * (pts[e + 1] - pts[e])
    return torch.cat([pts[: e + 1], middle, pts[e + 1:]]), codes[:e] + [_ROUND] * extra + codes[e:]
