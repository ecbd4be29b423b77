"""The vector-graphics scene: a batch of N scenes (one per particle) of P Bézier paths, each
with a fill and optionally a stroke, flat or gradient paints, opacity and clipping.

Geometry lives in one tensor so that a particle batch is optimised like any other parameter:

- ``points [N, P, 3S, 2]``: pixel coordinates (x right, y down). A path is a list of S cubic
  segments; segment s starts at point ``3s``, has control points ``3s+1`` and ``3s+2`` and ends at
  the start point of the next segment **of the same contour** (the first segment of its contour
  for the last one), so every contour is closed.
- ``contour [P, S]`` long: the contour id of each segment; a contour is a run of consecutive
  segments with the same id. One path may hold several closed contours (an SVG ``<path>`` with
  ``M … Z M … Z``, e.g. a ring = outer contour + hole): their winding numbers add up and the fill
  rule applies to the sum, as in SVG. ``-1`` marks a padding segment: paths with fewer segments
  than S (from SVG files) are padded with them, and the rasterizer skips them entirely (no
  coverage, no gradient), so padded points are inert. ``None`` = one contour per path.
  Why ids: a zero-contribution "jump" edge between contours would need special cases in both the
  winding count and the distance search, and degenerate (collapsed) padding segments would get
  gradients and stop being degenerate once optimised.
- ``fill [N, P, 4]``: straight-alpha RGBA in [0, 1]; paths are painted in index order (path 0 at
  the back) over ``background`` (RGB ``[3]`` or ``[N, 3]``, default white). The alpha is the fill
  colour's alpha × ``fill-opacity``; 0 = no fill (``fill="none"``).
- ``fill_rule [P]`` bool: True where a path uses "evenodd", False for "nonzero" (the default).

Everything below is optional (``None``): a scene without it draws exactly as a fill-only scene.

- ``stroke``: a :class:`Stroke`, drawn over the path's own fill (SVG's paint order):
  ``color [N, P, 4]`` straight RGBA (alpha × ``stroke-opacity``; 0 = no stroke), ``width [N, P]``
  px on the canvas (the reader scales a transformed stroke by √|det| of the transform's linear
  part: exact for similarity transforms), ``stroked [P, S]`` bool (which segments are drawn),
  ``join [P]`` (:data:`JOINS` codes), ``miter_limit [P]``, ``cap [P]`` (:data:`CAPS` codes),
  ``dash [P, D]`` px (the dash array, repeated to an even length as SVG says, padded with 0),
  ``dash_offset [P]`` px and ``paint`` (a :class:`Gradient` or None). Dashes are cut by arc
  length along the flattened polyline (:mod:`~scorestudio.renderers.svg.dash`); the dash lengths
  are topology, shared by the N scenes.

  *Open subpaths.* Every contour is closed for the fill; an open SVG subpath is stored with its
  closing segment (a straight cubic back to the contour's start, zero-length when the subpath
  ends where it starts) marked not stroked. The rasterizer puts a **join** between consecutive
  stroked segments of a contour (the last and the first one included) and a **cap** at the
  start and end of every run of stroked segments. A closed subpath (``Z``) has all its segments
  stroked and therefore no caps.
- ``fill_paint``: a :class:`Gradient` for the fills (``stroke.paint`` for the strokes). Where its
  ``kind`` is not :data:`FLAT`, the paint's colour at a pixel replaces the RGB of ``fill`` /
  ``stroke.color`` and its alpha multiplies their alpha (so the reader stores ``fill-opacity`` in
  that alpha). Gradient geometry is in *gradient space*; ``transform`` maps gradient space to
  canvas pixels and holds everything the reader resolved: ``gradientUnits="objectBoundingBox"``
  (the bounding-box matrix), ``gradientTransform``, the element's transform and the output scale.
- ``opacity [N, P]``: the product of ``opacity`` over the element and its groups. It multiplies
  the fill's and the stroke's alpha separately, which is what SVG draws unless the element's
  fill and stroke (or a group's children) overlap where the opacity is below 1: SVG composites
  the element (group) offscreen first, so there the overlap shows less of the lower paint. This
  is the one approximation of the format.
- ``clip``: a :class:`Clip`. Clip geometry is a fill-only :class:`SvgScene` of Q clip paths (its
  ``fill`` is ignored, its ``fill_rule`` is the ``clip-rule``, in canvas pixels after every
  transform, ``clipPathUnits`` resolved); ``region [Q]`` long says which clip region (one
  ``<clipPath>`` use) each clip path belongs to; ``path_regions [P, L]`` long lists the regions a
  path is drawn under (−1 padding). A region's coverage is 1 − Π(1 − c) over its paths (their
  union, drawn as resvg draws a clip mask); a path's coverage is multiplied by the coverage of each
  of its regions (nested clips and a ``clip-path`` on a ``<clipPath>`` intersect). A clipped group
  is clipped per path (same approximation as group opacity at the clip's anti-aliased edge).

Topology (``contour``, ``fill_rule``, the stroke's ``stroked``, ``join``, ``miter_limit``,
``cap``, ``dash``, ``dash_offset``, every gradient's ``kind`` and ``spread``, the clip's
``region`` and ``path_regions``) is shared by the N scenes of a batch; geometry, widths,
gradient geometry, stops and colours are per scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

FillRule = Union[str, Sequence[str], Tensor, None]

JOINS = ("miter", "round", "bevel")      # stroke-linejoin codes (index = code); miter-clip/arcs read as miter
CAPS = ("butt", "round", "square")       # stroke-linecap codes
FLAT, LINEAR, RADIAL = 0, 1, 2           # Gradient.kind codes
SPREADS = ("pad", "reflect", "repeat")   # spreadMethod codes


class _Parts:
    """Shared tensor plumbing of the scene's parts: ``_batched`` names the fields whose first
    dimension is the scene (particle) batch N; every other tensor field is topology."""

    _batched: tuple = ()

    def _map(self, batched: Callable, shared: Callable):
        """A copy with ``batched`` applied to the per-scene tensors and ``shared`` to topology;
        nested parts are mapped too, None stays None."""
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, _Parts):
                changes[f.name] = value._map(batched, shared)
            elif isinstance(value, Tensor):
                changes[f.name] = batched(value) if self._is_batched(f.name, value) else shared(value)
        return replace(self, **changes)

    def _is_batched(self, name: str, value: Tensor) -> bool:
        return name in self._batched


@dataclass(eq=False)
class Gradient(_Parts):
    """Linear or radial gradient paints of P paths (see the module docstring for the spaces).

    ``kind [P]`` long: :data:`FLAT` (this path keeps its flat colour), :data:`LINEAR` or
    :data:`RADIAL`. ``geometry [N, P, 6]`` in gradient space: linear (x1, y1, x2, y2, 0, 0), the
    colour runs from offset 0 at (x1, y1) to 1 at (x2, y2); radial (cx, cy, r, fx, fy, fr), offset
    0 on the focal circle (fx, fy, fr) and 1 on (cx, cy, r). ``transform [N, P, 2, 3]``: gradient
    space → canvas px, ``[[a, c, e], [b, d, f]]`` as in SVG's ``matrix(a b c d e f)``.
    ``stops [N, P, K, 5]``: (offset in [0, 1], straight RGBA in [0, 1]) with non-decreasing offsets
    (the reader applies SVG's clamping); paths with fewer stops repeat their last stop (an empty
    interval changes nothing). ``spread [P]`` long: :data:`SPREADS` codes. Differentiable w.r.t.
    geometry, transform and stops.
    """

    kind: Tensor
    geometry: Tensor
    transform: Tensor
    stops: Tensor
    spread: Optional[Tensor] = None       # default pad

    _batched = ("geometry", "transform", "stops")

    def check(self, n: int, p: int, device) -> None:
        self.kind = self.kind.to(device=device, dtype=torch.long)
        self.spread = _codes(self.spread, p, device)
        _expect("gradient kind", self.kind, (p,))
        _expect("gradient geometry", self.geometry, (n, p, 6))
        _expect("gradient transform", self.transform, (n, p, 2, 3))
        if self.stops.ndim != 4 or self.stops.shape[:2] != (n, p) or self.stops.shape[3] != 5 or not self.stops.shape[2]:
            raise ValueError(f"gradient stops must be [N, P, K, 5] = ({n}, {p}, K ≥ 1, 5), got {tuple(self.stops.shape)}")


@dataclass(eq=False)
class Stroke(_Parts):
    """Strokes of P paths (see the module docstring): ``color [N, P, 4]``, ``width [N, P]`` px;
    topology ``stroked [P, S]`` bool (default every real segment), ``join [P]`` / ``cap [P]`` long
    codes of :data:`JOINS` / :data:`CAPS` (default miter / butt, SVG's), ``miter_limit [P]``
    (default 4), ``dash [P, D]`` px (0-padded; None or all 0 = solid), ``dash_offset [P]`` px."""

    color: Tensor
    width: Tensor
    stroked: Optional[Tensor] = None
    join: Optional[Tensor] = None
    miter_limit: Optional[Tensor] = None
    cap: Optional[Tensor] = None
    dash: Optional[Tensor] = None
    dash_offset: Optional[Tensor] = None
    paint: Optional[Gradient] = None

    _batched = ("color", "width")

    def check(self, n: int, p: int, contour: Tensor) -> None:
        device, dtype = contour.device, self.color.dtype
        _expect("stroke color", self.color, (n, p, 4))
        _expect("stroke width", self.width, (n, p))
        self.stroked = (contour >= 0) if self.stroked is None else self.stroked.to(device=device, dtype=torch.bool)
        _expect("stroked", self.stroked, tuple(contour.shape))
        self.stroked = self.stroked & (contour >= 0)
        self.join, self.cap = _codes(self.join, p, device), _codes(self.cap, p, device)
        limit = torch.full((p,), 4.0) if self.miter_limit is None else self.miter_limit
        self.miter_limit = limit.to(device=device, dtype=dtype)
        dash = torch.zeros(p, 0) if self.dash is None else self.dash
        self.dash = dash.to(device=device, dtype=dtype)
        offset = torch.zeros(p) if self.dash_offset is None else self.dash_offset
        self.dash_offset = offset.to(device=device, dtype=dtype)
        for name in ("join", "cap", "miter_limit", "dash_offset"):
            _expect(f"stroke {name}", getattr(self, name), (p,))
        if self.dash.ndim != 2 or self.dash.shape[0] != p:
            raise ValueError(f"stroke dash must be [P, D] = ({p}, D), got {tuple(self.dash.shape)}")
        if self.paint is not None:
            self.paint.check(n, p, device)


@dataclass(eq=False)
class Clip(_Parts):
    """Clip paths (see the module docstring): ``paths`` a fill-only :class:`SvgScene` of Q clip
    paths on the same canvas and batch, ``region [Q]`` long (the clip region of each), and
    ``path_regions [P, L]`` long (regions each drawn path is clipped by, −1 padding)."""

    paths: "SvgScene"
    region: Tensor
    path_regions: Tensor

    def check(self, n: int, p: int, device) -> None:
        q = self.paths.num_paths
        if self.paths.batch_size != n:
            raise ValueError(f"clip paths must have the scene's batch size {n}, got {self.paths.batch_size}")
        self.region = self.region.to(device=device, dtype=torch.long)
        self.path_regions = self.path_regions.to(device=device, dtype=torch.long)
        _expect("clip region", self.region, (q,))
        if self.path_regions.ndim != 2 or self.path_regions.shape[0] != p:
            raise ValueError(f"clip path_regions must be [P, L] = ({p}, L), got {tuple(self.path_regions.shape)}")

    def num_regions(self) -> int:
        return int(self.region.max()) + 1 if self.region.numel() else 0


def _expect(name: str, value: Tensor, shape: tuple) -> None:
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(value.shape)}")


def _codes(codes: Optional[Tensor], p: int, device) -> Tensor:
    """Per-path integer codes ``[P]``, default 0."""
    return torch.zeros(p, dtype=torch.long, device=device) if codes is None else codes.to(device=device, dtype=torch.long)


@dataclass(eq=False)
class SvgScene(_Parts):
    """N scenes of P closed cubic-Bézier paths; see the module docstring for the layout."""

    points: Tensor                        # [N, P, 3S, 2] pixel coordinates
    fill: Tensor                          # [N, P, 4] straight-alpha RGBA in [0, 1]
    width: int
    height: int
    fill_rule: FillRule = None            # "nonzero"/"evenodd", a list of those, or [P] bool
    contour: Optional[Tensor] = None      # [P, S] long contour id per segment, -1 = padding
    background: Optional[Tensor] = None   # [3] or [N, 3] RGB, default white
    stroke: Optional[Stroke] = None       # strokes drawn over the fills
    fill_paint: Optional[Gradient] = None  # gradient fills (None: flat colours)
    opacity: Optional[Tensor] = None      # [N, P] element × group opacity, default 1
    clip: Optional[Clip] = None           # clip paths and the regions each path is drawn under

    _batched = ("points", "fill", "opacity")

    def __post_init__(self) -> None:
        if self.points.ndim != 4 or self.points.shape[-1] != 2 or self.points.shape[2] % 3:
            raise ValueError(f"points must be [N, P, 3S, 2], got {tuple(self.points.shape)}")
        n, p, s3, _ = self.points.shape
        if self.fill.shape != (n, p, 4):
            raise ValueError(f"fill must be [N, P, 4] = {(n, p, 4)}, got {tuple(self.fill.shape)}")
        device = self.points.device
        self.fill_rule = _fill_rule_mask(self.fill_rule, p, device)
        if self.contour is None:
            self.contour = torch.zeros(p, s3 // 3, dtype=torch.long, device=device)
        if tuple(self.contour.shape) != (p, s3 // 3):
            raise ValueError(f"contour must be [P, S] = {(p, s3 // 3)}, got {tuple(self.contour.shape)}")
        self.contour = self.contour.to(device=device, dtype=torch.long)
        if self.background is None:
            self.background = torch.ones(3, dtype=self.points.dtype, device=device)
        if self.background.shape not in ((3,), (n, 3)):
            raise ValueError(f"background must be [3] or [N, 3], got {tuple(self.background.shape)}")
        self.width, self.height = int(self.width), int(self.height)
        if self.stroke is not None:
            self.stroke.check(n, p, self.contour)
        if self.fill_paint is not None:
            self.fill_paint.check(n, p, device)
        if self.opacity is not None:
            _expect("opacity", self.opacity, (n, p))
        if self.clip is not None:
            self.clip.check(n, p, device)

    def is_fill_only(self) -> bool:
        """True when nothing but flat fills is drawn (no stroke, gradient, opacity or clip)."""
        return self.stroke is None and self.fill_paint is None and self.opacity is None and self.clip is None

    # ------------------------------------------------------------------ sizes
    @property
    def batch_size(self) -> int:
        return self.points.shape[0]

    @property
    def num_paths(self) -> int:
        return self.points.shape[1]

    @property
    def num_segments(self) -> int:
        """S, the padded number of segments per path."""
        return self.points.shape[2] // 3

    def segments_per_path(self) -> Tensor:
        """Real (non-padding) segments of each path, long ``[P]``."""
        return (self.contour >= 0).sum(1)

    def fill_rules(self) -> list[str]:
        """The fill rule of each path as SVG spells it."""
        return ["evenodd" if e else "nonzero" for e in self.fill_rule.tolist()]

    def backgrounds(self) -> Tensor:
        """Background colour of every scene, ``[N, 3]``."""
        return self.background.expand(self.batch_size, 3)

    def segment_ends(self) -> Tensor:
        """Index into ``points`` of each segment's end point, long ``[P, S]``.

        The end of segment s is the start (``3(s+1)``) of the next segment when that one belongs to
        the same contour, else the start of the first segment of s's contour (closing it).
        """
        c = self.contour
        s = torch.arange(c.shape[1], device=c.device).expand_as(c)
        same_next = torch.zeros_like(c, dtype=torch.bool)
        same_next[:, :-1] = c[:, 1:] == c[:, :-1]
        starts_contour = torch.ones_like(same_next)
        starts_contour[:, 1:] = c[:, 1:] != c[:, :-1]
        first = torch.where(starts_contour, s, torch.zeros_like(s)).cummax(1).values
        return torch.where(same_next, 3 * (s + 1), 3 * first)

    # ------------------------------------------------------------------ copies
    def to(self, device=None, dtype=None) -> "SvgScene":
        """Move to ``device``; ``dtype`` (floating) applies to every floating tensor."""
        def move(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return self._map(move, move)

    def detach(self) -> "SvgScene":
        return self._map(Tensor.detach, Tensor.detach)

    def index(self, i: Union[int, slice, Tensor]) -> "SvgScene":
        """Scenes ``i`` of the batch (an int keeps a batch dimension of 1)."""
        sel = slice(i, i + 1) if isinstance(i, int) else i
        return self._map(lambda t: t[sel], lambda t: t)

    def _is_batched(self, name: str, value: Tensor) -> bool:
        return name in self._batched or (name == "background" and value.ndim == 2)


def _fill_rule_mask(rule: FillRule, num_paths: int, device) -> Tensor:
    """Normalise a fill-rule spec to a ``[P]`` bool tensor (True = even-odd)."""
    if rule is None:
        rule = "nonzero"
    if isinstance(rule, str):
        rule = [rule] * num_paths
    if isinstance(rule, Tensor):
        mask = rule.to(device=device, dtype=torch.bool)
    else:
        bad = [r for r in rule if r not in ("nonzero", "evenodd")]
        if bad:
            raise ValueError(f"fill rules must be 'nonzero' or 'evenodd', got {bad[0]!r}")
        mask = torch.tensor([r == "evenodd" for r in rule], dtype=torch.bool, device=device)
    if mask.shape != (num_paths,):
        raise ValueError(f"need one fill rule per path ({num_paths}), got shape {tuple(mask.shape)}")
    return mask


def circle_points(centers: Tensor, radii: Tensor, segments: int = 4) -> Tensor:
    """Control points of circles, ``[..., 3·segments, 2]``, from ``centers [..., 2]`` and
    ``radii [...]`` (or ``[..., 2]`` for ellipse radii rx, ry).

    Each arc of 2π/segments is one cubic with handle length κ·r, κ = 4/3·tan(π/(2·segments))
    (0.5523 for the standard 4-segment circle). Clockwise on screen (y down), starting at angle 0.
    """
    radii = radii[..., None] if radii.shape == centers.shape[:-1] else radii
    kappa = 4.0 / 3.0 * math.tan(math.pi / (2 * segments))
    angles = torch.arange(segments, dtype=centers.dtype, device=centers.device) * (2 * math.pi / segments)
    on = torch.stack([angles.cos(), angles.sin()], -1)             # [S, 2] on-curve unit points
    tangent = torch.stack([-angles.sin(), angles.cos()], -1)       # [S, 2] direction of travel
    nxt = on.roll(-1, 0)
    nxt_tangent = tangent.roll(-1, 0)
    unit = torch.stack([on, on + kappa * tangent, nxt - kappa * nxt_tangent], 1).reshape(3 * segments, 2)
    return centers[..., None, :] + radii[..., None, :] * unit


def circle_scene(centers: Tensor, radii: Tensor, fill: Tensor, width: int, height: int,
                 background: Optional[Tensor] = None, segments: int = 4,
                 fill_rule: FillRule = None) -> SvgScene:
    """A scene of circles: ``centers [N, P, 2]``, ``radii [N, P]`` (or ``[N, P, 2]``),
    ``fill [N, P, 4]``; each circle is ``segments`` cubics (the usual initialisation of
    text-to-SVG optimisation: the control points then move freely)."""
    return SvgScene(circle_points(centers, radii, segments), fill, width, height,
                    fill_rule=fill_rule, background=background)


def polygon_points(vertices: Tensor) -> Tensor:
    """A closed polygon ``vertices [..., V, 2]`` as straight cubics (control points at 1/3 and 2/3
    of each side), ``[..., 3V, 2]``."""
    nxt = vertices.roll(-1, -2)
    steps = torch.stack([vertices, vertices + (nxt - vertices) / 3, vertices + 2 * (nxt - vertices) / 3], -2)
    return steps.flatten(-3, -2)


def star_points(centers: Tensor, radii: Tensor, angles: Tensor, spikes: int = 5, inner: float = 0.45) -> Tensor:
    """Stars with straight sides, ``[..., 6·spikes, 2]``: ``centers [..., 2]``, outer ``radii [...]``,
    rotation ``angles [...]`` (radians); inner vertices at ``inner`` × the radius."""
    k = torch.arange(2 * spikes, device=centers.device)
    r = radii[..., None] * torch.where(k % 2 == 0, 1.0, inner).to(centers.dtype)
    theta = angles[..., None] + k.to(centers.dtype) * (math.pi / spikes)
    return polygon_points(centers[..., None, :] + r[..., None] * torch.stack([theta.cos(), theta.sin()], -1))


def random_scene(num_paths: int, size: int, generator: Optional[torch.Generator] = None, batch: int = 1,
                 radius: tuple[float, float] = (0.02, 0.2)) -> SvgScene:
    """Random circles (4 segments), blobs (6) and 5-spike stars (10 straight segments), padded to
    10 segments, for tests and benchmarks. Radii are ``radius`` × ``size``; colours and alphas are
    multiples of 1/255 (exact in an SVG's hex colours); about a third of the paths are opaque;
    fill rules are random (the shapes are simple, so they draw the same). The kind of each path
    is shared by the ``batch`` scenes, the geometry and colours are not."""
    n, p, g = batch, num_paths, generator
    kind = torch.randint(0, 3, (p,), generator=g)
    centers = torch.rand(n, p, 2, generator=g) * size
    radii = size * (radius[0] + (radius[1] - radius[0]) * torch.rand(n, p, generator=g))
    blob = circle_points(centers, radii, 6)
    shapes = [circle_points(centers, radii), blob + 0.15 * radii[..., None, None] * torch.randn(blob.shape, generator=g),
              star_points(centers, radii, torch.rand(n, p, generator=g) * 2 * math.pi)]
    points = centers[:, :, None].repeat(1, 1, 30, 1)                       # padding: the centre
    contour = torch.full((p, 10), -1, dtype=torch.long)
    for k, pts in enumerate(shapes):
        sel = kind == k
        points[:, sel, : pts.shape[2]] = pts[:, sel]
        contour[sel, : pts.shape[2] // 3] = 0
    fill = (torch.rand(n, p, 4, generator=g) * 255).round() / 255
    fill[..., 3] = torch.where(fill[..., 3] < 0.3, 1.0, fill[..., 3])
    rules = torch.rand(p, generator=g) < 0.5
    return SvgScene(points, fill, size, size, fill_rule=rules, contour=contour)
