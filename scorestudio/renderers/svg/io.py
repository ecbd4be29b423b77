"""SVG files ↔ :class:`SvgScene`.

Reading (:func:`read_svg`) walks the document with :mod:`~scorestudio.renderers.svg.reader`
(which elements are drawn, their geometry as exact cubics on the output canvas, paints, opacity,
clip paths) over the cascade of :mod:`~scorestudio.renderers.svg.style`, then packs what the
rasterizer draws into a scene: the **fill** of every shape with a plain colour. Each shape becomes
one path whose subpaths become contours of that path, so even-odd holes stay holes. Whatever is
not drawn (text, images, filters, masks, patterns, markers, …) is counted and named in one
:class:`SvgWarning` per file instead of being drawn black or dropped silently.

Alpha is the fill colour's alpha × ``fill-opacity`` × the product of ``opacity`` over the shape
and its ancestors (a group's opacity applied per shape: exact unless the group's shapes overlap).

Files may come from anyone, so reading is bounded: the elements after ``<use>`` expansion and
their nesting are counted on the XML tree before anything is expanded (a 2 KB file of nested
``<use>`` names 10⁸ shapes), style sheets are bounded
(:data:`~scorestudio.renderers.svg.style.MAX_SVG_CSS_SELECTORS`), and the canvas, the scene's size
and the coordinates are checked before anything that large is allocated or rasterized. Each limit
is a module constant, named by the error it raises, to raise for files you trust. Only ``#id``
references inside the document are followed; no other file is ever read.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Optional, Union
from xml.etree import ElementTree

import numpy as np
import torch

from scorestudio.renderers.svg import reader
from scorestudio.renderers.svg import style as css
from scorestudio.renderers.svg.rasterizer import check_canvas
from scorestudio.renderers.svg.scene import CAPS, FLAT, JOINS, LINEAR, RADIAL, SPREADS, Clip, Gradient, Stroke, SvgScene

PathLike = Union[str, os.PathLike]

MAX_SVG_ELEMENTS = 100_000         # elements after <use> expansion
MAX_SVG_DEPTH = 100                # nesting of elements after <use> expansion (the walk recurses per level)
MAX_SVG_SEGMENTS = 10_000_000      # paths × segments of the longest path: the scene pads every path to that
MAX_SVG_COORDINATE = 1e6           # px on the output canvas; float32 still resolves a tenth of a pixel there


class SvgError(ValueError):
    """An SVG file that cannot be used; the message names the file and the problem."""


class SvgWarning(UserWarning):
    """Parts of an SVG file that the scene does not draw, named with their counts."""


# ---------------------------------------------------------------------------------- reading


def read_svg(path: PathLike, width: Optional[int] = None, height: Optional[int] = None) -> SvgScene:
    """Read an SVG file as a scene with N = 1 on a white background.

    The canvas is the document's size (``width``/``height``, else its viewBox, else 100 × 100).
    ``width`` and/or ``height`` rescale it: one of them alone keeps the aspect ratio, both stretch
    the drawing to that size. Raises :class:`SvgError` for a missing file, unparseable XML, a file
    over a limit or a document with nothing the scene draws; warns (:class:`SvgWarning`) naming
    each feature that is not drawn, with its count.
    """
    scene, ignored = parse_svg(path, width, height)
    if ignored:
        warnings.warn(SvgWarning(f"{path}: not drawn: {describe_ignored(ignored)}"), stacklevel=2)
    return scene


def describe_ignored(ignored: Counter) -> str:
    """``"3 × text, 1 × filter"``: the features of a file that were not drawn, most frequent first."""
    return ", ".join(f"{n} × {name}" for name, n in ignored.most_common())


def parse_svg(path: PathLike, width: Optional[int] = None,
              height: Optional[int] = None) -> tuple[SvgScene, Counter]:
    """:func:`read_svg` without the warning: the scene and the count of each feature not drawn."""
    path = Path(path)
    if not path.is_file():
        raise SvgError(f"{path}: SVG file not found")
    try:
        root = ElementTree.parse(path).getroot()
        _check_structure(root, path)
        out = {}

        def out_size(doc_w: float, doc_h: float) -> tuple[int, int]:
            out["size"] = _output_size(doc_w, doc_h, width, height)
            check_canvas(*out["size"], "the canvas")
            return out["size"]

        drawing = reader.read_drawing(root, out_size)
    except SvgError:
        raise
    except (ElementTree.ParseError, reader.DocumentError, css.StyleError) as err:
        raise SvgError(f"{path}: not a valid SVG file ({type(err).__name__}: {err})") from err
    except ValueError as err:                      # check_canvas
        raise SvgError(f"{path}: {err}") from None
    out_w, out_h = out["size"]
    ignored = Counter(drawing.ignored)
    items = [item for item in drawing.items if all(_clip_chain_drawable(c) for c in item.clips)]
    if not items:
        raise SvgError(f"{path}: no shapes to draw (not drawn: {describe_ignored(ignored) or 'nothing'})")
    contours = [[_with_closing(c) for c in item.contours] for item in items]
    longest = max(sum(len(c) for c, _ in cs) for cs in contours)
    if len(items) * longest > MAX_SVG_SEGMENTS:
        raise _over_limit(path, "MAX_SVG_SEGMENTS", f"{len(items)} paths padded to {longest} segments (its longest "
                                                    f"path) make {len(items) * longest} segments")
    scene = _scene(items, contours, out_w, out_h)
    far = float(scene.points.abs().max())   # inf when a coordinate overflows float32
    if scene.clip is not None:
        far = max(far, float(scene.clip.paths.points.abs().max()))
    if not far <= MAX_SVG_COORDINATE:
        raise _over_limit(path, "MAX_SVG_COORDINATE", f"a control point lies {far:.3g} px from the origin of "
                                                      f"the {out_w} x {out_h} px canvas")
    return scene, ignored


def _clip_chain_drawable(clip: reader.Clip) -> bool:
    """False when a clip (or a clip it is clipped by) has no shape: it hides what it clips."""
    while clip is not None:
        if not clip.shapes:
            return False
        clip = clip.clip
    return True


def _with_closing(contour: reader.Contour) -> tuple[np.ndarray, np.ndarray]:
    """A contour's cubics ``[S, 4, 2]`` closed for the scene (which closes every contour at its first
    point) and which of them are stroked ``[S]``: a closed subpath ending away from its start gets a
    stroked closing line; an open one gets a closing line (zero-length when it ends at its start)
    that the fill uses and the stroke does not, so that its ends get caps, not a join."""
    cubics = contour.cubics
    ends_at_start = np.allclose(cubics[-1, 3], cubics[0, 0], rtol=0, atol=1e-9)
    if contour.closed and ends_at_start:
        return cubics, np.ones(len(cubics), bool)
    closing = reader.line_cubic(cubics[-1, 3], cubics[0, 0])[None]
    return np.concatenate([cubics, closing]), np.r_[np.ones(len(cubics), bool), contour.closed]


def _pack(contours: list[list[tuple[np.ndarray, np.ndarray]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paths of contours padded to one segment count: points ``[1, P, 3S, 2]``, contour ids
    ``[P, S]`` (−1 = padding) and stroked ``[P, S]``."""
    num_segments = max(sum(len(c) for c, _ in cs) for cs in contours)
    points = np.zeros((1, len(contours), 3 * num_segments, 2))
    ids = -np.ones((len(contours), num_segments), dtype=np.int64)
    stroked = np.zeros((len(contours), num_segments), dtype=bool)
    for i, cs in enumerate(contours):
        cubics = np.concatenate([c for c, _ in cs])                               # [S_i, 4, 2]
        xy = cubics[:, :3].reshape(-1, 2)                                          # p0, p1, p2 of each
        points[0, i, : len(xy)] = xy
        points[0, i, len(xy):] = xy[0]
        ids[i, : len(cubics)] = np.repeat(np.arange(len(cs)), [len(c) for c, _ in cs])
        stroked[i, : len(cubics)] = np.concatenate([s for _, s in cs])
    return points, ids, stroked


