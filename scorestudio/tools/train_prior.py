"""Train the embedded prior (VAE, UNet) and its probe classifier on the procedural data set.

    scorestudio train-prior --stage {probe,vae,unet,all} \
        --out scorestudio/priors/weights/embedded --minutes M [--resume] [--steps N] [--batch-size B]

Stages (``all`` runs them in this order; the UNet needs the exported VAE):

* probe: CNN with shape/colour/kind/view heads on augmented images -> ``OUT/probe/``.
* vae: SD-style ``AutoencoderKL`` (L1 + KL) on images in [-1, 1]; its ``scaling_factor`` is set
  to 1 / std of the training latents -> ``OUT/vae/``.
* unet: DDPM eps-prediction (min-SNR-5 weighted MSE) on cached VAE latents and cached caption
  states, 10% captions dropped to "" for CFG, AdamW, EMA -> ``OUT/unet/`` (the EMA weights),
  ``OUT/scheduler/``, ``OUT/text_encoder.json``.

Work files (not shipped) live in ``--work-dir`` (default ``runs/prior-train``): the image caches,
one folder per stage with ``ckpt.pt`` (atomic, every ``--ckpt-minutes`` and at the end),
``loss.csv`` and ``metrics.json``. ``--minutes`` is the stage's wall-clock budget summed over
resumed runs (see :mod:`scorestudio.tools.training` for the schedule and exact resumption).
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from torch import Tensor, nn

from scorestudio.data import ALL_SHAPES, COLOR_NAMES, KINDS, VIEW_NAMES, ProceduralConfig, caption_for
from scorestudio.priors.embedded import DEFAULT_WEIGHTS, MiniLMTextEncoder
from scorestudio.priors.embedded_arch import (SIZES, ArchSizes, ProbeConfig, ProbeNet, build_unet, build_vae,
                                              parameter_count)
from scorestudio.tools.training import (EMA, WORK_DIR, ImageCache, LatentCache, StageRun, add_run_arguments,
                                        epoch_batch, export_probe, image_cache, latent_cache, latent_moments,
                                        prepare_run, repo_relative, seeded_init, train_loop)
from scorestudio.utils.cli_args import positive_int
from scorestudio.utils.io import write_json
from scorestudio.utils.seeding import generator

STAGES = ("probe", "vae", "unet")
UNCOND_PROB = 0.1  # captions dropped to "" for classifier-free guidance
MIN_SNR_GAMMA = 5.0
VAE_KL_WEIGHT = 1e-6  # SD's weight, relative to the per-pixel *summed* reconstruction loss


@dataclass(frozen=True)
class StageDefaults:
    lr: float
    batch_size: int
    minutes: float


# The shipped run's settings (see MODEL_CARD.md).
STAGE_DEFAULTS = {
    "probe": StageDefaults(lr=1e-3, batch_size=64, minutes=10.0),
    "vae": StageDefaults(lr=5e-4, batch_size=16, minutes=40.0),
    "unet": StageDefaults(lr=5e-4, batch_size=32, minutes=50.0),
}
# Stable Diffusion 1.x's schedule. clip_sample must be off: latents have unit std, and samplers
# built with ``from_config`` (DDIM) would otherwise clip their x0 predictions to [-1, 1].
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                        beta_end=0.012, prediction_type="epsilon", clip_sample=False, steps_offset=1)


# --------------------------------------------------------------------------------------------
# Captions.
# --------------------------------------------------------------------------------------------


def draw_captions(cache: ImageCache, idx: Tensor, gen: torch.Generator, cfg: ProceduralConfig,
                  uncond_prob: float = UNCOND_PROB) -> list[str]:
    """A fresh caption per image ``idx`` ``[B]``: colour, shape and view words dropped/added with
    the data set's probabilities (so one image is seen under all its valid captions), and "" with
    probability ``uncond_prob``."""
    n = len(idx)
    drop_color = torch.rand(n, generator=gen) < cfg.p_drop_color
    drop_shape = torch.rand(n, generator=gen) < cfg.p_drop_shape
    with_view = torch.rand(n, generator=gen) < cfg.p_view_suffix
    uncond = torch.rand(n, generator=gen) < uncond_prob
    captions = []
    for j, i in enumerate(idx.tolist()):
        kind, view = KINDS[cache.kind[i]], int(cache.view[i])
        if uncond[j]:
            captions.append("")
            continue
        captions.append(caption_for(
            None if drop_shape[j] else ALL_SHAPES[cache.shape[i]],
            None if drop_color[j] else COLOR_NAMES[cache.color[i]],
            view=VIEW_NAMES[view] if kind == "object" and with_view[j] else None, kind=kind))
    return captions


def _config_of(run_args: argparse.Namespace, stage: str) -> dict:
    """The settings a checkpoint must be resumed with."""
    return {"size": run_args.size, "batch_size": run_args.batch_size, "seed": run_args.seed,
            "lr": run_args.lr, "cache_images": run_args.cache_images, "stage": stage}


# --------------------------------------------------------------------------------------------
# Probe.
# --------------------------------------------------------------------------------------------


def probe_config(size: ArchSizes) -> ProbeConfig:
    p = size.probe
    return ProbeConfig(resolution=size.image_size, channels=p.channels, feature_dim=p.feature_dim,
                       norm_num_groups=p.norm_num_groups, shapes=ALL_SHAPES, colors=COLOR_NAMES,
                       kinds=KINDS, views=VIEW_NAMES)


def augment(images: Tensor, gen: torch.Generator) -> Tensor:
    """Probe augmentation of images ``[B, 3, R, R]`` in [0, 1], per image: scale 0.9-1.1, shift
    up to ±6% of the width (white fill), blur (a random blend with a 3x3 binomial blur), gaussian
    noise (std up to 0.04) and a ±5% brightness change. Mimics imperfect generated images without
    changing the colour name."""
    b = images.shape[0]
    scale = 0.9 + 0.2 * torch.rand(b, generator=gen)
    shift = 0.12 * (torch.rand(b, 2, generator=gen) - 0.5) * 2
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    x = 1 - F.grid_sample(1 - images, grid, align_corners=False, padding_mode="zeros")  # white outside
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    mix = torch.rand(b, 1, 1, 1, generator=gen)
    x = x + mix * (blurred - x)
    x = x + 0.04 * torch.rand(b, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    x = x * (0.95 + 0.1 * torch.rand(b, 1, 1, 1, generator=gen))
    return x.clamp(0, 1)


def probe_loss(logits: dict[str, Tensor], shape: Tensor, color: Tensor, kind: Tensor, view: Tensor) -> Tensor:
    """Sum of the four cross-entropies; views are ignored for icons (label -1)."""
    return (F.cross_entropy(logits["shape"], shape) + F.cross_entropy(logits["color"], color)
            + F.cross_entropy(logits["kind"], kind) + F.cross_entropy(logits["view"], view, ignore_index=-1))


@torch.no_grad()
def probe_accuracy(net: ProbeNet, cache: ImageCache, batch_size: int = 256) -> dict[str, float]:
    """Per-head accuracy on un-augmented ``cache`` images (view: objects only)."""
    net.eval()
    preds = {k: [] for k in ("shape", "color", "kind", "view")}
    for i in range(0, len(cache), batch_size):
        logits = net(cache.floats(torch.arange(i, min(i + batch_size, len(cache)))))
        for k in preds:
            preds[k].append(logits[k].argmax(-1))
    p = {k: torch.cat(v) for k, v in preds.items()}
    obj = cache.view >= 0
    return {"shape_acc": float((p["shape"] == cache.shape).float().mean()),
            "color_acc": float((p["color"] == cache.color).float().mean()),
            "kind_acc": float((p["kind"] == cache.kind).float().mean()),
            "view_acc_objects": float((p["view"][obj] == cache.view[obj]).float().mean()),
            "n_images": len(cache)}


def train_probe(args: argparse.Namespace, size: ArchSizes) -> None:
    train = image_cache(args.cache_dir, "train", args.cache_images, size.image_size, args.seed, args.chunk)
    net = seeded_init(args.seed, lambda: ProbeNet(probe_config(size))).to(args.device)
    run = StageRun(args.work_dir / "probe", net, torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4))
    extra = _config_of(args, "probe")
    prepare_run(run, args.resume, extra)
    print(f"probe: {parameter_count(net) / 1e6:.3f} M parameters", flush=True)

    def step_fn(step: int) -> dict:
        net.train()
        gen = generator(args.seed, "probe", step)
        idx = epoch_batch(len(train), args.batch_size, step, args.seed, "probe")
        x = augment(train.floats(idx), gen).to(args.device)
        labels = [t[idx].to(args.device) for t in (train.shape, train.color, train.kind, train.view)]
        loss = probe_loss(net(x), *labels)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        return {"loss": loss.item()}

    train_loop(run, step_fn, args, "probe", extra)
    test = image_cache(args.cache_dir, "test", args.test_images, size.image_size, args.seed, args.chunk)
    metrics = {**probe_accuracy(net.cpu(), test), "steps": run.step, "minutes": run.elapsed / 60,
               "parameters": parameter_count(net)}
    write_json(run.folder / "metrics.json", metrics)
    print(f"probe held-out: {json.dumps(metrics)}", flush=True)
    export_probe(net, args.out / "probe")


# --------------------------------------------------------------------------------------------
# VAE.
# --------------------------------------------------------------------------------------------


def vae_loss(vae: AutoencoderKL, x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, L1, KL per image) for images ``x`` ``[B, 3, R, R]`` in [-1, 1]: mean L1 plus
    ``VAE_KL_WEIGHT`` x KL / pixels (SD's weighting, with the reconstruction term per pixel)."""
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample(generator=gen)).sample
    l1 = (recon - x).abs().mean()
    kl = posterior.kl().mean()
    return l1 + VAE_KL_WEIGHT * kl / x[0].numel(), l1, kl


