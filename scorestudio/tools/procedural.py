"""Preview the procedural captioned images: a grid of one batch and its captions.

    scorestudio procedural --out preview.png --n 64 [--seed 0] [--index 0] [--split train]
"""

from __future__ import annotations

import argparse

from scorestudio.data.procedural import ProceduralConfig, ProceduralDataset
from scorestudio.utils.cli_args import positive_int
from scorestudio.utils.images import image_grid, save_image


def main(argv: list[str] | None = None) -> None:
    """Write a grid of one batch to ``--out`` and print its captions in grid order."""
    parser = argparse.ArgumentParser(prog="scorestudio procedural", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="preview.png")
    parser.add_argument("--n", type=positive_int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--resolution", type=positive_int, default=64)
    parser.add_argument("--split", default="train", choices=ProceduralDataset.SPLITS)
    args = parser.parse_args(argv)
    data = ProceduralDataset(ProceduralConfig(resolution=args.resolution, seed=args.seed), args.split)
    batch = data.batch(args.n, args.index)
    save_image(image_grid(batch.images, pad_value=0.5), args.out)
    for i, caption in enumerate(batch.captions):
        print(f"{i:3d}  {caption}")
