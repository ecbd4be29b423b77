"""Precomputed text embeddings: encode prompts once, run later without loading the text encoder.

A prior's text encoder can dwarf the rest of a run (T5-XXL for DeepFloyd IF is 4.7 B parameters)
or be missing where the run happens (a GPU node without the MiniLM package). Like threestudio's
prompt cache, scorestudio writes the embeddings of a list of prompts to one file; a prior whose
``text_embeddings`` config names that file (or the ``SCORESTUDIO_TEXT_EMBEDDINGS`` environment
variable, its default) takes prompts from it and never loads its text encoder model.

    python -m scorestudio.priors.text_embeddings --out prompts.pt --dataset-captions
    python -m scorestudio.priors.text_embeddings --out prompts.pt --prompts "a red cube" "an icon"
    python -m scorestudio.priors.text_embeddings --out sd.pt --prior stable-diffusion \\
        --prior-arg pretrained_model_name_or_path=/models/sd21 --prompts-file prompts.txt

File layout (``torch.save``): ``{"prompts": [P strings], "embeddings": float32 [P, L, D],
"prior": prior type, "source": model folder or hub id}``. "" (the unconditional prompt) is
always included.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from scorestudio.utils.config import ConfigError
from scorestudio.utils.io import atomic_open

ENV_VAR = "SCORESTUDIO_TEXT_EMBEDDINGS"
COMMAND = "python -m scorestudio.priors.text_embeddings"


def default_file() -> Optional[str]:
    """The file named by ``$SCORESTUDIO_TEXT_EMBEDDINGS`` (None when unset or empty)."""
    return os.environ.get(ENV_VAR) or None


def load_text_embeddings(path: str | os.PathLike, text_max_length: Optional[int] = None) -> dict[str, Tensor]:
    """``{prompt: [L, D]}`` from a file written by :func:`save_text_embeddings`.

    ``text_max_length`` (the prior's L) is checked against the file's, so embeddings made for
    another prior fail here rather than inside the UNet.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"text embeddings file {path} not found: write it with `{COMMAND} --out {path} "
                          f"--prompts ...`, or unset system.prior.text_embeddings / ${ENV_VAR}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    embeddings = data["embeddings"].to(torch.float32)
    if text_max_length is not None and embeddings.shape[1] != text_max_length:
        raise ConfigError(f"{path}: embeddings have {embeddings.shape[1]} tokens per prompt, this prior uses "
                          f"{text_max_length}; they were made for prior {data.get('prior')!r} "
                          f"({data.get('source')!r}): rewrite them with `{COMMAND}`")
    return dict(zip(data["prompts"], embeddings))


def save_text_embeddings(path: str | os.PathLike, embeddings: dict[str, Tensor], prior: str, source: str) -> None:
    """Write ``{prompt: [L, D]}`` atomically (see the module docstring for the layout)."""
    prompts = list(embeddings)
    with atomic_open(path) as f:
        torch.save({"prompts": prompts, "embeddings": torch.stack([embeddings[p] for p in prompts]).float(),
                    "prior": prior, "source": source}, f)


def dataset_captions() -> list[str]:
    """Every caption the procedural data set can produce (with and without view suffixes)."""
    from scorestudio.data.cameras import VIEW_NAMES
    from scorestudio.data.procedural import COLOR_NAMES, ICON_SHAPES, SHAPES_3D, caption_for

    captions = []
    for color in (None, *COLOR_NAMES):
        for shape in (None, *SHAPES_3D):
            base = caption_for(shape, color, kind="object")
            captions += [base] + [caption_for(shape, color, view=v, kind="object") for v in VIEW_NAMES]
        captions += [caption_for(shape, color, kind="icon") for shape in (None, *ICON_SHAPES)]
    return captions


def main(argv: Optional[list[str]] = None) -> None:
    from omegaconf import OmegaConf

    from scorestudio.priors.prompt_processor import NFSD_NEGATIVE_PROMPT
    from scorestudio.utils.cli_args import build_prior

    parser = argparse.ArgumentParser(description="Precompute a prior's text embeddings into one file.")
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


if __name__ == "__main__":
    main()
