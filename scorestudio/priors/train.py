"""Train the embedded prior (VAE, UNet) and its probe classifier on the procedural data set.

    python -m scorestudio.priors.train --stage {probe,vae,unet,all} \
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
resumed runs; the learning rate cools down (cosine) over its last 20%. Every random draw of step
``k`` comes from a generator derived from (seed, stage, k), so a resumed run repeats exactly what
an uninterrupted one would do.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# The 2 cores are shared with other jobs: OpenMP workers spinning on a descheduled peer made
# training steps 10-30x slower in measurements; passive waiting keeps 2 threads useful under
# load. Only effective before torch (and its OpenMP runtime) is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm import tqdm

from scorestudio.data import (ALL_SHAPES, COLOR_NAMES, ICON_SHAPES, KINDS, SHAPES_3D, VIEW_NAMES,
                              ProceduralConfig, ProceduralDataset, caption_for)
from scorestudio.priors.embedded_arch import (SIZES, ArchSizes, ProbeConfig, ProbeNet, build_unet,
                                              build_vae, cast_state_dict, parameter_count)
from scorestudio.utils.cli_args import positive_int
from scorestudio.utils.io import atomic_open, write_json
from scorestudio.utils.seeding import generator

STAGES = ("probe", "vae", "unet")
WORK_DIR = Path("runs/prior-train")
SHIPPED_WEIGHTS = Path(__file__).parent / "weights" / "embedded"
UNCOND_PROB = 0.1  # captions dropped to "" for classifier-free guidance
MIN_SNR_GAMMA = 5.0
EMA_DECAY = 0.999
VAE_KL_WEIGHT = 1e-6  # SD's weight, relative to the per-pixel *summed* reconstruction loss
COOLDOWN_FROM = 0.8  # fraction of the wall-clock budget after which the LR decays
COOLDOWN_FLOOR = 0.05
WARMUP_STEPS = 100


def repo_relative(path: Path) -> str:
    """``path`` relative to the repository when inside it (shipped configs hold no machine paths)."""
    repo = Path(__file__).resolve().parents[2]
    try:
        return str(Path(path).resolve().relative_to(repo))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class StageDefaults:
    lr: float
    batch_size: int
    minutes: float


# The shipped run's settings (see MODEL_CARD.md): VAE + UNet = 90 minutes on 2 cores.
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
# Image caches: pre-rendered procedural images (rendering costs ~20 ms per image on 2 cores,
# far more than a training step spends per image, so every stage reads the same cache).
# --------------------------------------------------------------------------------------------


@dataclass
class ImageCache:
    images: Tensor  # [N, 3, R, R] uint8
    shape: Tensor  # [N] long, index into ALL_SHAPES
    color: Tensor  # [N] long, index into COLOR_NAMES
    kind: Tensor  # [N] long, index into KINDS
    view: Tensor  # [N] long, index into VIEW_NAMES, -1 for icons

    def __len__(self) -> int:
        return self.images.shape[0]

    def floats(self, idx: Tensor) -> Tensor:
        """Images ``[len(idx), 3, R, R]`` float32 in [0, 1]."""
        return self.images[idx].float() / 255.0


def image_cache(cache_dir: Path, split: str, n_images: int, resolution: int, seed: int,
                chunk: int = 256) -> ImageCache:
    """The first ``n_images`` procedural images of ``split``, rendered once in chunks of ``chunk``
    (chunk i = ``ProceduralDataset.batch(chunk, i)``) that are kept on disk, so an interrupted
    build resumes and later stages reuse it."""
    folder = cache_dir / f"{split}-r{resolution}-s{seed}-c{chunk}"
    data = ProceduralDataset(ProceduralConfig(resolution=resolution, seed=seed), split)
    parts = []
    n_chunks = math.ceil(n_images / chunk)
    for i in tqdm(range(n_chunks), desc=f"image cache {split}", disable=n_chunks < 4, **_tqdm_kwargs()):
        path = folder / f"chunk_{i:05d}.pt"
        if not path.is_file():
            b = data.batch(chunk, i)
            part = dict(images=(b.images * 255).round().to(torch.uint8), shape=b.shape, color=b.color,
                        kind=b.kind, view=b.view)
            with atomic_open(path, "wb") as handle:
                torch.save(part, handle)
        parts.append(torch.load(path))
    cat = {k: torch.cat([p[k] for p in parts])[:n_images] for k in parts[0]}
    return ImageCache(**cat)


def epoch_batch(n_items: int, batch_size: int, step: int, seed: int, stream: str) -> Tensor:
    """Indices ``[batch_size]`` of step ``step``: consecutive slices of per-epoch permutations of
    ``range(n_items)`` (each permutation from its own generator, so any step is reproducible)."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n_items)
        perm = torch.randperm(n_items, generator=generator(seed, stream, "epoch", epoch))
        out.extend(perm[offset:offset + batch_size - len(out)].tolist())
    return torch.tensor(out)


