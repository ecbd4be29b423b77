"""Train b̂ψ, LMC-SDS's learned manifold corrective, on triplets (z, ẑ_t, t) of a prior.

    scorestudio train-corrective --minutes 22 --resume \
        [--out scorestudio/priors/weights/embedded/manifold_corrective] [--work-dir runs/manifold-corrective]

Triplets (paper §4, "Implementation details"): z a clean latent of a procedural image, t ~ U(0.02,
0.98)·T, ε ~ N(0, I), and ẑ_t = (z_t − σ_t ε̂_∅(z_t, t)) / α_t the prior's unconditional one-step
denoised estimate. b̂ψ(z, t) is fitted to ẑ_t with the normalised loss L_k (Eq. 10,
:func:`~scorestudio.guidance.manifold_corrective.normalized_corrective_loss`). Triplets are made
on the fly, so every step sees fresh (t, ε) and a resumed run repeats exactly what an
uninterrupted one does; the UNet forward that makes a triplet dominates the cost of a step.

Latents come from the prior trainer's caches (:mod:`scorestudio.tools.training`): the rendered
images (``--cache-dir``) and, for the embedded prior, its VAE posterior moments of them
(``--prior-work-dir``/unet/latents-*.pt, shared with the UNet stage). Other priors (a Stable
Diffusion folder, ``--prior-type stable-diffusion --prior-path DIR``) encode the images with
their own VAE once into ``--work-dir``.

Evaluation: L_k on held-out triplets (the test split's latents with fixed t and ε per image) for
the trained b̂ψ — as shipped, in fp16 — and for the identity baseline b̂(z, t) = z; the relative
improvement must be ≥ 30%. Written to ``WORK/metrics.json``, ``OUT/metrics.json`` and the log.
Resumable like the prior stages: ``--resume`` continues ``WORK/ckpt.pt``; ``--minutes`` is the
training budget summed over resumed runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import Tensor

from scorestudio.guidance.manifold_corrective import (FOLDER_NAME, CorrectiveConfig, ManifoldCorrective,
                                                      load_corrective, normalized_corrective_loss,
                                                      parameter_count, save_corrective)
from scorestudio.priors.embedded import DEFAULT_WEIGHTS
from scorestudio.tools.training import (EMA, LatentCache, StageRun, add_trainer_arguments,
                                        epoch_batch, latents_for, load_prior, prepare_run, repo_relative,
                                        sample_latents, seeded_init, setup_run, train_loop)
from scorestudio.utils.cli_args import positive_int
from scorestudio.utils.io import write_json
from scorestudio.utils.seeding import generator

DEFAULT_WORK = Path("runs/manifold-corrective")
ACCEPT_IMPROVEMENT = 0.30   # L_k at least 30% below the identity baseline on held-out triplets
EMA_DECAY = 0.995           # a ~200-step average: the default budget is too short a run for 0.999
T_BINS = 5                  # held-out L_k also reported per fifth of [t_lo, t_hi]


# --------------------------------------------------------------------------------------------
# Latents and triplets.
# --------------------------------------------------------------------------------------------


def make_triplets(prior, z: Tensor, frac: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """(ẑ_t ``[N, C, h, w]``, integer t ``[N]``) for clean latents ``z`` and t/T fractions ``frac`` ``[N]``.

    ẑ_t is the prior's *unconditional* estimate, as in SDS's projection term that L_lmc replaces.
    """
    t = (frac * prior.num_train_timesteps).long().clamp(0, prior.num_train_timesteps - 1).to(prior.device)
    eps = torch.randn(z.shape, generator=gen).to(prior.device)
    z = z.to(prior.device)
    noisy = prior.add_noise(z, eps, t)
    empty = prior.encode_text([""]).expand(len(z), -1, -1)
    with torch.no_grad():
        z_hat = prior.denoised(noisy, prior.predict_noise(noisy, t, empty), t)
    return z_hat, t


@torch.no_grad()
def evaluate(net: torch.nn.Module, prior, lat: LatentCache, args: argparse.Namespace,
             batch_size: int = 128) -> dict:
    """Held-out L_k of ``net`` and of the identity b̂(z, t) = z on the posterior means of ``lat``,
    with t and ε fixed per image (stream "corrective-val"), overall and per t bin."""
    net.eval()
    lo, hi = args.t_range
    n = len(lat.mean)
    per_net, per_id, fracs = [], [], []
    for i in range(0, n, batch_size):
        idx = torch.arange(i, min(i + batch_size, n))
        gen = generator(args.seed, "corrective-val", i)
        frac = lo + (hi - lo) * torch.rand(len(idx), generator=gen)
        z = sample_latents(lat, idx, None).to(prior.device)
        z_hat, t = make_triplets(prior, z, frac, gen)
        pred = net(z, t.float() / prior.num_train_timesteps)
        per_net.append(normalized_corrective_loss(pred, z_hat, reduction="none").cpu())
        per_id.append(normalized_corrective_loss(z, z_hat, reduction="none").cpu())
        fracs.append(t.float().cpu() / prior.num_train_timesteps)
    ln, li, fr = torch.cat(per_net), torch.cat(per_id), torch.cat(fracs)
    bins = []
    edges = torch.linspace(lo, hi, T_BINS + 1)
    for b in range(T_BINS):
        mask = (fr >= edges[b]) & ((fr < edges[b + 1]) if b < T_BINS - 1 else (fr <= edges[b + 1] + 1e-6))
        if mask.any():
            bins.append({"t_from": round(float(edges[b]), 3), "t_to": round(float(edges[b + 1]), 3),
                         "n": int(mask.sum()), "lk": float(ln[mask].mean()), "lk_identity": float(li[mask].mean()),
                         "improvement": float(1 - ln[mask].mean() / li[mask].mean())})
    improvement = float(1 - ln.mean() / li.mean())
    return {"heldout_lk": float(ln.mean()), "heldout_lk_identity": float(li.mean()),
            "improvement_vs_identity": improvement, "accepted": improvement >= ACCEPT_IMPROVEMENT,
            "acceptance_threshold": ACCEPT_IMPROVEMENT, "n_heldout": n, "per_t_bin": bins}


# --------------------------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------------------------


def train(args: argparse.Namespace) -> dict:
    start = time.time()
    prior = load_prior(args)
    prior.to(args.device)
    train_lat = latents_for(args, prior, "train", args.cache_images)
    cfg = CorrectiveConfig(latent_channels=prior.latent_channels, channels=list(args.channels),
                           time_frequencies=args.time_frequencies)
    if train_lat.mean.shape[1] != cfg.latent_channels:
        raise SystemExit(f"latents have {train_lat.mean.shape[1]} channels but the prior's UNet takes "
                         f"{cfg.latent_channels}")
    net = seeded_init(args.seed, lambda: ManifoldCorrective(cfg)).to(args.device)
    run = StageRun(args.work_dir, net, torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4),
                   ema=EMA(net, EMA_DECAY))
    extra = {"stage": "manifold-corrective", "prior_type": args.prior_type, "batch_size": args.batch_size,
             "lr": args.lr, "seed": args.seed, "cache_images": args.cache_images, "channels": list(args.channels),
             "time_frequencies": args.time_frequencies, "t_range": list(args.t_range)}
    prepare_run(run, args.resume, extra)
    print(f"b̂ψ: {parameter_count(net):,} parameters {cfg.to_dict()}, {len(train_lat.mean)} training latents "
          f"{tuple(train_lat.mean.shape[1:])}, t ~ U{tuple(args.t_range)}·T, prior {args.prior_path}", flush=True)
    lo, hi = args.t_range

    def step_fn(step: int) -> dict:
        net.train()
        gen = generator(args.seed, "corrective", step)
        idx = epoch_batch(len(train_lat.mean), args.batch_size, step, args.seed, "corrective")
        z = sample_latents(train_lat, idx, gen).to(args.device)
        frac = lo + (hi - lo) * torch.rand(len(idx), generator=gen)
        z_hat, t = make_triplets(prior, z, frac, gen)
        loss = normalized_corrective_loss(net(z, t.float() / prior.num_train_timesteps), z_hat)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        run.optimizer.step()
        run.ema.update(net, step)
        with torch.no_grad():   # the identity baseline on the same batch: the log shows the ratio
            identity = normalized_corrective_loss(z, z_hat).item()
        return {"loss": loss.item(), "loss_identity": identity, "ratio": loss.item() / max(identity, 1e-12)}

    train_loop(run, step_fn, args, "corrective", extra)
    run.ema.copy_to(net)   # export (and evaluate) the EMA weights
    net.cpu()
    trained = {"steps": run.step, "minutes": round(run.elapsed / 60, 2), "parameters": parameter_count(net),
               "prior": repo_relative(args.prior_path), "prior_type": args.prior_type, "batch_size": args.batch_size,
               "lr": args.lr, "t_range": list(args.t_range), "seed": args.seed}
    save_corrective(net, args.out, dtype=torch.float16 if args.fp16 else torch.float32,
                    extra={"trained": trained})
    shipped = load_corrective(args.out, latent_channels=prior.latent_channels, device=args.device)  # what ships
    test_lat = latents_for(args, prior, "test", args.test_images)
    metrics = {**evaluate(shipped, prior, test_lat, args), **trained,
               "total_minutes": round((time.time() - start) / 60, 2)}
    write_json(args.work_dir / "metrics.json", metrics)
    write_json(Path(args.out) / "metrics.json", metrics)
    verdict = "PASS" if metrics["accepted"] else "FAIL"
    print(f"[corrective] held-out L_k {metrics['heldout_lk']:.5f} vs identity {metrics['heldout_lk_identity']:.5f}: "
          f"{100 * metrics['improvement_vs_identity']:.1f}% lower ({verdict}, "
          f"needs >= {100 * ACCEPT_IMPROVEMENT:.0f}%)",
          flush=True)
    for b in metrics["per_t_bin"]:
        print(f"[corrective]   t/T in [{b['t_from']:.2f}, {b['t_to']:.2f}]: L_k {b['lk']:.5f} vs identity "
              f"{b['lk_identity']:.5f} ({100 * b['improvement']:.1f}% lower, n={b['n']})", flush=True)
    print(f"[corrective] wrote {args.out} and {args.work_dir / 'metrics.json'} "
          f"({metrics['total_minutes']:.1f} min in total)", flush=True)
    return metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scorestudio train-corrective",
                                description="Train LMC-SDS's manifold corrective b̂ψ for a prior.")
    add_trainer_arguments(p, DEFAULT_WEIGHTS / FOLDER_NAME, "weights folder to write (config.json + model.safetensors)",
                          DEFAULT_WORK, "checkpoint, loss.csv, metrics.json", minutes=22.0, batch_size=128, lr=1e-3)
    p.add_argument("--channels", type=positive_int, nargs="+", default=[32, 64, 128], help="filters per U-Net level")
    p.add_argument("--time-frequencies", type=positive_int, default=6)
    p.add_argument("--t-range", type=float, nargs=2, default=[0.02, 0.98], help="t/T ~ U(lo, hi)")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True, help="store fp16 weights")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup_run(args, "manifold corrective")
    return train(args)

