"""SVG files ↔ :class:`SvgScene`, with svgelements for parsing.

Reading keeps the **fill** of every shape (``<path>``, ``<rect>``, ``<circle>``, ``<ellipse>``,
``<polygon>``, ``<polyline>``, inside groups and ``<use>``) and ignores strokes, text, images,
gradients (a gradient fill is read as its fallback colour, black) and clipping. Each shape becomes
one path whose subpaths become contours of that path, so even-odd holes stay holes. Segments are
converted to cubics exactly: lines with control points at 1/3 and 2/3, quadratics by the 2/3
rule, elliptical arcs as cubics of at most 90° each. All of that happens in the shape's local
coordinates; the shape's full transform (its own, its groups', the viewBox mapping, then the
scale to the requested output size) is applied to the cubic control points afterwards, which is
exact for affine maps: an arc under a skew or non-uniform scale stays correct.

Alpha is the fill colour's alpha × ``fill-opacity`` × the product of ``opacity`` over the shape
and its ancestors (a group's opacity applied per shape: exact unless the group's shapes overlap).

Files may come from anyone, so reading is bounded: the elements after ``<use>`` expansion and
their nesting are counted on the XML tree before svgelements expands anything (a 2 KB file of
nested ``<use>`` names 10⁸ shapes), and the canvas, the scene's size and the coordinates are
checked before anything that large is allocated or rasterized. Each limit is a module constant,
named by the error it raises, to raise for files you trust.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Union
from xml.etree import ElementTree

import numpy as np
import svgelements as se
import torch

from scorestudio.renderers.svg.rasterizer import check_canvas
from scorestudio.renderers.svg.scene import SvgScene

PathLike = Union[str, os.PathLike]

MAX_SVG_ELEMENTS = 100_000         # elements after <use> expansion
MAX_SVG_DEPTH = 100                # nesting of elements after <use> expansion (svgelements recurses per level)
MAX_SVG_SEGMENTS = 10_000_000      # paths × segments of the longest path: the scene pads every path to that
MAX_SVG_COORDINATE = 1e6           # px on the output canvas; float32 still resolves a tenth of a pixel there

_XLINK_HREF = "{http://www.w3.org/1999/xlink}href"


class SvgError(ValueError):
    """An SVG file that cannot be used; the message names the file and the problem."""


# ---------------------------------------------------------------------------------- reading


def read_svg(path: PathLike, width: Optional[int] = None, height: Optional[int] = None) -> SvgScene:
    """Read the filled shapes of an SVG file as a scene with N = 1 on a white background.

    The canvas is the document's size (``width``/``height``, else its viewBox; svgelements assumes
    1000 × 1000 without either). ``width`` and/or ``height`` rescale it: one of them alone keeps
    the aspect ratio, both stretch the drawing to that size. Raises :class:`SvgError` for a missing
    file, unparseable XML or a document without any filled shape.
    """
    path = Path(path)
    if not path.is_file():
        raise SvgError(f"{path}: SVG file not found")
    try:
        _check_structure(ElementTree.parse(path).getroot(), path)
        doc = se.SVG.parse(str(path), reify=False)
    except SvgError:
        raise
    except Exception as err:  # ElementTree.ParseError, or svgelements' own errors on bad values
        raise SvgError(f"{path}: not a valid SVG file ({type(err).__name__}: {err})") from err
    doc_w, doc_h = float(doc.width or 0), float(doc.height or 0)
    if not (0 < doc_w < math.inf and 0 < doc_h < math.inf):
        raise SvgError(f"{path}: the document has no positive size (width={doc.width}, height={doc.height})")
    out_w, out_h = _output_size(doc_w, doc_h, width, height)
    try:
        check_canvas(out_w, out_h, "the canvas")
    except ValueError as err:
        raise SvgError(f"{path}: {err}") from None
    scale = np.array([out_w / doc_w, out_h / doc_h])
    shapes = []
    _collect(doc, 1.0, shapes)
    paths = []
    for shape, opacity in shapes:
        contours = _contours(shape)
        if contours:
            rgba = _fill_rgba(shape, opacity)
            matrix = shape.transform
            affine = np.array([[matrix.a, matrix.c, matrix.e], [matrix.b, matrix.d, matrix.f]])
            paths.append((contours, affine, rgba, shape.values.get("fill-rule", "nonzero")))
    if not paths:
        raise SvgError(f"{path}: no filled shapes (only strokes, text, empty or fill=\"none\" shapes; "
                       f"the rasterizer draws fills only)")
    longest = max(sum(len(c) for c in contours) for contours, *_ in paths)
    if len(paths) * longest > MAX_SVG_SEGMENTS:
        raise _over_limit(path, "MAX_SVG_SEGMENTS", f"{len(paths)} paths padded to {longest} segments (its longest "
                                                    f"path) make {len(paths) * longest} segments")
    scene = _scene_from_paths(paths, scale, out_w, out_h)
    far = float(scene.points.abs().max())   # inf when a coordinate overflows float32
    if not far <= MAX_SVG_COORDINATE:
        raise _over_limit(path, "MAX_SVG_COORDINATE", f"a control point lies {far:.3g} px from the origin of "
                                                      f"the {out_w} x {out_h} px canvas")
    return scene


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

    References resolve as svgelements resolves them: ``href`` over ``xlink:href``, ``#id`` to
    the last element with that id."""
    ids = {el.get("id"): el for el in root.iter() if el.get("id") is not None}
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
            raise SvgError(f"{path}: <{_local(el.tag)} id=\"{el.get('id')}\"> contains a <use> of itself: "
                           "an endless expansion")
        open_.add(id(el))
        inner = list(el)
        href = el.get("href", el.get(_XLINK_HREF)) if _local(el.tag) == "use" else None
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


