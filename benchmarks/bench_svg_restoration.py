"""SVG restoration (DreamSampler §4.1) on held-out icons, and two text-to-SVG checks.

Restoration: M held-out procedural icons (the test split, ``data.procedural_index`` i < M, 64²
ground truth) are blurred (``configs/svg-restoration.yaml``'s Gaussian blur) or downsampled ×4
(bicubic, restored onto a 64² canvas), then restored by ``launch.py``'s ``svg-restoration`` system
with the DreamSampler distillation and without it (data term + Xing loss only, the paper's
ablation). Reported per operator, averaged over icons: PSNR/SSIM of the restored SVG's
rasterization against the sharp ground truth, the same for the baseline (bicubic upsampling of
the measurement; for blur the blurry image itself), the measurement residual, and the fraction
of restorations the probe classifies as the ground truth's shape and colour.

Text-to-SVG (``--t2s-config``, default ``configs/text-to-svg.yaml``): "a yellow star icon" with 4
particles (fraction classified star, yellow, both) and "an icon" with and without repulsion
(distinct probe shapes among the particles), each over ``--t2s-seeds`` seeds; the particles of
every run are stacked in ``<out>_particles.png``.

    python benchmarks/bench_svg_restoration.py                                # everything (slow)
    python benchmarks/bench_svg_restoration.py --icons 3 --steps 200 --skip-text-to-svg
    python benchmarks/bench_svg_restoration.py --prior tiny/ --probe tiny-probe/ --icons 1 --steps 3 \\
        --t2s-steps 3 --t2s-seeds 1                                           # smoke run
    python benchmarks/bench_svg_restoration.py --device cuda --shard 0/4 --out /tmp/svg0.json   # see sharding.py

Writes ``benchmarks/results/svg_restoration.json`` (arguments, summary, per-run rows) and
``svg_restoration.md`` (the tables), or next to ``--out``.

Real icons (``--real-icons``): the icons of ``benchmarks/data/vectorize`` (see
``bench_vectorize.py``) rasterized by resvg at ``--real-size``, degraded (``--real-degradation``:
the config's Gaussian blur, σ ``--real-sigma``, no noise; ×4 bicubic downsampling; or JPEG at
``--real-jpeg-quality``) and restored from that input, with and without distillation
(``--real-methods``); PSNR of the input (at canvas size), of the system's PNG, of resvg's drawing
of its SVG and of training's coverage of it against the sharp icon, paths against the source's,
invisible / off-canvas / eraser counts.
Writes ``<out>_real.json`` / ``.md`` and ``<out>_real_<icon>.png`` (``svg_restoration_real.*`` by default).

    OMP_NUM_THREADS=1 flock /work/notes/heavy.lock python benchmarks/bench_svg_restoration.py --real-icons
    ... --real-icons --real-degradation sr4 --real-size 128 --real-methods data-only dreamsampler \\
        --real-names github spotify emoji_1f600 --out /tmp/sr4.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import sharding
import torch

import scorestudio.guidance.dreamsampler  # noqa: F401  (registers "dreamsampler")
import scorestudio.systems.svg_restoration  # noqa: F401  (registers "svg-restoration")
import scorestudio.systems.text_to_svg  # noqa: F401  (registers "text-to-svg")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OPERATORS = {  # benchmark task: data overrides of configs/svg-restoration.yaml
    "blur": ["data.operator=gaussian-blur"],
    "sr4": ["data.operator=downsample", "data.scale=4"],
}
RESTORATION_COLUMNS = ("psnr_mean", "ssim_mean", "psnr_measurement", "consistency_mean",
                       "probe_shape_agreement", "probe_color_agreement", "time_s")


def jobs(args: argparse.Namespace) -> list[tuple]:
    """Every run: ("restore", task, icon, distillation), ("star", seed), ("icon", γ, seed)."""
    out = []
    if not args.skip_text_to_svg:   # the few text-to-SVG runs first, so that a cut-short shard has them
        seeds = range(args.seed, args.seed + args.t2s_seeds)
        out += [("star", seed) for seed in seeds]
        out += [("icon", gamma, seed) for gamma in (0.0, args.gamma) for seed in seeds]
    if not args.skip_restoration:   # icons outermost: every icon has both operators and both methods
        out += [("restore", task, index, method == "dreamsampler") for index in range(args.icons)
                for task in args.operators for method in args.methods]
    return out


def t2s_tag(job: tuple) -> str:
    """Run folder name of a text-to-SVG job."""
    return f"star-seed{job[1]}" if job[0] == "star" else f"icon-g{job[1]:g}-seed{job[2]}"


def particle_sheet(rows: list[dict], work_dir: Path, out: Path) -> Path | None:
    """One picture of the text-to-SVG runs: a line per check ("a yellow star icon", then "an icon"
    per γ), a run's ``particles.png`` per seed along it. None when the run folders are elsewhere
    (shards run on another machine)."""
    from scorestudio.utils.images import load_image, save_image

    lines: dict[tuple, list] = {}
    for r in sorted((r for r in rows if r["kind"] != "restore"), key=lambda r: r["job"][1:]):
        path = work_dir / "text-to-svg" / t2s_tag(tuple(r["job"])) / "save" / "particles.png"
        if not path.is_file():
            return None
        lines.setdefault(tuple(r["job"][:-1]) if r["kind"] == "icon" else ("star",), []).append(load_image(path))
    if not lines:
        return None

    def joined(images: list, dim: int) -> torch.Tensor:   # white 4 px gaps between [3, H, W] images
        gap_shape = list(images[0].shape)
        gap_shape[dim] = 4
        parts = [t for image in images for t in (image, torch.ones(gap_shape))][:-1]
        return torch.cat(parts, dim=dim)

    strips = [joined(images, 2) for images in lines.values()]
    width = max(strip.shape[-1] for strip in strips)
    strips = [torch.nn.functional.pad(strip, (0, width - strip.shape[-1]), value=1.0) for strip in strips]
    save_image(joined(strips, 1), out)
    return out


def run_job(job: tuple, args: argparse.Namespace) -> dict:
    """One run's row (``kind`` = the job's first element)."""
    if job[0] == "restore":
        _, task, index, distillation = job
        tag = f"{task}-icon{index}-{'ds' if distillation else 'dc-only'}"
        metrics = sharding.launch("svg-restoration.yaml", args, tag, *OPERATORS[task], f"data.procedural_index={index}",
                         f"system.distillation={str(distillation).lower()}", f"trainer.max_steps={args.steps}",
                         f"system.paths.num_paths={args.paths}", f"seed={args.seed}",
                         *(args.ds_overrides if distillation else []))
        row = {"kind": "restore", "task": task, "icon": index, "distillation": distillation,
               **{k: metrics[k] for k in RESTORATION_COLUMNS}, "classes": metrics.get("classes")}
        print(f"{tag:28s} " + " ".join(f"{k}={row[k]:.3f}" for k in RESTORATION_COLUMNS), flush=True)
        return row
    common = [f"trainer.max_steps={args.t2s_steps}", "system.n_particles=4"]
    if args.t2s_paths:
        common.append(f"system.paths.num_paths={args.t2s_paths}")
    if job[0] == "star":
        metrics = sharding.launch(args.t2s_config, args, t2s_tag(job), *common,
                                  "system.prompt_processor.prompt=a yellow star icon", f"seed={job[1]}")
        return {"kind": "star", "seed": job[1], "classes": metrics.get("classes", []), "quality": metrics.get("quality")}
    _, gamma, seed = job
    metrics = sharding.launch(args.t2s_config, args, t2s_tag(job), *common, f"seed={seed}",
                     "system.prompt_processor.prompt=an icon", f"system.guidance.repulsion.gamma={gamma}")
    return {"kind": "icon", "gamma": gamma, "seed": seed,
            **{k: metrics[k] for k in ("distinct_shapes", "distinct_colors", "diversity")}}


def summarize_restoration(rows: list[dict]) -> dict:
    """Per task: means over icons for "dreamsampler", "data-only" and the "baseline" measurement."""
    summary: dict = {}
    rows = [r for r in rows if r["kind"] == "restore"]
    for task in dict.fromkeys(r["task"] for r in rows):
        entry = {}
        for distillation, name in ((True, "dreamsampler"), (False, "data-only")):
            group = [r for r in rows if r["task"] == task and r["distillation"] is distillation]
            if group:   # a shard may hold one of the two
                entry[name] = {k: statistics.fmean(r[k] for r in group) for k in RESTORATION_COLUMNS}
                entry[name]["icons"] = len(group)
        measured = [r["psnr_measurement"] for r in rows if r["task"] == task]
        entry["baseline"] = {"psnr_mean": statistics.fmean(measured)}
        summary[task] = entry
    return summary


def text_to_svg_checks(rows: list[dict]) -> dict | None:
    """Star fidelity (4 particles, fractions averaged over seeds) and "an icon" diversity with/without
    repulsion over seeds."""
    stars = [r for r in rows if r["kind"] == "star"]
    if not stars:
        return None

    def fraction(test) -> float:
        return statistics.fmean(sum(map(test, r["classes"])) / max(1, len(r["classes"])) for r in stars)

    out = {"star": {"star": fraction(lambda c: c["shape"] == "star"),
                    "yellow": fraction(lambda c: c["color"] == "yellow"),
                    "star_and_yellow": fraction(lambda c: c["shape"] == "star" and c["color"] == "yellow"),
                    "star_and_yellow_per_seed": [sum(c["shape"] == "star" and c["color"] == "yellow"
                                                     for c in r["classes"]) / max(1, len(r["classes"])) for r in stars],
                    "quality": statistics.fmean(r["quality"] for r in stars), "seeds": len(stars)}}
    icons = [r for r in rows if r["kind"] == "icon"]
    for gamma in sorted({r["gamma"] for r in icons}):
        runs = [r for r in icons if r["gamma"] == gamma]
        out[f"an_icon_gamma{gamma:g}"] = {
            "distinct_shapes": statistics.fmean(r["distinct_shapes"] for r in runs),
            "distinct_colors": statistics.fmean(r["distinct_colors"] for r in runs),
            "diversity": statistics.fmean(r["diversity"] for r in runs), "seeds": len(runs)}
    return out


def markdown(summary: dict, t2s: dict | None) -> str:
    lines = ["| task | method | PSNR | SSIM | residual | probe shape | probe colour | s / run |",
             "|---|---|---|---|---|---|---|---|"] if summary else []
    for task, entry in summary.items():
        lines.append(f"| {task} | baseline ({'blurry input' if task == 'blur' else 'bicubic'}) | "
                     f"{entry['baseline']['psnr_mean']:.2f} | | | | | |")
        for name in ("data-only", "dreamsampler"):
            if name not in entry:
                continue
            e = entry[name]
            lines.append(f"| {task} | {name} | {e['psnr_mean']:.2f} | {e['ssim_mean']:.3f} | "
                         f"{e['consistency_mean']:.4f} | {e['probe_shape_agreement']:.2f} | "
                         f"{e['probe_color_agreement']:.2f} | {e['time_s']:.0f} |")
    if t2s:
        s = t2s["star"]
        lines += ["", "| text-to-svg check | value |", "|---|---|",
                  f"| \"a yellow star icon\": star / yellow / both ({s['seeds']} seeds; both per seed "
                  f"{', '.join(f'{v:.2f}' for v in s['star_and_yellow_per_seed'])}) | {s['star']:.2f} / "
                  f"{s['yellow']:.2f} / {s['star_and_yellow']:.2f} |"]
        for key, e in t2s.items():
            if key.startswith("an_icon"):
                lines.append(f"| \"an icon\" γ = {key.removeprefix('an_icon_gamma')}: distinct shapes / colours, "
                             f"diversity ({e['seeds']} seeds) | {e['distinct_shapes']:.2f} / "
                             f"{e['distinct_colors']:.2f}, {e['diversity']:.3f} |")
    return "\n".join(lines) + "\n"


def degraded(truth: torch.Tensor, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The ``--real-degradation`` of the sharp icon ``truth [1, 3, S, S]``: (input image in [0, 1],
    that input seen at canvas size (the baseline), the data overrides that restore it). "blur":
    the config's Gaussian blur (σ ``--real-sigma``); "sr4": ×4 bicubic downsampling (operator
    ``downsample``); "jpeg": the sharp icon through JPEG at ``--real-jpeg-quality`` (PIL), restored
    with a 1-px blur kernel, i.e. the identity operator."""
    import io

    import numpy as np
    from PIL import Image

    from scorestudio.data.problems import RestorationDataConfig, restoration_operator, upsampled

    if args.real_degradation == "blur":
        kernel = 2 * round(3 * args.real_sigma) + 1
        blur = restoration_operator(RestorationDataConfig(sigma=args.real_sigma, kernel_size=kernel, sigma_y=0.0))
        image = ((blur(2 * truth - 1) + 1) / 2).clamp(0, 1)
        return image, image, [f"data.sigma={args.real_sigma}", f"data.kernel_size={kernel}"]
    if args.real_degradation == "sr4":
        down = restoration_operator(RestorationDataConfig(operator="downsample", scale=4, sigma_y=0.0))
        small = down(2 * truth - 1)
        image = ((small + 1) / 2).clamp(0, 1)
        return image, upsampled(small, truth.shape[-1]), ["data.operator=downsample", "data.scale=4"]
    buf = io.BytesIO()
    pixels = (truth[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    Image.fromarray(pixels).save(buf, format="JPEG", quality=args.real_jpeg_quality)
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), np.float32) / 255
    image = torch.from_numpy(decoded).permute(2, 0, 1)[None]
    return image, image, ["data.operator=gaussian-blur", "data.kernel_size=1", "data.sigma=1.0"]


