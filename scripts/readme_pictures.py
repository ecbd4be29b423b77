"""Regenerate the README's pictures (docs/images/) from runs on the embedded prior, on the CPU.

    python scripts/readme_pictures.py                       # every picture (about 15 min on 2 cores)
    python scripts/readme_pictures.py --only vocabulary svg
    python scripts/readme_pictures.py --text-to-3d-run outputs/dreamfusion-demo/<run>   # reuse a run
    python scripts/readme_pictures.py --only text-to-3d --out outputs/demo --work outputs   # = make demo

Each job trains a shipped config as a user would (``scorestudio.train``), then draws a labelled
picture of what the run made: orbit views of the 3-D particles of the demo (and of the same run
without repulsion, ``text-to-3d-baseline``), the SVG particles, a restoration next to its input
and ground truth, an inpainting's particles, and the prior's vocabulary. The text-to-3D jobs also
write a turntable GIF of the particles side by side.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

import scorestudio
from scorestudio.utils.images import labelled_grid, load_image, save_image

JOBS = ("vocabulary", "text-to-3d", "text-to-3d-baseline", "svg", "restoration", "inverse", "toy")
DEMO = "dreamfusion-demo"   # the config of `make demo`
TURNTABLE_VIEWS, TURNTABLE_SIZE = 24, 128   # frames of the side-by-side turntable GIF, px per particle


def common(work: Path) -> dict:
    return {"exp_root_dir": str(work), "use_timestamp": False, "trainer__enable_progress_bar": True}


def vocabulary(out: Path, work: Path, args) -> Path:
    """One DDIM sample of the embedded prior per object and icon, each in its own colour."""
    from scorestudio.data.procedural import ALL_SHAPES, COLOR_NAMES
    from scorestudio.solvers.ddim import ddim_sample
    from scorestudio.utils.registry import find

    prior = find("embedded")({}, path="system.prior")
    prompts = [f"a {COLOR_NAMES[i % len(COLOR_NAMES)]} {shape}" + (" icon" if i >= 7 else "")
               for i, shape in enumerate(ALL_SHAPES)]
    images = ddim_sample(prior, prompts, steps=50, cfg=7.5, seed=0, guidance_interval=prior.sampling_guidance_interval)
    return save_image(labelled_grid(images, [p.removeprefix("a ") for p in prompts], ncol=7,
                                    title="What the embedded prior knows: 7 objects, 6 icons, 8 colours"),
                      out / "vocabulary.png")


def text_to_3d(out: Path, work: Path, args) -> Path:
    """The main job (``make demo``): six orbit views of each particle and a turntable GIF of the
    particles side by side."""
    run = (scorestudio.load_run(args.text_to_3d_run) if args.text_to_3d_run
           else scorestudio.train(DEMO, **common(work)))
    return orbit_pictures(run, out / "text_to_3d.png", "with repulsion")


def text_to_3d_baseline(out: Path, work: Path, args) -> Path:
    """The demo's particles trained without repulsion (γ = 0), for comparison."""
    run = (scorestudio.load_run(args.text_to_3d_baseline_run) if args.text_to_3d_baseline_run
           else scorestudio.train(DEMO, "system.guidance.repulsion.gamma=0", **common(work)))
    return orbit_pictures(run, out / "text_to_3d_no_repulsion.png", "without repulsion (gamma = 0)")


