"""The SVG document model: which elements are drawn, where, and with what paint.

:func:`read_drawing` walks the XML tree as a renderer does and returns a :class:`Drawing`: every
drawn shape as cubic contours on the output canvas with its fill, stroke, opacity and clip paths,
plus a count of each feature it met and did not draw (``ignored``). svgelements reads the
geometry (path data, basic shapes, arcs, transform lists); the walk itself is written here because
svgelements' own walk draws what must not be drawn: the content of ``<mask>``, ``<marker>``,
``<symbol>`` outside ``<defs>``, gradients, unknown elements and every child of ``<switch>``; it
ignores viewports of nested ``<svg>`` under ``<use>``, SVG 2 ``transform-origin``, and takes the
last of duplicated ids where SVG takes the first.

Nothing in a document reads another file: only ``#id`` references inside it are followed.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Union
from xml.etree import ElementTree

import numpy as np
import svgelements as se

from scorestudio.renderers.svg import style as css

SVG_NS = "http://www.w3.org/2000/svg"
LANGUAGE = ("en", "en-us")            # systemLanguage values a <switch> accepts
RGBA = tuple[float, float, float, float]

# Elements whose content is never drawn where it stands (only through a reference, or never)
_NOT_RENDERED = {"defs", "clipPath", "mask", "marker", "symbol", "pattern", "linearGradient",
                 "radialGradient", "style", "title", "desc", "metadata", "filter", "script", "font",
                 "font-face", "cursor", "view", "stop", "animate", "set", "animateTransform",
                 "animateMotion", "feImage"}
_SHAPES = {"path", "rect", "circle", "ellipse", "line", "polyline", "polygon"}
_IGNORED_ELEMENTS = {"text": "text", "image": "image", "foreignObject": "foreignObject"}
_SWITCH_CHILDREN = _SHAPES | {"g", "svg", "use", "text", "image", "foreignObject", "switch", "a"}


class DocumentError(ValueError):
    """A document that cannot be drawn at all (no size)."""


@dataclass
class Contour:
    cubics: np.ndarray          # [S, 4, 2] canvas px: start, control 1, control 2, end
    closed: bool                # closed by Z (or a shape that is always closed)


@dataclass
class Gradient:
    """A linear or radial gradient in its own space, mapped to canvas px by ``transform``."""

    kind: str                                    # "linear" | "radial"
    coords: tuple[float, ...]                    # linear: x1 y1 x2 y2; radial: cx cy r fx fy fr
    stops: list[tuple[float, RGBA]]              # offsets non-decreasing in [0, 1], straight RGBA
    spread: str                                  # "pad" | "reflect" | "repeat"
    transform: np.ndarray                        # [2, 3] gradient space → canvas px
    opacity: float = 1.0                         # fill-opacity / stroke-opacity of the shape using it


Fill = Union[RGBA, Gradient, None]


@dataclass
class Clip:
    """One ``clipPath``: the union of its shapes (each with its clip rule and the clip paths of its
    own ``clip-path``, which intersect it), intersected with the clip path it has itself (``clip``)."""

    shapes: list[tuple[list[Contour], str, list["Clip"]]]
    clip: Optional["Clip"] = None


@dataclass
class Item:
    """One drawn shape. Colours are straight RGBA; ``opacity`` is the product of ``opacity`` over the
    shape and its ancestors; every clip in ``clips`` applies (their intersection)."""

    contours: list[Contour]
    fill: Fill
    fill_rule: str
    stroke: Fill
    stroke_width: float            # canvas px
    linecap: str
    linejoin: str
    miterlimit: float
    dasharray: list[float]         # canvas px, [] = solid
    dashoffset: float              # canvas px
    opacity: float
    clips: list[Clip]
    source: str                    # tag and id, for messages


@dataclass
class Drawing:
    width: float                   # the document's size in px
    height: float
    items: list[Item]
    ignored: Counter = field(default_factory=Counter)   # feature → how many times it was not drawn


@dataclass
class _Context:
    matrix: np.ndarray             # [3, 3] user space → canvas px
    viewport: tuple[float, float]  # width, height of the nearest viewport (for percentages)
    style: dict                    # the parent's computed style
    opacity: float
    clips: list


def read_drawing(root: ElementTree.Element, out_size=None) -> Drawing:
    """The drawing of the document ``root``; ``out_size(doc_w, doc_h) -> (w, h)`` picks the output
    canvas (default: the document's size)."""
    return _Walker(root).drawing(out_size)


class _Walker:
    def __init__(self, root: ElementTree.Element):
        self.root = root
        self.ids: dict[str, ElementTree.Element] = {}
        for el in root.iter():
            if el.get("id") is not None:
                self.ids.setdefault(el.get("id"), el)          # the first of duplicated ids wins
        self.specified = css.cascade(root)
        self.ignored: Counter = Counter()
        self.items: list[Item] = []
        self.parents = {id(child): el for el in root.iter() for child in el}
        self.xml_styles: dict[int, dict] = {}
        self.clips: dict[tuple, Clip] = {}             # clip paths by (clipPath, user space, inner clip)
        self.boxes: Optional[list] = None              # a list: the walk only collects shapes' bounding boxes

    def _xml_style(self, el) -> dict:
        """The computed style of an element inheriting along its XML ancestors (for the content of
        clip paths and gradients, which inherit from where they are defined)."""
        chain = []
        while el is not None and id(el) not in self.xml_styles:
            chain.append(el)
            el = self.parents.get(id(el))
        style = self.xml_styles[id(el)] if el is not None else css.initial()
        for node in reversed(chain):
            style = self.xml_styles[id(node)] = css.compute(self.specified.get(id(node), {}), style)
        return style

    # ------------------------------------------------------------------ document
    def drawing(self, out_size) -> Drawing:
        root = self.root
        if css.local(root.tag) != "svg":
            raise DocumentError(f"the root element is <{css.local(root.tag)}>, not <svg>")
        view_box = _view_box(root.get("viewBox"))
        w = _length(root.get("width"), view_box[2] if view_box else 100.0, 16.0, default=None)
        h = _length(root.get("height"), view_box[3] if view_box else 100.0, 16.0, default=None)
        if w is None or h is None:                 # "100%" or missing: the viewBox's size, else 100
            if view_box and w is None and h is not None and view_box[3] > 0:
                w = h * view_box[2] / view_box[3]
            elif view_box and h is None and w is not None and view_box[2] > 0:
                h = w * view_box[3] / view_box[2]
            w = w if w is not None else (view_box[2] if view_box else 100.0)
            h = h if h is not None else (view_box[3] if view_box else 100.0)
        if not (0 < w < math.inf and 0 < h < math.inf):
            raise DocumentError(f"the document has no positive size (width={root.get('width')}, "
                                f"height={root.get('height')}, viewBox={root.get('viewBox')})")
        out_w, out_h = out_size(w, h) if out_size else (w, h)
        canvas = np.diag([out_w / w, out_h / h, 1.0])
        style = css.compute(self.specified.get(id(root), {}), css.initial())
        matrix = canvas @ _viewport_matrix(view_box, root.get("preserveAspectRatio"), 0, 0, w, h)
        size = (view_box[2], view_box[3]) if view_box else (w, h)
        ctx = _Context(matrix @ self._transform(root, style, size), size, style,
                       css.opacity(style["opacity"]), [])
        self._group_effects(root, style)
        drawn, clip = self._linked_clip(style, ctx.matrix, root, size, set())
        if clip is not None:
            ctx.clips = [clip]
        if drawn and style["display"] != "none" and _conditions_pass(root):
            self._background(style, out_w, out_h)
            self._children(root, ctx)
        return Drawing(w, h, self.items, self.ignored)

    def _background(self, style: dict, width: float, height: float) -> None:
        """The root's CSS ``background-color`` as a rectangle under everything (canvas px)."""
        rgba = css.parse_color(style["background-color"], style["color"])
        if rgba is not None and rgba[3] > 0:
            self.items.append(Item(
                contours=[_rect_contour(np.eye(3), 0.0, 0.0, width, height)], fill=rgba, fill_rule="nonzero",
                stroke=None, stroke_width=0.0, linecap="butt", linejoin="miter", miterlimit=4.0, dasharray=[],
                dashoffset=0.0, opacity=1.0, clips=[], source="<svg> background-color"))

    # ------------------------------------------------------------------ elements
    def _children(self, el: ElementTree.Element, ctx: _Context) -> None:
        for child in el:
            self._element(child, ctx)

    def _element(self, el: ElementTree.Element, ctx: _Context, tag: Optional[str] = None) -> None:
        tag = tag or self._tag(el)
        if tag is None or tag in _NOT_RENDERED or not _conditions_pass(el):
            return                                    # conditions apply to every element, not only in <switch>
        style = css.compute(self.specified.get(id(el), {}), ctx.style)
        if style["display"] == "none":
            return
        if tag in _IGNORED_ELEMENTS:
            self.ignored[_IGNORED_ELEMENTS[tag]] += 1
            return
        if tag not in _SHAPES | {"g", "a", "svg", "use", "switch"}:
            return                                    # unknown elements are not drawn, nor their content
        inner = self._enter(el, style, ctx)
        if inner is None:
            return
        if tag in _SHAPES:
            self._shape(el, tag, style, inner)
        elif tag in ("g", "a"):
            self._children(el, inner)
        elif tag == "switch":
            chosen = self._switch_choice(el)
            if chosen is not None:
                self._element(chosen, inner)
        elif tag == "svg":
            self._viewport(el, el, style, inner, None, None)
        elif tag == "use":
            self._use(el, style, inner)

    def _tag(self, el: ElementTree.Element) -> Optional[str]:
        """The local name of an SVG element; None for comments and elements of other namespaces."""
        if not isinstance(el.tag, str):
            return None
        ns = el.tag[1:].split("}", 1)[0] if el.tag.startswith("{") else ""
        return css.local(el.tag) if ns in ("", SVG_NS) else None

    def _enter(self, el, style: dict, ctx: _Context) -> Optional[_Context]:
        """The context inside ``el``: its transform, opacity and clip path; None when a clip path
        reference is broken (the element is then not drawn, as in resvg)."""
        matrix = ctx.matrix @ self._transform(el, style, ctx.viewport)
        drawn, clip = self._linked_clip(style, matrix, el, ctx.viewport, set())
        if not drawn:
            return None
        clips = ctx.clips + [clip] if clip is not None else ctx.clips
        self._group_effects(el, style)
        return _Context(matrix, ctx.viewport, style, ctx.opacity * css.opacity(style["opacity"]), clips)

    def _group_effects(self, el, style: dict) -> None:
        """Count the effects of an element that are not drawn (drawn without them)."""
        for name in ("mask", "filter"):
            if style[name] != "none":
                self.ignored[name] += 1
        if style["mix-blend-mode"] != "normal":
            self.ignored["mix-blend-mode"] += 1

    def _transform(self, el, style: dict, viewport) -> np.ndarray:
        """``transform`` (attribute or CSS) about ``transform-origin`` (SVG 2), ``[3, 3]``."""
        text = style["transform"]
        if not text or text == "none":
            return np.eye(3)
        try:
            m = se.Matrix(text)
        except (ValueError, IndexError):
            return np.eye(3)
        matrix = np.array([[m.a, m.c, m.e], [m.b, m.d, m.f], [0.0, 0.0, 1.0]])
        ox, oy = _origin(style["transform-origin"], viewport)
        if ox or oy:
            matrix = _translate(ox, oy) @ matrix @ _translate(-ox, -oy)
        return matrix

    def _switch_choice(self, el) -> Optional[ElementTree.Element]:
        """The first child of a ``<switch>`` whose conditions pass (the only one drawn)."""
        for child in el:
            if self._tag(child) in _SWITCH_CHILDREN and _conditions_pass(child):
                return child
        return None

    def _use(self, el, style: dict, ctx: _Context) -> None:
        href = css.attribute(el, "href") or ""
        target = self.ids.get(href[1:]) if href.startswith("#") else None
        if target is None:
            return
        vw, vh = ctx.viewport
        x = _length(el.get("x"), vw, _font(style)) or 0.0
        y = _length(el.get("y"), vh, _font(style)) or 0.0
        inner = _Context(ctx.matrix @ _translate(x, y), ctx.viewport, style, ctx.opacity, ctx.clips)
        tag = self._tag(target)
        if tag in ("symbol", "svg"):
            target_style = css.compute(self.specified.get(id(target), {}), style)
            if target_style["display"] == "none":
                return
            self._viewport(target, el, target_style, inner, el.get("width"), el.get("height"))
        else:
            self._element(target, inner)

    def _viewport(self, el, placed, style: dict, ctx: _Context, width, height) -> None:
        """A nested ``<svg>`` or a ``<symbol>`` (``placed`` is the element that positions it: itself,
        or the ``<use>``): a new viewport, its viewBox mapping, and a clip to it unless ``overflow``
        is visible."""
        vw, vh = ctx.viewport
        font = _font(style)
        symbol = css.local(el.tag) == "symbol"
        x = _length(el.get("x"), vw, font) or 0.0       # an <svg> under <use> keeps its x, y (resvg)
        y = _length(el.get("y"), vh, font) or 0.0
        w = _length(width, vw, font, default=None) if width is not None else None
        h = _length(height, vh, font, default=None) if height is not None else None
        w = w if w is not None else _length(el.get("width"), vw, font, default=vw)
        h = h if h is not None else _length(el.get("height"), vh, font, default=vh)
        if w is None or h is None or w <= 0 or h <= 0:
            return
        view_box = _view_box(el.get("viewBox"))
        matrix = ctx.matrix                            # a <symbol>'s transform is ignored (SVG 1.1, resvg)
        clips = ctx.clips
        if self.specified.get(id(el), {}).get("overflow", "hidden").strip() not in ("visible", "auto"):
            clips = clips + [Clip([([_rect_contour(matrix, x, y, w, h)], "nonzero", [])])]
        matrix = matrix @ _viewport_matrix(view_box, el.get("preserveAspectRatio"), x, y, w, h)
        size = (view_box[2], view_box[3]) if view_box else (w, h)
        opacity = ctx.opacity * (css.opacity(style["opacity"]) if el is not placed else 1.0)
        self._children(el, _Context(matrix, size, style, opacity, clips))

    # ------------------------------------------------------------------ shapes
    def _shape(self, el, tag: str, style: dict, ctx: _Context) -> None:
        local = _geometry(el, tag, ctx.viewport, _font(style))
        if local is None:
            return                                    # an invalid shape (negative size…) is not drawn
        subpaths = [(c, closed) for c, closed in local if len(c)]
        if subpaths and self.boxes is not None:
            self.boxes.append(_bbox(np.concatenate([_apply(ctx.matrix, c) for c, _ in subpaths])))
            return
        if not subpaths or style["visibility"] in ("hidden", "collapse"):
            return
        if any(style[m] != "none" for m in ("marker-start", "marker-mid", "marker-end")):
            self.ignored["marker"] += 1                # SVG 2 (and resvg) puts markers on every shape
        contours = [Contour(_apply(ctx.matrix, c), closed) for c, closed in subpaths]
        bbox = _bbox(np.concatenate([c for c, _ in subpaths]))
        current = style["color"]
        fill = None if tag == "line" else self._paint(        # a line has no inside
            style["fill"], css.opacity(style["fill-opacity"]), current, bbox, ctx, "fill")
        stroke = self._paint(style["stroke"], css.opacity(style["stroke-opacity"]), current, bbox, ctx, "stroke")
        scale = math.sqrt(abs(np.linalg.det(ctx.matrix[:2, :2])))    # exact for similarity transforms
        diag = math.hypot(*ctx.viewport) / math.sqrt(2)
        width = _length(style["stroke-width"], diag, _font(style), default=1.0)
        if width is None or width <= 0:
            stroke = None
        if fill is None and stroke is None:
            return
        dashes = _dasharray(style["stroke-dasharray"], diag, _font(style))
        self.items.append(Item(
            contours=contours, fill=fill,
            fill_rule="evenodd" if style["fill-rule"].strip() == "evenodd" else "nonzero",
            stroke=stroke, stroke_width=(width or 0.0) * scale,
            linecap=_keyword(style["stroke-linecap"], ("butt", "round", "square"), "butt"),
            linejoin=_keyword(style["stroke-linejoin"], ("miter", "round", "bevel", "miter-clip", "arcs"), "miter"),
            miterlimit=max(1.0, css.parse_number(style["stroke-miterlimit"], 4.0)),
            dasharray=[d * scale for d in dashes],
            dashoffset=(_length(style["stroke-dashoffset"], diag, _font(style)) or 0.0) * scale,
            opacity=ctx.opacity, clips=ctx.clips, source=f"<{tag} id={el.get('id')!r}>"))

    def _paint(self, text: str, alpha: float, current: str, bbox, ctx: _Context, what: str) -> Fill:
        """A fill or stroke as an RGBA, a :class:`Gradient` or None (nothing drawn)."""
        paint = css.parse_paint(text, current)
        if paint is None:
            return None
        if paint.keyword:
            self.ignored[paint.keyword] += 1
            return None
        if paint.rgba is not None:
            return _times_alpha(paint.rgba, alpha)
        server = self.ids.get(paint.ref)
        kind = css.local(server.tag) if server is not None else None
        if kind in ("linearGradient", "radialGradient"):
            gradient = self._gradient(server, bbox, ctx)
            if gradient is None:                         # no stops, or a bounding box of zero size
                return _times_alpha(paint.fallback, alpha) if paint.fallback is not None else None
            if isinstance(gradient, tuple):              # one stop: a plain colour
                return _times_alpha(gradient, alpha)
            gradient.opacity = alpha
            return gradient
        if kind == "pattern":
            self.ignored["pattern"] += 1
        return _times_alpha(paint.fallback, alpha) if paint.fallback is not None else None

    def _gradient(self, el, bbox, ctx: _Context) -> Union[Gradient, RGBA, None]:
        """A gradient with the attributes and stops it inherits through ``href``."""
        chain, seen = [], set()
        while el is not None and id(el) not in seen and css.local(el.tag) in ("linearGradient", "radialGradient"):
            chain.append(el)
            seen.add(id(el))
            href = css.attribute(el, "href") or ""
            el = self.ids.get(href[1:]) if href.startswith("#") else None
        kind = css.local(chain[0].tag)

        def attr(name, default=None):
            for g in chain:
                if g.get(name) is not None and (name not in _KIND_ATTRIBUTES or css.local(g.tag) == kind):
                    return g.get(name)
            return default

        stops = next((self._stops(g) for g in chain if any(css.local(s.tag) == "stop" for s in g)), [])
        if not stops:
            return None
        if len(stops) == 1:
            return stops[0][1]
        units = attr("gradientUnits", "objectBoundingBox").strip()
        user = units == "userSpaceOnUse"
        if not user:
            x0, y0, x1, y1 = bbox
            if x1 - x0 <= 0 or y1 - y0 <= 0:
                return None
            space = np.array([[x1 - x0, 0, x0], [0, y1 - y0, y0], [0, 0, 1.0]])
        else:
            space = np.eye(3)
        try:
            m = se.Matrix(attr("gradientTransform", "") or "")
            g_matrix = np.array([[m.a, m.c, m.e], [m.b, m.d, m.f], [0.0, 0.0, 1.0]])
        except (ValueError, IndexError):
            g_matrix = np.eye(3)
        w, h = ctx.viewport if user else (1.0, 1.0)       # what percentages refer to
        ox, oy = _origin(self.specified.get(id(chain[0]), {}).get("transform-origin", "0 0"), (w, h))
        full = ctx.matrix @ space @ _translate(ox, oy) @ g_matrix @ _translate(-ox, -oy)   # SVG 2 transform-origin

        def coord(name, default, ref):
            return _length(attr(name, default), ref, 16.0, default=0.0) if user else css.parse_number(
                attr(name, default), 0.0)

        if kind == "linearGradient":
            coords = (coord("x1", "0%", w), coord("y1", "0%", h), coord("x2", "100%", w), coord("y2", "0%", h))
        else:
            cx, cy = coord("cx", "50%", w), coord("cy", "50%", h)
            r = coord("r", "50%", math.hypot(w, h) / math.sqrt(2))
            if r <= 0:
                return stops[-1][1]                     # a zero radius paints the last stop's colour
            fx = coord("fx", attr("cx", "50%"), w)
            fy = coord("fy", attr("cy", "50%"), h)
            coords = (cx, cy, r, fx, fy, coord("fr", "0%", math.hypot(w, h) / math.sqrt(2)))
        spread = _keyword(attr("spreadMethod", "pad"), ("pad", "reflect", "repeat"), "pad")
        return Gradient("linear" if kind == "linearGradient" else "radial", coords, stops, spread, full[:2])

    def _stops(self, gradient) -> list[tuple[float, RGBA]]:
        """Stops with offsets clamped to [0, 1] and made non-decreasing; stop-opacity folded in."""
        out, last = [], 0.0
        parent = self._xml_style(gradient)
        for stop in gradient:
            if css.local(stop.tag) != "stop":
                continue
            style = css.compute(self.specified.get(id(stop), {}), parent)
            offset = min(max(css.parse_number(stop.get("offset", "0"), 0.0), 0.0), 1.0)
            last = max(last, offset)
            rgba = css.parse_color(style["stop-color"], style["color"]) or (0.0, 0.0, 0.0, 1.0)
            out.append((last, _times_alpha(rgba, css.opacity(style["stop-opacity"]))))
        return out

    # ------------------------------------------------------------------ clip paths
    def _linked_clip(self, style: dict, matrix: np.ndarray, owner, viewport, open_: set,
                     owner_style: Optional[dict] = None) -> tuple[bool, Optional[Clip]]:
        """The ``clip-path`` of an element with computed ``style`` (of ``owner``, with computed
        ``owner_style``, default ``style``) whose user space is ``matrix``: (drawn, clip). As resvg: a link to no element, and a link back into a clip path being built
        (a cycle), are ignored (no clip); a link to an element that is not a ``clipPath`` or to an
        unusable one hides the element (drawn False). ``open_``: the clip paths being built."""
        ref = style["clip-path"]
        if ref == "none":
            return True, None
        if not ref.lower().startswith("url("):
            self.ignored["clip-path shape"] += 1            # CSS basic shapes: drawn unclipped
            return True, None
        target = self.ids.get(css.parse_url(ref) or "")
        if target is None or id(target) in open_:
            return True, None
        if css.local(target.tag) != "clipPath":
            return False, None
        clip = self._clip(target, matrix, owner, owner_style or style, viewport, open_)
        return clip is not None, clip

    def _owner_bbox(self, owner, style: dict, viewport) -> Optional[tuple[float, float, float, float]]:
        """The bounding box (x0, y0, x1, y1) of a shape or a group's shapes in its user space (for
        objectBoundingBox clip paths); None when it has no area. A group's box is that of the
        geometry of its drawn elements, invisible ones (``opacity`` 0, ``visibility`` hidden)
        included; what is not drawn (text…) adds nothing, and is counted if nothing else is there."""
        tag = self._tag(owner)
        if tag in _SHAPES:
            local = _geometry(owner, tag, viewport, _font(style))
            boxes = [_bbox(np.concatenate([c for c, _ in local]))] if local else []
        elif tag in ("g", "a") or owner is self.root:
            saved = self.items, self.ignored, self.boxes
            self.items, self.ignored, self.boxes = [], Counter(), []
            try:
                self._children(owner, _Context(np.eye(3), viewport, style, 1.0, []))
                boxes, ignored = self.boxes, self.ignored
            finally:
                self.items, self.ignored, self.boxes = saved
            if not boxes:
                self.ignored.update(ignored)              # the content is never walked again
        else:
            return None
        if not boxes:
            return None
        x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None

    def _clip(self, clip_el, matrix: np.ndarray, owner, owner_style: dict, viewport, open_: set) -> Optional[Clip]:
        """The clip path ``clip_el`` applied to ``owner`` (whose user space is ``matrix``); None when
        it shows nothing or cannot be used (no shapes, an objectBoundingBox without a box, an
        unusable inner clip path): the element is then not drawn."""
        open_ = open_ | {id(clip_el)}
        style = self._xml_style(clip_el)
        m = matrix @ self._transform(clip_el, style, viewport)
        if (clip_el.get("clipPathUnits") or "").strip() == "objectBoundingBox":
            geometry = self._owner_bbox(owner, owner_style, viewport)
            if geometry is None:
                return None
            x0, y0, x1, y1 = geometry
            m = m @ np.array([[x1 - x0, 0, x0], [0, y1 - y0, y0], [0, 0, 1.0]])
        shapes = []
        for child in clip_el:
            tag = self._tag(child)
            el = child
            if tag == "use":
                href = css.attribute(child, "href") or ""
                el = self.ids.get(href[1:]) if href.startswith("#") else None
                tag = self._tag(el) if el is not None else None
            if tag in _IGNORED_ELEMENTS:
                self.ignored[_IGNORED_ELEMENTS[tag]] += 1
            if tag not in _SHAPES:
                continue
            child_style = css.compute(self.specified.get(id(el), {}), style)
            if child_style["display"] == "none" or child_style["visibility"] in ("hidden", "collapse"):
                continue
            cm = m @ self._transform(child, child_style, viewport)
            if el is not child:
                x = _length(child.get("x"), viewport[0], 16.0) or 0.0
                y = _length(child.get("y"), viewport[1], 16.0) or 0.0
                cm = m @ _translate(x, y) @ self._transform(el, child_style, viewport)
            local = _geometry(el, tag, viewport, _font(child_style))
            drawn, own = self._linked_clip(child_style, cm, el, viewport, open_)   # in the child's user space
            if local and drawn:
                rule = "evenodd" if child_style["clip-rule"].strip() == "evenodd" else "nonzero"
                shapes.append(([Contour(_apply(cm, c), True) for c, _ in local if len(c)], rule,
                               [own] if own is not None else []))
        drawn, inner = self._linked_clip(style, matrix, owner, viewport, open_, owner_style)
        if not drawn or not shapes:
            return None                                  # an empty clip path shows nothing
        key = (id(clip_el), m.round(9).tobytes(), id(inner))
        return self.clips.setdefault(key, Clip(shapes, inner))  # one region per distinct use


def _conditions_pass(el) -> bool:
    """SVG's conditional processing: no ``requiredExtensions`` (none is supported), a non-empty
    ``requiredFeatures`` if any, and a ``systemLanguage`` (if any) that names one of
    :data:`LANGUAGE` or a language whose prefix is English."""
    if el.get("requiredExtensions") is not None:
        return False
    if el.get("requiredFeatures") is not None and not el.get("requiredFeatures").strip():
        return False
    langs = el.get("systemLanguage")
    if langs is None:
        return True
    codes = [c.strip().lower() for c in langs.split(",")]
    return any(c in LANGUAGE or c.split("-")[0] == LANGUAGE[0] for c in codes if c)


_KIND_ATTRIBUTES = {"cx", "cy", "r", "fx", "fy", "fr", "x1", "y1", "x2", "y2"}


# ---------------------------------------------------------------------------------- geometry


def _geometry(el, tag: str, viewport, font: float) -> Optional[list[tuple[np.ndarray, bool]]]:
    """The subpaths of a basic shape or path in its user space: (cubics ``[S, 4, 2]``, closed);
    None when the shape is invalid (negative size, missing radius) and so not drawn."""
    vw, vh = viewport
    diag = math.hypot(vw, vh) / math.sqrt(2)
    n = lambda name, ref, default=0.0: _length(el.get(name), ref, font, default=default)  # noqa: E731
    try:
        if tag == "path":
            shape = se.Path(el.get("d") or "")
        elif tag == "rect":
            w, h = n("width", vw), n("height", vh)
            if w is None or h is None or w <= 0 or h <= 0:
                return None
            rx, ry = _length(el.get("rx"), vw, font, default=None), _length(el.get("ry"), vh, font, default=None)
            rx = rx if rx is not None and rx >= 0 else None
            ry = ry if ry is not None and ry >= 0 else None
            rx, ry = (rx if rx is not None else ry or 0.0), (ry if ry is not None else rx or 0.0)
            shape = se.Rect(n("x", vw) or 0.0, n("y", vh) or 0.0, w, h, min(rx, w / 2), min(ry, h / 2))
        elif tag == "circle":
            r = n("r", diag)
            if r is None or r <= 0:
                return None
            shape = se.Circle(n("cx", vw) or 0.0, n("cy", vh) or 0.0, r)
        elif tag == "ellipse":
            rx, ry = _length(el.get("rx"), vw, font, default=None), _length(el.get("ry"), vh, font, default=None)
            rx, ry = (rx if rx is not None and rx >= 0 else None), (ry if ry is not None and ry >= 0 else None)
            rx, ry = (rx if rx is not None else ry), (ry if ry is not None else rx)   # SVG 2 "auto"
            if rx is None or ry is None or rx <= 0 or ry <= 0:
                return None
            shape = se.Ellipse(n("cx", vw) or 0.0, n("cy", vh) or 0.0, rx, ry)
        elif tag == "line":
            shape = se.Path(f"M {n('x1', vw) or 0} {n('y1', vh) or 0} L {n('x2', vw) or 0} {n('y2', vh) or 0}")
        else:                                           # polyline / polygon
            numbers = re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", el.get("points") or "")
            pairs = [f"{numbers[i]} {numbers[i + 1]}" for i in range(0, len(numbers) - 1, 2)]
            if len(pairs) < 2:
                return None
            shape = se.Path("M " + " L ".join(pairs) + (" Z" if tag == "polygon" else ""))
    except (ValueError, IndexError, TypeError):
        return None
    try:
        return _subpaths(shape)
    except (ValueError, IndexError, TypeError):
        return None


def _subpaths(shape) -> list[tuple[np.ndarray, bool]]:
    """Subpaths of an svgelements shape as exact cubics (zero-length segments dropped). A subpath
    whose segments all have zero length is one zero-length open cubic: SVG draws its round or
    square caps (a dot)."""
    out, current, closed, dot = [], [], False, None

    def finish():
        nonlocal current, closed, dot
        if current:
            out.append((np.stack(current), closed))
        elif dot is not None:
            out.append((line_cubic(dot, dot)[None], False))
        current, closed, dot = [], False, None

    for seg in shape.segments(transformed=False):
        if isinstance(seg, se.Move):
            finish()
            continue
        if seg.start is not None:
            dot = np.array([seg.start.x, seg.start.y], float)
        if isinstance(seg, se.Close):
            if seg.start is not None and seg.end is not None and current:
                start, end = np.array([seg.start.x, seg.start.y]), np.array([seg.end.x, seg.end.y])
                if not np.allclose(start, end, rtol=0, atol=1e-9):   # arcs end a rounding error away
                    current.append(line_cubic(start, end))
            closed = bool(current)
            finish()
            continue
        current.extend(c for c in _as_cubics(seg) if np.ptp(c, axis=0).max() > 0)
    finish()
    return out


def line_cubic(p0, p3) -> np.ndarray:
    p0, p3 = np.asarray(p0, float), np.asarray(p3, float)
    return np.stack([p0, p0 + (p3 - p0) / 3, p0 + 2 * (p3 - p0) / 3, p3])


def _as_cubics(seg) -> list[np.ndarray]:
    """One segment as exact cubic(s) ``[4, 2]`` (arcs: ≤ 90° per cubic)."""
    pt = lambda p: np.array([p.x, p.y], float)  # noqa: E731
    if isinstance(seg, se.Line):
        return [line_cubic(pt(seg.start), pt(seg.end))]
    if isinstance(seg, se.QuadraticBezier):
        p0, c, p3 = pt(seg.start), pt(seg.control), pt(seg.end)
        return [np.stack([p0, p0 + 2 / 3 * (c - p0), p3 + 2 / 3 * (c - p3), p3])]
    if isinstance(seg, se.CubicBezier):
        return [np.stack([pt(seg.start), pt(seg.control1), pt(seg.control2), pt(seg.end)])]
    if isinstance(seg, se.Arc):
        pieces = max(1, math.ceil(abs(seg.sweep) / (math.pi / 2) - 1e-9))
        return [c for cubic in seg.as_cubic_curves(pieces) for c in _as_cubics(cubic)]
    return []


def _apply(matrix: np.ndarray, cubics: np.ndarray) -> np.ndarray:
    """``cubics [S, 4, 2]`` mapped by the affine ``matrix [3, 3]`` (exact for Bézier control points)."""
    return cubics @ matrix[:2, :2].T + matrix[:2, 2]


def _bbox(cubics: np.ndarray) -> tuple[float, float, float, float]:
    """The exact bounding box (x0, y0, x1, y1) of cubics ``[S, 4, 2]``: end points and the extrema
    where the derivative vanishes."""
    p0, p1, p2, p3 = (cubics[:, i] for i in range(4))
    a, b, c = -p0 + 3 * p1 - 3 * p2 + p3, 2 * (p0 - 2 * p1 + p2), p1 - p0   # B'(t)/3 = a t² + b t + c
    ts = [np.zeros_like(a), np.ones_like(a)]
    with np.errstate(divide="ignore", invalid="ignore"):
        disc = np.sqrt(np.maximum(b * b - 4 * a * c, 0))
        for t in ((-b + disc) / (2 * a), (-b - disc) / (2 * a), -c / b):
            ts.append(np.where(np.isfinite(t), np.clip(t, 0, 1), 0.0))
    pts = []
    for t in ts:
        pts.append(((1 - t) ** 3) * p0 + 3 * ((1 - t) ** 2) * t * p1 + 3 * (1 - t) * t * t * p2 + t ** 3 * p3)
    pts = np.concatenate(pts)
    return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


def _rect_contour(matrix: np.ndarray, x: float, y: float, w: float, h: float) -> Contour:
    corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], float)
    cubics = np.stack([line_cubic(corners[i], corners[(i + 1) % 4]) for i in range(4)])
    return Contour(_apply(matrix, cubics), True)


