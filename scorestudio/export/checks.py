"""What a picture of an asset shows: where the object is, whether it stands upright, its colour.

    mask = foreground(image)                       # image [H, W, 3] uint8 on a white background
    silhouette(mask)    # {"height": 301, "width": 180, "upright": True, "apex_at_top": True, ...}
    color_class(mean_color(image, mask))           # "red"

Used to compare a viewer's screenshot of an exported mesh with our own render of the particle
(tests/test_viewer.py, benchmarks/check_assets.py).
"""

from __future__ import annotations

import colorsys
from typing import Optional

import numpy as np

# Hue ranges (degrees, start inclusive) of the colour names; achromatic names come first.
HUES = ((15, "red"), (40, "orange"), (70, "yellow"), (170, "green"), (200, "cyan"), (260, "blue"),
        (300, "purple"), (345, "pink"), (360, "red"))


def foreground(image: np.ndarray, background=(255, 255, 255), tolerance: int = 24) -> np.ndarray:
    """Pixels of ``image [H, W, 3]`` (uint8) farther than ``tolerance`` from ``background`` in
    some channel: bool ``[H, W]``."""
    diff = np.abs(image[..., :3].astype(np.int32) - np.asarray(background, dtype=np.int32))
    return diff.max(-1) > tolerance


def silhouette(mask: np.ndarray, band: float = 0.2) -> Optional[dict]:
    """The bounding box of ``mask [H, W]`` (None when empty), whether it is taller than wide
    (``upright``), and the mean width of its top and bottom ``band`` fractions of rows
    (``apex_at_top``: the top is under half the bottom's width, as for a cone standing on its base)."""
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return None
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    height, width = int(bottom - top + 1), int(right - left + 1)
    widths = mask[top: bottom + 1].sum(1)
    k = max(1, int(round(band * height)))
    top_width, bottom_width = float(widths[:k].mean()), float(widths[-k:].mean())
    return {"top": int(top), "left": int(left), "height": height, "width": width, "upright": height > width,
            "top_width": top_width, "bottom_width": bottom_width, "apex_at_top": top_width < 0.5 * bottom_width}


def mean_color(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean RGB ``[3]`` (0-255) of ``image [H, W, 3]`` over ``mask [H, W]``."""
    return image[..., :3][mask].astype(np.float64).mean(0)


def color_class(rgb) -> str:
    """A colour name for an RGB triple in 0-255: black, grey, white, or a hue name."""
    r, g, b = (float(c) / 255 for c in rgb)
    hue, saturation, value = colorsys.rgb_to_hsv(r, g, b)
    if value < 0.15:
        return "black"
    if saturation < 0.25:
        return "white" if value > 0.8 else "grey"
    degrees = hue * 360
    return next(name for end, name in HUES if degrees < end)