# --------------------------------------------------------------------------------------------
# Text: every caption the data set can produce, encoded once.
# --------------------------------------------------------------------------------------------


def all_captions() -> list[str]:
    """Every caption the procedural data set can produce, plus "" (unconditional) first."""
    captions = [""]
    for shape in (None, *SHAPES_3D):
        for color in (None, *COLOR_NAMES):
            for view in (None, *VIEW_NAMES):
                captions.append(caption_for(shape, color, view=view, kind="object"))
    for shape in (None, *ICON_SHAPES):
        for color in (None, *COLOR_NAMES):
            captions.append(caption_for(shape, color, kind="icon"))
    return captions


def encode_captions(captions: list[str], batch_size: int = 64) -> Tensor:
    """Per-token MiniLM states ``[len(captions), 32, 384]``, exactly as the embedded prior
    encodes prompts at inference (:class:`~scorestudio.priors.embedded.MiniLMTextEncoder`)."""
    from scorestudio.priors.embedded import MiniLMTextEncoder

    encoder = MiniLMTextEncoder()
    with torch.no_grad():
        return torch.cat([encoder(captions[i:i + batch_size]) for i in range(0, len(captions), batch_size)])


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


# --------------------------------------------------------------------------------------------
# Shared training loop.
# --------------------------------------------------------------------------------------------


def _tqdm_kwargs() -> dict:
    """Frequent refreshes on a terminal, a line every 30 s in a log file."""
    return {"file": sys.stderr, "mininterval": 0.5 if sys.stderr.isatty() else 30.0, "dynamic_ncols": True}


def lr_multiplier(step: int, progress: float) -> float:
    """Linear warm-up over ``WARMUP_STEPS``, constant, then cosine from 1 to ``COOLDOWN_FLOOR``
    over the last ``1 - COOLDOWN_FROM`` of the wall-clock budget (``progress`` in [0, 1])."""
    warm = min(1.0, (step + 1) / WARMUP_STEPS)
    if progress <= COOLDOWN_FROM:
        return warm
    frac = min(1.0, (progress - COOLDOWN_FROM) / (1 - COOLDOWN_FROM))
    return warm * (COOLDOWN_FLOOR + (1 - COOLDOWN_FLOOR) * 0.5 * (1 + math.cos(math.pi * frac)))


class EMA:
    """Exponential moving average of a module's parameters (decay warms up as in diffusers)."""

    def __init__(self, module: nn.Module, decay: float = EMA_DECAY) -> None:
        self.decay = decay
        self.shadow = {k: p.detach().clone() for k, p in module.named_parameters()}

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, p in module.named_parameters():
            self.shadow[k].lerp_(p.detach(), 1 - d)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for k, p in module.named_parameters():
            p.copy_(self.shadow[k])