# ---------------------------------------------------------------------------------- values

_UNITS = {"": 1.0, "px": 1.0, "pt": 4 / 3, "pc": 16.0, "mm": 96 / 25.4, "cm": 96 / 2.54, "in": 96.0, "q": 96 / 101.6}
_LENGTH = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(px|pt|pc|mm|cm|in|q|em|ex|%)?\s*$",
                     re.IGNORECASE)


def _length(text, reference: float, font: float, default: Optional[float] = 0.0) -> Optional[float]:
    """A length in px; percentages of ``reference``; ``default`` when missing or invalid."""
    if text is None:
        return default
    match = _LENGTH.match(str(text))
    if not match:
        return default
    value, unit = float(match.group(1)), (match.group(2) or "").lower()
    if unit == "%":
        return value / 100 * reference
    if unit == "em":
        return value * font
    if unit == "ex":
        return value * font / 2
    return value * _UNITS[unit]


def _font(style: dict) -> float:
    return _length(style["font-size"], 16.0, 16.0, default=16.0) or 16.0


def _keyword(text: str, allowed: tuple, default: str) -> str:
    text = text.strip()
    return text if text in allowed else default


def _dasharray(text: str, reference: float, font: float) -> list[float]:
    """Dash lengths (user units): [] for none, an invalid or negative list, or all zeros; an odd
    list is repeated to make it even."""
    if text.strip() == "none":
        return []
    values = [_length(v, reference, font, default=None) for v in re.split(r"[\s,]+", text.strip()) if v]
    if not values or any(v is None or v < 0 for v in values) or sum(values) <= 0:
        return []
    return values * 2 if len(values) % 2 else values


