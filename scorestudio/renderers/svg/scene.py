"""The vector-graphics scene: a batch of N scenes (one per particle) of P filled Bézier paths.

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
  the back) over ``background`` (RGB ``[3]`` or ``[N, 3]``, default white).
- ``fill_rule [P]`` bool: True where a path uses "evenodd", False for "nonzero" (the default).

Topology (``contour``, ``fill_rule``) is shared by the N scenes of a batch; geometry and colours
are per scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

FillRule = Union[str, Sequence[str], Tensor, None]


@dataclass(eq=False)
class SvgScene:
    """N scenes of P closed cubic-Bézier paths; see the module docstring for the layout."""

    points: Tensor                        # [N, P, 3S, 2] pixel coordinates
    fill: Tensor                          # [N, P, 4] straight-alpha RGBA in [0, 1]
    width: int
    height: int
    fill_rule: FillRule = None            # "nonzero"/"evenodd", a list of those, or [P] bool
    contour: Optional[Tensor] = None      # [P, S] long contour id per segment, -1 = padding
    background: Optional[Tensor] = None   # [3] or [N, 3] RGB, default white

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
        """Move to ``device``; ``dtype`` (floating) applies to points, fill and background."""
        def move(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return replace(self, points=move(self.points), fill=move(self.fill),
                       fill_rule=self.fill_rule.to(device), contour=self.contour.to(device),
                       background=move(self.background))

    def detach(self) -> "SvgScene":
        return replace(self, points=self.points.detach(), fill=self.fill.detach(),
                       background=self.background.detach())

    def index(self, i: Union[int, slice, Tensor]) -> "SvgScene":
        """Scenes ``i`` of the batch (an int keeps a batch dimension of 1)."""
        sel = slice(i, i + 1) if isinstance(i, int) else i
        bg = self.background if self.background.ndim == 1 else self.background[sel]
        return replace(self, points=self.points[sel], fill=self.fill[sel], background=bg)


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