@torch.no_grad()
def vae_psnr(vae: AutoencoderKL, cache: ImageCache, batch_size: int = 64) -> dict[str, float]:
    """Reconstruction PSNR (dB, images in [0, 1], posterior mean) on ``cache``: the mean of the
    per-image PSNRs and the PSNR of the mean MSE."""
    vae.eval()
    per_image = []
    for i in range(0, len(cache), batch_size):
        x = cache.floats(torch.arange(i, min(i + batch_size, len(cache))))
        recon = (vae.decode(vae.encode(x * 2 - 1).latent_dist.mean).sample.clamp(-1, 1) + 1) / 2
        per_image.append((recon - x).pow(2).flatten(1).mean(1))
    mse = torch.cat(per_image).clamp_min(1e-10)
    return {"psnr_mean_db": float((-10 * mse.log10()).mean()), "psnr_of_mean_mse_db": float(-10 * mse.mean().log10()),
            "n_images": len(cache)}


def measure_scaling_factor(mean: Tensor, std: Tensor, seed: int) -> float:
    """1 / std of latent samples ``mean + std * eps`` (SD's recipe for ``scaling_factor``)."""
    eps = torch.randn(mean.shape, generator=generator(seed, "scaling-factor"))
    return float(1.0 / (mean + std * eps).std())


