"""resvg's anti-aliased fill of flat-coloured paths, reproduced: the image a user gets when resvg
draws a written SVG, computed from an :class:`SvgScene` (scene 0, fills only).

Hand-written because the reference renderer (resvg, through tiny-skia) is not differentiable and
draws only files, while training needs its exact coverage on our own path representation: to
report the image the user will see, and to optimise that image (straight-through: this forward,
the differentiable rasterizer's backward, :func:`straight_through`). Its anti-aliasing differs from
any area or distance coverage along curved edges, because tiny-skia flattens curves coarsely and in
fixed point. It follows tiny-skia's ``scan::path_aa`` (``SUPERSAMPLE_SHIFT = 2``) step by step:

1. **Monotone pieces** (f32, ``path_geometry::chop_cubic_at_y_extrema``): every cubic is cut where
   its y turns, and the cut points' neighbours are flattened onto the extremum.
2. **Fixed-point flattening** (``edge.rs``, ``CubicEdge``): the control points at 4× the resolution
   in FDot6 (1/64 of a quarter pixel, truncated); 2^shift lines per piece, shift from the control
   points' distance to the chord (``cubic_delta_from_line``, ``diff_to_shift`` + 1, at most 6);
   vertices by forward differencing in FDot16 with tiny-skia's shifts, y pinned non-decreasing.
3. **Lines** (``LineEdge::update``): first and last quarter-pixel scanline (rounded), slope in
   FDot16 (truncating division), x at the first scanline's centre; x advances by the slope.
4. **Scan conversion** (``scan::path::walk_edges``): at each scanline centre the crossing x is
   rounded to a quarter pixel; the sub-samples right of a crossing get its winding (+1 down, −1
   up); nonzero or even-odd says inside.
5. **Coverage** (``SuperBlitter``, ``AlphaRuns``): per pixel and sub-row 16 per covered
   sub-sample, 64 for a whole sub-row (63 on the fourth), summed (at most 255).
6. **Compositing** in 8 bits as tiny-skia's low-precision pipeline does: an opaque paint is a lerp
   ``(d·(255 − a) + s·a + 255) >> 8``; a translucent one is scaled by the coverage, then drawn
   source-over.

Paths whose pixel bounds leave the canvas go through tiny-skia's edge clipper (``edge_clipper.rs``)
first: pieces also cut where x turns, then cut at the canvas sides, the parts beyond the left or
right side replaced by vertical lines on it, those above or below dropped. The cut points come
from tiny-skia's path-ops root finder (``path64``), ported with its quirks, since where it finds
no root the fallback cut is up to ¼ px off and bends the clipped edge visibly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from scorestudio.renderers.svg.scene import SvgScene

F32 = np.float32
MAX_SHIFT = 6           # tiny-skia's MAX_COEFF_SHIFT: at most 64 lines per monotone cubic
SUB = 4                 # sub-samples per pixel side (1 << SUPERSAMPLE_SHIFT)


def render(scene: SvgScene, as_written: bool = True) -> Tensor:
    """Scene 0 as resvg draws it, RGB ``[3, H, W]`` in [0, 1] (multiples of 1/255). With
    ``as_written`` the points are rounded as :func:`~scorestudio.renderers.svg.io.svg_string`
    writes them (3 decimals) and the colours to 8 bits, so that this is the written file's image.
    Fills only: strokes, gradients and clips raise a ``ValueError``."""
    if scene.stroke is not None or scene.fill_paint is not None or scene.clip is not None:
        raise ValueError("the resvg-like render draws flat fills only (no stroke, gradient or clip)")
    pts = scene.points[0].detach().double().cpu().numpy()                # [P, 3S, 2]
    if as_written:
        pts = np.round(pts, 3)
    fill = scene.fill[0].detach().double().clamp(0, 1).cpu().numpy()     # [P, 4]
    if scene.opacity is not None:
        fill[:, 3] *= scene.opacity[0].detach().double().cpu().numpy()
    ends = scene.segment_ends().cpu().numpy()
    contour = scene.contour.cpu().numpy()
    evenodd = scene.fill_rule.cpu().numpy()
    canvas = np.empty((scene.height, scene.width, 3), np.int64)
    canvas[:] = np.round(scene.backgrounds()[0].detach().double().clamp(0, 1).cpu().numpy() * 255).astype(np.int64)
    for p in range(scene.num_paths):
        real = np.flatnonzero(contour[p] >= 0)
        if not len(real) or fill[p, 3] <= 0:
            continue
        seg = pts[p].reshape(-1, 3, 2)[real]
        cubics = np.concatenate([seg, pts[p][ends[p][real]][:, None]], 1).astype(F32)    # [C, 4, 2]
        alpha = coverage(cubics, bool(evenodd[p]), scene.width, scene.height)
        _paint(canvas, alpha, fill[p])
    out = torch.from_numpy(canvas.transpose(2, 0, 1).astype(np.float32) / 255)
    return out.to(scene.points.device)


def straight_through(soft: Tensor, scenes: list[SvgScene]) -> Tensor:
    """``soft [K, 3, H, W]`` (the differentiable render of the K ``scenes``) with its values
    replaced by each scene's resvg-like render (:func:`render`, not rounded as written): the
    forward pass is what resvg draws, the gradient is the differentiable coverage's."""
    hard = torch.stack([render(s, as_written=False) for s in scenes]).to(soft)
    return soft + (hard - soft).detach()


