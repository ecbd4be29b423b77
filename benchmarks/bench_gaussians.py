"""Cost of 3D Gaussian splat particles: a training step split in phases against the NeRF generator,
and the PyTorch rasterizer's forward + backward against the number of splats and the image size.

Steps: ``configs/gaussians-embedded.yaml`` and ``configs/dreamfusion-embedded.yaml`` (the NeRF of
``make demo``) with 1 and 4 particles at the same render size, SDS + repulsion on the probe's
features as configured. Phases: ``render`` (the generator's render of the step's cameras),
``guidance`` (the guidance's losses, repulsion included), ``backward``, ``optimizer`` and
``update``: for Gaussians the densification (the screen-gradient statistics every step plus one
densify-and-prune pass per ``densify.every`` steps, amortised), for the NeRF its empty-space
mask refresh (amortised likewise). The particles are the freshly initialised ones; the systems
alternate step by step so that a busy machine slows them alike. Times are medians.

Rasterizer: K = 4 scenes × 1 view of G splats in a ball of radius 0.5 (scales from the distance
to the nearest splats, as the generator's initialisation, opacity 0.5), forward + backward of
the image sum, for each G and image size.

    python benchmarks/bench_gaussians.py                       # both parts
    python benchmarks/bench_gaussians.py --parts raster --splats 256 1024 4096 --sizes 32 64 128
    python benchmarks/bench_gaussians.py --steps 5 --threads 2 --resolution 64

The prior is the trained embedded prior when installed, else a random one of the same
architecture (``bench_nerf.prepare_prior``). Writes ``benchmarks/results/gaussians.json`` (or
``--out``) and a chart of both parts (same name, .png).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench_nerf import prepare_prior  # noqa: E402
from scorestudio.systems.dreamfusion import DreamFusionSystem  # noqa: E402
from scorestudio.utils.config import load_config  # noqa: E402
from scorestudio.utils.run import RunContext  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = {"gaussians": ROOT / "configs" / "gaussians-embedded.yaml", "nerf": ROOT / "configs" / "dreamfusion-embedded.yaml"}
PHASES = ("render", "guidance", "backward", "optimizer", "update")


def build(generator: str, overrides: list[str], workdir: Path) -> tuple[DreamFusionSystem, torch.optim.Optimizer]:
    cfg = load_config(CONFIGS[generator], overrides)
    system = DreamFusionSystem(cfg.system, run=RunContext(workdir, 0))
    optimizer = system.configure_optimizers()
    return system, optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer


def update_every(system: DreamFusionSystem) -> tuple[int, int]:
    """(a step at which the generator's periodic update runs, its period)."""
    cfg = system.generator.cfg
    if hasattr(cfg, "densify"):
        return max(cfg.densify.start, cfg.densify.every), cfg.densify.every
    return 0, cfg.renderer.occupancy.update_every


def timed_step(system: DreamFusionSystem, optimizer: torch.optim.Optimizer, step: int) -> dict[str, float]:
    """Seconds of each phase of one training step (``update``: the per-step part only)."""
    gen = system.generator
    ids = system.local_particles()
    cameras = system.training_cameras(step, ids)
    t0 = time.perf_counter()
    out = gen.render(ids, cameras, step, resolution=system.resolution_at(step), training=True)
    t1 = time.perf_counter()
    losses = system.losses(out, cameras, step)
    loss = sum(v for k, v in losses.items() if k.startswith("loss_"))
    t2 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t3 = time.perf_counter()
    optimizer.step()
    t4 = time.perf_counter()
    gen.after_optimizer_step()
    t5 = time.perf_counter()
    return dict(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)))


def timed_update(system: DreamFusionSystem) -> float:
    """Seconds of one periodic update (densify-and-prune, or the NeRF's mask refresh)."""
    step, _ = update_every(system)
    if hasattr(system.generator.cfg, "densify"):       # statistics as after a few steps: every splat seen
        system.generator.grad_sum.fill_(1.0)
        system.generator.grad_count.fill_(1.0)
    t0 = time.perf_counter()
    system.generator.update(step)
    return time.perf_counter() - t0


def measure_steps(cases: dict[str, list[str]], steps: int, workdir: Path) -> dict[str, dict]:
    """Median phase times of every case (name → overrides), the cases alternating step by step;
    ``update`` adds the periodic update amortised over its period."""
    runs = {name: build(name.split("-")[0], overrides, workdir) for name, overrides in cases.items()}
    rows: dict[str, list] = {name: [] for name in runs}
    for step in range(1, steps + 2):               # step 0 of the NeRF is the mask's first build
        for name, run in runs.items():
            times = timed_step(*run, step)
            if step > 1:
                rows[name].append(times)
    out = {}
    for name, (system, _) in runs.items():
        median = {k: statistics.median(r[k] for r in rows[name]) for k in PHASES}
        passes = [timed_update(system) for _ in range(3)]
        _, every = update_every(system)
        median["update_pass"] = statistics.median(passes)
        median["update"] += median["update_pass"] / max(every, 1)
        median["total"] = sum(median[k] for k in PHASES)
        out[name] = median
    return out