def _f32(values) -> torch.Tensor:
    return torch.tensor(np.asarray(values, dtype=np.float64), dtype=torch.float32)


def _scene(items: list, contours: list, width: int, height: int) -> SvgScene:
    """The scene of the drawn shapes: one path per shape (fill, then its stroke), with only the
    parts the file uses (a file of flat fills gives a fill-only scene). Group opacity is folded
    into the fill and stroke alphas (what the rasterizer does with ``opacity`` too)."""
    points, ids, stroked = _pack(contours)
    fills, fill_paints = zip(*(_paint_of(item.fill, item.opacity) for item in items))
    kw = {}
    if any(item.stroke is not None for item in items):
        colors, stroke_paints = zip(*(_paint_of(item.stroke, item.opacity) for item in items))
        dash = np.zeros((len(items), max(len(item.dasharray) for item in items)))
        for i, item in enumerate(items):
            dash[i, : len(item.dasharray)] = item.dasharray
        kw["stroke"] = Stroke(
            color=_f32([colors]), width=_f32([[item.stroke_width if item.stroke is not None else 0.0 for item in items]]),
            stroked=torch.from_numpy(stroked),
            join=torch.tensor([JOINS.index(i.linejoin) if i.linejoin in JOINS else 0 for i in items]),
            miter_limit=_f32([item.miterlimit for item in items]),
            cap=torch.tensor([CAPS.index(item.linecap) for item in items]),
            dash=_f32(dash), dash_offset=_f32([item.dashoffset for item in items]),
            paint=_gradients(stroke_paints))
    kw["fill_paint"] = _gradients(fill_paints)
    kw["clip"] = _clips([item.clips for item in items], width, height)
    return SvgScene(_f32(points), _f32([fills]), width, height, fill_rule=[item.fill_rule for item in items],
                    contour=torch.from_numpy(ids), **kw)


