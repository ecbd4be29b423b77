"""Saving what a person looks at: images, grids, GIF/MP4 animations."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from scorestudio.utils.config import ConfigError


def image_grid(images: Tensor, ncol: Optional[int] = None, pad: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile images ``[N, C, H, W]`` into one ``[C, rows·(H+pad)+pad, ncol·(W+pad)+pad]`` grid
    (``ncol`` default ⌈√N⌉; empty cells and borders are ``pad_value``)."""
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    cells = torch.full((nrow * ncol, c, h + pad, w + pad), pad_value, dtype=images.dtype)
    cells[:n, :, pad:, pad:] = images.detach().cpu()
    grid = cells.view(nrow, ncol, c, h + pad, w + pad).permute(2, 0, 3, 1, 4)
    grid = grid.reshape(c, nrow * (h + pad), ncol * (w + pad))
    return torch.nn.functional.pad(grid, (0, pad, 0, pad), value=pad_value)


def to_uint8(image: Tensor) -> np.ndarray:
    """``[C, H, W]`` in [0, 1] → ``[H, W, C]`` uint8."""
    arr = image.detach().float().clamp(0, 1).mul(255).round().byte().cpu()
    return arr.permute(1, 2, 0).numpy()


def save_image(image: Tensor, path: str | os.PathLike) -> Path:
    """Write one image ``[3, H, W]`` in [0, 1] (PNG or any format imageio knows)."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, to_uint8(image))
    return path


def save_grid(images: Tensor, path: str | os.PathLike, ncol: Optional[int] = None) -> Path:
    """Write images ``[N, 3, H, W]`` in [0, 1] as one grid picture."""
    return save_image(image_grid(images, ncol), path)


def load_image(path: str | os.PathLike, key: Optional[str] = None) -> Tensor:
    """Read an image file as ``[3, H, W]`` float in [0, 1] (alpha composited on white).

    ``key``: the config setting that named the file; a missing or unreadable file is then a
    ``ConfigError`` naming it (else FileNotFoundError / ValueError).
    """
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        message = f"image not found: {path}"
        raise ConfigError(f"{key}: {message}") if key else FileNotFoundError(message)
    try:
        arr = np.asarray(iio.imread(path))
    except (OSError, ValueError, SyntaxError) as err:   # imageio's "no backend", Pillow's decode errors
        message = f"cannot read {path} as an image (PNG, JPEG, ...): {err}"
        raise ConfigError(f"{key}: {message}") if key else ValueError(message) from err
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(arr.dtype, 1.0)   # bool, float: 1
    arr = arr.astype(np.float32) / scale
    image = torch.from_numpy(arr if arr.ndim == 3 else arr[..., None]).permute(2, 0, 1)
    if image.shape[0] in (1, 2):                      # grey, grey + alpha → RGB(A)
        image = torch.cat([image[:1].expand(3, -1, -1), image[1:]])
    if image.shape[0] == 4:
        rgb, alpha = image[:3], image[3:]
        image = rgb * alpha + (1 - alpha)
    return image[:3].clamp(0, 1)


def mp4_available() -> bool:
    """Whether MP4 can be written (the optional imageio-ffmpeg package is installed)."""
    import importlib.util

    return importlib.util.find_spec("imageio_ffmpeg") is not None


def save_animation(frames: Sequence[Tensor] | Tensor, path: str | os.PathLike, fps: int = 12) -> Path:
    """Write frames ``[T, 3, H, W]`` in [0, 1] as a looping GIF, or as H.264 MP4 (imageio-ffmpeg)
    when the path ends in .mp4."""
    import imageio.v2 as iio2
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"{path}: animations are written as .gif or .mp4")
    if suffix == ".mp4" and not mp4_available():   # imageio would pick another plugin and fail obscurely
        raise RuntimeError(f"{path}: writing MP4 needs imageio-ffmpeg (pip install imageio-ffmpeg); GIF needs nothing")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = [to_uint8(f) for f in frames]
    if suffix == ".gif":
        iio.imwrite(path, np.stack(arrays), duration=1000 / fps, loop=0)
        return path
    with iio2.get_writer(path, fps=fps, codec="libx264", macro_block_size=1, quality=8) as writer:
        for a in arrays:
            writer.append_data(a[: a.shape[0] // 2 * 2, : a.shape[1] // 2 * 2])  # H.264 needs even sizes
    return path