def _times_alpha(rgba: RGBA, alpha: float) -> RGBA:
    return (rgba[0], rgba[1], rgba[2], rgba[3] * alpha)


def _translate(x: float, y: float) -> np.ndarray:
    return np.array([[1.0, 0, x], [0, 1.0, y], [0, 0, 1.0]])


def _origin(text: str, viewport) -> tuple[float, float]:
    """``transform-origin`` as (x, y) user units: lengths, percentages of the viewport, keywords."""
    words = text.replace(",", " ").split()
    keys = {"left": ("x", 0.0), "right": ("x", 1.0), "top": ("y", 0.0), "bottom": ("y", 1.0), "center": (None, 0.5)}
    x = y = None
    for i, word in enumerate(words[:2]):
        if word in keys:
            axis, frac = keys[word]
            axis = axis or ("x" if (i == 0 and x is None) else "y")
            value = frac * viewport[0 if axis == "x" else 1]
        else:
            axis = "x" if i == 0 else "y"
            value = _length(word, viewport[0 if axis == "x" else 1], 16.0) or 0.0
        if axis == "x" and x is None:
            x = value
        else:
            y = value
    if x is None:
        x = 0.5 * viewport[0] if len(words) == 1 else 0.0
    if y is None:
        y = 0.5 * viewport[1] if len(words) == 1 else 0.0
    return x, y


