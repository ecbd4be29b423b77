"""Clean paths: few, visible, editable paths for raster-to-vector fits (restoration, vectorisation).

What an optimised SVG needs to be usable by a designer, and how this module gets there:

- **A path budget, spent where the residual is largest** (LIVE's layer-wise growth): every round,
  the largest connected regions where the render is off by more than ``error_threshold`` get a
  new path each, on top of the others. A region's path is its boundary, traced on the target
  (:func:`region_contours`): pixels of the region's colour within the region, its holes kept as
  hole contours (even-odd fill) when the target shows the background through them, filled when
  something else will be painted there. Regions whose colour is the background's get no path:
  a background-coloured path painted over others ("eraser") is what a designer cannot edit.
- **Slots of one layout**: every path has one outer contour of ``outer_segments`` cubics and
  ``holes`` hole contours of ``hole_segments`` each, so the scenes of a batch share their topology.
  A traced contour uses as many cubics as its length needs; the rest are collapsed onto its start
  point (zero-length, hence no coverage and no gradient), unused hole contours onto the path's
  first point, and they are left out of the written file (:func:`compact_segments`).
- **No invisible or off-canvas paths in the file**: the written scene (:func:`clean_scene`) keeps
  a path only if removing it changes the picture by at least half a grey level somewhere, and
  merges opaque paths of one colour into one path (one ``<path>`` with several contours, nonzero
  fill with the holes turned against their outer contour) when the picture stays within
  ``fidelity_psnr`` of the trained one.

Why hand-written: LIVE's and vtracer's code do this for their own renderers and file formats; the
region tracing itself is scikit-image's (``find_contours``) and SciPy's (``ndimage.label``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from scorestudio.renderers.svg import RasterizerConfig, SvgScene, render
from scorestudio.renderers.svg.tiny_skia import render as resvg_render


@dataclass
class CleanPathConfig:
    """Path growth and the clean-up of the written file (``system.generator.clean``)."""

    enabled: bool = False            # False: the P paths of ``paths`` from the start (text-to-SVG's circles)
    initial_paths: int = 4           # paths traced on the largest error regions before the first step
    paths_per_round: int = 2         # paths added at each later round (fewer when fewer regions are left)
    add_every: int = 50              # steps between rounds
    add_until: int = 600             # the last round, which only prunes (the last paths still need steps to settle)
    error_threshold: float = 0.12    # a pixel is off when a channel differs by more than this ([0, 1] units)
    min_region_area: float = 0.0015  # regions smaller than this fraction of the canvas get no path
    color_tolerance: float = 0.25    # a region keeps the pixels within this (max over channels) of its colour
    background_tolerance: float = 0.1   # a region of the background's colour (within this) gets no path
    # A region whose colour is within this (max over channels) of a mix of two colours around it
    # (within ring_width px outside it, or the background) is a blend along an edge: no path.
    blend_tolerance: float = 0.06
    ring_width: int = 3              # px
    flat_slope: float = 0.01         # per px: a region whose colour changes less in most of its pixels is a fill
    outer_segments: int = 24         # cubics of the outer contour of every path
    holes: int = 4                   # hole contours per path
    hole_segments: int = 8           # cubics per hole contour
    segment_length: float = 0.04     # a traced contour gets a cubic per this fraction of the canvas side of its length
    # Rounds after the first (and one at add_until) hide paths the fit does not need: in painter's
    # order from the top, while the fit error with them hidden stays within this of the error before.
    prune_db: float = 0.2            # dB
    merge_tolerance: float = 0.04    # opaque paths whose colours differ by at most this (max over channels) may merge
    fidelity_psnr: float = 50.0      # dB: the written scene stays this close to the trained render
    # The clean-up compares candidate scenes with the trained one by the differentiable
    # rasterizer at this flattening (the written file's own render is resvg's anti-aliasing,
    # :mod:`scorestudio.renderers.svg.tiny_skia`).
    final_tolerance: float = 0.05    # px
    final_max_samples: int = 64
    # The end of the run (this fraction of lr.total_steps) trains on the image resvg draws from the
    # file: resvg's anti-aliasing forward, the differentiable coverage's gradient backward; 0: never.
    resvg_polish: float = 0.0


# ------------------------------------------------------------------------------------ layout


def slot_layout(cfg: CleanPathConfig) -> Tensor:
    """Contour id of every segment of a slot, long ``[S]``: ``outer_segments`` × 0, then
    ``hole_segments`` × 1, × 2, ..."""
    ids = [0] * cfg.outer_segments + [h + 1 for h in range(cfg.holes) for _ in range(cfg.hole_segments)]
    return torch.tensor(ids, dtype=torch.long)


def smooth_closed_cubics(points: np.ndarray) -> np.ndarray:
    """Closed Catmull-Rom spline through ``points [s, 2]`` as cubic control points ``[3s, 2]``
    (start, handle, handle of each segment; the last segment ends at the first point)."""
    prev, nxt, nxt2 = np.roll(points, 1, 0), np.roll(points, -1, 0), np.roll(points, -2, 0)
    h1 = points + (nxt - prev) / 6
    h2 = nxt - (nxt2 - points) / 6
    return np.stack([points, h1, h2], 1).reshape(-1, 2)


def resample_closed(contour: np.ndarray, count: int) -> np.ndarray:
    """``count`` points evenly spaced by arc length along the closed polyline ``contour [m, 2]``."""
    closed = np.concatenate([contour, contour[:1]])
    step = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(step)])
    where = np.linspace(0, arc[-1], count, endpoint=False)
    return np.stack([np.interp(where, arc, closed[:, k]) for k in range(2)], 1)


def contour_points(contour: np.ndarray, segments: int, length: float) -> tuple[np.ndarray, int]:
    """Control points ``[3·segments, 2]`` of a contour slot filled from the traced polyline
    ``contour [m, 2]`` (px): a cubic per ``length`` px (at least 3, at most ``segments``), the
    unused segments collapsed onto the contour's start; and the number of cubics used."""
    perimeter = float(np.linalg.norm(np.diff(np.concatenate([contour, contour[:1]]), axis=0), axis=1).sum())
    used = int(min(segments, max(3, round(perimeter / max(length, 1e-6)))))
    pts = smooth_closed_cubics(resample_closed(contour, used))
    rest = np.repeat(pts[:1], 3 * (segments - used), 0)
    return np.concatenate([pts, rest]), used


