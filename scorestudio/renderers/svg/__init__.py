"""Vector graphics: the :class:`SvgScene` batch (fills, strokes, gradients, clips), its differentiable rasterizer and SVG file I/O."""

from scorestudio.renderers.svg.io import SvgError, SvgWarning, read_svg, svg_string, write_svg
from scorestudio.renderers.svg.rasterizer import RasterizerConfig, flatten, render, samples_per_segment
from scorestudio.renderers.svg.scene import (
    CAPS,
    FLAT,
    JOINS,
    LINEAR,
    RADIAL,
    SPREADS,
    Clip,
    Gradient,
    Stroke,
    SvgScene,
    circle_points,
    circle_scene,
    polygon_points,
    random_scene,
    star_points,
)

__all__ = [
    "SvgScene", "Stroke", "Gradient", "Clip", "JOINS", "CAPS", "SPREADS", "FLAT", "LINEAR", "RADIAL",
    "circle_points", "circle_scene", "polygon_points", "star_points", "random_scene",
    "RasterizerConfig", "render", "flatten", "samples_per_segment",
    "SvgError", "SvgWarning", "read_svg", "write_svg", "svg_string",
]
