"""What the trainers over the procedural data set share (``scorestudio train-prior``,
``train-corrective``, ``train-latent-probe``).

* Data: procedural images rendered once into chunked caches (:func:`image_cache`), every caption
  the data set can produce encoded once (:func:`all_captions`, :func:`encode_captions`), VAE
  latent moments of a cache (:func:`latent_cache`, :func:`latents_for`), and batches drawn from
  per-epoch permutations (:func:`epoch_batch`).
* Runs: a stage's model, optimiser and EMA saved atomically and resumed exactly
  (:class:`StageRun`, :func:`prepare_run`), trained until a step count or a wall-clock budget
  with a cosine cool-down over its last 20% (:func:`train_loop`). Every random draw of step ``k``
  comes from a generator derived from (seed, stage, k), so a resumed run repeats exactly what an
  uninterrupted one would do.
* Options: the run options all three share (:func:`add_run_arguments`) and those of the two
  trainers over a prior's latents (:func:`add_trainer_arguments`, :func:`load_prior`,
  :func:`setup_run`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm import tqdm

from scorestudio.data import (COLOR_NAMES, ICON_SHAPES, SHAPES_3D, VIEW_NAMES, ProceduralConfig, ProceduralDataset,
                              caption_for)
from scorestudio.priors.embedded import DEFAULT_WEIGHTS, MiniLMTextEncoder
from scorestudio.priors.embedded_arch import ProbeNet, cast_state_dict
from scorestudio.utils.checkpoint import load_checkpoint
from scorestudio.utils.cli_args import build_prior, positive_int
from scorestudio.utils.config import ConfigError
from scorestudio.utils.io import atomic_open, write_json
from scorestudio.utils.seeding import generator

WORK_DIR = Path("runs/prior-train")
EMA_DECAY = 0.999    # the default of EMA
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


# --------------------------------------------------------------------------------------------
# Image caches: procedural images rendered once (rendering an image costs far more than a
# training step spends on it, so every stage reads the same cache).
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
# Text and latents: every caption the data set can produce, encoded once; VAE latent moments.
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
    encoder = MiniLMTextEncoder()
    with torch.no_grad():
        return torch.cat([encoder(captions[i:i + batch_size]) for i in range(0, len(captions), batch_size)])


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


@dataclass
class LatentCache:
    mean: Tensor  # [N, 4, r, r] unscaled posterior means
    std: Tensor  # [N, 4, r, r]
    scaling_factor: float
    captions: list[str]  # all_captions()
    states: Tensor  # [len(captions), 32, 384] float32


def latent_cache(folder: Path, vae_folder: Path, images: ImageCache, name: str) -> LatentCache:
    """Latent moments of ``images`` under the shipped VAE plus every caption's text states, built
    once and kept in ``folder/<name>.pt`` (the prior trainer's ``WORK/unet/``, which the UNet
    stage and the trainers over the embedded prior's latents share)."""
    path = folder / f"{name}.pt"
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


def latents_for(args: argparse.Namespace, prior, split: str, n_images: int) -> LatentCache:
    """Latent moments of the first ``n_images`` procedural images of ``split``.

    Embedded prior: :func:`latent_cache` (posterior mean and std under
    its VAE, shared with the UNet stage). Any other prior: ``prior.encode_images`` (posterior
    mean × scaling factor), cached once in the work dir with std 0 and scaling factor 1.
    """
    images = image_cache(args.cache_dir, split, n_images, prior.image_size if args.prior_type == "embedded"
                         else args.resolution, args.seed, args.chunk)
    if args.prior_type == "embedded":
        return latent_cache(args.prior_work_dir / "unet", Path(args.prior_path) / "vae", images, f"latents-{split}")
    path = args.work_dir / f"latents-{args.prior_type}-{split}-{n_images}.pt"
    if not path.is_file():
        means = []
        with torch.no_grad():
            for i in range(0, len(images), 32):
                x = images.floats(torch.arange(i, min(i + 32, len(images)))).to(prior.device)
                means.append(prior.encode_images(x).cpu())
        mean = torch.cat(means)
        with atomic_open(path, "wb") as handle:
            torch.save({"mean": mean}, handle)
    mean = torch.load(path)["mean"]
    return LatentCache(mean=mean, std=torch.zeros_like(mean), scaling_factor=1.0, captions=[], states=torch.empty(0))


def sample_latents(lat: LatentCache, idx: Tensor, gen: torch.Generator | None) -> Tensor:
    """Scaled latents ``[len(idx), C, h, w]``: a posterior sample (training) or the mean (``gen`` None)."""
    mean = lat.mean[idx]
    if gen is None:
        return mean * lat.scaling_factor
    return (mean + lat.std[idx] * torch.randn(mean.shape, generator=gen)) * lat.scaling_factor


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
        try:
            state = load_checkpoint(self.ckpt_path, require=("model", "optimizer", "step"))
        except ConfigError as err:   # these commands report their errors as SystemExit
            raise SystemExit(str(err)) from None
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


def export_probe(net: ProbeNet, folder: Path) -> None:
    """``folder/config.json`` + ``folder/probe.safetensors`` (fp16)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", net.cfg.to_dict())
    save_file(cast_state_dict(net, torch.float16), str(folder / "probe.safetensors"))


# --------------------------------------------------------------------------------------------
# Command-line options.
# --------------------------------------------------------------------------------------------


def add_run_arguments(p: argparse.ArgumentParser, device_help: str = "training device") -> None:
    """Options every training command over the procedural caches shares (the three trainers)."""
    p.add_argument("--cache-images", type=positive_int, default=16384, help="training images rendered once")
    p.add_argument("--test-images", type=positive_int, default=1024, help="held-out images for the metrics")
    p.add_argument("--chunk", type=positive_int, default=256, help="images per cache file")
    p.add_argument("--ckpt-minutes", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--device", default="cpu", help=device_help)


def add_trainer_arguments(p: argparse.ArgumentParser, shipped: Path, out_help: str, work_dir: Path, work_help: str,
                          minutes: float, batch_size: int, lr: float) -> None:
    """Options every trainer over a prior's latents shares (``train-corrective``,
    ``train-latent-probe``), with its own defaults: output and work folders,
    which prior, budget, batch, learning rate, resumption, and the prior trainer's run options.
    ``--out`` has no default, so that a trial run never overwrites the ``shipped`` weights."""
    p.add_argument("--out", type=Path, required=True, help=f"{out_help}; the shipped one is {repo_relative(shipped)}")
    p.add_argument("--work-dir", type=Path, default=work_dir, help=work_help)
    p.add_argument("--prior-type", default="embedded", help="registered prior (embedded, stable-diffusion, ...)")
    p.add_argument("--prior-path", type=Path, default=DEFAULT_WEIGHTS, help="the prior's weights folder")
    p.add_argument("--prior-work-dir", type=Path, default=WORK_DIR,
                   help="the prior trainer's work dir: embedded latent caches in <it>/unet/ (shared)")
    p.add_argument("--cache-dir", type=Path, default=None, help="rendered images (default PRIOR_WORK_DIR/cache)")
    p.add_argument("--resolution", type=positive_int, default=64,
                   help="render size for non-embedded priors (they resize to their own image size)")
    p.add_argument("--minutes", type=float, default=minutes, help="training wall-clock budget, summed over resumed runs")
    p.add_argument("--steps", type=positive_int, default=None, help="stop at this total step count")
    p.add_argument("--batch-size", type=positive_int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--resume", action="store_true", help="continue from WORK/ckpt.pt")
    add_run_arguments(p)   # cache sizes, checkpoint period, seed, threads, device: as the prior trainer


def load_prior(args: argparse.Namespace):
    """The prior named by ``--prior-type`` / ``--prior-path``; missing weights or an unknown type end
    the command with one message (the prior's own errors name the launch.py setting)."""
    return build_prior(args.prior_type, {"pretrained_model_name_or_path": str(args.prior_path)},
                       "this command takes the prior as --prior-type NAME --prior-path FOLDER")


def setup_run(args: argparse.Namespace, name: str) -> None:
    """Device, cache folder and threads of a trainer over a prior's latents (``train-corrective``,
    ``train-latent-probe``); prints its banner."""
    args.device = torch.device(args.device)
    args.cache_dir = args.cache_dir or args.prior_work_dir / "cache"
    torch.set_num_threads(args.threads)
    print(f"== {name}: lr {args.lr:g}, batch {args.batch_size}, budget {args.minutes:g} min, "
          f"threads {args.threads}, device {args.device}", flush=True)
