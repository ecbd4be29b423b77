"""How solid a rendered object is: the share of its pixels that are neither empty nor opaque.

SDS on a NeRF tends to grow fog (low density spread around the object) instead of a surface;
fog renders as half-transparent pixels, a clean surface only has them along its silhouette
(about 4 · side / H² of the image, ~3% for an object half the width of a 64² frame).
"""

from __future__ import annotations

from torch import Tensor

EMPTY_BELOW = 0.05    # accumulated opacity under this: background
OPAQUE_ABOVE = 0.95   # over this: the surface of the object


def translucent_fraction(opacity: Tensor) -> Tensor:
    """Per leading item: the fraction of pixels with EMPTY_BELOW ≤ opacity ≤ OPAQUE_ABOVE.

    opacity: ``[N, ...]`` accumulated opacity in [0, 1] (e.g. ``[N, views, H, W]``) → ``[N]``.
    """
    translucent = (opacity >= EMPTY_BELOW) & (opacity <= OPAQUE_ABOVE)
    return translucent.flatten(1).float().mean(1)
