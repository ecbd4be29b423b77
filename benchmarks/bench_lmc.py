"""SDS vs NFSD vs LMC-SDS: optimisation-based image synthesis on the embedded prior (LMC-SDS §5.1).

Every run starts all particles at a 50%-grey image (``system.init=grey``) and optimises them with
the image-particles system (the same code as ``launch.py``), one prompt per particle: all
(shape, colour) captions of the procedural data set are distilled as the particles of ONE run
per (method, ω), so a run costs one batched UNet call per step. Per method and ω it reports

- probe accuracy: the probe names the prompted shape and colour (also each alone);
- foreground saturation: mean HSV saturation of the pixels that differ from the image's border
  colour, vs the same figure on held-out data images (over-saturation at high ω shows as excess);
- high-frequency energy ratio: the fraction of (luminance, mean removed) power-spectrum energy
  above half the Nyquist frequency, result / data set (blur < 1, noise and artefacts > 1).

Plus the diversity experiment: 8 runs (particles) per ambiguous prompt with LMC-SDS, with and
without ``fixed_epsilon``: mean pairwise probe-feature distance (1 − cosine, and Euclidean).

    python benchmarks/bench_lmc.py                                      # full: 104 prompts × 5 ω × 3 methods
    python benchmarks/bench_lmc.py --prompts-limit 4 --steps 20 --omegas 7.5 --diversity-runs 2   # smoke test
    python benchmarks/bench_lmc.py --device cuda --out benchmarks/results/lmc_cuda.json           # on a GPU
    python benchmarks/bench_lmc.py --methods sds lmc-sds --omegas 7.5 --lmc-weights 1 1.5 2 3 4 --seed 1 \
        --diversity-runs 0 --out benchmarks/results/lmc_weight_sweep.json    # tune LMC-SDS's corrective weight

The tuning sweep runs on seed 1 so that the acceptance figures (seed 0) are not the ones it was chosen on.

Cost on 2 CPU cores (load ~3 from other jobs): one step of all three methods at 104 particles
took 3.7 s (SDS 1.1, NFSD 1.5, LMC-SDS 1.1), so the default 120 steps × 5 ω ≈ 37 min, plus ~2 min
for the diversity runs, references and probe. Needs the shipped b̂ψ (or ``--corrective FOLDER``).

Writes benchmarks/results/lmc.json, lmc.png (figures vs ω) and lmc_samples.png (examples).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import sharding
import torch
from torch import Tensor

from scorestudio.data.procedural import ALL_SHAPES, COLOR_NAMES, ProceduralConfig, ProceduralDataset, caption_for
from scorestudio.metrics.attributes import distinct_classes, prompt_attributes
from scorestudio.metrics.probe import diversity, load_probe
from scorestudio.systems.image_particles import ImageParticlesSystem
from scorestudio.utils.config import load_config
from scorestudio.utils.run import RunContext

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = {"sds": "image-particles-sds.yaml", "nfsd": "image-particles-nfsd.yaml",
           "lmc-sds": "image-particles-lmc.yaml"}
FOREGROUND_THRESHOLD = 0.1   # max |pixel − border colour| over channels that counts as foreground
HALF_NYQUIST = 0.25          # cycles per pixel


# --------------------------------------------------------------------------------------------
# Image statistics. Images are [N, 3, H, W] in [0, 1].
# --------------------------------------------------------------------------------------------


def foreground_mask(images: Tensor) -> Tensor:
    """``[N, H, W]`` bool: pixels farther than FOREGROUND_THRESHOLD from the median border colour
    (white for the data set, whatever the background became for a generated image)."""
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], dim=-1)
    bg = border.median(dim=-1).values[..., None, None]   # [N, 3, 1, 1]
    return (images - bg).abs().amax(dim=1) > FOREGROUND_THRESHOLD


def foreground_saturation(images: Tensor) -> Tensor:
    """Mean HSV saturation (max − min) / max of the foreground pixels, per image ``[N]`` (NaN if none)."""
    mx, mn = images.amax(dim=1), images.amin(dim=1)
    sat = (mx - mn) / mx.clamp_min(1e-6)
    mask = foreground_mask(images)
    total = (sat * mask).flatten(1).sum(1)
    count = mask.flatten(1).sum(1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def high_frequency_fraction(images: Tensor) -> Tensor:
    """Fraction of the luminance power spectrum (mean removed) above half Nyquist, per image ``[N]``."""
    lum = images.mean(dim=1)
    lum = lum - lum.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(lum).abs().pow(2)
    fy = torch.fft.fftfreq(lum.shape[-2]).abs()[:, None]
    fx = torch.fft.fftfreq(lum.shape[-1]).abs()[None, :]
    high = (fx.pow(2) + fy.pow(2)).sqrt() > HALF_NYQUIST
    return (power * high).flatten(1).sum(1) / power.flatten(1).sum(1).clamp_min(1e-12)


def nanmean(x: Tensor) -> float:
    return float(x[~torch.isnan(x)].mean()) if (~torch.isnan(x)).any() else float("nan")


def data_reference(prior, n: int) -> dict:
    """Saturation and HF fraction of ``n`` held-out data images, and of their VAE reconstructions
    (the best any latent optimisation can decode to)."""
    images = ProceduralDataset(ProceduralConfig(resolution=prior.image_size), split="test").batch(n, 0).images
    with torch.no_grad():
        recon = prior.decode_latents(prior.encode_images(images)).clamp(0, 1)
    return {"saturation": nanmean(foreground_saturation(images)),
            "hf_fraction": float(high_frequency_fraction(images).mean()),
            "vae_saturation": nanmean(foreground_saturation(recon)),
            "vae_hf_fraction": float(high_frequency_fraction(recon).mean()), "n_images": n}


# --------------------------------------------------------------------------------------------
# Runs.
# --------------------------------------------------------------------------------------------


def all_prompts() -> list[str]:
    """Every fully specified caption: 13 shapes × 8 colours."""
    return [caption_for(shape, color) for shape, color in itertools.product(ALL_SHAPES, COLOR_NAMES)]


def distill(args: argparse.Namespace, method: str, omega: float, prompts: list[str],
            fixed_epsilon: bool = False, lmc_weight: float | None = None) -> tuple[Tensor, float]:
    """One image-particles run, one particle per prompt, from grey; returns (images, s/step).
    ``lmc_weight``: LMC-SDS's corrective weight (None: the config's)."""
    cfg = load_config(ROOT / "configs" / CONFIGS[method], [
        f"system.n_particles={len(prompts)}", "system.init=grey", f"system.guidance.guidance_scale={omega}",
        f"system.optimizer.args.lr={args.lr}"])
    cfg.system.prompts = list(prompts)
    if method == "sds" and args.sds_weighting:
        cfg.system.guidance.weighting = args.sds_weighting
    if method == "lmc-sds":
        cfg.system.guidance.fixed_epsilon = fixed_epsilon
        if lmc_weight is not None:
            cfg.system.guidance.lmc_weight = lmc_weight
        if args.corrective:
            cfg.system.guidance.corrective_path = str(args.corrective)
    with tempfile.TemporaryDirectory() as tmp:
        system = ImageParticlesSystem(cfg.system, run=RunContext(Path(tmp), args.seed)).to(args.device)
    optimizer = system.configure_optimizers()
    start = time.perf_counter()
    for step in range(args.steps):
        out = system.distill_step(step)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
    images = system.decoded().cpu()   # judged and saved on the CPU: same figures on any device
    return images, (time.perf_counter() - start) / max(args.steps, 1)


def runs(methods: list[str], lmc_weights: list[float]) -> dict[str, tuple[str, float | None]]:
    """Row label → (method, LMC-SDS corrective weight; None for the other methods): LMC-SDS once
    per weight, labelled "lmc-sds" when there is one and "lmc-sds w=W" in a sweep."""
    labels: dict[str, tuple[str, float | None]] = {}
    for method in methods:
        if method != "lmc-sds":
            labels[method] = (method, None)
        elif len(lmc_weights) == 1:
            labels[method] = (method, lmc_weights[0])
        else:
            labels.update({f"lmc-sds w={w:g}": (method, w) for w in lmc_weights})
    return labels


@torch.no_grad()
def judge(images: Tensor, prompts: list[str], probe) -> dict:
    """Per-run figures: probe accuracy (shape, colour, both), foreground saturation, HF fraction."""
    logits = probe(images)
    shape_pred = [probe.cfg.shapes[i] for i in logits["shape"].argmax(-1).tolist()]
    color_pred = [probe.cfg.colors[i] for i in logits["color"].argmax(-1).tolist()]
    attrs = [prompt_attributes(p) for p in prompts]
    shape_ok = [a["shape"] == s for a, s in zip(attrs, shape_pred)]
    color_ok = [a["color"] == c for a, c in zip(attrs, color_pred)]
    return {"accuracy": statistics.fmean(s and c for s, c in zip(shape_ok, color_ok)),
            "shape_accuracy": statistics.fmean(shape_ok), "color_accuracy": statistics.fmean(color_ok),
            "saturation": nanmean(foreground_saturation(images)),
            "hf_fraction": float(high_frequency_fraction(images).mean())}


@torch.no_grad()
def pairwise_distance(features: Tensor) -> float:
    """Mean Euclidean distance between the rows of ``features`` ``[N, D]`` over i ≠ j."""
    n = features.shape[0]
    d = torch.cdist(features.float(), features.float())
    return float(d.sum() / (n * (n - 1)))


def diversity_experiment(args: argparse.Namespace, probe, lmc_weight: float) -> dict:
    """LMC-SDS, ``--diversity-runs`` particles per prompt, standard vs fixed ε (one run each, all prompts)."""
    k = args.diversity_runs
    prompts = [p for p in args.diversity_prompts for _ in range(k)]
    out: dict = {"omega": args.diversity_omega, "runs_per_prompt": k, "prompts": args.diversity_prompts,
                 "lmc_weight": lmc_weight}
    for mode, fixed in (("standard", False), ("fixed_epsilon", True)):
        images, step_time = distill(args, "lmc-sds", args.diversity_omega, prompts, fixed_epsilon=fixed,
                                    lmc_weight=lmc_weight)
        with torch.no_grad():
            feats, logits = probe.features(images), probe(images)
        per_prompt = {}
        for i, prompt in enumerate(args.diversity_prompts):   # the k runs of a prompt: distances, classes covered
            rows = slice(i * k, (i + 1) * k)
            per_prompt[prompt] = {"cosine_distance": diversity(feats[rows]),
                                  "euclidean_distance": pairwise_distance(feats[rows]),
                                  **distinct_classes({h: v[rows] for h, v in logits.items()})}
        out[mode] = {"cosine_distance": statistics.fmean(v["cosine_distance"] for v in per_prompt.values()),
                     "euclidean_distance": statistics.fmean(v["euclidean_distance"] for v in per_prompt.values()),
                     "per_prompt": per_prompt, "step_time_s": step_time}
        out[f"images_{mode}"] = images
    for key in ("cosine_distance", "euclidean_distance"):
        out[f"{key}_ratio"] = out["fixed_epsilon"][key] / max(out["standard"][key], 1e-12)
    return out


# --------------------------------------------------------------------------------------------
# Output.
# --------------------------------------------------------------------------------------------


def acceptance(summary: dict, reference: dict, div: dict | None, omegas: list[float]) -> dict:
    """The issue's acceptance checks that the measured grid allows (None where it does not)."""
    def get(method, omega, key):
        return summary.get(method, {}).get(f"{omega:g}", {}).get(key)

    checks: dict = {}
    if 7.5 in omegas and "sds" in summary and "lmc-sds" in summary:
        checks["w7.5_lmc_accuracy_above_sds"] = get("lmc-sds", 7.5, "accuracy") > get("sds", 7.5, "accuracy")
        checks["w7.5_lmc_hf_closer_to_data"] = (abs(math.log(get("lmc-sds", 7.5, "hf_ratio")))
                                                < abs(math.log(get("sds", 7.5, "hf_ratio"))))
    if 100 in omegas and "sds" in summary and "lmc-sds" in summary:
        checks["w100_sds_saturation_excess_above_lmc"] = (get("sds", 100, "saturation") - reference["saturation"]
                                                          > get("lmc-sds", 100, "saturation") - reference["saturation"])
    if div is not None:
        checks["fixed_epsilon_diversity_2x"] = div["cosine_distance_ratio"] >= 2.0
    return checks


