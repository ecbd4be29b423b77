"""Inverse problems on held-out images: RLSD (γ = 0 and γ > 0), NonAug-RLSD, Hybrid-RLSD, latent RED-diff.

Each task is an RLSD config (``configs/rlsd-*.yaml``: operator and hyperparameters); each method
runs the same ``InverseSolver`` as ``launch.py``'s ``inverse`` system on M held-out procedural
images (``ProceduralDataset(split="test").batch(1, i)``, i < M) or on the images of ``--folder``,
with N particles. Reported per task and method, averaged over the images: PSNR and SSIM as the
mean over particles and as the best particle (best-of-N), the RMS measurement residual, the probe
diversity of the particles and the time per image. For phase retrieval it also counts the images
whose particles contain both the upright and the 180°-rotated solution (a particle counts as
rotated when its PSNR to the rotated ground truth beats its PSNR to the upright one).

    python benchmarks/bench_inverse.py                                        # everything (slow)
    python benchmarks/bench_inverse.py --images 5 --steps 100 --tasks box-inpaint phase-retrieval
    python benchmarks/bench_inverse.py --folder photos/ --tasks sr4 --methods rlsd-g0 latent-red-diff
    python benchmarks/bench_inverse.py --device cuda --shard 0/4 --out /tmp/inv0.json   # see sharding.py

Methods: rlsd-g0 (NonRepuls-RLSD), rlsd, rlsd-nonaug (and rlsd-nonaug-g0 without repulsion),
hybrid (first N − 1 particles interact) and latent-red-diff. The γ of the repulsive ones is the task config's, or ``--gamma`` (default 50)
where the config has γ = 0 (SR, deblurring, HDR: no repulsion in the paper).

Writes ``benchmarks/results/inverse.json`` (arguments, summary, per-image rows), ``inverse.csv``
(per-image rows) and ``inverse.md`` (the summary table), or next to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import sharding
import torch
from omegaconf import OmegaConf

from scorestudio.data.problems import build_problem
from scorestudio.metrics.restoration import evaluate, is_rotated
from scorestudio.solvers.rlsd import InverseSolver
from scorestudio.utils.config import load_config
from scorestudio.utils.registry import find

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TASKS = {  # benchmark task: its config
    "box-inpaint": "rlsd-inpaint.yaml",
    "random-inpaint": "rlsd-random-inpaint.yaml",
    "sr4": "rlsd-sr4.yaml",
    "deblur": "rlsd-deblur.yaml",
    "motion-deblur": "rlsd-motion-deblur.yaml",
    "phase-retrieval": "rlsd-phase-retrieval.yaml",
    "hdr": "rlsd-hdr.yaml",
}
DEFAULT_TASKS = ["box-inpaint", "random-inpaint", "sr4", "deblur", "phase-retrieval"]
METHODS = {  # benchmark method: (solver method, with repulsion)
    "rlsd-g0": ("rlsd", False),
    "rlsd": ("rlsd", True),
    "rlsd-nonaug": ("rlsd-nonaug", True),
    "rlsd-nonaug-g0": ("rlsd-nonaug", False),   # the phase-retrieval comparison's "without repulsion"
    "hybrid": ("hybrid", True),
    "latent-red-diff": ("latent-red-diff", False),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
COLUMNS = ("psnr_mean", "psnr_best", "ssim_mean", "ssim_best", "consistency_mean", "diversity", "time_s")


def task_config(task: str, args: argparse.Namespace):
    """The task's run config with the benchmark's prior/probe overrides."""
    overrides = []
    if args.prior:
        overrides.append(f"system.prior.pretrained_model_name_or_path={args.prior}")
    if args.probe:
        overrides += [f"system.probe_path={args.probe}", f"system.solver.repulsion.feature_net_path={args.probe}"]
    return load_config(ROOT / "configs" / TASKS[task], overrides)


def method_solver_config(cfg, method: str, default_gamma: float) -> dict:
    """The task's solver config turned into ``method`` (γ = 0 for the non-repulsive ones)."""
    solver = OmegaConf.to_container(cfg.system.solver, resolve=True)
    name, repulsive = METHODS[method]
    solver["method"] = name
    gamma = solver["repulsion"]["gamma"]
    if not repulsive:
        solver["repulsion"]["gamma"] = 0.0
    elif gamma == 0:
        solver["repulsion"]["gamma"] = default_gamma
    return solver