# ------------------------------------------------------------------------------ geometry (f32)


def _unit_divide(numer: np.ndarray, denom: np.ndarray) -> np.ndarray:
    """tiny-skia's ``valid_unit_divide``: numer / denom when it lies in (0, 1), else NaN."""
    flip = numer < 0
    n, d = np.where(flip, -numer, numer), np.where(flip, -denom, denom)
    ok = (d != 0) & (n != 0) & (n < d)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (n / np.where(ok, d, F32(1))).astype(F32)
    return np.where(ok & (r > 0) & (r < 1), r, F32(np.nan))


def _unit_quad_roots(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tiny-skia's ``find_unit_quad_roots`` of a·t² + b·t + c, vectorised: the roots in (0, 1),
    ascending, NaN-padded, ``([M], [M])``."""
    linear = _unit_divide(-c, b)
    disc = b.astype(np.float64) ** 2 - 4.0 * a.astype(np.float64) * c.astype(np.float64)
    r = np.sqrt(np.maximum(disc, 0)).astype(F32)
    q = np.where(b < 0, -(b - r) / F32(2), -(b + r) / F32(2)).astype(F32)
    r1, r2 = _unit_divide(q, a), _unit_divide(c, q)
    lo, hi = np.fmin(r1, r2), np.fmax(r1, r2)
    hi = np.where(lo == hi, F32(np.nan), hi)                                # a double root counts once
    lo = np.where(np.isnan(lo), hi, lo)
    hi = np.where(lo == hi, F32(np.nan), hi)
    real = (disc >= 0) & np.isfinite(r)
    quad = a != 0
    first = np.where(quad, np.where(real, lo, np.nan), linear).astype(F32)
    second = np.where(quad & real, hi, np.nan).astype(F32)
    return first, second


def _chop_at(src: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``chop_cubic_at2``: de Casteljau at ``t [M]`` of cubics ``[M, 4, 2]`` → ``[M, 7, 2]`` (in
    the cubics' float type)."""
    t = t[:, None].astype(src.dtype)
    p0, p1, p2, p3 = src[:, 0], src[:, 1], src[:, 2], src[:, 3]
    lerp = lambda u, v: (u + (v - u) * t).astype(src.dtype)  # noqa: E731
    ab, bc, cd = lerp(p0, p1), lerp(p1, p2), lerp(p2, p3)
    abc, bcd = lerp(ab, bc), lerp(bc, cd)
    return np.stack([p0, ab, abc, lerp(abc, bcd), bcd, cd, p3], 1)


def _chop_extrema(cubics: np.ndarray, axis: int) -> np.ndarray:
    """``chop_cubic_at_{y,x}_extrema`` of ``cubics [M, 4, 2]``: pieces monotone along ``axis``
    ``[M', 4, 2]`` (1 to 3 per cubic), the points next to each cut flattened onto it."""
    v = cubics[..., axis]
    a, b, c, d = v[:, 0], v[:, 1], v[:, 2], v[:, 3]
    t1, t2 = _unit_quad_roots((d - a + F32(3) * (b - c)).astype(F32), (F32(2) * (a - b - b + c)).astype(F32),
                              (b - a).astype(F32))
    roots = (~np.isnan(t1)).astype(int) + (~np.isnan(t2)).astype(int)
    out = np.repeat(cubics[:, None], 3, 1).reshape(-1, 12, 2)[:, :10].copy()   # [M, 10, 2]
    one = roots >= 1
    first = _chop_at(cubics[one], t1[one])                               # [m, 7, 2]
    out[one, :7] = first
    two = roots == 2
    sub = two[one]
    t = _unit_divide((t2[two] - t1[two]).astype(F32), (F32(1) - t1[two]).astype(F32))
    rest = first[sub, 3:7]
    second = np.repeat(rest[:, 3:4], 7, 1)                               # degenerate when t is out of range
    ok = ~np.isnan(t)
    second[:, :4] = rest
    second[ok] = _chop_at(rest[ok], t[ok])
    out[two, 3:10] = second
    out[one, 2, axis] = out[one, 3, axis]
    out[one, 4, axis] = out[one, 3, axis]
    out[two, 5, axis] = out[two, 6, axis]
    out[two, 7, axis] = out[two, 6, axis]
    pieces = [out[roots >= k, 3 * k: 3 * k + 4] for k in range(3)]
    return np.concatenate(pieces, 0)


# ------------------------------------------------------------------------------ fixed point


def _tdiv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division truncated toward zero (Rust's ``/``)."""
    q = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -q, q)


def _bit_length(v: np.ndarray) -> np.ndarray:
    return np.where(v > 0, np.frexp(v.astype(np.float64))[1], 0)


def _delta_from_line(a, b, c, d) -> np.ndarray:
    """``cubic_delta_from_line``: the larger distance of the curve at t = 1/3, 2/3 from the
    control points (FDot6), with tiny-skia's 19/512 for 1/27."""
    one = ((a * 8 - b * 15 + 6 * c + d) * 19) >> 9
    two = ((a + 6 * b - c * 15 + d * 8) * 19) >> 9
    return np.maximum(np.abs(one), np.abs(two))


def _cubic_lines(pieces: np.ndarray) -> tuple[np.ndarray, ...]:
    """tiny-skia's ``CubicEdge`` of monotone cubics ``[M, 4, 2]`` (px, f32): their lines as
    ``(x0, y0, x1, y1)`` FDot16 vertices ``[L]`` each and the winding ``[L]``."""
    fixed = np.trunc(pieces * F32(1 << (2 + 6))).astype(np.int64)        # FDot6 at 4× (truncating `as i32`)
    down = fixed[:, 0, 1] > fixed[:, 3, 1]
    fixed[down] = fixed[down, ::-1]
    winding = np.where(down, -1, 1)
    x0, x1, x2, x3 = (fixed[:, i, 0] for i in range(4))
    y0, y1, y2, y3 = (fixed[:, i, 1] for i in range(4))
    keep = ((y0 + 32) >> 6) != ((y3 + 32) >> 6)
    dx, dy = np.abs(_delta_from_line(x0, x1, x2, x3)), np.abs(_delta_from_line(y0, y1, y2, y3))
    dist = np.where(dx > dy, dx + (dy >> 1), dy + (dx >> 1))
    dist = (dist + (1 << 4)) >> 5
    shift = np.minimum((_bit_length(dist) >> 1) + 1, MAX_SHIFT)
    up = np.where(shift - 4 < 0, 10 - shift, 6)
    dshift = np.maximum(shift - 4, 0)

    def coefficients(p0, p1, p2, p3):
        b = (3 * (p1 - p0)) << up
        c = (3 * (p0 - p1 - p1 + p2)) << up
        d = (p3 + 3 * (p1 - p2) - p0) << up
        return (b + (c >> shift) + (d >> (2 * shift)), 2 * c + ((3 * d) >> (shift - 1)), (3 * d) >> (shift - 1))

    count = 1 << shift
    m, steps = len(pieces), int(count.max()) if len(pieces) else 1
    vx = np.empty((m, steps + 1), np.int64)
    vy = np.empty((m, steps + 1), np.int64)
    vx[:, 0], vy[:, 0] = x0 << 10, y0 << 10
    state = [list(coefficients(x0, x1, x2, x3)), list(coefficients(y0, y1, y2, y3))]
    for k in range(1, steps + 1):
        for v, s in ((vx, state[0]), (vy, state[1])):
            v[:, k] = v[:, k - 1] + (s[0] >> dshift)
            s[0] = s[0] + (s[1] >> shift)
            s[1] = s[1] + s[2]
    k = np.arange(steps + 1)
    last = k[None] >= count[:, None]
    vx = np.where(last, (x3 << 10)[:, None], vx)
    vy = np.maximum.accumulate(np.where(last, (y3 << 10)[:, None], vy), 1)    # y pinned non-decreasing
    live = (k[None, 1:] <= count[:, None]) & keep[:, None]
    return (vx[:, :-1][live], vy[:, :-1][live], vx[:, 1:][live], vy[:, 1:][live],
            np.broadcast_to(winding[:, None], live.shape)[live])


def _line_edges(x0, y0, x1, y1) -> tuple[np.ndarray, ...]:
    """``LineEdge::update`` of FDot6 lines (y0 ≤ y1): ``(first_y, last_y, x, dx, keep)``, x and
    dx FDot16 at the first quarter scanline's centre, rows in quarter pixels."""
    top, bottom = (y0 + 32) >> 6, (y1 + 32) >> 6
    keep = top != bottom
    slope = _tdiv((x1 - x0) << 16, np.where(keep, y1 - y0, 1))
    slope = np.clip(slope, -(2 ** 31), 2 ** 31 - 1)
    dy = (top << 6) + 32 - y0
    x = (x0 + ((slope * dy) >> 16)) << 10
    return top, bottom - 1, x, slope, keep


def _fixed_lines(lines: np.ndarray) -> tuple[np.ndarray, ...]:
    """``LineEdge::new``'s start: lines ``[L, 4]`` (x0, y0, x1, y1 px, f32) in FDot6 at 4×, ordered
    downwards, and their winding."""
    fixed = np.trunc(lines * F32(1 << (2 + 6))).astype(np.int64)
    down = fixed[:, 1] > fixed[:, 3]
    fixed[down] = fixed[down][:, [2, 3, 0, 1]]
    return fixed[:, 0], fixed[:, 1], fixed[:, 2], fixed[:, 3], np.where(down, -1, 1)


# ------------------------------------------------------------------------------ edge clipper


def _clip(pieces: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """tiny-skia's ``EdgeClipper`` for y-monotone ``pieces [M, 4, 2]`` against the canvas:
    ``(cubics [M', 4, 2], vertical lines [V, 4])``. Pieces that reach no canvas row are dropped;
    the rest are cut where x turns, and those that leave the canvas are cut at its sides."""
    box_lo, box_hi = pieces.min(1), pieces.max(1)
    pieces = pieces[(box_hi[:, 1] > 0) & (box_lo[:, 1] < height)]
    pieces = _chop_extrema(pieces, 0)
    lo, hi = pieces.min(1), pieces.max(1)
    inside = (lo[:, 0] >= 0) & (lo[:, 1] >= 0) & (hi[:, 0] <= width) & (hi[:, 1] <= height)
    cubics, lines = [pieces[inside]], []
    for piece in pieces[~inside]:
        _clip_mono(piece.copy(), F32(width), F32(height), cubics, lines)
    cubics = [np.asarray(c, F32).reshape(-1, 4, 2) for c in cubics]
    return np.concatenate(cubics), np.asarray(lines, F32).reshape(-1, 4)


def _clip_mono(pts: np.ndarray, right: np.float32, bottom: np.float32, cubics: list, lines: list) -> None:
    """``EdgeClipper::clip_mono_cubic`` of one x- and y-monotone cubic ``pts [4, 2]`` (f32)."""
    reverse = bool(pts[0, 1] > pts[3, 1])
    if reverse:
        pts = pts[::-1].copy()
    if pts[3, 1] <= 0 or pts[0, 1] >= bottom:
        return
    pts = _chop_in_y(pts, bottom)
    if pts[0, 0] > pts[3, 0]:
        pts, reverse = pts[::-1].copy(), not reverse

    def vline(x, y0, y1):
        lines.append([x, y1, x, y0] if reverse else [x, y0, x, y1])

    def push(p):
        cubics.append(p[::-1] if reverse else p)

    if pts[3, 0] <= 0:
        return vline(0, pts[0, 1], pts[3, 1])
    if pts[0, 0] >= right:
        return vline(right, pts[0, 1], pts[3, 1])
    if pts[0, 0] < 0:
        tmp = _chop_mono_at(pts, 0, F32(0))
        vline(0, tmp[0, 1], tmp[3, 1])
        tmp[3, 0] = 0
        tmp[4, 0] = max(tmp[4, 0], F32(0))
        pts[:3] = tmp[3:6]
    if pts[3, 0] > right:
        tmp = _chop_mono_at(pts, 0, right)
        tmp[3, 0] = right
        tmp[2, 0] = min(tmp[2, 0], right)
        push(tmp[:4].copy())
        vline(right, tmp[3, 1], tmp[6, 1])
    else:
        push(pts)


def _chop_in_y(pts: np.ndarray, bottom: np.float32) -> np.ndarray:
    """``chop_cubic_in_y``: a y-increasing cubic ``[4, 2]`` cut to rows 0 … ``bottom``."""
    if pts[0, 1] < 0:
        tmp = _chop_mono_at(pts, 1, F32(0))
        if (tmp[3:6, 1] < 0).all():
            tmp = _chop_mono_at(tmp[3:7].copy(), 1, F32(0))
        tmp[3, 1] = 0
        tmp[4, 1] = max(tmp[4, 1], F32(0))
        pts[:3] = tmp[3:6]
    if pts[3, 1] > bottom:
        tmp = _chop_mono_at(pts, 1, bottom)
        tmp[3, 1] = bottom
        tmp[2, 1] = min(tmp[2, 1], bottom)
        pts[1:4] = tmp[1:4]
    return pts


def _chop_mono_at(pts: np.ndarray, axis: int, value: np.float32) -> np.ndarray:
    """A monotone cubic ``[4, 2]`` cut where coordinate ``axis`` equals ``value`` → ``[7, 2]``
    (f32): at the crossing tiny-skia's path-ops solver finds (``cubic_dchop_at_intercept``, cut in
    f64), else at its coarse ``mono_cubic_closest_t`` search (within ¼ px, cut in f32). The solver
    often finds nothing (its binary search compares signed differences), and the coarse cut then
    bends the clipped edge: reproduced as it is."""
    p = pts.astype(np.float64)
    t = _intercept(p, axis, float(value))
    if t is not None:
        return _chop_at64(p, t).astype(F32)
    return _chop_at(pts[None], np.array([_closest_t(pts[:, axis], value)], F32))[0]


def _chop_at64(p: np.ndarray, t: float) -> np.ndarray:
    """``Cubic64::chop_at`` (f64 de Casteljau, with its own sums at t = ½) → ``[7, 2]``."""
    if t == 0.5:
        return np.stack([p[0], (p[0] + p[1]) / 2, (p[0] + 2 * p[1] + p[2]) / 4, (p[0] + 3 * (p[1] + p[2]) + p[3]) / 8,
                         (p[1] + 2 * p[2] + p[3]) / 4, (p[2] + p[3]) / 2, p[3]])
    return _chop_at(p[None], np.array([t]))[0]


# tiny-skia's path-ops tolerances (path64/mod.rs)
_DBL_EPS, _FLT_EPS = float(np.finfo(np.float64).eps), float(np.finfo(F32).eps)


def _ulps_equal(a: float, b: float) -> bool:
    """``almost_dequal_ulps`` (within 16 f32 ulps)."""
    if abs(a) >= 3.4028235e38 or abs(b) >= 3.4028235e38:
        return abs(a - b) / max(abs(a), abs(b)) < _FLT_EPS * 16

    def bits(x: float) -> int:
        b = int(np.array(x, F32).view(np.int32))
        return -(b & 0x7FFFFFFF) if b < 0 else b

    return bits(a) < bits(b) + 16 and bits(b) < bits(a) + 16


def _small_vs(x: float, other: float) -> bool:
    return x == 0.0 or abs(x) < abs(other * _FLT_EPS)


def _quad_roots(a: float, b: float, c: float) -> list[float]:
    """``quad64::roots_real``."""
    def zero_a() -> list[float]:
        if abs(b) < _DBL_EPS:
            return [0.0] if c == 0.0 else []
        return [-c / b]

    if a == 0.0:
        return zero_a()
    p, q = b / (2.0 * a), c / a
    if abs(a) < _DBL_EPS and (abs(p) > 1 / _FLT_EPS or abs(q) > 1 / _FLT_EPS):
        return zero_a()
    p2 = p * p
    if not _ulps_equal(p2, q) and p2 < q:
        return []
    root = math.sqrt(p2 - q) if p2 > q else 0.0
    s0, s1 = root - p, -root - p
    return [s0] if _ulps_equal(s0, s1) else [s0, s1]


def _valid_ts(roots: list[float]) -> list[float]:
    """``push_valid_ts``: roots within [0, 1] (up to an ε), clamped, distinct."""
    out: list[float] = []
    for t in roots:
        if t > -_DBL_EPS and t < 1.0 + _DBL_EPS:
            t = min(max(t, 0.0), 1.0)
            if not any(abs(u - t) < _DBL_EPS for u in out):
                out.append(t)
    return out


def _cube_root(x: float) -> float:
    """``cube_root``: Kahan's bit-hack start and three Halley steps."""
    if abs(x) < _FLT_EPS ** 3:
        return 0.0
    d = abs(x)
    hi = int(np.array(d).view(np.uint64)) >> 32
    a = float(np.array((hi // 3 + 715094163) << 32, np.uint64).view(np.float64))
    for _ in range(3):
        a3 = a * a * a
        a = a * (a3 + d + d) / (a3 + a3 + d)
    return -a if x < 0 else a


def _cubic_roots(a: float, b: float, c: float, d: float) -> list[float]:
    """``cubic64::roots_real`` of a·t³ + b·t² + c·t + d."""
    if abs(a) < _DBL_EPS and _small_vs(a, b) and _small_vs(a, c) and _small_vs(a, d):
        return _quad_roots(b, c, d)
    if _small_vs(d, a) and _small_vs(d, b) and _small_vs(d, c):
        roots = _quad_roots(a, b, c)
        return roots if any(abs(r) < _DBL_EPS for r in roots) else roots + [0.0]
    if abs(a + b + c + d) < _DBL_EPS:
        roots = _quad_roots(a, a + b, -d)
        return roots if any(_ulps_equal(r, 1.0) for r in roots) else roots + [1.0]
    inv = 1.0 / a
    a, b, c = b * inv, c * inv, d * inv
    a2 = a * a
    q = (a2 - b * 3.0) / 9.0
    r = (2.0 * a2 * a - 9.0 * a * b + 27.0 * c) / 54.0
    q3 = q * q * q
    adiv3 = a / 3.0
    if r * r - q3 < 0.0:
        theta = math.acos(min(max(r / math.sqrt(q3), -1.0), 1.0))
        neg2 = -2.0 * math.sqrt(q)
        out = [neg2 * math.cos(theta / 3.0) - adiv3]
        second = neg2 * math.cos((theta + 2.0 * math.pi) / 3.0) - adiv3
        if not _ulps_equal(out[0], second):
            out.append(second)
        third = neg2 * math.cos((theta - 2.0 * math.pi) / 3.0) - adiv3
        if not _ulps_equal(out[0], third) and (len(out) == 1 or not _ulps_equal(out[1], third)):
            out.append(third)
        return out
    big = _cube_root(abs(r) + math.sqrt(r * r - q3))
    if r > 0.0:
        big = -big
    if big != 0.0:
        big += q / big
    out = [big - adiv3]
    if _ulps_equal(out[0], q3):
        other = -big / 2.0 - adiv3
        if not _ulps_equal(out[0], other):
            out.append(other)
    return out


def _point_at(p: np.ndarray, t: float) -> tuple[float, float]:
    """``Cubic64::point_at_t``."""
    if t == 0.0:
        return float(p[0, 0]), float(p[0, 1])
    if t == 1.0:
        return float(p[3, 0]), float(p[3, 1])
    s = 1.0 - t
    w = (s * s * s, 3.0 * (s * s) * t, 3.0 * s * (t * t), (t * t) * t)
    return tuple(w[0] * float(p[0, k]) + w[1] * float(p[1, k]) + w[2] * float(p[2, k]) + w[3] * float(p[3, k])
                 for k in range(2))


def _intercept(p: np.ndarray, axis: int, value: float) -> float | None:
    """``vertical_intersect`` / ``horizontal_intersect`` of the f64 cubic ``p [4, 2]`` with the line
    where coordinate ``axis`` is ``value``: the first root tiny-skia keeps, or None."""
    v = [float(x) for x in p[:, axis]]
    a = v[3] - (v[0] - v[1] * 3.0 + v[2] * 3.0)                          # cubic64::coefficients
    b = v[2] * 3.0 + (3.0 * v[0] - 2.0 * (v[1] * 3.0))
    c = v[1] * 3.0 - 3.0 * v[0]
    roots = _cubic_roots(a, b, c, v[0] - value)
    found = _valid_ts(roots)
    for s in roots:                                    # roots just outside [0, 1] count as its ends
        end = 1.0 if s >= 1.0 + _DBL_EPS and (1.0 - s) * (1.00005 - s) <= 0 else (
            0.0 if s <= -_DBL_EPS and (-0.00005 - s) * (0.0 - s) <= 0 else None)
        if end is not None and not any(abs(u - end) < _DBL_EPS for u in found):
            found.append(end)
    for t in found:
        if abs(_point_at(p, t)[axis] - value) >= _DBL_EPS:
            found = _search_roots(p, axis, value)
            break
    return found[0] if found else None


def _search_roots(p: np.ndarray, axis: int, value: float) -> list[float]:
    """``Cubic64::search_roots``: a binary search between consecutive extrema and inflections."""
    v = [float(x) for x in p[:, axis]]
    ts = _valid_ts(_quad_roots(v[3] - v[0] + 3.0 * (v[1] - v[2]), 2.0 * (v[0] - v[1] - v[1] + v[2]), v[1] - v[0]))
    ax, ay = p[1] - p[0]
    bx, by = p[2] - 2.0 * p[1] + p[0]
    cx, cy = p[3] + 3.0 * (p[1] - p[2]) - p[0]
    ts += _valid_ts(_quad_roots(bx * cy - by * cx, ax * cy - ay * cx, ax * by - ay * bx))
    ts = sorted(ts + [0.0]) + [1.0]
    out = []
    for lo, hi in zip(ts[:-1], ts[1:]):
        if lo != hi:
            t = _binary_search(p, lo, hi, axis, value)
            if t >= 0.0:
                if len(out) >= 3:
                    return []
                out.append(t)
    return out


def _binary_search(p: np.ndarray, lo: float, hi: float, axis: int, value: float) -> float:
    """``Cubic64::binary_search``, with its signed "approximately equal" (a point with smaller
    coordinates than the current one counts as the same point, ending the search)."""
    def same(u, w) -> bool:
        return u[0] - w[0] < _FLT_EPS / 2 and u[1] - w[1] < _FLT_EPS / 2

    t = (lo + hi) / 2.0
    step = (t - lo) / 2.0
    here = _point_at(p, t)
    dist = here[axis] - value
    while True:
        prior = max(lo, t - step)
        less = _point_at(p, prior)
        if same(less, here):
            return -1.0
        less_dist = less[axis] - value
        last_step, step = step, step / 2.0
        if (dist > less_dist) if dist > 0.0 else (dist < less_dist):
            t = prior
        else:
            nxt = t + last_step
            if nxt > hi:
                return -1.0
            more = _point_at(p, nxt)
            if same(more, here):
                return -1.0
            more_dist = more[axis] - value
            if (dist <= more_dist) if dist > 0.0 else (dist >= more_dist):
                continue
            t = nxt
        here = _point_at(p, t)
        dist = here[axis] - value
        if abs(here[axis] - value) < _DBL_EPS:
            return t


def _closest_t(src: np.ndarray, x: np.float32) -> np.float32:
    """tiny-skia's ``mono_cubic_closest_t`` (f32 search by halving steps)."""
    t, step, best, closest = F32(0.5), F32(0.25), F32(0.5), F32(np.finfo(F32).max)
    d = src[0]
    a = src[3] + F32(3) * (src[1] - src[2]) - d
    b = F32(3) * (src[2] - src[1] - src[1] + d)
    c = F32(3) * (src[1] - d)
    x = x - d
    while True:
        loc = ((a * t + b) * t + c) * t
        dist = abs(loc - x)
        if closest > dist:
            closest, best = dist, t
        last = t
        t = t + (step if loc < x else -step)
        step = step * F32(0.5)
        if not (closest > 0.25 and last != t):
            return best


# ------------------------------------------------------------------------------ scan conversion


def coverage(cubics: np.ndarray, evenodd: bool, width: int, height: int) -> np.ndarray:
    """tiny-skia's anti-aliased coverage ``[H, W]`` (int, 0–255) of one path: the closed contours
    of cubics ``cubics [C, 4, 2]`` (px, f32), filled by the even-odd or nonzero rule."""
    alpha = np.zeros((height, width), np.int64)
    if not len(cubics):
        return alpha
    lo, hi = cubics.reshape(-1, 2).min(0), cubics.reshape(-1, 2).max(0)
    contained = (np.floor(lo) >= 0).all() and np.ceil(hi[0]) <= width and np.ceil(hi[1]) <= height
    pieces, vlines = _chop_extrema(cubics, 1), np.zeros((0, 4), F32)
    if not contained:
        pieces, vlines = _clip(pieces, width, height)
    x0, y0, x1, y1, winding = _cubic_lines(pieces)
    lines = [tuple(v >> 10 for v in (x0, y0, x1, y1)) + (winding,), _fixed_lines(vlines)]
    x0, y0, x1, y1, winding = (np.concatenate(parts) for parts in zip(*lines))
    first, last, x, dx, keep = _line_edges(x0, y0, x1, y1)
    first, last, x, dx, winding = first[keep], last[keep], x[keep], dx[keep], winding[keep]
    rows = SUB * height
    start, stop = np.maximum(first, 0), np.minimum(last, rows - 1)
    n = np.maximum(stop - start + 1, 0)
    if n.sum() == 0:
        return alpha
    line = np.repeat(np.arange(len(n)), n)
    row = start[line] + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    xr = x[line] + (row - first[line]) * dx[line]
    cols = SUB * width
    col = np.clip((xr + (1 << 15)) >> 16, 0, cols)                       # round to a quarter pixel
    r0 = int(row.min()) // SUB * SUB
    r1 = -(-(int(row.max()) + 1) // SUB) * SUB
    wind = np.bincount((row - r0) * (cols + 1) + col, weights=winding[line], minlength=(r1 - r0) * (cols + 1))
    wind = np.cumsum(wind.reshape(r1 - r0, cols + 1)[:, :cols], 1).round().astype(np.int64)
    inside = (wind % 2 != 0) if evenodd else (wind != 0)                  # [rows, cols] sub-samples
    k = inside.reshape(r1 - r0, width, SUB).sum(-1)                      # covered sub-samples per pixel row
    full = np.where((np.arange(r0, r1) % SUB == SUB - 1)[:, None], 63, 64)
    value = np.where(k == SUB, full, 16 * k)
    alpha[r0 // SUB: r1 // SUB] = np.minimum(value.reshape(-1, SUB, width).sum(1), 255)
    return alpha


def _paint(canvas: np.ndarray, alpha: np.ndarray, rgba: np.ndarray) -> None:
    """Draw a flat colour ``rgba [4]`` (straight, [0, 1]) with coverage ``alpha [H, W]`` (0–255)
    over ``canvas [H, W, 3]`` (opaque, 8-bit) in place, as tiny-skia's low-precision pipeline does."""
    a = alpha[..., None]
    if rgba[3] >= 1:
        src = np.round(rgba[:3] * 255).astype(np.int64)
        mixed = (canvas * (255 - a) + src * a + 255) >> 8
        canvas[:] = np.where(a == 255, src, np.where(a > 0, mixed, canvas))
        return
    color = np.round(rgba[:3] * 255) / 255
    premul = (np.concatenate([color * rgba[3], rgba[3:]]) * 255 + 0.5).astype(np.int64)
    scaled = np.where(a == 255, premul, (premul * a + 255) >> 8)          # [H, W, 4]
    over = scaled[..., :3] + ((canvas * (255 - scaled[..., 3:]) + 255) >> 8)
    canvas[:] = np.where(a > 0, over, canvas)
