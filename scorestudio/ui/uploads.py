"""Image uploads: checked before they are decoded, then re-encoded as a PNG of the app's own.

An upload is refused with a message, never a traceback, when it is larger than
:data:`MAX_UPLOAD_BYTES`, is not a PNG or JPEG by its first bytes (whatever its name says),
declares more than :data:`MAX_UPLOAD_PIXELS` in its header (a decompression bomb: a few hundred
bytes of PNG can declare 20000 × 20000 pixels, 1.2 GB decoded), or does not decode to the end (a
truncated file). An accepted image is composited on white, cropped to its central square,
resized and written under the app's upload folder, named by its content: a config names that
file, never a path or name from the browser.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

MAX_UPLOAD_BYTES = 20 * 2**20
MAX_UPLOAD_PIXELS = 4096 * 4096
SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}


class UploadError(ValueError):
    """An upload the app refuses; the message says why, for the page."""


def sniff(path: Path) -> str:
    """The format of ``path`` from its first bytes: ``PNG`` or ``JPEG`` (UploadError otherwise)."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    for signature, name in SIGNATURES.items():
        if head.startswith(signature):
            return name
    raise UploadError(f"{Path(path).name}: not a PNG or JPEG image (its first bytes are not an image's)")


def check_image(path: str | Path) -> tuple[str, int, int]:
    """``(format, width, height)`` of an upload that passes every check of the module docstring;
    UploadError names the first one it fails. The pixels are decoded only after the header's
    size passed."""
    from PIL import Image

    path = Path(path)
    name = path.name
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise UploadError(f"{name}: {size / 2**20:.1f} MB, over the {MAX_UPLOAD_BYTES // 2**20} MB limit of uploads")
    kind = sniff(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:      # reads the header only
                width, height = image.size
                if width * height > MAX_UPLOAD_PIXELS:
                    raise UploadError(f"{name}: {width} × {height} pixels, over the limit of {MAX_UPLOAD_PIXELS} "
                                      "pixels (refused before decoding: a possible decompression bomb)")
                image.load()                     # decodes: a truncated or damaged file fails here
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise UploadError(f"{name}: refused before decoding, too many pixels: a possible decompression bomb "
                          f"({err})") from None
    except UploadError:
        raise
    except (OSError, ValueError, SyntaxError) as err:   # Pillow's decoding errors
        raise UploadError(f"{name}: a damaged or truncated {kind} file ({err})") from None
    return kind, width, height


def prepare_image(path: str | Path, side: int, folder: Path) -> Path:
    """Check ``path`` (:func:`check_image`) and write it as ``folder/<hash>-<side>.png``: RGB on
    white, its central square resized to ``side`` × ``side``. Returns the PNG's path."""
    from PIL import Image

    check_image(path)
    data = Path(path).read_bytes()
    out = folder / f"{hashlib.sha1(data).hexdigest()[:16]}-{side}.png"
    if out.is_file():
        return out
    with Image.open(path) as image:
        rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, "white")
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    w, h = rgb.size
    edge = min(w, h)
    square = rgb.crop(((w - edge) // 2, (h - edge) // 2, (w - edge) // 2 + edge, (h - edge) // 2 + edge))
    if edge != side:
        square = square.resize((side, side), Image.Resampling.LANCZOS)
    folder.mkdir(parents=True, exist_ok=True)
    square.save(out)
    return out
