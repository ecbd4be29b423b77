"""The one camera distribution shared by the procedural data set and the text-to-3D sampler.

Conventions (threestudio's): z is up. A camera at elevation ``e``, azimuth ``a`` (degrees) and
distance ``d`` sits at ``(d cos e cos a, d cos e sin a, d sin e)`` and looks at the origin.
Camera-to-world matrices use the OpenGL camera frame: x right, y up, the camera looks along -z.
Azimuth 0 (camera on the +x axis) faces the object's front.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

VIEW_NAMES = ("front", "side", "back", "overhead")


@dataclass
class CameraDistribution:
    """Uniform ranges for random cameras and their point light (angles in degrees)."""

    elevation_range: tuple[float, float] = (-10.0, 60.0)
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    distance_range: tuple[float, float] = (2.3, 2.7)  # objects fit in a sphere of radius ~0.7
    fovy_range: tuple[float, float] = (35.0, 45.0)  # vertical field of view
    light_distance_range: tuple[float, float] = (2.5, 4.0)
    # Std of the gaussian jitter added to the camera position before normalising it and scaling
    # to the light distance (threestudio's 'dreamfusion' light strategy).
    light_position_perturb: float = 1.0


@dataclass
class ViewThresholds:
    """Azimuth/elevation thresholds (degrees) that name a view, as in DreamFusion's prompts."""

    front_threshold: float = 45.0  # |azimuth| < this -> front
    back_threshold: float = 45.0  # |azimuth| > 180 - this -> back
    overhead_threshold: float = 60.0  # elevation > this -> overhead (checked first)