def _local(tag) -> str:
    """An element's tag without its namespace."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _output_size(doc_w: float, doc_h: float, width: Optional[int], height: Optional[int]) -> tuple[int, int]:
    if width is None and height is None:
        return max(1, round(doc_w)), max(1, round(doc_h))
    if height is None:
        return int(width), max(1, round(doc_h * width / doc_w))
    if width is None:
        return max(1, round(doc_w * height / doc_h)), int(height)
    return int(width), int(height)


def _collect(node, opacity: float, out: list) -> None:
    """Depth-first (document order = painter's order) list of (filled shape, opacity product)."""
    for child in node:
        own = _opacity(child.values.get("attributes", {}).get("opacity", "1")) if hasattr(child, "values") else 1.0
        if isinstance(child, (se.Group, se.Use)):
            _collect(child, opacity * own, out)
        elif isinstance(child, se.Shape) and not isinstance(child, se.SimpleLine):
            if child.fill is not None and child.fill.value is not None:
                out.append((child, opacity * own))


def _opacity(text: str) -> float:
    """An ``opacity`` attribute: a number or a percentage, clamped to [0, 1]."""
    text = str(text).strip()
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    return min(max(value, 0.0), 1.0)


def _fill_rgba(shape, opacity: float) -> list[float]:
    """Straight RGBA of a shape's fill; svgelements already folds fill-opacity into the alpha."""
    c = shape.fill
    return [c.red / 255.0, c.green / 255.0, c.blue / 255.0, c.opacity * opacity]


def _contours(shape) -> list[list[np.ndarray]]:
    """Closed contours of a shape in its local coordinates, each a list of cubics ``[4, 2]``."""
    contours, current = [], []

    def close():
        nonlocal current
        if current:
            end = current[-1][3]
            if not np.allclose(end, current[0][0], atol=1e-9):
                current.append(_line(end, current[0][0]))   # fill closes open subpaths with a line
            contours.append(current)
        current = []

    for seg in shape.segments(transformed=False):
        if isinstance(seg, (se.Move, se.Close)):
            close()
            continue
        current.extend(c for c in _as_cubics(seg) if np.ptp(c, axis=0).max() > 0)  # drop zero-length
    close()
    return [c for c in contours if c]


def _line(p0, p3) -> np.ndarray:
    p0, p3 = np.asarray(p0, float), np.asarray(p3, float)
    return np.stack([p0, p0 + (p3 - p0) / 3, p0 + 2 * (p3 - p0) / 3, p3])


def _as_cubics(seg) -> list[np.ndarray]:
    """One segment as exact cubic(s) ``[4, 2]`` (arcs: ≤ 90° per cubic)."""
    pt = lambda p: np.array([p.x, p.y], float)  # noqa: E731
    if isinstance(seg, se.Line):
        return [_line(pt(seg.start), pt(seg.end))]
    if isinstance(seg, se.QuadraticBezier):
        p0, c, p3 = pt(seg.start), pt(seg.control), pt(seg.end)
        return [np.stack([p0, p0 + 2 / 3 * (c - p0), p3 + 2 / 3 * (c - p3), p3])]
    if isinstance(seg, se.CubicBezier):
        return [np.stack([pt(seg.start), pt(seg.control1), pt(seg.control2), pt(seg.end)])]
    if isinstance(seg, se.Arc):
        pieces = max(1, math.ceil(abs(seg.sweep) / (math.pi / 2) - 1e-9))
        return [c for cubic in seg.as_cubic_curves(pieces) for c in _as_cubics(cubic)]
    raise SvgError(f"unsupported path segment {type(seg).__name__}")


def _scene_from_paths(paths: list, scale: np.ndarray, width: int, height: int) -> SvgScene:
    """Pad paths to the same number of segments (padding segments have contour id −1)."""
    num_segments = max(sum(len(c) for c in contours) for contours, *_ in paths)
    points = np.zeros((1, len(paths), 3 * num_segments, 2))
    contour_ids = -np.ones((len(paths), num_segments), dtype=np.int64)
    fills, rules = [], []
    for i, (contours, affine, rgba, rule) in enumerate(paths):
        cubics = np.stack([c for contour in contours for c in contour])           # [S, 4, 2]
        local = cubics[:, :3].reshape(-1, 2)                                       # p0, p1, p2
        xy = (local @ affine[:, :2].T + affine[:, 2]) * scale
        points[0, i, : len(xy)] = xy
        points[0, i, len(xy):] = xy[0]
        contour_ids[i, : len(cubics)] = np.repeat(np.arange(len(contours)), [len(c) for c in contours])
        fills.append(rgba)
        rules.append("evenodd" if rule == "evenodd" else "nonzero")
    return SvgScene(torch.tensor(points, dtype=torch.float32),
                    torch.tensor([fills], dtype=torch.float32).clamp(0, 1),
                    width, height, fill_rule=rules, contour=torch.from_numpy(contour_ids))


# ---------------------------------------------------------------------------------- writing


def svg_string(scene: SvgScene, index: int = 0) -> str:
    """Scene ``index`` as SVG markup: a background rect and one ``<path>`` per path."""
    w, h = scene.width, scene.height
    pts = scene.points[index].detach().double().cpu().numpy()                      # [P, 3S, 2]
    fill = scene.fill[index].detach().double().clamp(0, 1).cpu().numpy()
    ends = scene.segment_ends().cpu().numpy()
    contour = scene.contour.cpu().numpy()
    lines = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">',
             f'<rect width="{w}" height="{h}" fill="{_hex(scene.backgrounds()[index].detach().cpu())}"/>']
    for p, rule in enumerate(scene.fill_rules()):
        d = _path_data(pts[p], ends[p], contour[p])
        if d and fill[p, 3] > 0:                     # a fully transparent path draws nothing
            lines.append(f'<path d="{d}" fill="{_hex(fill[p, :3])}" fill-opacity="{fill[p, 3]:.4f}" '
                         f'fill-rule="{rule}"/>')
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def write_svg(scene: SvgScene, path: PathLike, index: int = 0) -> Path:
    """Write scene ``index`` of the batch as an SVG file (see :func:`svg_string`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg_string(scene, index))
    return path


def _path_data(pts: np.ndarray, ends: np.ndarray, contour: np.ndarray) -> str:
    """``M … C … Z`` for every contour of one path (``pts [3S, 2]``, ``ends``/``contour`` ``[S]``)."""
    f = lambda xy: f"{xy[0]:.3f} {xy[1]:.3f}"  # noqa: E731
    parts = []
    for s in np.flatnonzero(contour >= 0):
        if s == 0 or contour[s] != contour[s - 1]:
            parts.append(f"M {f(pts[3 * s])}")
        parts.append(f"C {f(pts[3 * s + 1])} {f(pts[3 * s + 2])} {f(pts[ends[s]])}")
        if s + 1 == len(contour) or contour[s + 1] != contour[s]:
            parts.append("Z")
    return " ".join(parts)


def _hex(rgb) -> str:
    r, g, b = (int(round(float(v) * 255)) for v in np.clip(np.asarray(rgb, float), 0, 1))
    return f"#{r:02x}{g:02x}{b:02x}"