def _paint_of(paint: reader.Fill, opacity: float) -> tuple[list[float], Optional[reader.Gradient]]:
    """(RGBA for the scene, gradient or None) of a fill or stroke under a group ``opacity``; a
    gradient's RGBA is (0, 0, 0, fill- or stroke-opacity × group opacity), as the scene wants."""
    if paint is None:
        return [0.0, 0.0, 0.0, 0.0], None
    if isinstance(paint, reader.Gradient):
        return [0.0, 0.0, 0.0, paint.opacity * opacity], paint
    return [*paint[:3], paint[3] * opacity], None


def _gradients(paints) -> Optional[Gradient]:
    """The :class:`Gradient` of P paths (FLAT where a path has a plain colour), None without any."""
    if all(p is None for p in paints):
        return None
    k = max(len(p.stops) for p in paints if p is not None)
    kind, spread = np.zeros(len(paints), np.int64), np.zeros(len(paints), np.int64)
    geometry = np.zeros((1, len(paints), 6))
    transform = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (1, len(paints), 1, 1))
    stops = np.zeros((1, len(paints), k, 5))
    for i, g in enumerate(paints):
        if g is None:
            continue
        kind[i] = LINEAR if g.kind == "linear" else RADIAL
        spread[i] = SPREADS.index(g.spread)
        geometry[0, i, : len(g.coords)] = g.coords
        transform[0, i] = g.transform
        rows = [[o, *c] for o, c in g.stops]
        stops[0, i] = rows + [rows[-1]] * (k - len(rows))            # pad by repeating the last stop
    return Gradient(torch.from_numpy(kind), _f32(geometry), _f32(transform), _f32(stops), torch.from_numpy(spread))


