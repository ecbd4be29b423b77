"""Procedural captioned images for the embedded latent diffusion prior.

Two kinds of images, generated on the fly in pure PyTorch and deterministic from a seed:

* ``object``: a shaded 3D shape seen by a camera from :mod:`scorestudio.data.cameras`, rendered
  by sphere tracing signed distance functions (all rays at once), Lambert shading with the
  camera batch's point light, white background and 2x2 supersampling.
* ``icon``: a flat, anti-aliased 2D shape in one colour on white.

Captions name the colour, shape and (for objects, sometimes) the view; some drop the colour or
the shape so that p(image | prompt) is multimodal.

Preview: ``scorestudio procedural --out preview.png --n 64 --seed 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from scorestudio.data.cameras import (
    VIEW_NAMES,
    CameraBatch,
    CameraDistribution,
    ViewThresholds,
    get_rays,
    sample_cameras,
    view_index,
)
from scorestudio.utils.seeding import derive_seed

SHAPES_3D = ("sphere", "cube", "cylinder", "cone", "torus", "mug", "house")
ICON_SHAPES = ("circle", "square", "triangle", "star", "heart", "ring")
ALL_SHAPES = SHAPES_3D + ICON_SHAPES
KINDS = ("object", "icon")
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "orange": (0.95, 0.50, 0.05),
    "yellow": (0.95, 0.80, 0.05),
    "green": (0.10, 0.65, 0.15),
    "cyan": (0.05, 0.75, 0.85),
    "blue": (0.10, 0.20, 0.90),
    "purple": (0.55, 0.15, 0.80),
    "pink": (0.95, 0.45, 0.70),
}
COLOR_NAMES = tuple(COLORS)

AMBIENT = 0.3
DOOR_ALBEDO = 0.35  # the house's door is this fraction of the house colour
# Random yaw only where it changes the look (round shapes are invariant to it); the mug and
# house never turn, so their front stays on +x and view labels mean something.
YAW_JITTER_DEG = {"cube": 45.0}
OBJECT_SCALE_RANGE = (0.85, 1.0)
ICON_SCALE_RANGE = (0.45, 0.70)  # icon radius as a fraction of the canvas half-width
ICON_OFFSET = 0.16  # ±8% of the canvas width, in [-1, 1] canvas units
ICON_ROTATION_DEG = 15.0
ROUND_ICONS = ("circle", "ring")  # rotation would not change them

_BOUND_RADIUS = 0.8  # every object's local geometry lies in this sphere
_TRACE_STEPS = 128
_TRACE_EPS = 1.5e-3  # about 1/10 of a supersampled pixel at the default camera distance
_COMPACT_EVERY = 4  # drop finished rays every this many steps
_NORMAL_STEP = 1e-3


# --------------------------------------------------------------------------------------------
# Signed distance functions. Points are [R, 3] (objects, z up) or [..., 2] (icons, y up);
# results drop the last dimension. Unions and intersections are exact or lower bounds, which is
# all that sphere tracing needs.
# --------------------------------------------------------------------------------------------


def _sdf_box(p: Tensor, half: Tensor | float, rounding: float = 0.0) -> Tensor:
    """Box with half extents ``half`` ([3] or [2]) and rounded edges, centred at the origin."""
    q = p.abs() - (torch.as_tensor(half) - rounding)
    return q.clamp_min(0).norm(dim=-1) + q.amax(dim=-1).clamp_max(0) - rounding


def _sdf_cylinder(p: Tensor, radius: float, z0: float, z1: float) -> Tensor:
    """Solid z-axis cylinder of ``radius`` between heights ``z0 < z1``."""
    dr = torch.hypot(p[:, 0], p[:, 1]) - radius
    dz = (p[:, 2] - 0.5 * (z0 + z1)).abs() - 0.5 * (z1 - z0)
    return torch.hypot(dr.clamp_min(0), dz.clamp_min(0)) + torch.maximum(dr, dz).clamp_max(0)


def _sdf_sphere(p: Tensor) -> Tensor:
    return p.norm(dim=-1) - 0.55


def _sdf_cube(p: Tensor) -> Tensor:
    return _sdf_box(p, 0.38, rounding=0.03)


def _sdf_cylinder_shape(p: Tensor) -> Tensor:
    return _sdf_cylinder(p, 0.40, -0.42, 0.42)


def _sdf_cone(p: Tensor) -> Tensor:
    """Cone with base radius 0.5 at z=-0.42 and apex at z=0.5 (side plane in (r, z))."""
    side = (0.92 * torch.hypot(p[:, 0], p[:, 1]) + 0.5 * p[:, 2] - 0.25) / math.hypot(0.92, 0.5)
    return torch.maximum(side, -0.42 - p[:, 2])


def _sdf_torus(p: Tensor) -> Tensor:
    """Donut lying flat (axis z), major radius 0.42, tube radius 0.2."""
    return torch.hypot(torch.hypot(p[:, 0], p[:, 1]) - 0.42, p[:, 2]) - 0.2


def _sdf_mug(p: Tensor) -> Tensor:
    """Open cup (wall 0.05, floor 0.05) with a ring handle on its back (-x) side."""
    cup = torch.maximum(_sdf_cylinder(p, 0.36, -0.40, 0.40), -_sdf_cylinder(p, 0.31, -0.35, 0.50))
    # Handle: a torus in the xz plane whose inner edge is buried in the wall.
    handle_ring = torch.hypot(p[:, 0] + 0.53, p[:, 2])
    handle = torch.hypot(handle_ring - 0.17, p[:, 1]) - 0.045
    return torch.minimum(cup, handle)


def _sdf_house(p: Tensor) -> Tensor:
    """Square box body with a gable roof whose ridge runs along y (slopes face front and back)."""
    body = _sdf_box(p - p.new_tensor([0.0, 0.0, -0.2]), p.new_tensor([0.35, 0.35, 0.25]))
    # Roof prism: eaves at z=0.05 overhanging to |x|=0.42, ridge at z=0.42.
    slope = (0.37 * p[:, 0].abs() + 0.42 * (p[:, 2] - 0.05) - 0.37 * 0.42) / math.hypot(0.37, 0.42)
    roof = torch.maximum(torch.maximum(slope, p[:, 1].abs() - 0.38), 0.05 - p[:, 2])
    return torch.minimum(body, roof)


SDF_3D: dict[str, Callable[[Tensor], Tensor]] = {
    "sphere": _sdf_sphere,
    "cube": _sdf_cube,
    "cylinder": _sdf_cylinder_shape,
    "cone": _sdf_cone,
    "torus": _sdf_torus,
    "mug": _sdf_mug,
    "house": _sdf_house,
}


def _albedo_scale(shape: str, p: Tensor) -> Tensor:
    """Per-point albedo factor ``[R]`` for surface points ``[R, 3]``: the house's dark door."""
    scale = torch.ones_like(p[:, 0])
    if shape == "house":
        door = (p[:, 0] > 0.34) & (p[:, 1].abs() < 0.09) & (p[:, 2] < -0.14)
        scale[door] = DOOR_ALBEDO
    return scale