# ------------------------------------------------------------------------------------ growth


def region_masks(target: Tensor, image: Tensor, background: Tensor, cfg: CleanPathConfig,
                 count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Up to ``count`` (mask ``[H, W]`` bool, colour ``[3]``) of the regions to trace: connected
    regions of one colour (within ``color_tolerance``) among the pixels off by more than
    ``error_threshold`` in the render ``image``. ``target``, ``image`` ``[3, H, W]`` in [0, 1],
    ``background [3]``. The colours
    are those most frequent among the off pixels (quantised to ``color_tolerance`` steps), the
    most frequent first, so that a flat fill claims its pixels before the blends along its edges
    do; within a colour the largest error mass first. Background-coloured ones get no region."""
    from scipy import ndimage

    tgt = target.detach().cpu().numpy().transpose(1, 2, 0)                  # [H, W, 3]
    shown = image.detach().cpu().numpy().transpose(1, 2, 0).copy()         # the render, then with each new path
    err = np.abs(tgt - shown).max(-1)
    bg = background.detach().cpu().numpy()
    h, w = err.shape
    off = err > cfg.error_threshold
    min_area = cfg.min_region_area * h * w
    candidates = []
    for rank, color in enumerate(_dominant_colors(tgt[off], cfg.color_tolerance, min_area)):
        if np.abs(color - bg).max() < cfg.background_tolerance:
            continue                                          # an eraser: no path
        near = np.abs(tgt - color).max(-1) < cfg.color_tolerance
        labels, n = ndimage.label(off & near, structure=np.ones((3, 3)))
        for label in range(1, n + 1):
            region = labels == label
            # Thin regions are the blends along the edges of fills (anti-aliasing, blur): without
            # an interior they are no shape of their own.
            if ndimage.binary_erosion(region).sum() >= min_area:
                candidates.append(((rank, -float(err[region].sum())), region, near, color))
    candidates.sort(key=lambda c: c[0])
    out, taken = [], np.zeros((h, w), bool)
    for _, region, near, color in candidates:
        if (region & taken).sum() > 0.5 * region.sum():
            continue                                          # the same pixels under a close colour
        if _is_blend(region, color, tgt, shown, bg, cfg):
            continue
        grown = ndimage.binary_dilation(region, iterations=2) & near
        mask = _largest_component(grown)
        taken |= mask
        mask = _fill_covered_holes(mask, color, tgt, shown, cfg)
        shown[mask] = color
        out.append((mask, color))
        if len(out) == count:
            break
    return out


def _dominant_colors(pixels: np.ndarray, step: float, min_count: float) -> list[np.ndarray]:
    """Mean colours ``[3]`` of the bins (``step`` wide per channel) of ``pixels [M, 3]`` holding at
    least ``min_count`` pixels, the fullest first."""
    if len(pixels) == 0:
        return []
    bins = np.floor(pixels / step).astype(np.int64)
    keys, inverse, counts = np.unique(bins, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = [k for k in np.argsort(-counts) if counts[k] >= min_count]
    return [pixels[inverse == k].mean(0) for k in order]


def _largest_component(mask: np.ndarray) -> Optional[np.ndarray]:
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return None
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    return labels == int(np.argmax(sizes)) + 1


def _fill_covered_holes(mask: np.ndarray, color: np.ndarray, target: np.ndarray, shown: np.ndarray,
                        cfg: CleanPathConfig) -> np.ndarray:
    """``mask`` with its holes filled where the target there (``[H, W, 3]``) is not what shows
    through them (``shown [H, W, 3]``) or a blend of that and the path's ``color [3]`` (a blurred
    edge of the hole): a hole stays a hole only where it lets the right colour through; elsewhere a
    later path will be painted on top."""
    from scipy import ndimage

    holes = ndimage.binary_fill_holes(mask) & ~mask
    labels, n = ndimage.label(holes)
    out = mask.copy()
    for label in range(1, n + 1):
        hole = labels == label
        inside, through = np.median(target[hole], 0), np.median(shown[hole], 0)
        if _mix_weight(inside, through, color, cfg.blend_tolerance) is None:
            out |= hole
    return out


def _mix_weight(color: np.ndarray, a: np.ndarray, b: np.ndarray, tolerance: float) -> Optional[float]:
    """t when ``color [3]`` is within ``tolerance`` (max over channels) of (1 − t)·a + t·b with
    t in [0, 1], else None."""
    span = b - a
    t = float(np.clip(np.dot(color - a, span) / max(float(np.dot(span, span)), 1e-12), 0.0, 1.0))
    return t if np.abs(a + t * span - color).max() <= tolerance else None


def _is_blend(region: np.ndarray, color: np.ndarray, target: np.ndarray, shown: np.ndarray, background: np.ndarray,
              cfg: CleanPathConfig) -> bool:
    """Whether a region ``[H, W]`` of ``color [3]`` is no fill of its own but the blend of two
    colours around it (the background counts as around everything): the band along a blurred or
    anti-aliased edge, or a thin feature the blur has washed out. Such a region gets no path: the
    paths of the colours it blends explain it. One exception: a region explained only as a blend
    with the background where the render does not show the background is a thin
    background-coloured feature painted over a fill (the teeth of a grinning face), and is traced."""
    from scipy import ndimage

    # A fill is flat inside (blurred or not); a blend changes colour across most of its pixels.
    slope = np.stack([np.hypot(*np.gradient(target[..., c])) for c in range(3)], -1).max(-1)
    if np.median(slope[region]) < cfg.flat_slope:
        return False
    ring = ndimage.binary_dilation(region, iterations=cfg.ring_width) & ~region
    around = _dominant_colors(target[ring], cfg.color_tolerance, 0.05 * ring.sum())
    is_bg = [np.abs(a - background).max() < cfg.background_tolerance for a in around]
    around, is_bg = around + [background], is_bg + [True]
    with_background = False
    for i, a in enumerate(around):
        for j in range(i + 1, len(around)):
            t = _mix_weight(color, a, around[j], cfg.blend_tolerance)
            if t is None or not 0.05 < t < 0.95:
                continue
            if not (is_bg[i] or is_bg[j]):
                return True
            with_background = True
    return with_background and np.abs(np.median(shown[region], 0) - background).max() < cfg.background_tolerance


def region_contours(mask: np.ndarray, holes: int) -> list[np.ndarray]:
    """The outer boundary then up to ``holes`` hole boundaries (longest first) of a connected
    ``mask [H, W]``, as closed polylines ``[m, 2]`` in canvas px (x, y)."""
    from skimage.measure import find_contours

    padded = np.pad(mask.astype(float), 1)
    found = [c for c in find_contours(padded, 0.5) if len(c) >= 4]
    found.sort(key=len, reverse=True)
    # (row, col) of the padded grid → (x, y) of pixel centres: x = col − 1 + ½.
    return [np.stack([c[:, 1] - 0.5, c[:, 0] - 0.5], 1) for c in found[: 1 + holes]]


def traced_path(mask: np.ndarray, cfg: CleanPathConfig, side: float) -> tuple[np.ndarray, np.ndarray]:
    """Control points ``[3S, 2]`` of a slot (:func:`slot_layout`) tracing ``mask``, and which of
    them are collapsed ``[3S]`` bool (the unused segments of each contour, and the contours the
    mask does not have, collapsed onto the outer contour's start): they must stay put, since a
    collapsed segment that moves draws again (the generator zeroes their gradients)."""
    contours = region_contours(mask, cfg.holes)
    length = cfg.segment_length * side
    outer, used = contour_points(contours[0], cfg.outer_segments, length)
    parts, frozen = [outer], [np.arange(3 * cfg.outer_segments) >= 3 * used]
    for h in range(cfg.holes):
        if h + 1 < len(contours):
            pts, used = contour_points(contours[h + 1], cfg.hole_segments, length)
        else:
            pts, used = np.repeat(outer[:1], 3 * cfg.hole_segments, 0), 0
        parts.append(pts)
        frozen.append(np.arange(3 * cfg.hole_segments) >= 3 * used)
    return np.concatenate(parts), np.concatenate(frozen)


# ------------------------------------------------------------------------------------ clean-up


def compact_segments(scene: SvgScene, tol: float = 1e-4) -> SvgScene:
    """Scene 0 of ``scene`` (N = 1) without its degenerate segments (all four control points within
    ``tol`` px: they draw nothing) and without contours left with fewer than 2 segments; padded
    to the longest path. Dropping a degenerate segment is exact: the segment before it ended
    where it starts, which is where the next one starts."""
    from scorestudio.renderers.svg.rasterizer import control_points

    ctrl = control_points(scene)[0]                                        # [P, S, 4, 2]
    degenerate = (ctrl - ctrl[:, :, :1]).abs().amax((2, 3)) <= tol           # [P, S]
    keep = (scene.contour >= 0) & ~degenerate
    for p in range(scene.num_paths):                                      # contours of < 2 segments
        for c in scene.contour[p][keep[p]].unique().tolist():
            sel = keep[p] & (scene.contour[p] == c)
            if int(sel.sum()) < 2:
                keep[p] &= ~sel
    return _gather_segments(scene, keep)


def _gather_segments(scene: SvgScene, keep: Tensor) -> SvgScene:
    """Scene 0 with only the segments ``keep [P, S]`` of every path; paths left without any
    segment are dropped."""
    rows = [p for p in range(scene.num_paths) if bool(keep[p].any())]
    width = max([int(keep[p].sum()) for p in rows] + [1])
    pts = scene.points[0].detach()
    points = torch.zeros(len(rows), 3 * width, 2, dtype=pts.dtype, device=pts.device)
    contour = torch.full((len(rows), width), -1, dtype=torch.long, device=pts.device)
    for r, p in enumerate(rows):
        seg = keep[p].nonzero(as_tuple=True)[0]
        triples = pts[p].view(-1, 3, 2)[seg].reshape(-1, 2)
        points[r, : len(triples)] = triples
        points[r, len(triples):] = triples[0]
        contour[r, : len(seg)] = scene.contour[p, seg]
    return SvgScene(points[None], scene.fill[:1, rows].detach(), scene.width, scene.height,
                    fill_rule=scene.fill_rule[rows], contour=contour, background=scene.backgrounds()[:1].detach())


def select_paths(scene: SvgScene, rows: list[int]) -> SvgScene:
    """Scene 0 with the paths ``rows`` (in that order)."""
    idx = torch.tensor(rows, dtype=torch.long, device=scene.points.device)
    return SvgScene(scene.points[:1, idx], scene.fill[:1, idx], scene.width, scene.height,
                    fill_rule=scene.fill_rule[idx], contour=scene.contour[idx], background=scene.backgrounds()[:1])


def path_boxes(scene: SvgScene) -> Tensor:
    """Bounding boxes ``[P, 4]`` (x0, y0, x1, y1) of scene 0's paths, from their control points
    (which hold the curves)."""
    real = (scene.contour >= 0).repeat_interleave(3, 1)[..., None]          # [P, 3S, 1]
    pts = scene.points[0].detach()
    big = torch.finfo(pts.dtype).max
    lo = torch.where(real, pts, big).amin(1)
    hi = torch.where(real, pts, -big).amax(1)
    return torch.cat([lo, hi], 1)


def off_canvas(scene: SvgScene) -> Tensor:
    """Bool ``[P]``: paths of scene 0 that lie entirely outside the canvas."""
    box = path_boxes(scene)
    return (box[:, 2] <= 0) | (box[:, 3] <= 0) | (box[:, 0] >= scene.width) | (box[:, 1] >= scene.height)


def contributions(scene: SvgScene, renderer: RasterizerConfig) -> Tensor:
    """Per path of scene 0, the largest change of any pixel (max over channels, [0, 1]) when it
    is removed, ``[P]``: 0 for a path that shows nowhere (transparent, covered, off the canvas,
    or the colour of what lies under it)."""
    full = render(scene, renderer)[0]
    out = torch.zeros(scene.num_paths)
    for p in range(scene.num_paths):
        rows = [q for q in range(scene.num_paths) if q != p]
        without = render(select_paths(scene, rows), renderer)[0] if rows else scene.backgrounds()[0][:, None, None].expand_as(full)
        out[p] = float((full - without).abs().max())
    return out


def oriented(points: Tensor, contour: Tensor) -> Tensor:
    """``points [3S, 2]`` of one path with its contours turned so that the nonzero rule draws what
    even-odd draws: contours inside an odd number of the path's other contours run against the
    outer ones (signed areas from the polygon of each contour's on-curve and handle points)."""
    pts = points.clone()
    ids = [c for c in contour.unique().tolist() if c >= 0]
    polys = {c: points.view(-1, 3, 2)[contour == c].reshape(-1, 2) for c in ids}
    for c in ids:
        depth = sum(_inside(polys[c][0], polys[o]) for o in ids if o != c)
        area = _signed_area(polys[c])
        if (area > 0) != (depth % 2 == 0):
            pts.view(-1, 3, 2)[contour == c] = _reversed_contour(points.view(-1, 3, 2)[contour == c])
    return pts


def _signed_area(poly: Tensor) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return float((x * y.roll(-1) - x.roll(-1) * y).sum() / 2)


def _inside(point: Tensor, poly: Tensor) -> bool:
    """Even-odd point-in-polygon test."""
    x, y = float(point[0]), float(point[1])
    xs, ys = poly[:, 0].tolist(), poly[:, 1].tolist()
    inside = False
    for i in range(len(xs)):
        x0, y0, x1, y1 = xs[i - 1], ys[i - 1], xs[i], ys[i]
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            inside = not inside
    return inside


def _reversed_contour(triples: Tensor) -> Tensor:
    """The segments ``[s, 3, 2]`` (start, handle, handle) of a closed contour run backwards."""
    starts, h1, h2 = triples[:, 0], triples[:, 1], triples[:, 2]
    ends = starts.roll(-1, 0)
    # Segment i reversed runs ends[i] → h2[i] → h1[i] → starts[i]; reversed order of segments.
    rev = torch.stack([ends, h2, h1], 1).flip(0)
    return rev


def merge_pair(scene: SvgScene, i: int, j: int, at: int) -> SvgScene:
    """Scene 0 with paths ``i`` and ``j`` as one path (their contours, nonzero fill, their
    area-weighted colour approximated by the mean), put at the painter's position of ``at``
    (``i`` or ``j``)."""
    ci, cj = scene.contour[i], scene.contour[j]
    pi = oriented(scene.points[0, i], ci) if bool(scene.fill_rule[i]) else scene.points[0, i]
    pj = oriented(scene.points[0, j], cj) if bool(scene.fill_rule[j]) else scene.points[0, j]
    offset = int(ci.max()) + 1
    seg = torch.cat([ci, torch.where(cj >= 0, cj + offset, cj)])
    pts = torch.cat([pi, pj])
    order = torch.argsort((seg < 0).long(), stable=True)                  # real segments first
    seg, pts = seg[order], pts.view(-1, 3, 2)[order].reshape(-1, 2)
    fill = (scene.fill[0, i] + scene.fill[0, j]) / 2
    rows = [p for p in range(scene.num_paths) if p not in (i, j)]
    position = sum(1 for p in rows if p < at)
    s_new = seg.shape[0]
    s_old = scene.num_segments
    width = max(s_new, s_old)

    def pad(points: Tensor, contour: Tensor) -> tuple[Tensor, Tensor]:
        extra = width - contour.shape[0]
        return (torch.cat([points, points[:1].expand(3 * extra, 2)]),
                torch.cat([contour, contour.new_full((extra,), -1)]))

    padded = [pad(scene.points[0, p], scene.contour[p]) for p in rows]
    new = pad(pts, seg)
    padded.insert(position, new)
    fills = [scene.fill[0, p] for p in rows]
    fills.insert(position, fill)
    rules = [bool(scene.fill_rule[p]) for p in rows]
    rules.insert(position, False)
    return SvgScene(torch.stack([p for p, _ in padded])[None], torch.stack(fills)[None], scene.width, scene.height,
                    fill_rule=torch.tensor(rules), contour=torch.stack([c for _, c in padded]),
                    background=scene.backgrounds()[:1])


def _between_overlap(boxes: Tensor, i: int, j: int, moving: int) -> bool:
    """Whether a path painted between ``i`` and ``j`` overlaps the box of ``moving``."""
    b = boxes[moving]
    mid = boxes[i + 1: j]
    if len(mid) == 0:
        return False
    hit = (mid[:, 0] < b[2]) & (mid[:, 2] > b[0]) & (mid[:, 1] < b[3]) & (mid[:, 3] > b[1])
    return bool(hit.any())


def merge_same_colour(scene: SvgScene, renderer: RasterizerConfig, reference: Tensor, budget: float,
                      tolerance: float) -> SvgScene:
    """Greedily merge pairs of opaque paths whose colours differ by at most ``tolerance`` and whose
    painter's order allows it (nothing between them overlaps the one that moves), keeping a
    merge when the render's mean squared difference to ``reference [3, H, W]`` stays ≤ ``budget``."""
    merged = True
    while merged:
        merged = False
        boxes = path_boxes(scene)
        fill = scene.fill[0].detach()
        opaque = fill[:, 3] >= 0.99
        for j in range(scene.num_paths):
            for i in range(j - 1, -1, -1):
                if not (opaque[i] and opaque[j]) or (fill[i, :3] - fill[j, :3]).abs().max() > tolerance:
                    continue
                at = i if not _between_overlap(boxes, i, j, j) else (j if not _between_overlap(boxes, i, j, i) else None)
                if at is None:
                    continue
                trial = merge_pair(scene, i, j, at)
                if float((render(trial, renderer)[0] - reference).pow(2).mean()) <= budget:
                    scene, merged = trial, True
                    break
            if merged:
                break
    return scene


def clean_scene(scene: SvgScene, cfg: CleanPathConfig, renderer: RasterizerConfig) -> tuple[SvgScene, Tensor]:
    """The written form of scene 0 (N = 1): degenerate segments and hidden contours out, then
    paths that show nowhere (off the canvas, transparent, covered) out, then same-colour merges
    while the render stays within ``fidelity_psnr`` dB of the trained one. Returns the scene and
    its render ``[3, H, W]`` as resvg draws the file (:func:`scorestudio.renderers.svg.tiny_skia.render`)."""
    final = RasterizerConfig(**{**vars(renderer), "samples_per_segment": 0, "flatten_tolerance": cfg.final_tolerance,
                                "max_samples_per_segment": cfg.final_max_samples})
    reference = render(scene.index(0).detach(), final)[0]
    out = compact_segments(scene.index(0))
    keep = (~off_canvas(out)) & (out.fill[0, :, 3] > 0.5 / 255)
    out = select_paths(out, keep.nonzero(as_tuple=True)[0].tolist()) if bool(keep.any()) else out
    out = drop_unseen(out, final)
    budget = 10 ** (-cfg.fidelity_psnr / 10)
    out = merge_same_colour(out, final, reference, budget, cfg.merge_tolerance)
    return out, resvg_render(out)


def drop_unseen(scene: SvgScene, renderer: RasterizerConfig, threshold: float = 0.5 / 255) -> SvgScene:
    """Scene 0 without the paths whose removal changes no pixel by ``threshold`` or more (one at
    a time from the bottom, so two paths hiding each other's change are not both dropped)."""
    rows = list(range(scene.num_paths))
    full = render(scene, renderer)[0]
    for p in list(rows):
        if len(rows) == 1:
            break
        trial = [q for q in rows if q != p]
        if float((render(select_paths(scene, trial), renderer)[0] - full).abs().max()) < threshold:
            rows = trial
    return select_paths(scene, rows)


@dataclass
class PathReport:
    """What a designer would find in the file."""

    paths: int            # <path> elements
    invisible: int        # paths whose removal changes no pixel by half a grey level
    off_canvas: int       # paths entirely outside the canvas
    erasers: int          # opaque paths of the background colour that show
    coverage: float       # summed area of the paths' bounding boxes on the canvas / the canvas

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}{k}": v for k, v in vars(self).items()}


def path_report(scene: SvgScene, renderer: RasterizerConfig, background_tolerance: float = 0.1) -> PathReport:
    """The :class:`PathReport` of scene 0."""
    if scene.num_paths == 0:
        return PathReport(0, 0, 0, 0, 0.0)
    shows = contributions(scene, renderer)
    fill, bg = scene.fill[0].detach(), scene.backgrounds()[0].detach()
    eraser = ((fill[:, :3] - bg).abs().amax(1) < background_tolerance) & (fill[:, 3] > 0.5) & (shows >= 0.5 / 255)
    box = path_boxes(scene)
    w = (box[:, 2].clamp(0, scene.width) - box[:, 0].clamp(0, scene.width)).clamp_min(0)
    h = (box[:, 3].clamp(0, scene.height) - box[:, 1].clamp(0, scene.height)).clamp_min(0)
    return PathReport(scene.num_paths, int((shows < 0.5 / 255).sum()), int(off_canvas(scene).sum()),
                      int(eraser.sum()), float((w * h).sum() / (scene.width * scene.height)))