def _clips(clip_lists: list, width: int, height: int) -> Optional[Clip]:
    """Every ``<clipPath>`` use as one region of clip paths, and the regions of each drawn path
    (``clip_lists``: the clips of each path, intersecting). Clip paths with a ``clip-path`` of their
    own are clipped the same way (the clip scene's own ``clip``)."""
    regions: dict[int, int] = {}
    shapes, region_of_shape, per_item = [], [], []
    for clips in clip_lists:
        mine = []
        for clip in clips:
            while clip is not None:
                if id(clip) not in regions:
                    regions[id(clip)] = len(regions)
                    for contours, rule, own in clip.shapes:
                        shapes.append(([_with_closing(c) for c in contours], rule, own))
                        region_of_shape.append(regions[id(clip)])
                mine.append(regions[id(clip)])
                clip = clip.clip
        per_item.append(mine)
    if not regions:
        return None
    points, ids, _ = _pack([cs for cs, _, _ in shapes])
    paths = SvgScene(_f32(points), torch.ones(1, len(shapes), 4), width, height,
                     fill_rule=[rule for _, rule, _ in shapes], contour=torch.from_numpy(ids),
                     clip=_clips([own for _, _, own in shapes], width, height))
    path_regions = -np.ones((len(clip_lists), max(1, max(map(len, per_item)))), np.int64)
    for i, mine in enumerate(per_item):
        path_regions[i, : len(mine)] = mine
    return Clip(paths, torch.tensor(region_of_shape), torch.from_numpy(path_regions))


def _over_limit(path: Path, limit: str, found: str) -> SvgError:
    """The error for a file beyond the module constant ``limit``: what was found, the limit, how to raise it."""
    value = globals()[limit]
    return SvgError(f"{path}: {found}, over the limit {__name__}.{limit} = {value:g}; raise it "
                    f"({__name__}.{limit} = ...) for files you trust")


def _check_structure(root: ElementTree.Element, path: Path) -> None:
    """Count the elements of the document after ``<use>`` expansion, and their nesting, on the
    XML tree: a :class:`SvgError` at the first count over :data:`MAX_SVG_ELEMENTS` or
    :data:`MAX_SVG_DEPTH`, or at a ``<use>`` inside what it refers to (an endless expansion).
    Each element is counted once (memoised), so this takes time linear in the file.

    References resolve as the reader resolves them: ``href`` over ``xlink:href``, ``#id`` to
    the first element with that id."""
    ids: dict = {}
    for el in root.iter():
        if el.get("id") is not None:
            ids.setdefault(el.get("id"), el)
    sizes: dict[int, tuple[int, int]] = {}       # id(element) → (elements, levels) of its expansion
    open_: set[int] = set()

    def expand(el: ElementTree.Element, depth: int) -> tuple[int, int]:
        count, levels = sizes.get(id(el), (0, 1))
        if depth + levels - 1 > MAX_SVG_DEPTH:
            raise _over_limit(path, "MAX_SVG_DEPTH", f"elements nest more than {MAX_SVG_DEPTH} levels deep "
                                                     "(counting what <use> inserts)")
        if count:
            return count, levels
        if id(el) in open_:
            raise SvgError(f"{path}: <{css.local(el.tag)} id=\"{el.get('id')}\"> contains a <use> of itself: "
                           "an endless expansion")
        open_.add(id(el))
        inner = list(el)
        href = css.attribute(el, "href") if css.local(el.tag) == "use" else None
        if href and href[1:] in ids:
            inner.append(ids[href[1:]])
        count, levels = 1, 1
        for child in inner:
            c, h = expand(child, depth + 1)
            count, levels = count + c, max(levels, h + 1)
            if count > MAX_SVG_ELEMENTS:
                raise _over_limit(path, "MAX_SVG_ELEMENTS", f"more than {MAX_SVG_ELEMENTS} elements after "
                                                            "expanding <use>")
        open_.discard(id(el))
        sizes[id(el)] = count, levels
        return count, levels

    expand(root, 1)