def _view_box(text) -> Optional[tuple[float, float, float, float]]:
    if not text:
        return None
    try:
        values = [float(v) for v in re.split(r"[\s,]+", text.strip()) if v]
    except ValueError:
        return None
    if len(values) != 4 or values[2] <= 0 or values[3] <= 0 or not all(map(math.isfinite, values)):
        return None
    return tuple(values)


def _viewport_matrix(view_box, aspect, x: float, y: float, w: float, h: float) -> np.ndarray:
    """The viewBox → viewport mapping with ``preserveAspectRatio`` ``[3, 3]``."""
    if view_box is None:
        return _translate(x, y)
    bx, by, bw, bh = view_box
    words = (aspect or "xMidYMid meet").split()
    align = words[0] if words else "xMidYMid"
    sx, sy = w / bw, h / bh
    if align != "none":
        s = max(sx, sy) if len(words) > 1 and words[1] == "slice" else min(sx, sy)
        sx = sy = s
    tx, ty = x - bx * sx, y - by * sy
    if align != "none":
        fx = {"xMin": 0.0, "xMid": 0.5, "xMax": 1.0}.get(align[:4], 0.5)
        fy = {"YMin": 0.0, "YMid": 0.5, "YMax": 1.0}.get(align[4:], 0.5)
        tx += fx * (w - bw * sx)
        ty += fy * (h - bh * sy)
    return np.array([[sx, 0, tx], [0, sy, ty], [0, 0, 1.0]])