def measure_raster(splat_counts: list[int], sizes: list[int], repeats: int, tile: int) -> list[dict]:
    from scorestudio.data.cameras import cameras_from_angles
    from scorestudio.renderers.gaussians import RasterizerConfig, Splats, rasterize

    cameras = cameras_from_angles(torch.tensor([10.0, 30.0, -5.0, 50.0]), torch.tensor([0.0, 90.0, 45.0, -120.0]), 2.5, 40.0)
    rows = []
    for g in splat_counts:
        gen = torch.Generator().manual_seed(g)
        direction = torch.nn.functional.normalize(torch.randn(4, g, 3, generator=gen), dim=-1)
        means = 0.5 * direction * torch.rand(4, g, 1, generator=gen) ** (1 / 3)
        nearest = (torch.cdist(means, means) + 1e9 * torch.eye(g)).topk(3, largest=False).values
        scales = (nearest ** 2).mean(-1).sqrt()[..., None].expand(4, g, 3)
        params = [means, torch.randn(4, g, 4, generator=gen), scales.log(), torch.full((4, g), 0.5),
                  torch.rand(4, g, 3, generator=gen)]
        params = [p.clone().requires_grad_(True) for p in params]
        for size in sizes:
            cfg = RasterizerConfig(tile_size=tile)
            times = []
            for _ in range(repeats + 1):
                t0 = time.perf_counter()
                splats = Splats(params[0], params[1], params[2].exp(), params[3], params[4], torch.ones(4, g, dtype=torch.bool))
                out = rasterize(splats, cameras, size, size, torch.ones(3), cfg)
                t1 = time.perf_counter()
                (out.rgb.sum() + out.alpha.sum()).backward()
                t2 = time.perf_counter()
                times.append((t1 - t0, t2 - t1))
            fwd, bwd = (statistics.median(t[i] for t in times[1:]) for i in (0, 1))
            rows.append({"splats": g, "size": size, "forward": fwd, "backward": bwd, "total": fwd + bwd})
            print(rows[-1], flush=True)
    return rows


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in ("steps", "raster") if out.get(p)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, part in zip(axes[0], panels):
        if part == "steps":
            colors = dict(zip(PHASES, ("tab:blue", "tab:orange", "tab:green", "tab:gray", "tab:red")))
            names = list(out["steps"])
            for i, name in enumerate(names):
                bottom = 0.0
                for phase in PHASES:
                    ax.bar(i, out["steps"][name][phase], 0.6, bottom=bottom, color=colors[phase],
                           label=phase if i == 0 else None)
                    bottom += out["steps"][name][phase]
            ax.set_xticks(range(len(names)), [n.replace("-", "\n") for n in names], fontsize=8)
            ax.set_ylabel("seconds per step")
            ax.set_title(f"training step, {out['resolution']}² renders", fontsize=9)
            ax.legend(fontsize=7)
        else:
            for size in sorted({r["size"] for r in out["raster"]}):
                rows = [r for r in out["raster"] if r["size"] == size]
                ax.plot([r["splats"] for r in rows], [r["total"] for r in rows], "o-", label=f"{size}²")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("splats per scene (4 scenes)")
            ax.set_ylabel("forward + backward, s")
            ax.set_title("PyTorch rasterizer", fontsize=9)
            ax.legend(fontsize=7, title="image", title_fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{out['machine']}, {out['torch_threads']} threads, {out['prior']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["steps", "raster"], choices=["steps", "raster"])
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per case")
    parser.add_argument("--resolution", type=int, default=64, help="render size of the step comparison")
    parser.add_argument("--splats", type=int, nargs="+", default=[256, 1024, 4096], help="splats per scene (raster part)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128], help="image sizes (raster part)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per rasterizer case")
    parser.add_argument("--tile", type=int, default=4, help="tile size of the raster part")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--prior", choices=["auto", "trained", "random", "tiny"], default="auto")
    parser.add_argument("--out", default=str(RESULTS / "gaussians.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "resolution": args.resolution, "timed_steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        prior, probe, out["prior"] = prepare_prior(args.prior, Path(tmp) / "prior")
        if "steps" in args.parts:
            base = [f"system.prior.pretrained_model_name_or_path={prior}", f"system.probe_path={probe}",
                    f"system.guidance.repulsion.feature_net_path={probe}", f"system.resolutions=[{args.resolution}]",
                    "system.resolution_milestones=[]"]
            cases = {f"{g}-{n}p": [*base, f"system.n_particles={n}"] for n in (1, 4) for g in ("gaussians", "nerf")}
            out["steps"] = measure_steps(cases, args.steps, Path(tmp) / "run")
            for name, row in out["steps"].items():
                print(f"{name:14} " + " ".join(f"{k} {row[k]:.3f}" for k in (*PHASES, "total")), flush=True)
        if "raster" in args.parts:
            out["raster"] = measure_raster(args.splats, args.sizes, args.repeats, args.tile)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    plot(out, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