@dataclass
class CameraBatch:
    """N cameras looking at the origin, each with a point light. Every field has leading dim N."""

    elevation: Tensor  # [N] degrees
    azimuth: Tensor  # [N] degrees in [-180, 180)
    distance: Tensor  # [N] scene units
    fovy: Tensor  # [N] vertical field of view, degrees
    c2w: Tensor  # [N, 4, 4] camera-to-world, OpenGL camera frame
    camera_position: Tensor  # [N, 3]
    light_position: Tensor  # [N, 3]

    def __len__(self) -> int:
        return self.elevation.shape[0]

    def to(self, device: str | torch.device) -> CameraBatch:
        """The same cameras with every tensor moved to ``device``."""
        return CameraBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def index(self, idx: Tensor | slice | list[int]) -> CameraBatch:
        """The cameras at rows ``idx`` (a long/bool tensor, list or slice)."""
        return CameraBatch(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


def _uniform(n: int, bounds: tuple[float, float], generator: torch.Generator) -> Tensor:
    """``[n]`` float32 draws, uniform in ``bounds``."""
    low, high = bounds
    return low + (high - low) * torch.rand(n, generator=generator)


def wrap_azimuth(azimuth: Tensor) -> Tensor:
    """Azimuth ``[...]`` in degrees wrapped to [-180, 180)."""
    return torch.remainder(azimuth + 180.0, 360.0) - 180.0


def _as_vector(value: Tensor | float, n: int) -> Tensor:
    """``value`` as a float32 tensor of shape ``[n]``."""
    return torch.as_tensor(value, dtype=torch.float32).expand(n).clone()


def cameras_from_angles(elevation: Tensor | float, azimuth: Tensor | float, distance: Tensor | float,
                        fovy: Tensor | float, light_position: Tensor | None = None) -> CameraBatch:
    """Deterministic cameras from angles in degrees (scalars broadcast to the longest ``[N]``).

    The light defaults to the camera position (headlight); otherwise ``light_position`` is [N, 3].
    """
    n = max(torch.as_tensor(v).numel() for v in (elevation, azimuth, distance, fovy))
    elevation, distance, fovy = (_as_vector(v, n) for v in (elevation, distance, fovy))
    azimuth = wrap_azimuth(_as_vector(azimuth, n))
    elev, azim = torch.deg2rad(elevation), torch.deg2rad(azimuth)
    position = distance[:, None] * torch.stack(
        [elev.cos() * azim.cos(), elev.cos() * azim.sin(), elev.sin()], dim=-1)
    # right = normalize(forward x z_up), written from the azimuth so it stays defined at the poles.
    right = torch.stack([-azim.sin(), azim.cos(), torch.zeros_like(azim)], dim=-1)
    forward = -position / distance[:, None]
    up = torch.linalg.cross(right, forward)
    c2w = torch.zeros(n, 4, 4)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, -forward, position
    c2w[:, 3, 3] = 1.0
    light = position.clone() if light_position is None else light_position.to(torch.float32)
    return CameraBatch(elevation, azimuth, distance, fovy, c2w, position, light)


def sample_cameras(n: int, dist: CameraDistribution, generator: torch.Generator) -> CameraBatch:
    """``n`` cameras with elevation, azimuth, distance, fovy and light distance uniform in ``dist``.

    The light direction is the camera position plus N(0, light_position_perturb^2) jitter,
    normalised and scaled to the light distance. All draws come from ``generator``.
    """
    elevation = _uniform(n, dist.elevation_range, generator)
    azimuth = _uniform(n, dist.azimuth_range, generator)
    distance = _uniform(n, dist.distance_range, generator)
    fovy = _uniform(n, dist.fovy_range, generator)
    light_distance = _uniform(n, dist.light_distance_range, generator)
    jitter = torch.randn(n, 3, generator=generator) * dist.light_position_perturb
    cams = cameras_from_angles(elevation, azimuth, distance, fovy)
    direction = torch.nn.functional.normalize(cams.camera_position + jitter, dim=-1)
    cams.light_position = direction * light_distance[:, None]
    return cams


def orbit_cameras(n_views: int, elevation: float = 15.0, distance: float = 2.5,
                  fovy: float = 40.0) -> CameraBatch:
    """A turntable of ``n_views`` cameras, azimuth from -180 in equal steps, headlight."""
    azimuth = -180.0 + 360.0 * torch.arange(n_views, dtype=torch.float32) / n_views
    return cameras_from_angles(elevation, azimuth, distance, fovy)


def get_rays(cameras: CameraBatch, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Pinhole rays through pixel centres (row 0 = top of the image).

    Returns origins and unit directions in world space, each ``[N, H, W, 3]``.
    """
    device = cameras.c2w.device
    focal = 0.5 * height / torch.tan(0.5 * torch.deg2rad(cameras.fovy))  # [N] pixels
    cols = torch.arange(width, dtype=torch.float32, device=device) + 0.5 - 0.5 * width
    rows = torch.arange(height, dtype=torch.float32, device=device) + 0.5 - 0.5 * height
    x = cols[None, None, :].expand(len(cameras), height, width) / focal[:, None, None]
    y = -rows[None, :, None].expand(len(cameras), height, width) / focal[:, None, None]
    camera_dirs = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [N, H, W, 3]
    directions = torch.einsum("nij,nhwj->nhwi", cameras.c2w[:, :3, :3], camera_dirs)
    directions = torch.nn.functional.normalize(directions, dim=-1)
    origins = cameras.camera_position[:, None, None, :].expand_as(directions)
    return origins, directions


def view_index(elevation: Tensor, azimuth: Tensor,
               thresholds: ViewThresholds = ViewThresholds()) -> Tensor:
    """Index into ``VIEW_NAMES`` (long ``[N]``) for cameras at ``elevation``/``azimuth`` ``[N]``.

    Overhead wins over the azimuth rule; then front, back, and side for the rest.
    """
    abs_azimuth = wrap_azimuth(torch.as_tensor(azimuth, dtype=torch.float32)).abs()
    view = torch.full_like(abs_azimuth, VIEW_NAMES.index("side"), dtype=torch.long)
    view[abs_azimuth < thresholds.front_threshold] = VIEW_NAMES.index("front")
    view[abs_azimuth > 180.0 - thresholds.back_threshold] = VIEW_NAMES.index("back")
    view[torch.as_tensor(elevation) > thresholds.overhead_threshold] = VIEW_NAMES.index("overhead")
    return view


__all__ = [
    "VIEW_NAMES", "CameraBatch", "CameraDistribution", "ViewThresholds", "cameras_from_angles",
    "get_rays", "orbit_cameras", "sample_cameras", "view_index", "wrap_azimuth",
]