def _output_size(doc_w: float, doc_h: float, width: Optional[int], height: Optional[int]) -> tuple[int, int]:
    if width is None and height is None:
        return max(1, round(doc_w)), max(1, round(doc_h))
    if height is None:
        return int(width), max(1, round(doc_h * width / doc_w))
    if width is None:
        return max(1, round(doc_w * height / doc_h)), int(height)
    return int(width), int(height)


# ---------------------------------------------------------------------------------- writing


def svg_string(scene: SvgScene, index: int = 0) -> str:
    """Scene ``index`` as SVG markup: a background rect, then one ``<path>`` per path with its fill
    and stroke (gradients as ``userSpaceOnUse`` gradients with the scene's transform, clip regions as
    ``<clipPath>`` elements, the scene's opacity folded into fill and stroke opacity, as the
    rasterizer draws it). Reading the file back gives the same scene (plus the background rect)."""
    w, h = scene.width, scene.height
    arr = lambda t: t[index].detach().double().cpu().numpy()  # noqa: E731
    pts, fill = arr(scene.points), arr(scene.fill).clip(0, 1)                     # [P, 3S, 2], [P, 4]
    opacity = arr(scene.opacity) if scene.opacity is not None else np.ones(scene.num_paths)
    ends, contour = scene.segment_ends().cpu().numpy(), scene.contour.cpu().numpy()
    stroke = scene.stroke
    stroked = stroke.stroked.cpu().numpy() if stroke is not None else np.zeros(contour.shape, bool)
    defs, body = [], []
    for p, rule in enumerate(scene.fill_rules()):
        fill_attrs = _paint_attrs("fill", fill[p], opacity[p], scene.fill_paint, index, p, defs)
        stroke_attrs = _stroke_attrs(stroke, index, p, opacity[p], defs) if stroke is not None else None
        contours = _contours_of(pts[p], ends[p], contour[p], stroked[p])
        if stroke_attrs and all(kind != "split" for _, kind in contours):
            elements = [(" ".join(d for d, _ in contours), f"{fill_attrs} fill-rule=\"{rule}\" {stroke_attrs}")]
        else:                                       # a stroke that the fill's outline cannot carry: two paths
            elements = [(" ".join(_closed_data(pts[p], ends[p], contour[p])), f'{fill_attrs} fill-rule="{rule}"')]
            if stroke_attrs:
                elements.append((_stroked_runs(pts[p], ends[p], contour[p], stroked[p]), f'fill="none" {stroke_attrs}'))
        for d, attrs in elements:
            if d and ('fill="none"' not in attrs or "stroke=" in attrs):
                body.append(_clipped(f'<path d="{d}" {attrs}/>', scene, p, defs))
    lines = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">',
             f'<rect width="{w}" height="{h}" fill="{_hex(scene.backgrounds()[index].detach().cpu())}"/>']
    if defs:
        lines += ["<defs>", *dict.fromkeys(defs), "</defs>"]
    lines += body + ["</svg>"]
    return "\n".join(lines) + "\n"