def train_vae(args: argparse.Namespace, size: ArchSizes) -> None:
    train = image_cache(args.cache_dir, "train", args.cache_images, size.image_size, args.seed, args.chunk)
    vae = seeded_init(args.seed, lambda: build_vae(size)).to(args.device)
    run = StageRun(args.work_dir / "vae", vae, torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0))
    extra = _config_of(args, "vae")
    prepare_run(run, args.resume, extra)
    print(f"vae: {parameter_count(vae) / 1e6:.3f} M parameters", flush=True)

    def step_fn(step: int) -> dict:
        vae.train()
        gen = generator(args.seed, "vae", step)
        idx = epoch_batch(len(train), args.batch_size, step, args.seed, "vae")
        x = train.floats(idx) * 2 - 1
        flip = torch.rand(len(idx), generator=gen) < 0.5  # mirror images are valid images too
        x = torch.where(flip[:, None, None, None], x.flip(-1), x).to(args.device)
        loss, l1, kl = vae_loss(vae, x, gen)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        run.optimizer.step()
        return {"loss": loss.item(), "l1": l1.item(), "kl": kl.item()}

    train_loop(run, step_fn, args, "vae", extra)
    test = image_cache(args.cache_dir, "test", args.test_images, size.image_size, args.seed, args.chunk)
    vae.cpu()
    mean, std = latent_moments(vae, train)
    sf = measure_scaling_factor(mean, std, args.seed)
    vae.register_to_config(scaling_factor=sf)
    folder = args.out / "vae"
    save_fp16(vae, folder)
    shipped = AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32)  # measure what ships
    metrics = {**vae_psnr(shipped, test), "scaling_factor": sf, "steps": run.step, "minutes": run.elapsed / 60,
               "parameters": parameter_count(vae)}
    write_json(run.folder / "metrics.json", metrics)
    print(f"vae held-out: {json.dumps(metrics)}", flush=True)


