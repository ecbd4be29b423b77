"""Saving what a person looks at: images, grids, GIF/MP4 animations."""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from scorestudio.utils.config import ConfigError

# Largest image read from a file (width × height): a few hundred bytes of PNG can declare
# 20000 × 20000 pixels (a decompression bomb of 1.6 GB as float). Raise it here for images you
# trust; Pillow refuses more than twice its own PIL.Image.MAX_IMAGE_PIXELS whatever this says.
MAX_IMAGE_PIXELS = 8192 * 8192


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
    """Write one image ``[3, H, W]`` in [0, 1] (PNG or any format imageio knows); an image with a
    NaN or infinite value is not written (see :func:`all_finite`)."""
    import imageio.v3 as iio

    path = Path(path)
    if not all_finite([image], path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, to_uint8(image))
    return path


def all_finite(images: Sequence[Tensor] | Tensor, path: Path) -> bool:
    """Whether every value of ``images`` is finite; if not, a warning that ``path`` is not written:
    to_uint8 would turn NaN into black pixels that pass for a result (a diverged run's)."""
    bad = sum(int((~torch.isfinite(image.detach())).sum()) for image in images)
    if bad:
        total = sum(image.numel() for image in images)
        warnings.warn(f"{path}: not written: {bad} of {total} values are NaN or infinite (the run diverged?)")
    return not bad


def save_grid(images: Tensor, path: str | os.PathLike, ncol: Optional[int] = None) -> Path:
    """Write images ``[N, 3, H, W]`` in [0, 1] as one grid picture."""
    return save_image(image_grid(images, ncol), path)


def text_strip(text: str, width: int, height: int) -> Tensor:
    """``text`` in black on a white ``[3, height, width]`` strip, cut with "…" to fit the width."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(8, height - 4))
    if font.getlength(text) > width - 4:
        while text and font.getlength(text + "…") > width - 4:
            text = text[:-1]
        text += "…"
    strip = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(strip).text((2, height / 2), text, fill="black", font=font, anchor="lm")
    return torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1).float() / 255


def label_height(image_height: int) -> int:
    """Height of a label strip above ``image_height``-pixel pictures (readable at 64 px and up)."""
    return max(12, image_height // 14)


def labelled_grid(images: Tensor, labels: Sequence[str], ncol: Optional[int] = None, title: Optional[str] = None,
                  pad: int = 2) -> Tensor:
    """:func:`image_grid` of ``images [N, C, H, W]`` with ``labels[i]`` above picture i and
    ``title`` above the grid: ``[3, H', W']``."""
    n, _, h, w = images.shape
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} images")
    strip = label_height(h)
    cells = torch.cat([torch.stack([text_strip(str(t), w, strip) for t in labels]),
                       images.detach().cpu().float()[:, :3]], dim=2)
    grid = image_grid(cells, ncol, pad)
    if title is None:
        return grid
    return torch.cat([text_strip(title, grid.shape[-1], strip + 4), grid], dim=1)


def save_labelled_grid(images: Tensor, labels: Sequence[str], path: str | os.PathLike, ncol: Optional[int] = None,
                       title: Optional[str] = None) -> Path:
    """Write :func:`labelled_grid` of ``images [N, 3, H, W]`` in [0, 1] as one picture."""
    return save_image(labelled_grid(images, labels, ncol, title), path)


def load_image(path: str | os.PathLike, key: Optional[str] = None) -> Tensor:
    """Read an image file as ``[3, H, W]`` float in [0, 1] (alpha composited on white).

    ``key``: the config setting that named the file; a missing or unreadable file, or one of more
    than :data:`MAX_IMAGE_PIXELS` pixels (checked on its header, before decoding), is then a
    ``ConfigError`` naming it (else FileNotFoundError / ValueError).
    """
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        message = f"image not found: {path}"
        raise ConfigError(f"{key}: {message}") if key else FileNotFoundError(message)
    too_large = _too_many_pixels(path)
    if too_large:
        raise ConfigError(f"{key}: {too_large}") if key else ValueError(too_large)
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


def _too_many_pixels(path: Path) -> Optional[str]:
    """Why the image at ``path`` is too large to decode, from its header; None when it is not
    (or when Pillow does not know the format: the decoder then says what it can)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
        if width * height <= MAX_IMAGE_PIXELS:
            return None
        size = f"{width} x {height} = {width * height} pixels"
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:   # over Pillow's own limit
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{found.group(1)} pixels" if found else str(err)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    return (f"{path}: refused to decode: {size}, over the limit scorestudio.utils.images.MAX_IMAGE_PIXELS = "
            f"{MAX_IMAGE_PIXELS} (a possible decompression bomb); raise it (and Pillow's PIL.Image.MAX_IMAGE_PIXELS "
            f"= {Image.MAX_IMAGE_PIXELS} beyond that) for images you trust")


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
    if not all_finite(frames, path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = [to_uint8(f) for f in frames]
    if suffix == ".gif":
        iio.imwrite(path, np.stack(arrays), duration=1000 / fps, loop=0)
        return path
    with iio2.get_writer(path, fps=fps, codec="libx264", macro_block_size=1, quality=8) as writer:
        for a in arrays:
            writer.append_data(a[: a.shape[0] // 2 * 2, : a.shape[1] // 2 * 2])  # H.264 needs even sizes
    return path
