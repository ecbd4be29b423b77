"""Cameras shared by data and text-to-3D, and the procedural captioned-image data set.

The procedural names load lazily (PEP 562), on first use: modules that need only the cameras
do not import the procedural data set.
"""

from importlib import import_module
from typing import Any

from scorestudio.data.cameras import (
    VIEW_NAMES,
    CameraBatch,
    CameraDistribution,
    ViewThresholds,
    cameras_from_angles,
    get_rays,
    orbit_cameras,
    sample_cameras,
    view_index,
    wrap_azimuth,
)

_PROCEDURAL = (
    "ALL_SHAPES", "COLORS", "COLOR_NAMES", "ICON_SHAPES", "KINDS", "SHAPES_3D", "ProceduralBatch",
    "ProceduralConfig", "ProceduralDataset", "caption_for", "render_icons", "render_objects",
)


def __getattr__(name: str) -> Any:
    if name in _PROCEDURAL:
        return getattr(import_module("scorestudio.data.procedural"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "VIEW_NAMES", "CameraBatch", "CameraDistribution", "ViewThresholds", "cameras_from_angles",
    "get_rays", "orbit_cameras", "sample_cameras", "view_index", "wrap_azimuth", *_PROCEDURAL,
]