# --------------------------------------------------------------------------------------------
# UNet.
# --------------------------------------------------------------------------------------------


def diffusion_loss(unet: UNet2DConditionModel, scheduler: DDPMScheduler, z0: Tensor, states: Tensor,
                   gen: torch.Generator) -> Tensor:
    """Min-SNR-weighted eps-prediction MSE for scaled latents ``z0`` ``[B, 4, r, r]`` and text
    states ``[B, 32, 384]``; weight min(SNR, gamma) / SNR (Hang et al. 2023) speeds convergence."""
    t = torch.randint(0, scheduler.config.num_train_timesteps, (z0.shape[0],), generator=gen).to(z0.device)
    noise = torch.randn(z0.shape, generator=gen).to(z0.device)
    zt = scheduler.add_noise(z0, noise, t)
    pred = unet(zt, t, encoder_hidden_states=states).sample
    alpha_bar = scheduler.alphas_cumprod.to(z0.device)[t]
    snr = alpha_bar / (1 - alpha_bar)
    weight = snr.clamp(max=MIN_SNR_GAMMA) / snr
    return (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()


@torch.no_grad()
def diffusion_val_loss(unet: UNet2DConditionModel, scheduler: DDPMScheduler, lat: LatentCache,
                       cache: ImageCache, seed: int, batch_size: int = 128) -> float:
    """Weighted eps-MSE on held-out latents, captions drawn as in training but never "",
    fixed noise draws (the figure is comparable between runs)."""
    unet.eval()
    full = {c: i for i, c in enumerate(lat.captions)}
    losses = []
    for i in range(0, len(cache), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(cache)))
        gen = generator(seed, "unet-val", i)
        caps = draw_captions(cache, idx, gen, ProceduralConfig(), uncond_prob=0.0)
        states = lat.states[[full[c] for c in caps]]
        z0 = (lat.mean[idx] + lat.std[idx] * torch.randn(lat.mean[idx].shape, generator=gen)) * lat.scaling_factor
        losses.append(diffusion_loss(unet, scheduler, z0, states, gen) * len(idx))
    return float(sum(losses) / len(cache))


