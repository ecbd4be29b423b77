"""The embedded prior's acceptance figures and the costs that size every distillation loop.

Quality (on the shipped weights, held-out data of the procedural generator):
- probe accuracy (shape, colour, kind) on held-out generated images;
- VAE reconstruction PSNR on held-out images;
- DDIM (50 steps, CFG 7.5 in the prior's guidance interval, see scorestudio.solvers.ddim) samples of
  every fully specified caption, classified by the probe as the prompted shape / colour;
- coverage of ambiguous prompts: distinct colours among samples of "a cube", distinct shapes
  among samples of "a red object".
Speed (2 CPU cores): one UNet forward with CFG for batches of 4 and 16 latents, VAE
encode + backward for a batch of 4 images.

    python benchmarks/bench_prior.py [--per-caption 16] [--ambiguous 64]
    python benchmarks/bench_prior.py --coverage-cfgs 1 2 3 5 7.5 --out benchmarks/results/prior_coverage_by_cfg.json
    python benchmarks/bench_prior.py --guidance-interval 0 1 --out benchmarks/results/prior_cfg_every_step.json
    python benchmarks/bench_prior.py --coverage-interval-ends 1 0.9 0.8 0.7 0.6 0.5 0.4 \
        --out benchmarks/results/prior_coverage_by_interval.json

Writes benchmarks/results/prior.json and prior_samples.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from scorestudio.data.procedural import ALL_SHAPES, COLOR_NAMES, ProceduralConfig, ProceduralDataset, caption_for
from scorestudio.metrics.probe import load_probe
from scorestudio.priors.embedded import EmbeddedPrior
from scorestudio.solvers.ddim import ddim_sample
from scorestudio.utils.images import save_grid
from scorestudio.utils.io import write_json

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def timed(fn, repeats: int = 5) -> float:
    """Median wall time of ``fn()`` in seconds after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(prior: EmbeddedPrior) -> dict[str, float]:
    out = {}
    cond = prior.encode_text(["a red cube"])
    uncond = prior.encode_text([""])
    for n in (4, 16):
        z = torch.randn(n, prior.latent_channels, prior.latent_size, prior.latent_size)
        t = torch.full((n,), 500)
        with torch.no_grad():
            out[f"unet_cfg_forward_b{n}_s"] = timed(
                lambda: prior.predict_noise_cfg(z, t, cond.expand(n, -1, -1), uncond.expand(n, -1, -1), 7.5))
    images = torch.rand(4, 3, prior.image_size, prior.image_size)

    def encode_backward():
        x = images.clone().requires_grad_(True)
        prior.encode_images(x).sum().backward()

    out["vae_encode_backward_b4_s"] = timed(encode_backward)
    return out


