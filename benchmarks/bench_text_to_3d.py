"""Text-to-3D on the embedded prior: quality and diversity of NeRF particles, judged by the probe.

Runs ``configs/dreamfusion-embedded.yaml`` (the ``make demo`` job: 4 NeRF particles, SDS + RSD
repulsion) through ``launch.py``'s ``run`` and reads the probe metrics of the test orbit
(24 frames per particle):

- quality: "a red cube" and "a blue sphere" — per particle the fraction of frames classified as
  the prompted shape and colour (target ≥ 0.8 for every particle);
- diversity: an ambiguous prompt (``--diversity-prompts``, default "a cube"), 4 particles, seeds
  0..S−1, for each γ of ``--gammas`` (0 = no repulsion) — the number of distinct colours among the
  particles (majority vote over each particle's frames), each particle's share of frames showing
  the prompted shape, and the translucent pixels.

    python benchmarks/bench_text_to_3d.py                               # 2 + 2·3 runs
    python benchmarks/bench_text_to_3d.py --steps 100 --seeds 1         # a quick look
    python benchmarks/bench_text_to_3d.py --checks quality --quality-seeds 0 1 2 \
        --overrides system.material.lambertian_prob=0.375 system.material.textureless_prob=0.375 \
        --work-dir outputs/t3d-textureless      # a variant over seeds (here threestudio's shading mix)
    python benchmarks/bench_text_to_3d.py --device cuda --shard 0/4 --out /tmp/t0.json   # see sharding.py
    python benchmarks/bench_text_to_3d.py --config gaussians-embedded.yaml --out benchmarks/results/gaussians_t3d.json
    python benchmarks/bench_text_to_3d.py --config dreamfusion-demo.yaml --checks diversity --seeds 5 \
        --gammas 0 --diversity-prompts "a cube" "a torus"     # the demo config's γ when --gammas is left out

Writes ``benchmarks/results/text_to_3d.json`` (arguments, summary, per-run rows), ``text_to_3d.md`` and
``text_to_3d_particles.png`` (the first orbit frame of every run whose folder is on this machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import sharding

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = "dreamfusion-embedded.yaml"
RUN_NAME = "dreamfusion-embedded"        # the config's name: runs are in <work dir>/<name>/<tag>
QUALITY_PROMPTS = ("a red cube", "a blue sphere")


def jobs(args: argparse.Namespace) -> list[tuple]:
    """("quality", prompt, seed) and ("diversity", prompt, γ, seed) runs (γ None: the config's)."""
    out = ([("quality", prompt, seed) for seed in args.quality_seeds for prompt in args.quality_prompts]
           if "quality" in args.checks else [])
    if "diversity" in args.checks:
        out += [("diversity", prompt, gamma, seed) for prompt in args.diversity_prompts for gamma in args.gammas
                for seed in range(args.seeds)]
    return out


def run_tag(kind: str, prompt: str, value, seed: int) -> str:
    """The tag (run folder name) of a job; ``value``: γ for a diversity run, unused for quality."""
    shown = "" if kind != "diversity" else "config" if value is None else value
    return f"{kind}-{prompt.replace(' ', '_')}-{shown}-seed{seed}"


def run_job(job: tuple, args: argparse.Namespace) -> dict:
    kind, prompt, seed = job[0], job[1], job[-1]
    value = job[2] if kind == "diversity" else prompt
    overrides = [f"system.prompt_processor.prompt={prompt}", f"seed={seed}", "system.generator.export.after_test=false"]
    if args.steps:
        overrides.append(f"trainer.max_steps={args.steps}")
    gamma = value if kind == "diversity" else args.quality_gamma   # None: the config's γ
    if gamma is not None:
        overrides.append(f"system.guidance.repulsion.gamma={gamma}")
    metrics = sharding.launch(args.config, args, run_tag(kind, prompt, value, seed), *overrides)
    n = sum(1 for k in metrics if k.endswith("/shape_fraction"))
    row = {"kind": kind, "prompt": prompt, "seed": seed, "gamma": gamma,
           "time_s": metrics["time_s"], "diversity": metrics.get("diversity"),
           "distinct_colors": metrics.get("distinct_majority_colors"),
           "distinct_shapes": metrics.get("distinct_majority_shapes"),
           "shape_fraction": [metrics.get(f"particle{i}/shape_fraction") for i in range(n)],
           "color_fraction": [metrics.get(f"particle{i}/color_fraction") for i in range(n)],
           "majority_color": [metrics.get(f"particle{i}/majority_color") for i in range(n)],
           "majority_shape": [metrics.get(f"particle{i}/majority_shape") for i in range(n)],
           "translucent_fraction": metrics.get("translucent_fraction")}
    print(json.dumps(row), flush=True)
    return row


def mean_fog(group: list[dict]) -> float | None:
    """Mean translucent-pixel fraction of the runs (None for rows measured before it existed)."""
    values = [r["translucent_fraction"] for r in group if r.get("translucent_fraction") is not None]
    return statistics.fmean(values) if values else None


def summarize(rows: list[dict]) -> dict:
    summary: dict = {"quality": {}, "diversity": {}}
    for prompt in dict.fromkeys(r["prompt"] for r in rows if r["kind"] == "quality"):
        group = [r for r in rows if r["kind"] == "quality" and r["prompt"] == prompt]
        shapes = [f for r in group for f in r["shape_fraction"]]
        colors = [f for r in group for f in r["color_fraction"]]
        summary["quality"][prompt] = {
            "min_shape_fraction": min(shapes), "min_color_fraction": min(colors),
            "particles_80": sum(min(s, c) >= 0.8 for s, c in zip(shapes, colors)), "particles": len(shapes),
            "every_particle_80": min(shapes + colors) >= 0.8, "seeds": len(group),
            "translucent_fraction": mean_fog(group),
            "time_s": statistics.fmean(r["time_s"] for r in group)}
    diverse = [r for r in rows if r["kind"] == "diversity"]
    for prompt, gamma in dict.fromkeys((r["prompt"], gamma_label(r["gamma"])) for r in diverse):
        group = [r for r in diverse if r["prompt"] == prompt and gamma_label(r["gamma"]) == gamma]
        shapes = [f for r in group for f in r["shape_fraction"] if f is not None]
        summary["diversity"][f"{prompt}|{gamma}"] = {
            "prompt": prompt, "gamma": gamma,
            "distinct_colors": statistics.fmean(r["distinct_colors"] for r in group),
            "distinct_colors_per_seed": [r["distinct_colors"] for r in group],
            "distinct_shapes": statistics.fmean(r["distinct_shapes"] for r in group),
            "diversity": statistics.fmean(r["diversity"] for r in group), "seeds": len(group),
            "min_shape_fraction": min(shapes) if shapes else None,
            "particles_shape_80": sum(f >= 0.8 for f in shapes), "particles": len(shapes),
            "translucent_fraction": mean_fog(group),
            "time_s": statistics.fmean(r["time_s"] for r in group)}
    return summary


def gamma_label(gamma) -> str:
    """γ of a diversity run as the tables show it: a number, or "config" (the config's own γ)."""
    return "config" if gamma is None else f"{gamma:g}"


def markdown(summary: dict) -> str:
    def fog(e: dict) -> str:
        return "–" if e.get("translucent_fraction") is None else f"{e['translucent_fraction']:.3f}"

    lines = []
    if summary["quality"]:
        lines += ["| prompt | seeds | min shape fraction | min colour fraction | particles ≥ 0.8 | translucent pixels | s / run |",
                  "|---|---|---|---|---|---|---|", ""]
    for prompt, e in summary["quality"].items():
        lines.insert(-1, f"| {prompt} | {e['seeds']} | {e['min_shape_fraction']:.2f} | {e['min_color_fraction']:.2f} | "
                     f"{e['particles_80']}/{e['particles']} | {fog(e)} | {e['time_s']:.0f} |")
    if summary["diversity"]:
        lines += ["| prompt, 4 particles | γ | distinct colours (per seed) | distinct shapes | diversity | "
                  "min shape fraction | particles shape ≥ 0.8 | translucent pixels | seeds |",
                  "|---|---|---|---|---|---|---|---|---|"]
    for e in summary["diversity"].values():
        shape = "–" if e.get("min_shape_fraction") is None else f"{e['min_shape_fraction']:.2f}"
        per_seed = ", ".join(map(str, e.get("distinct_colors_per_seed", [])))
        lines.append(f"| {e.get('prompt', 'a cube')} | {e.get('gamma')} | {e['distinct_colors']:.2f} ({per_seed}) | "
                     f"{e['distinct_shapes']:.2f} | {e['diversity']:.3f} | {shape} | "
                     f"{e.get('particles_shape_80', '–')}/{e.get('particles', '–')} | {fog(e)} | {e['seeds']} |")
    return "\n".join(lines) + "\n"


def orbit_sheet(rows: list[dict], work_dir: Path, path: Path, run_name: str = RUN_NAME) -> int:
    """One picture of the runs: per run (a line, labelled with its prompt, γ and seed) the first
    frame of its test orbit, particles side by side (``all.gif``). Runs whose folders are not on
    this machine (shards merged from elsewhere) are left out; returns how many are shown."""
    import imageio.v3 as iio
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = []
    for row in rows:
        value = row["gamma"] if row["kind"] == "diversity" else row["prompt"]
        save = work_dir / run_name / run_tag(row["kind"], row["prompt"], value, row["seed"]) / "save"
        gifs = sorted(save.glob("it*-test/all.gif"), key=lambda f: int(f.parent.name[2:].split("-")[0]))
        if gifs:
            label = f"{row['prompt']}, γ {gamma_label(row['gamma'])}" if row["kind"] == "diversity" else row["prompt"]
            found.append((f"{label}, seed {row['seed']}", iio.imread(gifs[-1], index=0)))
    if not found:
        return 0
    height, width = found[0][1].shape[:2]
    fig, axes = plt.subplots(len(found), 1, figsize=(2.2 * width / height, 1.9 * len(found)), squeeze=False)
    for ax, (label, frame) in zip(axes[:, 0], found):
        ax.imshow(frame)
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(found)


def gamma_arg(text: str) -> float | None:
    """A number, or ``config`` (None: the config's own γ)."""
    return None if text == "config" else float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=CONFIG, help="a text-to-3D config in configs/ whose name is its file name")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the diversity check")
    parser.add_argument("--quality-seeds", type=int, nargs="+", default=[0], help="seeds of the quality runs")
    parser.add_argument("--gammas", type=gamma_arg, nargs="+", default=[0.0, 10.0],
                        help="repulsion γ of the diversity check; 'config': the config's own (a schedule too)")
    parser.add_argument("--diversity-prompts", nargs="+", default=["a cube"], help="ambiguous prompts of the diversity check")
    parser.add_argument("--checks", nargs="+", default=["quality", "diversity"], choices=["quality", "diversity"])
    parser.add_argument("--quality-prompts", nargs="+", default=list(QUALITY_PROMPTS))
    parser.add_argument("--quality-gamma", type=float, default=None,
                        help="repulsion γ of the quality runs (default: the config's)")
    sharding.add_launch_arguments(parser, ROOT / "outputs" / "bench-text-to-3d")
    parser.add_argument("--out", default=str(RESULTS / "text_to_3d.json"))
    sharding.add_arguments(parser)
    args = parser.parse_args()
    sharding.configure_launches(args)
    rows = (sharding.merged(args.merge) if args.merge
            else sharding.run_shard(jobs(args), lambda job: run_job(job, args), args))
    summary = summarize(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "summary": summary, "rows": rows}, indent=2))
    table = markdown(summary)
    out.with_suffix(".md").write_text(table)
    sheet = out.with_name(out.stem + "_particles.png")
    shown = orbit_sheet(rows, Path(args.work_dir), sheet, Path(args.config).stem)
    print("\n" + table)
    print(f"wrote {out} and {out.with_suffix('.md')}"
          + (f", and {sheet} ({shown} of {len(rows)} runs)" if shown else " (no run folders here for a picture)"))


if __name__ == "__main__":
    main()