def train_unet(args: argparse.Namespace, size: ArchSizes) -> None:
    vae_folder = args.out / "vae"
    if not (vae_folder / "config.json").is_file():
        raise SystemExit(f"{vae_folder} is missing: train the VAE first (--stage vae)")
    train = image_cache(args.cache_dir, "train", args.cache_images, size.image_size, args.seed, args.chunk)
    lat = latent_cache(args.work_dir / "unet", vae_folder, train, "latents-train")
    index = {c: i for i, c in enumerate(lat.captions)}
    data_cfg = ProceduralConfig()
    unet = seeded_init(args.seed, lambda: build_unet(size)).to(args.device)
    scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
    run = StageRun(args.work_dir / "unet", unet,
                   torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.01), ema=EMA(unet))
    extra = {**_config_of(args, "unet"), "scaling_factor": lat.scaling_factor}
    prepare_run(run, args.resume, extra)
    print(f"unet: {parameter_count(unet) / 1e6:.3f} M parameters, latents {tuple(lat.mean.shape[1:])}, "
          f"scaling_factor {lat.scaling_factor:.4f}", flush=True)

    def step_fn(step: int) -> dict:
        unet.train()
        gen = generator(args.seed, "unet", step)
        idx = epoch_batch(len(train), args.batch_size, step, args.seed, "unet")
        states = lat.states[[index[c] for c in draw_captions(train, idx, gen, data_cfg)]].to(args.device)
        z0 = (lat.mean[idx] + lat.std[idx] * torch.randn(lat.mean[idx].shape, generator=gen)) * lat.scaling_factor
        loss = diffusion_loss(unet, scheduler, z0.to(args.device), states, gen)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        run.optimizer.step()
        run.ema.update(unet, step)
        return {"loss": loss.item()}

    train_loop(run, step_fn, args, "unet", extra)
    run.ema.copy_to(unet)  # export (and evaluate) the EMA weights
    unet.cpu()
    test = image_cache(args.cache_dir, "test", args.test_images, size.image_size, args.seed, args.chunk)
    test_lat = latent_cache(args.work_dir / "unet", vae_folder, test, "latents-test")
    metrics = {"val_loss_ema": diffusion_val_loss(unet, scheduler, test_lat, test, args.seed),
               "steps": run.step, "minutes": run.elapsed / 60, "parameters": parameter_count(unet)}
    write_json(run.folder / "metrics.json", metrics)
    print(f"unet held-out: {json.dumps(metrics)}", flush=True)
    export_unet(unet, scheduler, args.out)


def save_fp16(model: nn.Module, folder: Path) -> None:
    """``model.save_pretrained(folder)`` as fp16 safetensors (the loader upcasts to float32);
    ``model`` itself stays float32."""
    previous = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # the fp16 cast warning is about inference, not export
    try:
        copy.deepcopy(model).to(torch.float16).save_pretrained(folder, safe_serialization=True)
    finally:
        diffusers_logging.set_verbosity(previous)


def export_unet(unet: UNet2DConditionModel, scheduler: DDPMScheduler, out: Path) -> None:
    """``out/unet`` (fp16 safetensors), ``out/scheduler`` and ``out/text_encoder.json``."""
    save_fp16(unet, out / "unet")
    scheduler.save_pretrained(out / "scheduler")
    MiniLMTextEncoder.write_spec(out)


# --------------------------------------------------------------------------------------------
# CLI.
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scorestudio train-prior", description="Train the embedded prior and its probe.")
    p.add_argument("--stage", choices=(*STAGES, "all"), required=True)
    p.add_argument("--out", type=Path, required=True,   # no default: a trial run never overwrites shipped weights
                   help=f"weights folder to write; the shipped one is {repo_relative(DEFAULT_WEIGHTS)}")
    p.add_argument("--work-dir", type=Path, default=WORK_DIR, help="caches, checkpoints, logs (not shipped)")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock training budget of each stage, summed over resumed runs (default per stage)")
    p.add_argument("--steps", type=positive_int, default=None, help="stop at this total step count")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the stage's checkpoint")
    p.add_argument("--size", choices=tuple(SIZES), default="default", help="architecture preset")
    p.add_argument("--cache-dir", type=Path, default=None, help="rendered images (default WORK_DIR/cache)")
    add_run_arguments(p, device_help="training device; evaluation and export run on cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.device = torch.device(args.device)
    args.cache_dir = args.cache_dir or args.work_dir / "cache"
    torch.set_num_threads(args.threads)
    size = SIZES[args.size]
    stages = STAGES if args.stage == "all" else (args.stage,)
    explicit = {k: getattr(args, k) for k in ("lr", "batch_size", "minutes")}
    for stage in stages:
        d = STAGE_DEFAULTS[stage]
        args.lr = explicit["lr"] or d.lr
        args.batch_size = explicit["batch_size"] or d.batch_size
        args.minutes = explicit["minutes"] or d.minutes
        print(f"== stage {stage}: lr {args.lr:g}, batch {args.batch_size}, budget {args.minutes:g} min, "
              f"size {args.size}, threads {args.threads}", flush=True)
        {"probe": train_probe, "vae": train_vae, "unet": train_unet}[stage](args, size)