@torch.no_grad()
def held_out_quality(prior: EmbeddedPrior, probe, n: int) -> dict[str, float]:
    data = ProceduralDataset(ProceduralConfig(resolution=prior.image_size), split="test")
    shape_ok = color_ok = kind_ok = 0
    psnrs = []
    for index in range(0, n, 128):
        batch = data.batch(min(128, n - index), index // 128)
        logits = probe(batch.images)
        shape_ok += int((logits["shape"].argmax(-1) == batch.shape).sum())
        color_ok += int((logits["color"].argmax(-1) == batch.color).sum())
        kind_ok += int((logits["kind"].argmax(-1) == batch.kind).sum())
        recon = prior.decode_latents(prior.encode_images(batch.images))
        mse = (recon.clamp(0, 1) - batch.images).pow(2).flatten(1).mean(1)
        psnrs += (-10 * torch.log10(mse)).tolist()
    return {"probe_shape_acc": shape_ok / n, "probe_color_acc": color_ok / n, "probe_kind_acc": kind_ok / n,
            "vae_psnr_db": statistics.fmean(psnrs), "held_out_images": n}


@torch.no_grad()
def caption_accuracy(prior: EmbeddedPrior, probe, per_caption: int, steps: int, cfg: float,
                     interval: tuple[float, float]) -> tuple[dict, list]:
    """Every (shape, colour) caption: fraction of samples the probe names as prompted."""
    rows, grids = [], []
    for shape in tqdm(ALL_SHAPES, desc="captions"):
        for color in COLOR_NAMES:
            caption = caption_for(shape, color)
            images = ddim_sample(prior, [caption] * per_caption, steps=steps, cfg=cfg, seed=0,
                                 guidance_interval=interval)
            logits = probe(images)
            rows.append({"caption": caption,
                         "shape_ok": float((logits["shape"].argmax(-1) == ALL_SHAPES.index(shape)).float().mean()),
                         "color_ok": float((logits["color"].argmax(-1) == COLOR_NAMES.index(color)).float().mean())})
            grids.append(images[0])
    summary = {"shape_acc": statistics.fmean(r["shape_ok"] for r in rows),
               "color_acc": statistics.fmean(r["color_ok"] for r in rows),
               "worst_shape": min(rows, key=lambda r: r["shape_ok"]),
               "worst_color": min(rows, key=lambda r: r["color_ok"])}
    return {**summary, "per_caption": rows}, grids


@torch.no_grad()
def ambiguous_coverage(prior: EmbeddedPrior, probe, n: int, steps: int, cfg: float,
                       interval: tuple[float, float]) -> dict:
    out = {}
    for prompt, head in (("a cube", "color"), ("a red object", "shape"), ("an icon", "shape")):
        images = ddim_sample(prior, [prompt] * n, steps=steps, cfg=cfg, seed=1, guidance_interval=interval)
        pred = probe(images)[head].argmax(-1)
        names = COLOR_NAMES if head == "color" else ALL_SHAPES
        counts = {names[i]: int((pred == i).sum()) for i in pred.unique().tolist()}
        out[prompt] = {"head": head, "distinct": len(counts), "counts": counts}
    return out


def coverage_sweep(prior: EmbeddedPrior, probe, args: argparse.Namespace, key: str,
                   settings: list[tuple[str, str, float, tuple[float, float]]]) -> None:
    """Only the ambiguous-prompt coverage, once per (swept value, label, CFG, guidance interval);
    written to ``--out`` under ``key``, keyed by the swept value."""
    coverage = {}
    for value, label, cfg, interval in settings:
        res = ambiguous_coverage(prior, probe, args.ambiguous, args.steps, cfg, interval)
        coverage[value] = res
        print(f"{label}: " + ", ".join(f"{prompt} {r['distinct']} {r['head']}s" for prompt, r in res.items()))
    write_json(Path(args.out), {"args": vars(args), key: coverage})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-caption", type=int, default=16)
    parser.add_argument("--ambiguous", type=int, default=64)
    parser.add_argument("--held-out", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--coverage-cfgs", type=float, nargs="+", default=None, metavar="CFG",
                        help="only the ambiguous-prompt coverage, at each of these CFG scales")
    parser.add_argument("--coverage-interval-ends", type=float, nargs="+", default=None, metavar="HI",
                        help="only the ambiguous-prompt coverage at --cfg, with CFG for t/T in [0, HI] for each HI")
    parser.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                        help="CFG only for LO <= t/T <= HI (default: the prior's sampling_guidance_interval)")
    parser.add_argument("--out", default=str(RESULTS / "prior.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    prior, probe = EmbeddedPrior({}), load_probe()
    args.guidance_interval = interval = tuple(args.guidance_interval or prior.sampling_guidance_interval)
    if args.coverage_cfgs:   # (swept value, printed label, CFG, interval) per setting of the coverage-only sweeps
        settings = [(f"{cfg:g}", f"CFG {cfg:g}", cfg, interval) for cfg in args.coverage_cfgs]
        coverage_sweep(prior, probe, args, "ambiguous_by_cfg", settings)
        return
    if args.coverage_interval_ends:
        settings = [(f"{hi:g}", f"CFG {args.cfg:g} for t/T <= {hi:g}", args.cfg, (0.0, hi))
                    for hi in args.coverage_interval_ends]
        coverage_sweep(prior, probe, args, "ambiguous_by_interval_end", settings)
        return
    result = {"args": vars(args), "speed": speed(prior)}
    print(json.dumps(result["speed"], indent=2))
    result["held_out"] = held_out_quality(prior, probe, args.held_out)
    print(json.dumps(result["held_out"], indent=2))
    result["ambiguous"] = ambiguous_coverage(prior, probe, args.ambiguous, args.steps, args.cfg, interval)
    print(json.dumps(result["ambiguous"], indent=2))
    result["captions"], firsts = caption_accuracy(prior, probe, args.per_caption, args.steps, args.cfg, interval)
    print(json.dumps({k: v for k, v in result["captions"].items() if k != "per_caption"}, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    save_grid(torch.stack(firsts), out.with_name("prior_samples.png"), ncol=len(COLOR_NAMES))
    print(f"wrote {out} and {out.with_name('prior_samples.png')}")


if __name__ == "__main__":
    main()
