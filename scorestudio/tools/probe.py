"""Name the shape, colour, kind and view of images with the embedded prior's probe.

    scorestudio probe IMAGE_OR_DIR ... [--json] [--probe FOLDER]

Folders are searched recursively for .png/.jpg/.jpeg/.webp files. Transparent images are put on
white (the probe was trained on white backgrounds); any size is resized to the probe's input.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from scorestudio.metrics.probe import load_probe
from scorestudio.utils.cli_args import positive_int
from scorestudio.utils.images import load_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def find_images(paths: list[str]) -> list[Path]:
    """Image files named by ``paths`` (files as given, folders searched recursively, sorted)."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise SystemExit(f"no such file or folder: {p}")
    return found


def load_resized(path: Path, size: int) -> torch.Tensor:
    """Image ``[3, size, size]`` float32 in [0, 1], alpha composited on white, resized
    (bilinear, antialiased) so that images of any size batch together."""
    try:
        rgb = load_image(path)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    if rgb.shape[-2:] != (size, size):
        rgb = F.interpolate(rgb[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return rgb.clamp(0, 1)


def format_row(path: Path, row: dict) -> str:
    """One human-readable line: predictions with their probabilities."""
    view = f"  view {row['view']} ({row['p_view']:.2f})" if row["view"] is not None else ""
    return (f"{path}: {row['color']} ({row['p_color']:.2f}) {row['shape']} ({row['p_shape']:.2f})  "
            f"kind {row['kind']} ({row['p_kind']:.2f}){view}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="scorestudio probe", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--probe", default=None, help="probe folder (default: the shipped probe)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    args = parser.parse_args(argv)
    probe = load_probe(args.probe)
    files = find_images(args.paths)
    for start in range(0, len(files), args.batch_size):
        chunk = files[start:start + args.batch_size]
        rows = probe.classify(torch.stack([load_resized(f, probe.cfg.resolution) for f in chunk]))
        for path, row in zip(chunk, rows):
            print(json.dumps({"path": str(path), **row}) if args.json else format_row(path, row))