@dataclass
class StageRun:
    """The mutable state of one stage: saved to and restored from ``ckpt.pt``."""

    folder: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: EMA | None = None
    step: int = 0
    elapsed: float = 0.0  # training seconds summed over resumed runs

    @property
    def ckpt_path(self) -> Path:
        return self.folder / "ckpt.pt"

    def save(self, extra: dict) -> None:
        state = dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(), step=self.step,
                     elapsed=self.elapsed, ema=self.ema.shadow if self.ema else None, **extra)
        with atomic_open(self.ckpt_path, "wb") as handle:
            torch.save(state, handle)

    def load(self) -> dict:
        state = torch.load(self.ckpt_path, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.shadow = {k: v.to(self.ema.shadow[k].device) for k, v in state["ema"].items()}
        self.step, self.elapsed = state["step"], state["elapsed"]
        return state


def prepare_run(run: StageRun, resume: bool, extra: dict) -> None:
    """Restore ``run`` from its checkpoint with ``resume``; refuse to overwrite one without.

    ``extra`` (sizes, batch size, ...) must match the checkpoint's, so a resumed run cannot
    silently continue with other settings.
    """
    run.folder.mkdir(parents=True, exist_ok=True)
    if not run.ckpt_path.is_file():
        return
    if not resume:
        raise SystemExit(f"{run.ckpt_path} exists: pass --resume to continue it, or delete {run.folder}")
    state = run.load()
    mismatched = {k: (state.get(k), v) for k, v in extra.items() if state.get(k) != v}
    if mismatched:
        raise SystemExit(f"{run.ckpt_path} was trained with other settings (checkpoint, now): {mismatched}")
    print(f"resumed {run.folder.name} at step {run.step} ({run.elapsed / 60:.1f} min trained)", flush=True)


def train_loop(run: StageRun, step_fn, args: argparse.Namespace, stage: str, extra: dict) -> None:
    """Run ``step_fn(step) -> dict of floats`` (first key "loss") until ``--steps`` or
    the stage's ``--minutes`` are used up; checkpoint every ``--ckpt-minutes`` and at the end,
    then append the logged rows to ``loss.csv``."""
    budget = 60.0 * args.minutes
    rows: list[dict] = []
    csv_path = run.folder / "loss.csv"
    _truncate_csv(csv_path, run.step)
    bar = tqdm(initial=run.step, total=args.steps, desc=stage, unit="step", **_tqdm_kwargs())
    last_ckpt = last_print = time.time()
    window: list[float] = []
    while (args.steps is None or run.step < args.steps) and run.elapsed < budget:
        t0 = time.time()
        mult = lr_multiplier(run.step, run.elapsed / budget)
        for group in run.optimizer.param_groups:
            group["lr"] = args.lr * mult
        logs = step_fn(run.step)
        run.step += 1
        run.elapsed += time.time() - t0
        window.append(logs["loss"])
        rows.append({"step": run.step, "elapsed_s": round(run.elapsed, 2), "lr": args.lr * mult, **logs})
        bar.update(1)
        bar.set_postfix(loss=f"{logs['loss']:.4f}", min=f"{run.elapsed / 60:.1f}/{args.minutes:g}", refresh=False)
        now = time.time()
        if now - last_print > 60:
            bar.write(f"[{stage}] step {run.step} loss(avg) {sum(window) / len(window):.5f} lr {args.lr * mult:.2e} "
                      f"{run.elapsed / 60:.1f}/{args.minutes:g} min", file=sys.stdout)
            sys.stdout.flush()
            window, last_print = [], now
        if now - last_ckpt > 60.0 * args.ckpt_minutes:
            _checkpoint(run, extra, csv_path, rows)
            rows, last_ckpt = [], time.time()
    bar.close()
    _checkpoint(run, extra, csv_path, rows)
    print(f"[{stage}] finished at step {run.step}, {run.elapsed / 60:.1f} min", flush=True)


def _checkpoint(run: StageRun, extra: dict, csv_path: Path, rows: list[dict]) -> None:
    """Save the checkpoint first, then the rows it covers (a crash between loses only log rows)."""
    run.save(extra)
    if not rows:
        return
    new = not csv_path.is_file()
    with csv_path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _truncate_csv(path: Path, step: int) -> None:
    """Drop rows past ``step`` (logged after the checkpoint a resumed run restarts from)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = lines[:1] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) <= step]
    if len(keep) != len(lines):
        path.write_text("".join(keep))


def seeded_init(seed: int, build):
    """``build()`` with its weight initialisation seeded by ``seed``; the global RNG state is
    restored afterwards (module constructors draw from it, there is no generator argument)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


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


def export_probe(net: ProbeNet, folder: Path) -> None:
    """``folder/config.json`` + ``folder/probe.safetensors`` (fp16)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", net.cfg.to_dict())
    save_file(cast_state_dict(net, torch.float16), str(folder / "probe.safetensors"))


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


@torch.no_grad()
def latent_moments(vae: AutoencoderKL, cache: ImageCache, batch_size: int = 128) -> tuple[Tensor, Tensor]:
    """Posterior mean and std ``[N, 4, r, r]`` (float32, unscaled) of every cache image."""
    vae.eval()
    means, stds = [], []
    for i in tqdm(range(0, len(cache), batch_size), desc="encode latents", **_tqdm_kwargs()):
        post = vae.encode(cache.floats(torch.arange(i, min(i + batch_size, len(cache)))) * 2 - 1).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


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


@dataclass
class LatentCache:
    mean: Tensor  # [N, 4, r, r] unscaled posterior means
    std: Tensor  # [N, 4, r, r]
    scaling_factor: float
    captions: list[str]  # all_captions()
    states: Tensor  # [len(captions), 32, 384] float32


def latent_cache(args: argparse.Namespace, vae_folder: Path, images: ImageCache, name: str) -> LatentCache:
    """Latent moments of ``images`` under the shipped VAE plus every caption's text states, built
    once and kept in ``work_dir/unet/<name>.pt``."""
    path = args.work_dir / "unet" / f"{name}.pt"
    vae_config = json.loads((vae_folder / "config.json").read_text())
    if path.is_file():
        state = torch.load(path)
        if state["scaling_factor"] == vae_config["scaling_factor"] and len(state["mean"]) == len(images):
            return LatentCache(**state)
    vae = AutoencoderKL.from_pretrained(vae_folder, torch_dtype=torch.float32)
    mean, std = latent_moments(vae, images)
    captions = all_captions()
    state = dict(mean=mean, std=std, scaling_factor=vae_config["scaling_factor"], captions=captions,
                 states=encode_captions(captions))
    with atomic_open(path, "wb") as handle:
        torch.save(state, handle)
    return LatentCache(**state)


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
    lat = latent_cache(args, vae_folder, train, "latents-train")
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
    test_lat = latent_cache(args, vae_folder, test, "latents-test")
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
    from scorestudio.priors.embedded import MiniLMTextEncoder

    save_fp16(unet, out / "unet")
    scheduler.save_pretrained(out / "scheduler")
    MiniLMTextEncoder.write_spec(out)


# --------------------------------------------------------------------------------------------
# CLI.
# --------------------------------------------------------------------------------------------


def add_run_arguments(p: argparse.ArgumentParser, device_help: str = "training device") -> None:
    """Options every training command over the procedural caches shares (this one and
    ``scorestudio.guidance.train_manifold_corrective``)."""
    p.add_argument("--cache-images", type=positive_int, default=16384, help="training images rendered once")
    p.add_argument("--test-images", type=positive_int, default=1024, help="held-out images for the metrics")
    p.add_argument("--chunk", type=positive_int, default=256, help="images per cache file")
    p.add_argument("--ckpt-minutes", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--device", default="cpu", help=device_help)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the embedded prior and its probe.")
    p.add_argument("--stage", choices=(*STAGES, "all"), required=True)
    p.add_argument("--out", type=Path, required=True,   # no default: a trial run never overwrites shipped weights
                   help=f"weights folder to write; the shipped one is {repo_relative(SHIPPED_WEIGHTS)}")
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


if __name__ == "__main__":
    main()
