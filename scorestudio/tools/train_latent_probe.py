"""Distil the probe onto a prior's latents: f_lat(z) ≈ probe.features(prior.decode_latents(z)).

    scorestudio train-latent-probe --minutes 12 --resume \
        [--out scorestudio/priors/weights/embedded/latent_probe] [--work-dir runs/latent-probe]

Why: the RSD repulsion with probe features decodes every particle and backpropagates through the
decoder at each step; on the embedded prior that pass costs more than the whole SDS step
(``benchmarks/RESULTS.md``, repulsion overhead). A small CNN on the 4×8×8 latents that
reproduces the probe's features of the decoded latent removes the decoder from the loop
(``system.guidance.repulsion.features=latent_probe``).

Data: the latents the repulsion sees, z_t = α_t z + σ_t ε with t ~ U[0, 1]·T, where z is a
posterior sample of a procedural image (the prior trainer's caches, see
:func:`~scorestudio.tools.training.latents_for`), or for ``--gauss-fraction``
of the items N(0, I) (randomly initialised particles), or for ``--blend-fraction`` a blend of two
images (particles between modes). Targets are the probe's features of ``decode(z_t)``. Decoding
dominates the cost, so a fixed pool of pairs is made once (chunked, resumable: WORK/pool-*/) and
the student trains epochs over it.

Loss: squared error between student and teacher features, per dimension normalised by the pool's
feature variance (1 − R²). The teacher's heads are copied, frozen, so the latent probe also names
shapes and colours.

Evaluation (a held-out pool from the test split): R² of the features, agreement of the colour
and shape predictions with the teacher's, and what the repulsion consumes: the cosine between the
repulsion gradients ∇_z log Σ_j k(f(z), f(z_j)) through the latent probe and through decoder +
probe, for ensembles of 8 test latents at fixed t; the flattened-latent features ("latent") are
the baseline it must beat. Written to ``WORK/metrics.json`` and ``OUT/metrics.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import Tensor

from scorestudio.guidance.repulsion import repulsion_gradient
from scorestudio.metrics.probe import DEFAULT_LATENT_PROBE_DIR, Probe, load_probe
from scorestudio.priors.embedded_arch import ProbeConfig, parameter_count
from scorestudio.tools.training import (EMA, StageRun, add_trainer_arguments, epoch_batch, export_probe, latents_for,
                                        load_prior, prepare_run, repo_relative, sample_latents, seeded_init,
                                        setup_run, train_loop)
from scorestudio.utils.cli_args import positive_int
from scorestudio.utils.io import atomic_open, write_json
from scorestudio.utils.seeding import generator

DEFAULT_WORK = Path("runs/latent-probe")
EMA_DECAY = 0.999
ENSEMBLE = 8                       # particles per ensemble in the gradient-cosine evaluation
EVAL_T = (0.1, 0.3, 0.5, 0.7, 0.9)  # t/T of the gradient-cosine evaluation


# --------------------------------------------------------------------------------------------
# The pool of (z_t, probe features of decode(z_t)) pairs.
# --------------------------------------------------------------------------------------------


def noisy_inputs(lat, n: int, gen: torch.Generator, args: argparse.Namespace, prior) -> Tensor:
    """``[n, C, h, w]`` latents as the repulsion sees them: clean images, noise or blends, then noised."""
    z = sample_latents(lat, torch.randint(len(lat.mean), (n,), generator=gen), gen)
    kind = torch.rand(n, generator=gen)
    gauss = kind < args.gauss_fraction
    blend = (kind >= args.gauss_fraction) & (kind < args.gauss_fraction + args.blend_fraction)
    other = z[torch.randperm(n, generator=gen)]
    w = 0.3 + 0.4 * torch.rand(n, 1, 1, 1, generator=gen)
    z = torch.where(blend[:, None, None, None], (1 - w) * z + w * other, z)
    z = torch.where(gauss[:, None, None, None], torch.randn(z.shape, generator=gen), z)
    t = (torch.rand(n, generator=gen) * prior.num_train_timesteps).long().clamp(max=prior.num_train_timesteps - 1)
    return prior.add_noise(z, torch.randn(z.shape, generator=gen), t)


@torch.no_grad()
def teacher_features(teacher: Probe, prior, z: Tensor, batch_size: int = 256) -> Tensor:
    """The probe's features ``[N, D]`` of the decoded latents ``z`` ``[N, C, h, w]``."""
    out = [teacher.features(prior.decode_latents(z[i:i + batch_size].to(prior.device))).cpu()
           for i in range(0, len(z), batch_size)]
    return torch.cat(out)


