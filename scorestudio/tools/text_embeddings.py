"""Precompute a prior's text embeddings into one file (see :mod:`scorestudio.priors.text_embeddings`).

    scorestudio text-embeddings --out prompts.pt --dataset-captions
    scorestudio text-embeddings --out prompts.pt --prompts "a red cube" "an icon"
    scorestudio text-embeddings --out sd.pt --prior stable-diffusion \\
        --prior-arg pretrained_model_name_or_path=/models/sd21 --prompts-file prompts.txt

"" (the unconditional prompt) and the NFSD negative prompt are always included.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from scorestudio.data.cameras import VIEW_NAMES
from scorestudio.data.procedural import COLOR_NAMES, ICON_SHAPES, SHAPES_3D, caption_for
from scorestudio.priors.prompt_processor import NFSD_NEGATIVE_PROMPT
from scorestudio.priors.text_embeddings import save_text_embeddings
from scorestudio.utils.cli_args import build_prior


def dataset_captions() -> list[str]:
    """Every caption the procedural data set can produce (with and without view suffixes)."""
    captions = []
    for color in (None, *COLOR_NAMES):
        for shape in (None, *SHAPES_3D):
            base = caption_for(shape, color, kind="object")
            captions += [base] + [caption_for(shape, color, view=v, kind="object") for v in VIEW_NAMES]
        captions += [caption_for(shape, color, kind="icon") for shape in (None, *ICON_SHAPES)]
    return captions


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="scorestudio text-embeddings",
                                     description="Precompute a prior's text embeddings into one file.")
    parser.add_argument("--out", required=True, help="output file (.pt)")
    parser.add_argument("--prior", default="embedded", help="prior type (embedded, stable-diffusion, deepfloyd-if)")
    parser.add_argument("--prior-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="prior config entry, e.g. pretrained_model_name_or_path=/models/sd21")
    parser.add_argument("--prompts", nargs="*", default=[], help="prompts to encode")
    parser.add_argument("--prompts-file", default=None, help="file with one prompt per line")
    parser.add_argument("--dataset-captions", action="store_true",
                        help="add every procedural-data-set caption (embedded prior experiments)")
    args = parser.parse_args(argv)

    prompts = ["", NFSD_NEGATIVE_PROMPT, *args.prompts]
    if args.prompts_file:
        if not Path(args.prompts_file).is_file():
            parser.error(f"--prompts-file {args.prompts_file}: no such file")
        prompts += [line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
    if args.dataset_captions:
        prompts += dataset_captions()
    prompts = list(dict.fromkeys(prompts))
    prior_cfg = {**OmegaConf.to_container(OmegaConf.from_dotlist(args.prior_arg)), "text_embeddings": None}
    prior = build_prior(args.prior, prior_cfg, "this command takes the prior's settings as --prior-arg KEY=VALUE, "
                                               "e.g. --prior-arg pretrained_model_name_or_path=DIR")
    embeddings = {}
    for start in range(0, len(prompts), 64):
        chunk = prompts[start:start + 64]
        embeddings.update(zip(chunk, prior.encode_text(chunk).cpu()))
    save_text_embeddings(args.out, embeddings, args.prior, prior.locate_weights())
    print(f"wrote {len(prompts)} prompts × {tuple(embeddings[''].shape)} to {args.out}")