def plot(summary: dict, reference: dict, div: dict | None, methods: list[str], omegas: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("accuracy", "probe accuracy (shape and colour)", None),
              ("saturation", "foreground saturation", reference["saturation"]),
              ("hf_ratio", "HF energy ratio (result / data)", 1.0)]
    fig, axes = plt.subplots(1, 4 if div else 3, figsize=(16 if div else 12, 3.8))
    for ax, (key, title, ref) in zip(axes, panels):
        for method in methods:
            ax.plot(omegas, [summary[method][f"{w:g}"][key] for w in omegas], "o-", label=method.upper())
        if ref is not None:
            ax.axhline(ref, color="k", ls="--", lw=1, label="data set")
        ax.set_xscale("log")
        ax.set_xticks(omegas, [f"{w:g}" for w in omegas])
        ax.set_xlabel("ω (guidance scale)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if div:
        ax = axes[3]
        vals = [div["standard"]["cosine_distance"], div["fixed_epsilon"]["cosine_distance"]]
        ax.bar(["standard ε", "fixed ε"], vals, color=["tab:gray", "tab:green"])
        ax.set_title(f"LMC-SDS diversity, {div['runs_per_prompt']} runs/prompt (ω={div['omega']:g})", fontsize=10)
        ax.set_ylabel("mean pairwise 1 − cos (probe features)")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_samples(samples: list[Tensor], div: dict | None, n_show: int, path: Path) -> None:
    """One row per (method, ω) run in the order of the table (first ``n_show`` prompts), then the
    diversity runs of the first diversity prompt: standard ε, fixed ε. Short rows are padded white."""
    from scorestudio.utils.images import save_grid

    rows = [images[:n_show] for images in samples]
    if div is not None:
        rows += [div[f"images_{mode}"][:div["runs_per_prompt"]][:n_show] for mode in ("standard", "fixed_epsilon")]
    rows = [torch.cat([r, torch.ones(n_show - len(r), *r.shape[1:])]) for r in rows]
    save_grid(torch.cat(rows), path, ncol=n_show)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--omegas", nargs="+", type=float, default=[5, 7.5, 15, 30, 100])
    parser.add_argument("--prompts-limit", type=int, default=None,
                        help="N of the 104 (shape, colour) prompts, spread over shapes and colours")
    parser.add_argument("--steps", type=int, default=120, help="optimisation steps per run")
    parser.add_argument("--lr", type=float, default=0.04, help="Adam learning rate of the latents")
    parser.add_argument("--corrective", type=Path, default=None,
                        help="b̂ψ folder for LMC-SDS (default: the one shipped with the embedded prior)")
    parser.add_argument("--lmc-weights", type=float, nargs="+", default=None,
                        help="LMC-SDS's lmc_weight (default: the config's; 1 = the paper's balance of prompt term "
                             "and corrective); several values run LMC-SDS once per weight (a tuning sweep, "
                             "rows 'lmc-sds w=W', no acceptance checks)")
    parser.add_argument("--sds-weighting", default=None, choices=["sds", "uniform", "fantasia3d"],
                        help="w(t) of the SDS runs (default: the config's, sds = 1 − ᾱ_t as DreamFusion)")
    parser.add_argument("--diversity-prompts", nargs="+", default=["a cube", "a red object", "an icon"])
    parser.add_argument("--diversity-runs", type=int, default=8, help="runs per prompt; 0 skips the experiment")
    parser.add_argument("--diversity-omega", type=float, default=7.5)
    parser.add_argument("--reference-images", type=int, default=256, help="held-out data images for the references")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="torch device of the prior and the particles (cpu, cuda)")
    parser.add_argument("--out", type=Path, default=RESULTS / "lmc.json")
    args = parser.parse_args()
    args.device = sharding.device(args)
    torch.set_num_threads(args.threads)
    start = time.time()

    prompts = all_prompts()
    if args.prompts_limit:   # stride 9 through shape-major order: consecutive colours and shapes, no repeats
        prompts = [prompts[(9 * i) % len(prompts)] for i in range(min(args.prompts_limit, len(prompts)))]
    probe = load_probe()
    from scorestudio.priors.embedded import EmbeddedPrior

    reference = data_reference(EmbeddedPrior({}), args.reference_images)
    print(f"data set: foreground saturation {reference['saturation']:.3f}, HF fraction {reference['hf_fraction']:.4f} "
          f"(VAE reconstructions {reference['vae_saturation']:.3f}, {reference['vae_hf_fraction']:.4f})", flush=True)

    config_weight = load_config(ROOT / "configs" / CONFIGS["lmc-sds"], []).system.guidance.lmc_weight
    args.lmc_weights = args.lmc_weights or [config_weight]
    labels = runs(args.methods, args.lmc_weights)
    summary: dict = {label: {} for label in labels}
    samples: dict = {}
    for label, (method, lmc_weight) in labels.items():
        for omega in args.omegas:
            images, step_time = distill(args, method, omega, prompts, lmc_weight=lmc_weight)
            row = judge(images, prompts, probe)
            row["hf_ratio"] = row["hf_fraction"] / reference["hf_fraction"]
            row["saturation_excess"] = row["saturation"] - reference["saturation"]
            row["step_time_s"] = step_time
            if lmc_weight is not None:
                row["lmc_weight"] = lmc_weight
            summary[label][f"{omega:g}"] = row
            samples[(label, omega)] = images
            print(f"{label:12s} ω={omega:<5g} acc {row['accuracy']:.3f} (shape {row['shape_accuracy']:.3f}, colour "
                  f"{row['color_accuracy']:.3f})  sat {row['saturation']:.3f} ({row['saturation_excess']:+.3f})  "
                  f"HF ratio {row['hf_ratio']:.3f}  {step_time:.2f} s/step", flush=True)

    div = (diversity_experiment(args, probe, args.lmc_weights[0] if len(args.lmc_weights) == 1 else config_weight)
           if args.diversity_runs >= 2 else None)
    if div:
        print(f"diversity (LMC-SDS ω={args.diversity_omega:g}, {args.diversity_runs} runs/prompt): 1−cos "
              f"{div['standard']['cosine_distance']:.4f} → {div['fixed_epsilon']['cosine_distance']:.4f} with fixed ε "
              f"({div['cosine_distance_ratio']:.2f}×); Euclidean {div['standard']['euclidean_distance']:.3f} → "
              f"{div['fixed_epsilon']['euclidean_distance']:.3f} ({div['euclidean_distance_ratio']:.2f}×)", flush=True)

    checks = acceptance(summary, reference, div, args.omegas)
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"args": {k: (str(v) if isinstance(v, (Path, torch.device)) else v) for k, v in vars(args).items()},
              "prompts": prompts, "reference": reference, "summary": summary,
              "diversity": {k: v for k, v in (div or {}).items() if not k.startswith("images_")} or None,
              "acceptance": checks, "minutes": (time.time() - start) / 60}
    out.write_text(json.dumps(result, indent=2))
    plot(summary, reference, div, list(labels), args.omegas, out.with_suffix(".png"))
    save_samples(list(samples.values()), div, min(12, max(len(prompts), args.diversity_runs)),
                 out.with_name(out.stem + "_samples.png"))

    print(f"\n{'method':12s} {'ω':>6s} {'acc':>6s} {'shape':>6s} {'colour':>6s} {'sat':>6s} {'HF ratio':>8s}")
    for label in labels:
        for omega in args.omegas:
            r = summary[label][f"{omega:g}"]
            print(f"{label:12s} {omega:6g} {r['accuracy']:6.3f} {r['shape_accuracy']:6.3f} {r['color_accuracy']:6.3f} "
                  f"{r['saturation']:6.3f} {r['hf_ratio']:8.3f}")
    print(f"data set saturation {reference['saturation']:.3f}; acceptance: {json.dumps(checks)}")
    print(f"wrote {out}, {out.with_suffix('.png')} and {out.with_name(out.stem + '_samples.png')} "
          f"in {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
