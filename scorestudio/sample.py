"""Plain text-to-image sampling from a prior with DDIM, to check what the prior knows.

    python -m scorestudio.sample --prompt "a red cube" --n 16 --steps 50 --cfg 7.5 --seed 0 \
        --out DIR [--prior embedded|stable-diffusion|deepfloyd-if] [--model PATH] [--repulsion-gamma 20] \
        [--guidance-interval 0 0.6]

writes ``DIR/grid.png``, ``DIR/sample_000.png`` ... and ``DIR/sample.json`` (the arguments).
Sample i starts from the noise of stream ``("sample", i)`` of the seed, so without repulsion it is
the same image whatever ``--n`` and ``--batch-size`` are; with ``--repulsion-gamma`` the samples of
a batch repel each other (the RSD kernel of the guidance modules, applied to the sampler's ε̂).

Guidance interval (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval improves
sample and distribution quality"): CFG is applied only at the steps with lo ≤ t/T ≤ hi; the other
steps use the conditional ε alone (one UNet pass instead of two). Guidance at the noisiest steps
is what collapses an ambiguous prompt onto its largest mode, while guidance at the later steps
makes fully specified captions more accurate (on the embedded prior:
``benchmarks/results/prior.json`` vs ``prior_cfg_every_step.json``).
The CLI defaults to the prior's ``sampling_guidance_interval``; :func:`ddim_sample` to every step.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import Tensor

from scorestudio.utils.cli_args import positive_int
from scorestudio.utils.images import image_grid, save_image
from scorestudio.utils.seeding import per_particle_randn

if TYPE_CHECKING:
    from scorestudio.guidance.base import BaseGuidance
    from scorestudio.guidance.repulsion import Repulsion
    from scorestudio.priors.base import DiffusionPrior

EpsCorrection = Callable[[Tensor, Tensor, Tensor, Tensor], Optional[Tensor]]


def checked_guidance_interval(interval) -> tuple[float, float]:
    """``(lo, hi)`` as floats, or a ValueError unless 0 ≤ lo ≤ hi ≤ 1 (fractions of T)."""
    lo, hi = (float(v) for v in interval)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"guidance_interval {tuple(interval)}: expected 0 <= lo <= hi <= 1 (fractions of T)")
    return lo, hi


@torch.no_grad()
def ddim_sample(prior: DiffusionPrior, prompts: list[str], steps: int, cfg: float, seed: int,
                eta: float = 0.0, negative_prompt: str = "", batch_size: Optional[int] = None,
                progress: bool = False, eps_correction: Optional[EpsCorrection] = None,
                guidance_interval: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """DDIM samples, one per prompt: images ``[N, 3, H, W]`` in [0, 1] on the prior's device.

    Args:
        prompts: N prompts (repeat a prompt for several samples of it).
        steps: DDIM steps; cfg: guidance scale s (ε_u + s (ε_c − ε_u); 1 = no guidance).
        seed: sample i's initial noise is drawn from ``generator(seed, "sample", i)`` and its
            per-step DDIM noise (eta > 0) from ``generator(seed, "sample-eta", step, i)``.
        eta: DDIM stochasticity (0 = deterministic DDIM, 1 = DDPM-like).
        negative_prompt: the unconditional prompt of CFG.
        batch_size: samples per UNet batch (each call runs 2 × batch_size for CFG); None = all N.
        progress: show a tqdm bar over the denoising steps.
        eps_correction: ``(x_t, ε̂, t [B], sample ids [B]) → [B, C, h, w]`` or None, added to the
            CFG estimate ε̂ ``[B, C, h, w]`` at every step: e.g. the particle repulsion of
            :func:`repulsion_correction`, which then acts within each batch of samples.
        guidance_interval: ``(lo, hi)`` fractions of T: CFG at the steps with lo ≤ t/T ≤ hi, the
            conditional ε alone elsewhere. (0, 1) = CFG at every step.
    """
    from diffusers import DDIMScheduler
    from tqdm.auto import tqdm

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    lo, hi = checked_guidance_interval(guidance_interval)
    # The prior returns ε even for v-prediction checkpoints.
    scheduler = DDIMScheduler.from_config(prior.scheduler_config, prediction_type="epsilon")
    scheduler.set_timesteps(steps, device=prior.device)
    shape = (prior.latent_channels, prior.latent_size, prior.latent_size)
    n = len(prompts)
    batch_size = batch_size or n
    images = []
    bar = tqdm(total=steps * math.ceil(n / batch_size), desc="ddim", disable=not progress)
    for start in range(0, n, batch_size):
        ids = list(range(start, min(start + batch_size, n)))
        cond = prior.encode_text([prompts[i] for i in ids])
        uncond = prior.encode_text([negative_prompt] * len(ids))
        x = per_particle_randn(shape, seed, ids, "sample", device=prior.device) * scheduler.init_noise_sigma
        for step, t in enumerate(scheduler.timesteps):
            if lo <= float(t) / prior.num_train_timesteps <= hi:
                eps = prior.predict_noise_cfg(x, t, cond, uncond, cfg)[0]
            else:
                eps = prior.predict_noise(x, t, cond)
            if eps_correction is not None:
                correction = eps_correction(x, eps, t.expand(len(ids)), torch.tensor(ids, device=x.device))
                eps = eps if correction is None else eps + correction
            noise = per_particle_randn(shape, seed, ids, "sample-eta", step, device=prior.device) if eta > 0 else None
            x = scheduler.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
            bar.update(1)
        images.append(prior.decode_latents(x))
    bar.close()
    return torch.cat(images)


def repulsion_correction(repulsion: Repulsion | BaseGuidance, prior: DiffusionPrior,
                         on: Optional[str] = None) -> EpsCorrection:
    """An RSD :class:`Repulsion` (or a guidance's own) as a sampler ε correction, with its γ at
    step 0, features, kernel and c(t): the samples of a batch repel each other ("particle
    guidance", Corso et al. 2024). With ``on="clean"`` (default: the repulsion's ``on``) the
    kernel sees the predicted x̂0 = (x_t − σ_t ε̂) / α_t, with ``"noisy"`` x_t."""
    from scorestudio.guidance.base import BaseGuidance
    from scorestudio.guidance.repulsion import LATENT_PLACEMENTS

    if isinstance(repulsion, BaseGuidance):
        repulsion = repulsion.repulsion
    on = on or repulsion.cfg.on
    if on not in LATENT_PLACEMENTS:   # a sampler has latents only, no rendered images
        raise ValueError(f"repulsion placement {on!r} for a sampler: use one of {', '.join(LATENT_PLACEMENTS)}")

    def correction(x: Tensor, eps: Tensor, t: Tensor, ids: Tensor) -> Optional[Tensor]:
        source = prior.denoised(x, eps, t) if on == "clean" else x
        return repulsion(prior, source, t, ids, step=0)

    return correction


def build_parser() -> argparse.ArgumentParser:
    from scorestudio.guidance.repulsion import LATENT_PLACEMENTS, REPULSION_FEATURES

    parser = argparse.ArgumentParser(prog="python -m scorestudio.sample",
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
    from scorestudio.utils.config import ConfigError
    from scorestudio.utils.io import write_json
    from scorestudio.utils.registry import find

    args = build_parser().parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    prior_cfg = {"dtype": args.dtype}
    if args.model is not None:
        prior_cfg["pretrained_model_name_or_path"] = args.model
    try:
        prior = find(args.prior, kind="priors")(prior_cfg, path="system.prior").to(device)
    except (ConfigError, FileNotFoundError) as err:
        print(f"scorestudio.sample: error: {err} (on this command line: --model FOLDER)", file=sys.stderr)
        sys.exit(2)
    correction = None
    if args.repulsion_gamma:
        from scorestudio.guidance.repulsion import Repulsion

        repulsion = Repulsion({"gamma": args.repulsion_gamma, "features": args.repulsion_features,
                               "on": args.repulsion_on}, path="repulsion")
        correction = repulsion_correction(repulsion, prior)
    try:
        interval = checked_guidance_interval(args.guidance_interval or prior.sampling_guidance_interval)
    except ValueError as err:
        print(f"scorestudio.sample: error: {err} (--guidance-interval LO HI)", file=sys.stderr)
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


if __name__ == "__main__":
    main()
