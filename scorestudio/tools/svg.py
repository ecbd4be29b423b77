"""SVG files from the command line, rendered with the same rasterizer as training.

    scorestudio svg render IN.svg OUT.png [--width W] [--height H]
    scorestudio svg info IN.svg

Bad input (missing file, invalid XML, nothing filled, a file or size beyond the reader's limits)
and an output that cannot be written print one error line and exit with 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from scorestudio.renderers.svg import SvgError, SvgScene, read_svg, render
from scorestudio.utils.cli_args import positive_int
from scorestudio.utils.images import save_image


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="scorestudio svg", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("render", help="rasterize the fills of an SVG file to an image")
    cmd.add_argument("input", help="SVG file")
    cmd.add_argument("output", help="image file (.png, .jpg, ...)")
    cmd.add_argument("--width", type=positive_int, help="output width in px (default: the SVG's)")
    cmd.add_argument("--height", type=positive_int, help="output height in px (one of the two keeps the aspect ratio)")
    cmd = sub.add_parser("info", help="print the canvas size, paths, segments and fill rules")
    cmd.add_argument("input", help="SVG file")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            print(describe(read_svg(args.input), args.input))
            return 0
        scene = read_svg(args.input, args.width, args.height)
    except SvgError as err:
        print(f"scorestudio svg: error: {err}", file=sys.stderr)
        return 2
    image = render(scene)[0]
    try:
        save_image(image, args.output)
    except (OSError, ValueError) as err:   # no or unknown extension, a folder we cannot write, a full disk
        print(f"scorestudio svg: error: cannot write {args.output}: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({scene.width}x{scene.height} px, {scene.num_paths} paths)")
    return 0


def describe(scene: SvgScene, name: str) -> str:
    """A few lines about a scene read from ``name``: canvas, paths, segments, fill rules."""
    segments = scene.segments_per_path().tolist()
    contours = [len(set(c) - {-1}) for c in scene.contour.tolist()]
    if len(segments) <= 12:
        seg_text = ", ".join(map(str, segments))
    else:
        ordered = sorted(segments)
        seg_text = f"min {ordered[0]}, median {ordered[len(ordered) // 2]}, max {ordered[-1]}"
    rules = scene.fill_rules()
    return "\n".join([
        f"file: {name}",
        f"canvas: {scene.width} x {scene.height} px",
        f"paths: {scene.num_paths} ({sum(contours)} contours, {sum(segments)} cubic segments)",
        f"segments per path: {seg_text}",
        f"fill rules: nonzero {rules.count('nonzero')}, evenodd {rules.count('evenodd')}",
    ])

