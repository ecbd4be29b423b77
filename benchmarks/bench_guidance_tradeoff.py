"""Diversity vs quality of repulsion on top of SDS, NFSD and VSD (RSD Fig. 3 in miniature).

For each ambiguous prompt, seed, method and γ, N particles are distilled from the embedded prior
with the image-particles system (the same code as ``launch.py``), then judged by the probe:
diversity (1 − mean pairwise cosine similarity of probe features), quality (mean probe
probability of the prompted attributes) and the number of distinct colours/shapes. DDIM
ancestral sampling (η = 1, 30 steps, same N) is the reference. Also measures the cost per step
with and without repulsion.

    python benchmarks/bench_guidance_tradeoff.py                      # the full sweep
    python benchmarks/bench_guidance_tradeoff.py --seeds 1 --steps 50 # a quick look
    python benchmarks/bench_guidance_tradeoff.py --prompts "a cube" --seeds 1 --steps 40 --gammas 0 20  # repulsion overhead
    python benchmarks/bench_guidance_tradeoff.py --features latent_probe ...   # repulsion on the distilled latent probe
    python benchmarks/bench_guidance_tradeoff.py --device cuda --shard 0/4 --out /tmp/s0.json  # see sharding.py
    python benchmarks/bench_guidance_tradeoff.py --first-seed 3 --seeds 5 --out /tmp/s34.json   # more seeds, merge later

Writes benchmarks/results/guidance_tradeoff.json, .png (diversity vs quality) and .md (tables).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import sharding
from scorestudio.guidance.repulsion import REPULSION_FEATURES
from scorestudio.metrics.attributes import probe_report
from scorestudio.metrics.probe import load_probe
from scorestudio.solvers.ddim import ddim_sample
from scorestudio.systems.image_particles import ImageParticlesSystem
from scorestudio.utils.config import load_config
from scorestudio.utils.run import RunContext

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WARMUP_STEPS = 5   # steps before the per-step timer starts


def distill(method: str, prompt: str, seed: int, gamma: float, n: int, steps: int, probe,
            device: torch.device, extra: list[str] = ()) -> dict:
    """One image-particles run; returns probe metrics and the mean time per step.

    ``extra``: further config overrides (``KEY=VALUE``), e.g. the repulsion's feature map.
    """
    overrides = [f"system.prompt_processor.prompt={prompt}", f"system.n_particles={n}",
                 f"system.guidance.repulsion.gamma={gamma}", *extra]
    cfg = load_config(ROOT / "configs" / f"image-particles-{method}.yaml", overrides)
    torch.manual_seed(seed)   # library-initialised modules (VSD's LoRA) draw from the global RNG
    with tempfile.TemporaryDirectory() as tmp:
        system = ImageParticlesSystem(cfg.system, run=RunContext(Path(tmp), seed)).to(device)
    optimizer = system.configure_optimizers()
    warmup = min(WARMUP_STEPS, steps - 1)   # untimed: lazy loads (probe, LoRA) and allocator warm-up
    for step in range(steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        out = system.distill_step(step)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    step_time = (time.perf_counter() - start) / (steps - warmup)
    images = system.decoded()
    return {**probe_report(images, prompt, probe), "step_time_s": step_time}


def ancestral(prior, prompt: str, seed: int, n: int, probe) -> dict:
    images = ddim_sample(prior, [prompt] * n, steps=30, cfg=7.5, seed=seed, eta=1.0)
    return probe_report(images, prompt, probe)


def mean_over(rows: list[dict], key: str, **match) -> float:
    vals = [r[key] for r in rows if all(r[k] == v for k, v in match.items())]
    return statistics.fmean(vals) if vals else float("nan")


def plot(rows: list[dict], methods: list[str], gammas: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method in methods:
        xs = [mean_over(rows, "diversity", method=method, gamma=g) for g in gammas]
        ys = [mean_over(rows, "quality", method=method, gamma=g) for g in gammas]
        ax.plot(xs, ys, "o-", label=method.upper())
        for g, x, y in zip(gammas, xs, ys):
            ax.annotate(f"γ={g:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot(mean_over(rows, "diversity", method="ancestral"), mean_over(rows, "quality", method="ancestral"),
            "k*", ms=12, label="DDIM ancestral (30 steps)")
    ax.set_xlabel("diversity (1 − mean pairwise cosine, probe features)")
    ax.set_ylabel("quality (probe probability of prompted attributes)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("repulsion: diversity vs quality (embedded prior)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(rows: list[dict], summary: dict) -> str:
    """The sweep's tables: means per (method, γ) with the quality change from γ = 0, the checks per
    method, and quality per prompt (where the repulsion costs it)."""
    methods = [m for m in summary if m != "ancestral"]
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"Means over prompts ({', '.join(prompts)}) and seeds {seeds[0]}–{seeds[-1]}; {len(rows)} runs.", "",
             "| method | γ | diversity | quality | Δ quality vs γ 0 (points) | colours | shapes |",
             "|---|---|---|---|---|---|---|"]
    for method in methods:
        per_gamma = summary[method]["per_gamma"]
        base = per_gamma[min(per_gamma)]["quality"]
        for g, v in per_gamma.items():
            lines.append(f"| {method} | {g:g} | {v['diversity']:.3f} | {v['quality']:.3f} | "
                         f"{100 * (v['quality'] - base):+.1f} | {v['distinct_colors']:.2f} | {v['distinct_shapes']:.2f} |")
    a = summary["ancestral"]
    lines += [f"| ancestral DDIM | – | {a['diversity']:.3f} | {a['quality']:.3f} | | "
              f"{a['distinct_colors']:.2f} | {a['distinct_shapes']:.2f} |", "",
              "| method | diversity monotone in γ | \"a cube\" colours, best γ / γ 0 |", "|---|---|---|"]
    lines += [f"| {m} | {summary[m]['diversity_monotone']} | {summary[m]['cube_colors_ratio_best']:.2f}× |" for m in methods]
    gammas = sorted({r["gamma"] for r in rows if r["method"] != "ancestral"})
    lines += ["", "Quality per prompt:", "",
              "| method | prompt | " + " | ".join(f"γ {g:g}" for g in gammas) + " |",
              "|---|---|" + "---|" * len(gammas)]
    for method in methods:
        for prompt in prompts:
            cells = [f"{mean_over(rows, 'quality', method=method, prompt=prompt, gamma=g):.3f}" for g in gammas]
            lines.append(f"| {method} | {prompt} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summarize(rows: list[dict]) -> dict:
    """Per method: means per γ, whether diversity rises with γ, "a cube" colours, repulsion overhead."""
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "ancestral"))
    gammas = sorted({r["gamma"] for r in rows if r["method"] != "ancestral"})
    summary = {}
    for method in methods:
        per_gamma = {g: {k: mean_over(rows, k, method=method, gamma=g)
                         for k in ("diversity", "quality", "distinct_colors", "distinct_shapes", "step_time_s")}
                     for g in gammas}
        diversities = [per_gamma[g]["diversity"] for g in gammas]
        cube_colors = {g: mean_over(rows, "distinct_colors", method=method, gamma=g, prompt="a cube") for g in gammas}
        base_time = per_gamma[gammas[0]]["step_time_s"]
        repulsive = gammas[1:] or [float("nan")]   # a shard may hold γ = 0 only
        rep_time = statistics.fmean(per_gamma.get(g, {}).get("step_time_s", float("nan")) for g in repulsive)
        summary[method] = {
            "per_gamma": per_gamma,
            "diversity_monotone": all(b >= a for a, b in zip(diversities, diversities[1:])),
            "cube_distinct_colors": cube_colors,
            "cube_colors_ratio_best": max(cube_colors.get(g, float("nan")) for g in repulsive)
            / max(cube_colors[gammas[0]], 1e-9),
            "repulsion_overhead": rep_time / base_time - 1.0,
        }
    summary["ancestral"] = {k: mean_over(rows, k, method="ancestral")
                            for k in ("diversity", "quality", "distinct_colors", "distinct_shapes")}
    return summary


def run_overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides of every run: ``--features`` and ``--overrides``."""
    features = [f"system.guidance.repulsion.features={args.features}"] if args.features else []
    return features + args.overrides