def sources(args: argparse.Namespace) -> list[dict]:
    """The ground truths as data-config entries: held-out procedural indices or --folder files."""
    if args.folder:
        files = sorted(p for p in Path(args.folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SystemExit(f"--folder {args.folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        return [{"image": str(p), "procedural_index": None} for p in files[: args.images]]
    return [{"image": None, "procedural_index": i} for i in range(args.images)]


def solve_one(prior, cfg, solver_cfg: dict, source: dict, args: argparse.Namespace, probe) -> dict:
    """Solve one image with one method; returns its metrics row."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.update(source)
    if "resolution" in data["operator_cfg"]:      # random-inpaint: draw the mask at the prior's size
        data["operator_cfg"]["resolution"] = prior.image_size
    problem = build_problem(data, prior.image_size)
    problem.operator.to(prior.device)
    start = time.perf_counter()
    solver = InverseSolver(solver_cfg, prior, problem.operator, problem.y.to(prior.device), args.particles,
                           seed=args.seed)
    images = solver.run(args.steps)
    if prior.device.type == "cuda":
        torch.cuda.synchronize(prior.device)
    row = {"time_s": time.perf_counter() - start, **evaluate(images, problem, probe)}
    if problem.operator.name == "phase-retrieval":
        rotated = is_rotated(images, problem.ground_truth)
        row["n_rotated"] = int(rotated.sum())
        row["both_modes"] = bool(rotated.any() and not rotated.all())
    return row


def summarize_rows(rows: list[dict]) -> dict:
    """Per task and method: the mean of every metric over images (+ the phase-retrieval mode count)."""
    summary: dict = {}
    for row in rows:
        summary.setdefault(row["task"], {}).setdefault(row["method"], []).append(row)
    for task, methods in summary.items():
        for method, group in methods.items():
            keys = [k for k in group[0] if isinstance(group[0][k], float) and k != "gamma"]
            entry = {k: statistics.fmean(r[k] for r in group) for k in keys}
            entry.update(gamma=group[0]["gamma"], images=len(group))
            if "both_modes" in group[0]:
                entry["images_with_both_modes"] = sum(r["both_modes"] for r in group)
            methods[method] = entry
    return summary


def markdown_table(summary: dict, particles: int) -> str:
    lines = [f"| task | method | γ | images | PSNR mean | PSNR best-of-{particles} | SSIM mean | "
             f"SSIM best-of-{particles} | residual | diversity | s / image | both PR modes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for task, methods in summary.items():
        for method, e in methods.items():
            modes = f"{e['images_with_both_modes']}/{e['images']}" if "images_with_both_modes" in e else ""
            gamma = e["gamma"] if isinstance(e["gamma"], list) else f"{e['gamma']:g}"   # a number or a schedule
            lines.append(f"| {task} | {method} | {gamma} | {e['images']} | {e['psnr_mean']:.2f} | {e['psnr_best']:.2f} | "
                         f"{e['ssim_mean']:.3f} | {e['ssim_best']:.3f} | {e['consistency_mean']:.4f} | "
                         f"{e.get('diversity', float('nan')):.3f} | {e['time_s']:.1f} | {modes} |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def run_jobs(args: argparse.Namespace) -> list[dict]:
    """The rows of this shard's (task, method, image) solves."""
    from scorestudio.metrics.probe import load_probe

    if args.threads:
        torch.set_num_threads(args.threads)
    device = sharding.device(args)
    probe = load_probe(args.probe).to(device)
    base = task_config(args.tasks[0], args)
    prior = find(base.system.prior_type, kind="priors")(OmegaConf.to_container(base.system.prior),
                                                        path="system.prior").to(device)
    configs = {task: task_config(task, args) for task in args.tasks}
    # Images outermost: a shard cut short still compares every task and method on the same images.
    jobs = [(task, method, index) for index in range(len(sources(args))) for task in args.tasks
            for method in args.methods]

    def run_one(job: tuple) -> dict:
        task, method, index = job
        source = sources(args)[index]
        solver_cfg = method_solver_config(configs[task], method, args.gamma)
        row = solve_one(prior, configs[task], solver_cfg, source, args, probe)
        print(f"{task:15s} {method:15s} image {index:3d}: " +
              " ".join(f"{k}={row[k]:.3f}" for k in COLUMNS if k in row), flush=True)
        return {"task": task, "method": method, "gamma": solver_cfg["repulsion"]["gamma"],
                "image": source["image"] or f"procedural-test-{source['procedural_index']}", **row}

    return sharding.run_shard(jobs, run_one, args)

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20, help="M held-out images (or the first M of --folder)")
    parser.add_argument("--folder", default=None, help="evaluate the images of this folder instead")
    parser.add_argument("--steps", type=int, default=200, help="L iterations per solve")
    parser.add_argument("--particles", type=int, default=4, help="N particles per image")
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, choices=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--gamma", type=float, default=50.0, help="γ of repulsive methods where the config has 0")
    parser.add_argument("--seed", type=int, default=0, help="particles' initialisation and noise streams")
    parser.add_argument("--prior", default=None, help="prior folder (default: the config's, the shipped one)")
    parser.add_argument("--probe", default=None, help="probe folder for metrics and repulsion (default: shipped)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=str(RESULTS / "inverse.json"))
    sharding.add_arguments(parser)
    args = parser.parse_args()
    rows = sharding.merged(args.merge) if args.merge else run_jobs(args)
    summary = summarize_rows(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "summary": summary, "rows": rows}, indent=2))
    write_csv(rows, out.with_suffix(".csv"))
    table = markdown_table(summary, args.particles)
    out.with_suffix(".md").write_text(table)
    print("\n" + table)
    print(f"wrote {out}, {out.with_suffix('.csv')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