def write_svg(scene: SvgScene, path: PathLike, index: int = 0) -> Path:
    """Write scene ``index`` of the batch as an SVG file (see :func:`svg_string`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg_string(scene, index))
    return path


def _xy(xy) -> str:
    return f"{xy[0]:.3f} {xy[1]:.3f}"


def _contours_of(pts: np.ndarray, ends: np.ndarray, contour: np.ndarray, stroked: np.ndarray) -> list:
    """Each contour of one path as (path data, kind): "closed" (``Z``, every segment stroked),
    "open" (its only unstroked segment is a straight closing line: written as an open subpath, which
    the fill closes with that same line), or "split" (anything else)."""
    out = []
    for segs in _runs(contour):
        cubic = [f"C {_xy(pts[3 * s + 1])} {_xy(pts[3 * s + 2])} {_xy(pts[ends[s]])}" for s in segs]
        last = segs[-1]
        if stroked[segs].all():
            out.append((f"M {_xy(pts[3 * segs[0]])} " + " ".join(cubic) + " Z", "closed"))
        elif stroked[segs[:-1]].all() and _straight(pts[3 * last], pts[3 * last + 1], pts[3 * last + 2], pts[ends[last]]):
            out.append((f"M {_xy(pts[3 * segs[0]])} " + " ".join(cubic[:-1]), "open"))
        else:
            out.append(("", "split"))
    return out


def _runs(contour: np.ndarray) -> list[np.ndarray]:
    """The segment indices of each contour (−1 padding left out)."""
    real = np.flatnonzero(contour >= 0)
    if not len(real):
        return []
    cuts = np.flatnonzero(np.diff(contour[real])) + 1
    return np.split(real, cuts)


def _straight(p0, p1, p2, p3) -> bool:
    """True when a cubic is the straight line the reader writes (controls at 1/3 and 2/3)."""
    return bool(np.allclose(p1, p0 + (p3 - p0) / 3, atol=1e-3) and np.allclose(p2, p0 + 2 * (p3 - p0) / 3, atol=1e-3))


def _closed_data(pts: np.ndarray, ends: np.ndarray, contour: np.ndarray) -> list[str]:
    """``M … C … Z`` for every contour of one path, every segment written (the fill's outline)."""
    return [f"M {_xy(pts[3 * segs[0]])} " + " ".join(
        f"C {_xy(pts[3 * s + 1])} {_xy(pts[3 * s + 2])} {_xy(pts[ends[s]])}" for s in segs) + " Z"
        for segs in _runs(contour)]


def _stroked_runs(pts: np.ndarray, ends: np.ndarray, contour: np.ndarray, stroked: np.ndarray) -> str:
    """Open subpaths of the stroked runs of segments (a contour whose run wraps round its start
    is written from the run's first segment)."""
    parts = []
    for segs in _runs(contour):
        flags = stroked[segs]
        if flags.all():
            parts.append(_closed_data(pts, ends, np.where(np.isin(np.arange(len(contour)), segs), 0, -1))[0])
            continue
        start = int(np.argmin(flags))                 # rotate so that the contour starts unstroked
        order, run = np.roll(segs, -start), []
        for s in list(order) + [None]:
            if s is not None and stroked[s]:
                run.append(s)
            elif run:
                parts.append(f"M {_xy(pts[3 * run[0]])} " + " ".join(
                    f"C {_xy(pts[3 * r + 1])} {_xy(pts[3 * r + 2])} {_xy(pts[ends[r]])}" for r in run))
                run = []
    return " ".join(parts)


def _paint_attrs(what: str, rgba: np.ndarray, opacity: float, paint, index: int, p: int, defs: list) -> str:
    """``fill``/``stroke`` colour (or gradient reference) and opacity attributes of path ``p``."""
    alpha = float(rgba[3]) * float(opacity)
    if alpha <= 0:
        return f'{what}="none"'
    if paint is not None and int(paint.kind[p]) != FLAT:
        gid = f"{what[0]}{p}"
        defs.append(_gradient_def(paint, index, p, gid))
        return f'{what}="url(#{gid})" {what}-opacity="{alpha:.4f}"'
    return f'{what}="{_hex(rgba[:3])}" {what}-opacity="{alpha:.4f}"'


def _stroke_attrs(stroke: Stroke, index: int, p: int, opacity: float, defs: list) -> Optional[str]:
    width = float(stroke.width[index, p])
    color = stroke.color[index, p].detach().double().clamp(0, 1).cpu().numpy()
    if width <= 0 or color[3] * opacity <= 0:
        return None
    dash = stroke.dash[p].detach().double().cpu().numpy()
    while len(dash) >= 2 and not dash[-2:].any():
        dash = dash[:-2]                               # the 0-padding of shorter lists
    attrs = [_paint_attrs("stroke", color, opacity, stroke.paint, index, p, defs),
             f'stroke-width="{width:.4f}"', f'stroke-linejoin="{JOINS[int(stroke.join[p])]}"',
             f'stroke-linecap="{CAPS[int(stroke.cap[p])]}"', f'stroke-miterlimit="{float(stroke.miter_limit[p]):.4f}"']
    if len(dash) and dash.any():
        attrs += [f'stroke-dasharray="{" ".join(f"{d:.4f}" for d in dash)}"',
                  f'stroke-dashoffset="{float(stroke.dash_offset[p]):.4f}"']
    return " ".join(attrs)


def _gradient_def(paint: Gradient, index: int, p: int, gid: str) -> str:
    """A ``userSpaceOnUse`` gradient with the scene's gradient-space → canvas transform."""
    g = paint.geometry[index, p].detach().double().cpu().numpy()
    (a, c, e), (b, d, f) = paint.transform[index, p].detach().double().cpu().numpy()
    stops = paint.stops[index, p].detach().double().cpu().numpy()
    head = (f'gradientUnits="userSpaceOnUse" gradientTransform="matrix({a:.6g} {b:.6g} {c:.6g} {d:.6g} {e:.6g} {f:.6g})" '
            f'spreadMethod="{SPREADS[int(paint.spread[p])]}"')
    if int(paint.kind[p]) == LINEAR:
        tag, coords = "linearGradient", 'x1="{:.6g}" y1="{:.6g}" x2="{:.6g}" y2="{:.6g}"'.format(*g[:4])
    else:
        tag, coords = "radialGradient", 'cx="{:.6g}" cy="{:.6g}" r="{:.6g}" fx="{:.6g}" fy="{:.6g}" fr="{:.6g}"'.format(*g)
    rows = "".join(f'<stop offset="{s[0]:.6g}" stop-color="{_hex(s[1:4])}" stop-opacity="{min(max(s[4], 0), 1):.4f}"/>'
                   for s in stops)
    return f'<{tag} id="{gid}" {coords} {head}>{rows}</{tag}>'


def _clipped(element: str, scene: SvgScene, p: int, defs: list) -> str:
    """``element`` inside one group per clip region of path ``p`` (their clips intersect)."""
    if scene.clip is None:
        return element
    for region in scene.clip.path_regions[p].tolist():
        if region >= 0:
            element = f'<g clip-path="url(#{_clip_def(scene.clip, region, defs, "c", None)})">{element}</g>'
    return element


def _clip_def(clip: Clip, region: int, defs: list, prefix: str, then: Optional[str]) -> str:
    """Define (once) a ``<clipPath>`` of the shapes of clip region ``region`` (each clipped by the
    regions of its own, chained), intersected with the clip path ``then``; its id."""
    gid = f"{prefix}{region}" + (f"-{then}" if then else "")
    if any(f'id="{gid}"' in d for d in defs):
        return gid
    paths, own = clip.paths, clip.paths.clip
    pts = paths.points[0].detach().double().cpu().numpy()
    ends, contour, rules = paths.segment_ends().cpu().numpy(), paths.contour.cpu().numpy(), paths.fill_rules()
    shapes = []
    for q in (clip.region == region).nonzero().flatten().tolist():
        chain = None
        for r in ([] if own is None else [r for r in own.path_regions[q].tolist() if r >= 0])[::-1]:
            chain = _clip_def(own, r, defs, prefix + "c", chain)
        attr = f' clip-path="url(#{chain})"' if chain else ""
        shapes.append(f'<path d="{" ".join(_closed_data(pts[q], ends[q], contour[q]))}" clip-rule="{rules[q]}"{attr}/>')
    tail = f' clip-path="url(#{then})"' if then else ""
    defs.append(f'<clipPath id="{gid}" clipPathUnits="userSpaceOnUse"{tail}>{"".join(shapes)}</clipPath>')
    return gid


def _hex(rgb) -> str:
    r, g, b = (int(round(float(v) * 255)) for v in np.clip(np.asarray(rgb, float), 0, 1))
    return f"#{r:02x}{g:02x}{b:02x}"