def sweep_jobs(args: argparse.Namespace) -> list[tuple]:
    """(method, prompt, seed, γ) of the requested sweep, plus the DDIM ancestral reference runs."""
    # Seeds outermost: a shard cut short still holds whole seeds of every method, prompt and γ.
    seeds = range(args.first_seed, args.seeds)
    jobs = [(m, p, s, float(g)) for s in seeds for m in args.methods for p in args.prompts for g in args.gammas]
    return jobs + [("ancestral", p, s, None) for s in seeds for p in args.prompts]


def run_jobs(args: argparse.Namespace) -> list[dict]:
    """The rows of this shard's runs (distillation and DDIM ancestral reference)."""
    device = sharding.device(args)
    torch.set_num_threads(args.threads)
    probe = load_probe().to(device)
    prior = None

    def run_one(job: tuple) -> dict:
        nonlocal prior
        method, prompt, seed, gamma = job
        if method == "ancestral":
            if prior is None:
                from scorestudio.priors.embedded import EmbeddedPrior

                prior = EmbeddedPrior({}).to(device)
            res = ancestral(prior, prompt, seed, args.n, probe)
        else:
            res = distill(method, prompt, seed, gamma, args.n, args.steps, probe, device, run_overrides(args))
        return {"method": method, "prompt": prompt, "seed": seed, "gamma": gamma, **res}

    return sharding.run_shard(sweep_jobs(args), run_one, args)

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", nargs="+", default=["a cube", "a red object", "an icon"])
    parser.add_argument("--methods", nargs="+", default=["sds", "nfsd", "vsd"])
    parser.add_argument("--gammas", nargs="+", type=float, default=[0, 10, 20, 30, 40])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 … SEEDS−1 (from --first-seed)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="run seeds FIRST_SEED … SEEDS−1 only: extends a sweep (merge with the default 0)")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--features", default=None, choices=REPULSION_FEATURES,
                        help="repulsion feature map (default: the configs')")
    parser.add_argument("--overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run, e.g. system.guidance.repulsion.on=clean")
    parser.add_argument("--out", default=str(RESULTS / "guidance_tradeoff.json"))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    sharding.add_arguments(parser)
    args = parser.parse_args()
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    # --merge summarises the requested sweep (prompts × methods × γ × seeds) out of the files.
    rows = sharding.merged(args.merge, jobs=sweep_jobs(args)) if args.merge else run_jobs(args)
    summary = summarize(rows)
    methods = [m for m in summary if m != "ancestral"]
    result = {"args": vars(args), "summary": summary, "rows": rows}
    out_path.write_text(json.dumps(result, indent=2))
    if methods:
        plot(rows, methods, sorted({r["gamma"] for r in rows if r["method"] != "ancestral"}),
             out_path.with_suffix(".png"))
        out_path.with_suffix(".md").write_text(markdown(rows, summary))

    print(f"\n{'method':10s} {'γ':>5s} {'diversity':>10s} {'quality':>8s} {'colours':>8s} {'shapes':>7s} {'s/step':>7s}")
    for method in methods:
        for g, v in summary[method]["per_gamma"].items():
            print(f"{method:10s} {g:5g} {v['diversity']:10.3f} {v['quality']:8.3f} {v['distinct_colors']:8.2f} "
                  f"{v['distinct_shapes']:7.2f} {v['step_time_s']:7.3f}")
        s = summary[method]
        print(f"  monotone diversity: {s['diversity_monotone']}, 'a cube' colours best/γ0: "
              f"{s['cube_colors_ratio_best']:.2f}x, repulsion overhead: {100 * s['repulsion_overhead']:.1f}%")
    a = summary["ancestral"]
    print(f"{'ancestral':10s} {'-':>5s} {a['diversity']:10.3f} {a['quality']:8.3f} {a['distinct_colors']:8.2f} {a['distinct_shapes']:7.2f}")
    print(f"wrote {out_path}, {out_path.with_suffix('.png')} and {out_path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