def real_icon_row(name: str, distillation: bool, args: argparse.Namespace, work: Path) -> dict:
    """Restore one degraded real icon; its row and pictures (input at canvas size, restored, truth)."""
    import bench_vectorize as vec

    from scorestudio.cli import parse_args, run
    from scorestudio.utils.images import load_image, save_image

    truth = vec.rasterize(vec.DATA / f"{name}.svg", args.real_size)
    small, blurry, data_overrides = degraded(truth, args)
    image = work / f"{name}_{args.real_degradation}.png"
    save_image(small[0], image)
    tag = f"{name}-{'ds' if distillation else 'dc-only'}"
    steps = args.real_steps
    argv = ["--config", str(ROOT / "configs" / "svg-restoration.yaml"), "--train", f"exp_root_dir={work}", f"tag={tag}",
            "use_timestamp=false", "trainer.enable_progress_bar=false", f"data.image={image}", *data_overrides,
            f"trainer.max_steps={steps}",
            f"system.distillation={str(distillation).lower()}", "system.prompt_processor.prompt=an icon",
            f"system.generator.clean.add_until={int(0.6 * steps)}", f"system.distillation_weight=[0, 1.0, 0.0, {steps // 2}]",
            f"seed={args.seed}", *args.real_overrides]
    start = time.perf_counter()
    run(*parse_args(argv))
    seconds = time.perf_counter() - start
    folder = work / "svg-restoration" / tag
    metrics = json.loads((folder / "metrics.json").read_text())
    own = load_image(folder / "save" / "particle0.png")[None]
    drawn = vec.rasterize(folder / "save" / "particle0.svg", args.real_size)
    row = {"icon": name, "distillation": distillation, "psnr_blurry": vec.psnr(blurry, truth),
           "psnr_own": vec.psnr(own, truth), "psnr_resvg": vec.psnr(drawn, truth),
           "psnr_training_aa": vec.psnr(vec.training_render(folder / "save" / "particle0.svg"), truth),
           "paths": metrics["particle0/paths"], "source_paths": vec.source_paths(name), "time_s": seconds,
           **{k: metrics[f"particle0/{k}"] for k in ("invisible", "off_canvas", "erasers", "coverage")}}
    print(f"{tag:24s} " + " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    return row, (blurry, drawn, truth)


def real_icons(args: argparse.Namespace) -> None:
    """The ``--real-icons`` benchmark (see the module docstring)."""
    import tempfile

    from scorestudio.utils.images import save_labelled_grid

    rows, out = [], Path(args.out).with_name(Path(args.out).stem + "_real.json")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.real_names:
            pictures, labels = [], []
            for method in args.real_methods:
                row, (blurry, drawn, truth) = real_icon_row(name, method == "dreamsampler", args, Path(tmp))
                rows.append(row)
                pictures += [blurry, drawn, truth]
                labels += [f"input {row['psnr_blurry']:.1f}dB", f"{method} {row['paths']}p {row['psnr_resvg']:.1f}dB",
                           f"truth {row['source_paths']}p"]
            save_labelled_grid(torch.cat(pictures), labels, out.with_name(f"{out.stem}_{name}.png"), ncol=3, title=name)
    lines = ["| method | input | PSNR (own render) | PSNR (resvg) | paths / source paths | invisible | off-canvas | erasers | s / run |",
             "|---|---|---|---|---|---|---|---|---|"]
    summary = {}
    for method in args.real_methods:
        group = [r for r in rows if r["distillation"] == (method == "dreamsampler")]
        mean = {k: statistics.fmean(r[k] for r in group) for k in ("psnr_blurry", "psnr_own", "psnr_resvg", "time_s")}
        mean.update({k: sum(r[k] for r in group) for k in ("paths", "source_paths", "invisible", "off_canvas", "erasers")})
        mean["max_path_ratio"] = max(r["paths"] / r["source_paths"] for r in group)
        summary[method] = mean
        lines.append(f"| {method} | {mean['psnr_blurry']:.2f} | {mean['psnr_own']:.2f} | {mean['psnr_resvg']:.2f} | "
                     f"{mean['paths']} / {mean['source_paths']} (max ×{mean['max_path_ratio']:.1f}) | {mean['invisible']} | "
                     f"{mean['off_canvas']} | {mean['erasers']} | {mean['time_s']:.0f} |")
    lines += ["", "| icon | method | input | training AA | own | resvg | own − resvg | paths / source | erasers |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['icon']} | {'dreamsampler' if r['distillation'] else 'data-only'} | {r['psnr_blurry']:.2f} | "
              f"{r['psnr_training_aa']:.2f} | {r['psnr_own']:.2f} | {r['psnr_resvg']:.2f} | "
              f"{r['psnr_own'] - r['psnr_resvg']:+.2f} | {r['paths']} / {r['source_paths']} | {r['erasers']} |" for r in rows]
    within = sum(abs(r["psnr_own"] - r["psnr_resvg"]) <= 0.2 for r in rows)
    lines += ["", f"|own − resvg| ≤ 0.2 dB: {within}/{len(rows)}"]
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-icons", action="store_true", help="restore blurred real icons instead (see the docstring)")
    parser.add_argument("--real-names", nargs="+", default=["github", "apple", "spotify", "firefox", "x", "emoji_1f600",
                                                            "emoji_1f34e", "emoji_1f42d"])
    parser.add_argument("--real-size", type=int, default=256)
    parser.add_argument("--real-sigma", type=float, default=3.0)
    parser.add_argument("--real-degradation", default="blur", choices=["blur", "sr4", "jpeg"],
                        help="blur (σ --real-sigma), ×4 bicubic downsampling, or JPEG at --real-jpeg-quality")
    parser.add_argument("--real-jpeg-quality", type=int, default=10)
    parser.add_argument("--real-steps", type=int, default=400)
    parser.add_argument("--real-methods", nargs="+", default=["data-only"], choices=["dreamsampler", "data-only"])
    parser.add_argument("--real-overrides", nargs="*", default=[],
                        help="extra config overrides of the real-icon runs, e.g. system.generator.clean.resvg_polish=0")
    parser.add_argument("--icons", type=int, default=10, help="M held-out icons per operator")
    parser.add_argument("--steps", type=int, default=1000, help="optimisation steps per restoration")
    parser.add_argument("--operators", nargs="+", default=list(OPERATORS), choices=list(OPERATORS))
    parser.add_argument("--paths", type=int, default=48, help="paths per restored SVG")
    parser.add_argument("--t2s-paths", type=int, default=None, help="paths per text-to-SVG particle (default: the config's)")
    parser.add_argument("--methods", nargs="+", default=["dreamsampler", "data-only"],
                        choices=["dreamsampler", "data-only"], help="restorations with and without distillation")
    parser.add_argument("--ds-overrides", nargs="*", default=[],
                        help="extra config overrides of the DreamSampler runs, e.g. system.guidance.guidance_scale=20")
    parser.add_argument("--t2s-config", default="text-to-svg.yaml",
                        help="text-to-SVG config under configs/ (e.g. text-to-svg-scratch.yaml)")
    parser.add_argument("--t2s-steps", type=int, default=500, help="steps of the text-to-SVG runs")
    parser.add_argument("--t2s-seeds", type=int, default=3, help="seeds of the text-to-SVG checks")
    parser.add_argument("--gamma", type=float, default=20.0, help="repulsion γ of the diversity check")
    parser.add_argument("--skip-restoration", action="store_true")
    parser.add_argument("--skip-text-to-svg", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    sharding.add_launch_arguments(parser, ROOT / "outputs" / "bench-svg-restoration")
    parser.add_argument("--out", default=str(RESULTS / "svg_restoration.json"))
    sharding.add_arguments(parser)
    args = parser.parse_args()
    if args.real_icons:
        return real_icons(args)
    sharding.configure_launches(args)

    rows = (sharding.merged(args.merge) if args.merge
            else sharding.run_shard(jobs(args), lambda job: run_job(job, args), args))
    summary = summarize_restoration(rows)
    t2s = text_to_svg_checks(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "summary": summary, "text_to_svg": t2s, "rows": rows}, indent=2))
    table = markdown(summary, t2s)
    out.with_suffix(".md").write_text(table)
    print("\n" + table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    sheet = particle_sheet(rows, Path(args.work_dir), out.with_name(out.stem + "_particles.png"))
    if sheet:
        print(f"wrote {sheet} (lines: \"a yellow star icon\", \"an icon\" per γ; a column per seed)")


if __name__ == "__main__":
    main()
