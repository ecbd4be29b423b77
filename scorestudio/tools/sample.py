"""Plain text-to-image sampling from a prior with DDIM, to check what the prior knows.

    scorestudio sample --prompt "a red cube" --n 16 --steps 50 --cfg 7.5 --seed 0 \
        --out DIR [--prior embedded|stable-diffusion|deepfloyd-if] [--model PATH] [--repulsion-gamma 20] \
        [--guidance-interval 0 0.6]

writes ``DIR/grid.png``, ``DIR/sample_000.png`` ... and ``DIR/sample.json`` (the arguments).
Sample i starts from the noise of stream ``("sample", i)`` of the seed, so without repulsion it is
the same image whatever ``--n`` and ``--batch-size`` are; with ``--repulsion-gamma`` the samples of
a batch repel each other. CFG is applied in the prior's ``sampling_guidance_interval`` unless
``--guidance-interval LO HI`` says otherwise. The sampler itself is :mod:`scorestudio.solvers.ddim`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import torch

from scorestudio.guidance.repulsion import LATENT_PLACEMENTS, REPULSION_FEATURES, Repulsion
from scorestudio.solvers.ddim import checked_guidance_interval, ddim_sample, repulsion_correction
from scorestudio.utils.cli_args import positive_int
from scorestudio.utils.config import ConfigError
from scorestudio.utils.images import image_grid, save_image
from scorestudio.utils.io import write_json
from scorestudio.utils.registry import find


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scorestudio sample",
                                     description="DDIM samples of a prompt from a diffusion prior")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default="", help="unconditional prompt of CFG")
    parser.add_argument("--n", type=positive_int, default=16, help="number of samples")
    parser.add_argument("--steps", type=positive_int, default=50, help="DDIM steps")
    parser.add_argument("--cfg", type=float, default=7.5, help="guidance scale s (1 = none)")
    parser.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                        help="apply CFG only for LO <= t/T <= HI (default: the prior's sampling_guidance_interval; "
                             "0 1 = every step)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--prior", default="embedded", choices=["embedded", "stable-diffusion", "deepfloyd-if"])
    parser.add_argument("--model", default=None, help="model folder or cached hub id (default: the prior's)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--batch-size", type=positive_int, default=None, help="samples per UNet batch (default: all)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--repulsion-gamma", type=float, default=0.0,
                        help="γ of the RSD repulsion between the samples of a batch (0 = independent samples)")
    parser.add_argument("--repulsion-features", default="probe", choices=REPULSION_FEATURES,
                        help="kernel features (see RepulsionConfig)")
    # On the embedded prior the kernel on x_t mostly spreads colours, on x̂0 shapes
    # (benchmarks/bench_sampler_repulsion.py).
    parser.add_argument("--repulsion-on", default="noisy", choices=LATENT_PLACEMENTS,
                        help="kernel on x_t (noisy: colours spread first) or on the predicted x̂0 (clean: shapes)")
    return parser


def main(argv: Optional[list[str]] = None) -> list[Path]:
    """Run the CLI; returns the written image paths."""
    args = build_parser().parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    prior_cfg = {"dtype": args.dtype}
    if args.model is not None:
        prior_cfg["pretrained_model_name_or_path"] = args.model
    try:
        prior = find(args.prior, kind="priors")(prior_cfg, path="system.prior").to(device)
    except (ConfigError, FileNotFoundError) as err:
        print(f"scorestudio sample: error: {err} (on this command line: --model FOLDER)", file=sys.stderr)
        sys.exit(2)
    prior.warn_unknown_prompts([args.prompt])
    correction = None
    if args.repulsion_gamma:
        repulsion = Repulsion({"gamma": args.repulsion_gamma, "features": args.repulsion_features,
                               "on": args.repulsion_on}, path="repulsion")
        correction = repulsion_correction(repulsion, prior)
    try:
        interval = checked_guidance_interval(args.guidance_interval or prior.sampling_guidance_interval)
    except ValueError as err:
        print(f"scorestudio sample: error: {err} (--guidance-interval LO HI)", file=sys.stderr)
        sys.exit(2)
    images = ddim_sample(prior, [args.prompt] * args.n, args.steps, args.cfg, args.seed, eta=args.eta,
                         negative_prompt=args.negative_prompt, batch_size=args.batch_size, progress=True,
                         eps_correction=correction, guidance_interval=interval)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"sample_{i:03d}.png" for i in range(len(images))]
    for image, path in zip(images, paths):
        save_image(image, path)
    save_image(image_grid(images), out / "grid.png")
    write_json(out / "sample.json", {**vars(args), "guidance_interval": interval, "device": device})
    print(f"wrote {len(paths)} samples and grid.png to {out}")
    return paths