def pool(args: argparse.Namespace, prior, teacher: Probe, split: str, n_items: int) -> dict[str, Tensor]:
    """``{"z": [n, C, h, w], "f": [n, D]}``: made chunk by chunk into WORK/pool-<split>/ (a stopped
    run keeps its finished chunks), each chunk from its own random stream."""
    lat = latents_for(args, prior, split, args.cache_images if split == "train" else args.test_images)
    folder = args.work_dir / f"pool-{split}"
    folder.mkdir(parents=True, exist_ok=True)
    chunks, n_chunks = [], -(-n_items // args.pool_chunk)
    for c in range(n_chunks):
        path = folder / f"chunk_{c:05d}.pt"
        if not path.is_file():
            t0 = time.time()
            z = noisy_inputs(lat, args.pool_chunk, generator(args.seed, "latent-probe-pool", split, c), args, prior)
            with atomic_open(path, "wb") as handle:
                torch.save({"z": z, "f": teacher_features(teacher, prior, z)}, handle)
            print(f"[latent-probe] pool {split} chunk {c + 1}/{n_chunks} ({time.time() - t0:.1f} s)", flush=True)
        chunks.append(torch.load(path))
    return {k: torch.cat([ch[k] for ch in chunks])[:n_items] for k in ("z", "f")}


# --------------------------------------------------------------------------------------------
# Student, loss, evaluation.
# --------------------------------------------------------------------------------------------


def student_for(teacher: Probe, latent_shape: tuple[int, ...], channels: list[int]) -> Probe:
    """A latent-space probe with the teacher's feature size and a copy of its (frozen) heads."""
    student = Probe(ProbeConfig.from_dict({**teacher.cfg.to_dict(), "resolution": latent_shape[-1],
                                           "channels": list(channels), "space": "latent",
                                           "in_channels": latent_shape[0]}))
    student.heads.load_state_dict(teacher.heads.state_dict())
    student.heads.requires_grad_(False)
    return student


def normalized_error(pred: Tensor, target: Tensor, var: Tensor) -> Tensor:
    """Mean over items and dimensions of (pred − target)² / var: 1 − R² for var the target variance."""
    return ((pred - target).pow(2) / var).mean()


@torch.no_grad()
def evaluate(student: Probe, teacher: Probe, prior, test: dict[str, Tensor], var: Tensor,
             args: argparse.Namespace) -> dict:
    """Feature R², head agreement with the teacher, and the repulsion-gradient cosine (see module doc)."""
    student.eval()
    pred = torch.cat([student.features(test["z"][i:i + 512]) for i in range(0, len(test["z"]), 512)])
    out = {"feature_r2": float(1 - normalized_error(pred, test["f"], var)), "n_heldout": len(pred)}
    for head in ("shape", "color"):
        agree = student.heads[head](pred).argmax(-1) == teacher.heads[head](test["f"]).argmax(-1)
        out[f"{head}_agreement"] = float(agree.float().mean())
    lat = latents_for(args, prior, "test", args.test_images)
    through_decoder = lambda z: teacher.features(prior.decode_latents(z))  # noqa: E731
    for name, fn in (("latent_probe", student.features), ("latent", None)):
        per_t = {}
        for frac in EVAL_T:
            cos = []
            for e in range(args.eval_ensembles):
                gen = generator(args.seed, "latent-probe-eval", e)
                z = sample_latents(lat, torch.randint(len(lat.mean), (ENSEMBLE,), generator=gen), None)
                t = torch.full((ENSEMBLE,), int(frac * prior.num_train_timesteps))
                z_t = prior.add_noise(z, torch.randn(z.shape, generator=gen), t)
                ref = repulsion_gradient(z_t, through_decoder).flatten(1)
                got = repulsion_gradient(z_t, fn).flatten(1)
                cos.append(torch.nn.functional.cosine_similarity(got, ref, dim=1))
            per_t[str(frac)] = float(torch.cat(cos).mean())
        out[f"grad_cosine_{name}"] = per_t
        out[f"grad_cosine_{name}_mean"] = sum(per_t.values()) / len(per_t)
    return out


# --------------------------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------------------------


def train(args: argparse.Namespace) -> dict:
    start = time.time()
    prior = load_prior(args)
    prior.to(args.device)
    teacher = load_probe(args.probe).to(args.device)
    data = pool(args, prior, teacher, "train", args.pool_size)
    test = pool(args, prior, teacher, "test", args.test_pool_size)
    var = data["f"].var(dim=0).clamp_min(1e-6)
    student = seeded_init(args.seed, lambda: student_for(teacher, tuple(data["z"].shape[1:]), args.channels))
    student.to(args.device)
    trainable = [p for p in student.parameters() if p.requires_grad]
    run = StageRun(args.work_dir, student, torch.optim.AdamW(trainable, lr=args.lr, weight_decay=1e-4),
                   ema=EMA(student, EMA_DECAY))
    extra = {"stage": "latent-probe", "prior_type": args.prior_type, "batch_size": args.batch_size, "lr": args.lr,
             "seed": args.seed, "pool_size": args.pool_size, "channels": list(args.channels),
             "gauss_fraction": args.gauss_fraction, "blend_fraction": args.blend_fraction}
    prepare_run(run, args.resume, extra)
    print(f"latent probe: {parameter_count(student):,} parameters, pool {len(data['z'])} pairs "
          f"{tuple(data['z'].shape[1:])} → {data['f'].shape[1]} features", flush=True)

    def step_fn(step: int) -> dict:
        student.train()
        idx = epoch_batch(len(data["z"]), args.batch_size, step, args.seed, "latent-probe")
        loss = normalized_error(student.features(data["z"][idx].to(args.device)), data["f"][idx].to(args.device),
                                var.to(args.device))
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.ema.update(student, step)
        return {"loss": loss.item()}

    train_loop(run, step_fn, args, "latent-probe", extra)
    run.ema.copy_to(student)
    student.cpu()
    export_probe(student, args.out)
    shipped = load_probe(args.out)   # evaluate what ships (fp16 weights)
    metrics = {**evaluate(shipped, teacher.cpu(), prior.to("cpu"), test, var, args), "steps": run.step,
               "minutes": round(run.elapsed / 60, 2), "parameters": parameter_count(shipped),
               "prior": repo_relative(args.prior_path), "total_minutes": round((time.time() - start) / 60, 2)}
    write_json(args.work_dir / "metrics.json", metrics)
    write_json(Path(args.out) / "metrics.json", metrics)
    print(f"[latent-probe] held-out feature R² {metrics['feature_r2']:.3f}, colour agreement "
          f"{metrics['color_agreement']:.3f}, shape agreement {metrics['shape_agreement']:.3f}; repulsion-gradient "
          f"cosine to decoder+probe {metrics['grad_cosine_latent_probe_mean']:.3f} (flattened latents: "
          f"{metrics['grad_cosine_latent_mean']:.3f}); wrote {args.out}", flush=True)
    return metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scorestudio train-latent-probe",
                                description="Distil the probe onto a prior's latents (cheap repulsion features).")
    add_trainer_arguments(p, DEFAULT_LATENT_PROBE_DIR, "weights folder to write", DEFAULT_WORK,
                          "pool, checkpoint, loss.csv, metrics.json", minutes=12.0, batch_size=256, lr=2e-3)
    p.add_argument("--probe", type=Path, default=None, help="the image probe to distil (default: shipped)")
    p.add_argument("--pool-size", type=positive_int, default=32768, help="training pairs (decoded once)")
    p.add_argument("--test-pool-size", type=positive_int, default=4096, help="held-out pairs from the test split")
    p.add_argument("--pool-chunk", type=positive_int, default=1024, help="pairs per pool file (the unit of resumption)")
    p.add_argument("--gauss-fraction", type=float, default=0.15, help="share of N(0, I) latents in the pool")
    p.add_argument("--blend-fraction", type=float, default=0.15, help="share of two-image blends in the pool")
    p.add_argument("--eval-ensembles", type=positive_int, default=16, help="ensembles per t in the gradient-cosine check")
    p.add_argument("--channels", type=positive_int, nargs="+", default=[128, 256], help="filters per stride-2 stage")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup_run(args, "latent probe")
    return train(args)