def orbit_pictures(run, path: Path, what: str) -> Path:
    """``path``: six orbit views of each of the run's particles (a row each, with its probe
    colour); ``path`` with ``_turntable.gif``: the particles side by side, turning."""
    from scorestudio.data.cameras import orbit_cameras
    from scorestudio.utils.images import save_animation

    system, e = run.system, run.system.cfg.evaluation
    frames = system.render_views(orbit_cameras(TURNTABLE_VIEWS, e.elevation, e.distance, e.fovy),
                                 TURNTABLE_SIZE)["rgb"]                     # [N, V, 3, H, W]
    n, step = frames.shape[0], TURNTABLE_VIEWS // 6
    colours = [run.metrics.get(f"particle{i}/majority_color") for i in range(n)]
    labels = [f"#{i} {colours[i] or ''}, {360 * v // TURNTABLE_VIEWS}°".replace(" ,", ",")
              for i in range(n) for v in range(0, TURNTABLE_VIEWS, step)]
    prompt = system.prompt_processor.cfg.prompt
    title = f'"{prompt}": {n} NeRF particles {what}, orbit'
    turntable = [labelled_grid(frames[:, v], [f"#{i} {colours[i] or ''}".strip() for i in range(n)], ncol=n,
                               title=f'"{prompt}", {what}') for v in range(TURNTABLE_VIEWS)]
    gif = save_animation(turntable, path.with_name(path.stem + "_turntable.gif"), fps=e.fps)
    print(f"[readme-pictures] turntable of the particles side by side: {gif}")
    return save_image(labelled_grid(frames[:, ::step].flatten(0, 1), labels, ncol=6, title=title), path)


def svg(out: Path, work: Path, args) -> Path:
    """Text-to-SVG particles of one prompt (VectorFusion start: sample, fit, prune, distil)."""
    run = scorestudio.train("text-to-svg", "system.prompt_processor.prompt=a red heart icon", **common(work))
    images = torch.stack([load_image(run.save_dir / f"particle{i}.png") for i in range(run.config.system["n_particles"])])
    return save_image(labelled_grid(images, [f"particle{i}.svg" for i in range(len(images))],
                                    title='"a red heart icon": SVG particles with repulsion'), out / "text_to_svg.png")


def restoration(out: Path, work: Path, args) -> Path:
    """A blurred held-out icon restored as an SVG, between its input and the ground truth."""
    run = scorestudio.train("svg-restoration", **common(work))
    row = [load_image(run.save_dir / name) for name in ("measurement.png", "particle0.png", "ground_truth.png")]
    size = row[1].shape[-1]
    row[0] = torch.nn.functional.interpolate(row[0][None], size=(size, size), mode="nearest")[0]
    psnr = run.metrics.get("psnr_mean")
    return save_image(labelled_grid(torch.stack(row), ["blurred input", f"restored SVG ({psnr:.1f} dB)", "ground truth"],
                                    title="SVG restoration (DreamSampler)"), out / "restoration.png")


def inverse(out: Path, work: Path, args) -> Path:
    """Box inpainting with RLSD: the measurement, the particles and the ground truth."""
    run = scorestudio.train("rlsd-inpaint", **common(work))
    picture = next(p for p in (run.save_dir / "comparison.png", run.save_dir / "grid.png") if p.is_file())
    return Path(shutil.copy(picture, out / "inverse.png"))


def toy(out: Path, work: Path, args) -> Path:
    """The paths of 2-D particles on a bimodal target, for growing repulsion γ (seconds)."""
    run = scorestudio.train("toy-particles", **common(work))
    return Path(shutil.copy(run.save_dir / "particle_paths.png", out / "toy_particles.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--work", type=Path, default=Path("outputs/readme-pictures"))
    parser.add_argument("--only", nargs="+", choices=JOBS, default=list(JOBS))
    parser.add_argument("--text-to-3d-run", help=f"an existing {DEMO} run folder to draw instead of training")
    parser.add_argument("--text-to-3d-baseline-run", help=f"an existing {DEMO} run with γ = 0 to draw instead of training")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = {"vocabulary": vocabulary, "text-to-3d": text_to_3d, "text-to-3d-baseline": text_to_3d_baseline, "svg": svg, "restoration": restoration,
            "inverse": inverse, "toy": toy}
    for name in args.only:
        start = time.perf_counter()
        path = jobs[name](args.out, args.work, args)
        print(f"[readme-pictures] {name}: wrote {path} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