# --------------------------------------------------------------------------------------------
# Ray casting.
# --------------------------------------------------------------------------------------------


def _bounding_interval(origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
    """Entry/exit distances ``[R]`` of unit rays ``[R, 3]`` through the bounding sphere.

    Rays that miss it get ``t_near > t_far``.
    """
    b = (origins * dirs).sum(-1)
    disc = b * b - (origins * origins).sum(-1) + _BOUND_RADIUS**2
    root = disc.clamp_min(0).sqrt()
    t_far = torch.where(disc > 0, -b + root, torch.full_like(b, -1.0))
    return (-b - root).clamp_min(0), t_far


def _sphere_trace(sdf: Callable[[Tensor], Tensor], origins: Tensor, dirs: Tensor,
                  t_near: Tensor, t_far: Tensor) -> Tensor:
    """Distances ``[R]`` to the first surface along unit rays ``[R, 3]``, ``inf`` on a miss.

    All rays step together; every few steps the finished ones (hit or left the bounding
    sphere) are dropped so the long tail of grazing rays stays cheap.
    """
    t_hit = torch.full_like(t_near, math.inf)
    ids = torch.arange(len(t_near))
    o, d, t, t_end = origins, dirs, t_near, t_far
    for step in range(_TRACE_STEPS):
        dist = sdf(o + t[:, None] * d)
        t = t + dist
        if (step + 1) % _COMPACT_EVERY == 0 or step == _TRACE_STEPS - 1:
            # A ray steps by its distance, so one that came within eps of a surface is still
            # there a few steps later (bar sub-pixel grazing), and one that left the bounding
            # sphere never returns: checking every few steps is enough.
            hit = dist < _TRACE_EPS
            t_hit[ids[hit]] = t[hit]
            keep = ~hit & (t < t_end)
            ids, o, d, t, t_end = ids[keep], o[keep], d[keep], t[keep], t_end[keep]
            if len(ids) == 0:
                break
    return t_hit


def _normals(sdf: Callable[[Tensor], Tensor], p: Tensor) -> Tensor:
    """Unit surface normals ``[R, 3]`` by central differences of the SDF at points ``[R, 3]``."""
    offsets = torch.eye(3) * _NORMAL_STEP
    plus = sdf((p[:, None, :] + offsets).reshape(-1, 3)).view(-1, 3)
    minus = sdf((p[:, None, :] - offsets).reshape(-1, 3)).view(-1, 3)
    return F.normalize(plus - minus, dim=-1)


def _render_shape(shape: str, origins: Tensor, dirs: Tensor, lights: Tensor,
                  rgb: Tensor) -> tuple[Tensor, Tensor]:
    """Shade one shape in its local frame.

    origins, lights, rgb: ``[M, 3]`` per image; dirs: ``[M, P, 3]`` unit rays.
    Returns colours ``[M, P, 3]`` (white where missed) and coverage ``[M, P]`` (0 or 1).
    """
    sdf = SDF_3D[shape]
    m, n_pix, _ = dirs.shape
    ray_origins = origins[:, None, :].expand(m, n_pix, 3).reshape(-1, 3)
    ray_dirs = dirs.reshape(-1, 3)
    t_near, t_far = _bounding_interval(ray_origins, ray_dirs)
    candidates = (t_near < t_far).nonzero()[:, 0]
    t_hit = _sphere_trace(sdf, ray_origins[candidates], ray_dirs[candidates],
                          t_near[candidates], t_far[candidates])
    hit_rays = candidates[t_hit.isfinite()]
    points = ray_origins[hit_rays] + t_hit[t_hit.isfinite(), None] * ray_dirs[hit_rays]
    image = hit_rays // n_pix
    to_light = F.normalize(lights[image] - points, dim=-1)
    lambert = (_normals(sdf, points) * to_light).sum(-1).clamp_min(0)
    albedo = rgb[image] * _albedo_scale(shape, points)[:, None]
    colors = torch.ones(m * n_pix, 3)
    colors[hit_rays] = albedo * (AMBIENT + (1 - AMBIENT) * lambert[:, None])
    coverage = torch.zeros(m * n_pix)
    coverage[hit_rays] = 1.0
    return colors.view(m, n_pix, 3), coverage.view(m, n_pix)


def _yaw_matrices(yaw_deg: Tensor) -> Tensor:
    """Rotations ``[N, 3, 3]`` about z by ``yaw_deg`` ``[N]`` (world = R @ local)."""
    yaw = torch.deg2rad(yaw_deg)
    c, s, zero, one = yaw.cos(), yaw.sin(), torch.zeros_like(yaw), torch.ones_like(yaw)
    return torch.stack([c, -s, zero, s, c, zero, zero, zero, one], dim=-1).view(-1, 3, 3)


def render_objects(shape_idx: Tensor, rgb: Tensor, cameras: CameraBatch, resolution: int,
                   yaw: Tensor | None = None, scale: Tensor | None = None,
                   return_alpha: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Render 3D shapes seen by ``cameras``, lit by their point lights, on white.

    shape_idx: ``[N]`` long, indices into ``ALL_SHAPES`` that name shapes of ``SHAPES_3D``.
    rgb: ``[N, 3]`` albedo in [0, 1]. yaw (degrees) and scale ``[N]`` place each object
    (world = scale * R_z(yaw) @ local); default 0 and 1.
    Returns images ``[N, 3, H, W]`` in [0, 1] (H = W = resolution), and with ``return_alpha``
    also the coverage ``[N, 1, H, W]``. Each pixel averages 2x2 subpixel rays.
    """
    n = len(shape_idx)
    if n and int(shape_idx.max()) >= len(SHAPES_3D):
        raise ValueError(f"render_objects draws {SHAPES_3D}; got shape indices {shape_idx.tolist()}")
    yaw = torch.zeros(n) if yaw is None else yaw
    scale = torch.ones(n) if scale is None else scale
    size = 2 * resolution
    _, dirs = get_rays(cameras, size, size)
    # Local frame: local = R^T world / scale, written for row vectors as world @ R / scale.
    rot = _yaw_matrices(yaw)
    dirs = torch.bmm(dirs.reshape(n, size * size, 3), rot)
    origins = torch.bmm(cameras.camera_position[:, None, :], rot)[:, 0] / scale[:, None]
    lights = torch.bmm(cameras.light_position[:, None, :], rot)[:, 0] / scale[:, None]
    colors = torch.ones(n, size * size, 3)
    coverage = torch.zeros(n, size * size)
    for s in shape_idx.unique().tolist():
        rows = (shape_idx == s).nonzero()[:, 0]
        colors[rows], coverage[rows] = _render_shape(
            SHAPES_3D[s], origins[rows], dirs[rows], lights[rows], rgb[rows])
    images = F.avg_pool2d(colors.view(n, size, size, 3).permute(0, 3, 1, 2), 2)
    if not return_alpha:
        return images
    return images, F.avg_pool2d(coverage.view(n, 1, size, size), 2)


# --------------------------------------------------------------------------------------------
# Icons: 2D signed distances in canvas units (y up), anti-aliased by analytic pixel coverage.
# Each shape fits roughly in the unit disc; icon placement scales it.
# --------------------------------------------------------------------------------------------


def _sdf_circle(p: Tensor) -> Tensor:
    return p.norm(dim=-1) - 1.0


def _sdf_square(p: Tensor) -> Tensor:
    return _sdf_box(p, 0.8)


def _sdf_triangle(p: Tensor) -> Tensor:
    """Equilateral triangle pointing up, circumradius 1.1, bounding box centred (iq's form)."""
    r, k = 1.1 * math.sqrt(3) / 2, math.sqrt(3)
    x = p[..., 0].abs() - r
    y = p[..., 1] + r / (2 * k) + r / k
    fold = x + k * y > 0
    x, y = torch.where(fold, 0.5 * (x - k * y), x), torch.where(fold, 0.5 * (-k * x - y), y)
    x = x - x.clamp(-2 * r, 0)
    return -torch.hypot(x, y) * y.sign()


def _sdf_star(p: Tensor, radius: float = 1.15, inner: float = 0.45) -> Tensor:
    """Five-pointed star, one point up (iq's sdStar5 with ``rf = inner``).

    Its outer radius exceeds 1 so that its thin points do not make it look smaller than a disc.
    """
    k1x, k1y = 0.809016994375, -0.587785252292
    x, y = p[..., 0].abs() / radius, p[..., 1] / radius
    dot = (k1x * x + k1y * y).clamp_min(0)
    x, y = x - 2 * dot * k1x, y - 2 * dot * k1y
    dot = (-k1x * x + k1y * y).clamp_min(0)
    x, y = x + 2 * dot * k1x, y - 2 * dot * k1y
    x, y = x.abs(), y - 1.0
    bax, bay = -inner * k1y, inner * k1x - 1.0
    h = ((x * bax + y * bay) / (bax * bax + bay * bay)).clamp(0, 1.0)
    return radius * torch.hypot(x - bax * h, y - bay * h) * (y * bax - x * bay).sign()


def _sdf_heart(p: Tensor, size: float = 1.75) -> Tensor:
    """Heart (iq's sdHeart, tip down) scaled by ``size`` and centred on its bounding box."""
    x, y = p[..., 0].abs() / size, p[..., 1] / size + 0.55
    lobe = torch.hypot(x - 0.25, y - 0.75) - math.sqrt(2) / 4
    s = 0.5 * (x + y).clamp_min(0)
    below = torch.minimum(x**2 + (y - 1) ** 2, (x - s) ** 2 + (y - s) ** 2).sqrt() * (x - y).sign()
    return size * torch.where(x + y > 1, lobe, below)


def _sdf_ring(p: Tensor) -> Tensor:
    return (p.norm(dim=-1) - 0.78).abs() - 0.22


SDF_ICON: dict[str, Callable[[Tensor], Tensor]] = {
    "circle": _sdf_circle,
    "square": _sdf_square,
    "triangle": _sdf_triangle,
    "star": _sdf_star,
    "heart": _sdf_heart,
    "ring": _sdf_ring,
}


def _canvas(resolution: int) -> Tensor:
    """Pixel centres ``[H, W, 2]`` in [-1, 1] canvas units, x right, y up (row 0 = top)."""
    c = (torch.arange(resolution, dtype=torch.float32) + 0.5) * (2.0 / resolution) - 1.0
    y, x = torch.meshgrid(-c, c, indexing="ij")
    return torch.stack([x, y], dim=-1)


def render_icons(shape_idx: Tensor, rgb: Tensor, generator: torch.Generator, resolution: int,
                 scale: Tensor | None = None, offset: Tensor | None = None,
                 angle: Tensor | None = None) -> Tensor:
    """Flat icons in colour ``rgb`` ``[N, 3]`` on white, images ``[N, 3, H, W]`` in [0, 1].

    shape_idx: ``[N]`` long, indices into ``ALL_SHAPES`` that name shapes of ``ICON_SHAPES``.
    Placement is drawn from ``generator`` (always, so the stream does not depend on overrides)
    and may be overridden: ``scale`` ``[N]`` (radius / canvas half-width), ``offset`` ``[N, 2]``
    (canvas units, y up), ``angle`` ``[N]`` (degrees, counter-clockwise).
    """
    n = len(shape_idx)
    icon_idx = shape_idx - len(SHAPES_3D)
    if n and (int(icon_idx.min()) < 0 or int(icon_idx.max()) >= len(ICON_SHAPES)):
        raise ValueError(f"render_icons draws {ICON_SHAPES}; got shape indices {shape_idx.tolist()}")
    lo, hi = ICON_SCALE_RANGE
    drawn_scale = lo + (hi - lo) * torch.rand(n, generator=generator)
    drawn_offset = ICON_OFFSET * (2 * torch.rand(n, 2, generator=generator) - 1)
    drawn_angle = ICON_ROTATION_DEG * (2 * torch.rand(n, generator=generator) - 1)
    round_icon = torch.tensor([ICON_SHAPES[i] in ROUND_ICONS for i in icon_idx.tolist()],
                              dtype=torch.bool)
    drawn_angle = drawn_angle.masked_fill(round_icon, 0.0)
    scale = drawn_scale if scale is None else scale
    offset = drawn_offset if offset is None else offset
    angle = torch.deg2rad(drawn_angle if angle is None else angle)
    # Icon frame: undo the offset, rotate by -angle, divide by scale.
    rel = _canvas(resolution)[None] - offset[:, None, None, :]  # [N, H, W, 2]
    c, s = angle.cos()[:, None, None], angle.sin()[:, None, None]
    local = torch.stack([c * rel[..., 0] + s * rel[..., 1], -s * rel[..., 0] + c * rel[..., 1]], -1)
    local = local / scale[:, None, None, None]
    alpha = torch.empty(n, resolution, resolution)
    pixel = 2.0 / resolution
    for i in icon_idx.unique().tolist():
        rows = (icon_idx == i).nonzero()[:, 0]
        dist = SDF_ICON[ICON_SHAPES[i]](local[rows]) * scale[rows, None, None]
        alpha[rows] = (0.5 - dist / pixel).clamp(0, 1)  # area of the pixel inside the edge
    return 1.0 + alpha[:, None] * (rgb[:, :, None, None] - 1.0)


# --------------------------------------------------------------------------------------------
# Captions.
# --------------------------------------------------------------------------------------------


def _with_article(words: list[str]) -> str:
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def caption_for(shape: str | None, color: str | None, view: str | None = None,
                kind: str | None = None) -> str:
    """The caption for a shape/colour; ``None`` drops that word.

    ``kind`` defaults to the shape's kind ("object" when the shape is dropped). ``view`` (one
    of ``VIEW_NAMES``) adds ", <view> view" to objects. Examples: ("cube", "red") -> "a red
    cube"; ("star", "yellow") -> "a yellow star icon"; (None, "red", kind="object") -> "a red
    object"; (None, None, kind="icon") -> "an icon".
    """
    if shape is not None and shape not in ALL_SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {ALL_SHAPES}")
    if color is not None and color not in COLORS:
        raise ValueError(f"unknown colour {color!r}; expected one of {COLOR_NAMES}")
    if view is not None and view not in VIEW_NAMES:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEW_NAMES}")
    kind = kind or ("icon" if shape in ICON_SHAPES else "object")
    if kind not in KINDS or (shape is not None and (shape in ICON_SHAPES) != (kind == "icon")):
        raise ValueError(f"kind {kind!r} does not fit shape {shape!r}")
    words = [w for w in (color, shape) if w is not None]
    if kind == "icon":
        return _with_article([*words, "icon"])
    caption = _with_article(words if shape is not None else [*words, "object"])
    return caption if view is None else f"{caption}, {view} view"


# --------------------------------------------------------------------------------------------
# Data set.
# --------------------------------------------------------------------------------------------


@dataclass
class ProceduralConfig:
    resolution: int = 64
    icon_fraction: float = 0.35
    p_drop_color: float = 0.15
    p_drop_shape: float = 0.15
    p_view_suffix: float = 0.5  # objects only
    color_jitter: float = 0.04  # max per-channel offset, uniform
    camera: CameraDistribution = field(default_factory=CameraDistribution)
    views: ViewThresholds = field(default_factory=ViewThresholds)
    seed: int = 0


@dataclass
class ProceduralBatch:
    images: Tensor  # [N, 3, H, W] float32 in [0, 1]
    captions: list[str]
    shape: Tensor  # [N] long, index into ALL_SHAPES
    color: Tensor  # [N] long, index into COLOR_NAMES
    kind: Tensor  # [N] long, index into KINDS
    view: Tensor  # [N] long, index into VIEW_NAMES, -1 for icons


def _jittered_colors(color_idx: Tensor, jitter: float, generator: torch.Generator) -> Tensor:
    """RGB ``[N, 3]`` of ``COLOR_NAMES[color_idx]`` plus uniform ±``jitter`` per channel."""
    base = torch.tensor([COLORS[c] for c in COLOR_NAMES])[color_idx]
    noise = jitter * (2 * torch.rand(len(color_idx), 3, generator=generator) - 1)
    return (base + noise).clamp(0, 1)


def _object_pose(shape_idx: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random yaw (degrees) and scale ``[N]`` for objects ``shape_idx`` ``[N]``."""
    n = len(shape_idx)
    max_yaw = torch.tensor([YAW_JITTER_DEG.get(ALL_SHAPES[i], 0.0) for i in shape_idx.tolist()])
    yaw = max_yaw * (2 * torch.rand(n, generator=generator) - 1)
    lo, hi = OBJECT_SCALE_RANGE
    return yaw, lo + (hi - lo) * torch.rand(n, generator=generator)


class ProceduralDataset:
    """Endless, seeded batches of captioned procedural images (see the module docstring).

    Batch ``index`` of ``split`` is drawn from its own generator, so any batch can be regenerated
    alone; "train" and "test" use disjoint seed streams.
    """

    SPLITS = ("train", "test")

    def __init__(self, cfg: ProceduralConfig | None = None, split: str = "train") -> None:
        if split not in self.SPLITS:
            raise ValueError(f"split must be one of {self.SPLITS}, got {split!r}")
        self.cfg = cfg or ProceduralConfig()
        self.split = split

    def generator(self, index: int) -> torch.Generator:
        """The generator of batch ``index`` of this split."""
        gen = torch.Generator()
        gen.manual_seed(derive_seed(self.cfg.seed, "procedural", self.split, index))
        return gen

    def batch(self, n: int, index: int) -> ProceduralBatch:
        """Batch ``index`` of ``n`` samples; the same (cfg, split, n, index) gives the same batch."""
        cfg, gen = self.cfg, self.generator(index)
        kind = (torch.rand(n, generator=gen) < cfg.icon_fraction).long()
        shape_3d = torch.randint(len(SHAPES_3D), (n,), generator=gen)
        shape_icon = len(SHAPES_3D) + torch.randint(len(ICON_SHAPES), (n,), generator=gen)
        shape = torch.where(kind == KINDS.index("icon"), shape_icon, shape_3d)
        color = torch.randint(len(COLOR_NAMES), (n,), generator=gen)
        drop_color = torch.rand(n, generator=gen) < cfg.p_drop_color
        drop_shape = torch.rand(n, generator=gen) < cfg.p_drop_shape
        with_view = torch.rand(n, generator=gen) < cfg.p_view_suffix
        rgb = _jittered_colors(color, cfg.color_jitter, gen)
        cameras = sample_cameras(n, cfg.camera, gen)
        yaw, scale = _object_pose(shape, gen)
        is_object = kind == KINDS.index("object")
        view = torch.where(is_object, view_index(cameras.elevation, cameras.azimuth, cfg.views), -1)

        images = torch.empty(n, 3, cfg.resolution, cfg.resolution)
        obj = is_object.nonzero()[:, 0]
        icon = (~is_object).nonzero()[:, 0]
        images[obj] = render_objects(shape[obj], rgb[obj], cameras.index(obj), cfg.resolution,
                                     yaw=yaw[obj], scale=scale[obj])
        images[icon] = render_icons(shape[icon], rgb[icon], gen, cfg.resolution)

        columns = (shape, color, kind, view, drop_shape, drop_color, with_view & is_object)
        captions = [
            caption_for(None if no_shape else ALL_SHAPES[s], None if no_color else COLOR_NAMES[c],
                        view=VIEW_NAMES[v] if suffix else None, kind=KINDS[k])
            for s, c, k, v, no_shape, no_color, suffix in zip(*(t.tolist() for t in columns))
        ]
        return ProceduralBatch(images, captions, shape, color, kind, view)

    def render(self, shape: str, color: str, n: int, generator: torch.Generator,
               cameras: CameraBatch | None = None) -> Tensor:
        """``n`` images ``[n, 3, H, W]`` of one named shape and colour, drawn as in the data set.

        Objects use ``cameras`` (or cameras sampled from the config's distribution); icons ignore
        them.
        """
        idx = torch.full((n,), ALL_SHAPES.index(shape), dtype=torch.long)
        rgb = _jittered_colors(torch.full((n,), COLOR_NAMES.index(color)), self.cfg.color_jitter,
                               generator)
        if shape in ICON_SHAPES:
            return render_icons(idx, rgb, generator, self.cfg.resolution)
        cameras = cameras if cameras is not None else sample_cameras(n, self.cfg.camera, generator)
        yaw, scale = _object_pose(idx, generator)
        return render_objects(idx, rgb, cameras, self.cfg.resolution, yaw=yaw, scale=scale)

