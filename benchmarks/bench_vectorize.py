"""Vectorisation of clean icons and emoji: scorestudio's ``vectorize`` system against vtracer at
matched path counts.

The icons of ``benchmarks/data/vectorize`` (5 single-path Simple Icons, 3 Twemoji; licences in its
README) are rasterized by resvg at ``--size`` px on white. For every path budget B of ``--budgets``,
``configs/vectorize.yaml`` runs with ``system.generator.paths.num_paths=B``; vtracer (colour,
stacked, spline) runs over a grid of its speckle / colour-precision / layer-difference settings,
and the best of its SVGs holding at most B paths is kept. Both SVGs are drawn by resvg and scored
against the ground truth (PSNR); ours also by its own render. Counts: ``<path>`` elements (ours
without the background ``<rect>``, which vtracer paints as a path of its own).

    OMP_NUM_THREADS=1 flock /work/notes/heavy.lock .venv/bin/python benchmarks/bench_vectorize.py
    python benchmarks/bench_vectorize.py --icons github emoji_1f600 --budgets 4 --steps 100   # smoke run

Writes ``benchmarks/results/vectorize.json`` and ``vectorize.md`` (tables) and
``vectorize_<icon>.png`` (input | ours | vtracer | ground truth at each budget, path counts in the labels).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data" / "vectorize"
RESULTS = ROOT / "benchmarks" / "results"
ICONS = ["github", "apple", "spotify", "firefox", "x", "emoji_1f600", "emoji_1f34e", "emoji_1f42d"]
VTRACER_GRID = {"filter_speckle": [4, 16, 64, 256], "color_precision": [3, 5, 7], "layer_difference": [16, 48, 128]}


def rasterize(svg: str | Path, size: int) -> torch.Tensor:
    """resvg's rendering ``[1, 3, size, size]`` in [0, 1] of an SVG file or markup, on white."""
    import resvg_py

    from scorestudio.utils.images import load_image

    source = {"svg_path": str(svg)} if isinstance(svg, Path) else {"svg_string": svg}
    png = bytes(resvg_py.svg_to_bytes(**source, width=size, height=size, background="#ffffff"))
    with tempfile.NamedTemporaryFile(suffix=".png") as f:
        f.write(png)
        f.flush()
        return load_image(f.name)[None]


def training_render(svg: Path) -> torch.Tensor:
    """Our rasterizer's drawing ``[1, 3, H, W]`` of an SVG file with the anti-aliasing training
    uses (coverage from the distance to the nearest edge), finely flattened."""
    from scorestudio.renderers.svg import RasterizerConfig, read_svg, render

    return render(read_svg(svg), RasterizerConfig(flatten_tolerance=0.05, max_samples_per_segment=64))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10((a - b).pow(2).mean().clamp_min(1e-12)))


def count_paths(svg: str) -> int:
    return len(re.findall(r"<path\b", svg))


def source_paths(name: str) -> int:
    """Filled ``<path>`` elements of the ground-truth SVG (its clip path left out)."""
    text = (DATA / f"{name}.svg").read_text()
    text = re.sub(r"<clipPath.*?</clipPath>", "", text, flags=re.S)
    return count_paths(text)


def vtracer_best(image: torch.Tensor, truth: torch.Tensor, budget: int) -> dict:
    """The vtracer SVG of best resvg PSNR among the settings of :data:`VTRACER_GRID` with at most
    ``budget`` paths (None when none is that small)."""
    import vtracer
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((image[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(buf, format="PNG")
    best = None
    for values in itertools.product(*VTRACER_GRID.values()):
        settings = dict(zip(VTRACER_GRID, values))
        svg = vtracer.convert_raw_image_to_svg(buf.getvalue(), img_format="png", colormode="color",
                                               hierarchical="stacked", mode="spline", **settings)
        paths = count_paths(svg)
        if paths <= budget:
            render = rasterize(svg, image.shape[-1])
            score = psnr(render, truth)
            if best is None or score > best["psnr"]:
                best = {"psnr": score, "paths": paths, "settings": settings, "render": render}
    return best


def ours(image_path: Path, budget: int, args: argparse.Namespace, work: Path) -> dict:
    """One ``vectorize`` run: metrics, the SVG's path count, its resvg render and time."""
    from scorestudio.cli import parse_args, run

    tag = f"{image_path.stem}-b{budget}"
    argv = ["--config", str(ROOT / "configs" / "vectorize.yaml"), "--train", f"exp_root_dir={work}", f"tag={tag}",
            "use_timestamp=false", "trainer.enable_progress_bar=false", f"data.image={image_path}",
            f"system.generator.paths.num_paths={budget}", f"trainer.max_steps={args.steps}",
            f"system.generator.clean.add_until={int(args.steps * 0.7)}", f"seed={args.seed}", *args.overrides]
    start = time.perf_counter()
    run(*parse_args(argv))
    seconds = time.perf_counter() - start
    save = work / "vectorize" / tag / "save"
    metrics = json.loads((work / "vectorize" / tag / "metrics.json").read_text())
    svg = (save / "particle0.svg").read_text()
    from scorestudio.utils.images import load_image

    return {"metrics": metrics, "paths": count_paths(svg), "svg": save / "particle0.svg", "time_s": seconds,
            "own": load_image(save / "particle0.png")[None]}


def case_picture(name: str, truth: torch.Tensor, rows: list[dict], out: Path) -> Path:
    """input | ours | vtracer | ground truth, one line per budget, path counts in the labels."""
    from scorestudio.utils.images import save_labelled_grid

    images, labels = [], []
    for row in rows:
        images += [truth, row["ours_render"], row["vtracer_render"] if row["vtracer_render"] is not None
                   else torch.ones_like(truth), truth]
        labels += [f"input B={row['budget']}", f"ours {row['ours_paths']}p {row['ours_psnr']:.1f}dB",
                   "vtracer none" if row["vtracer_paths"] is None else
                   f"vtracer {row['vtracer_paths']}p {row['vtracer_psnr']:.1f}dB", f"truth {row['source_paths']}p"]
    save_labelled_grid(torch.cat(images), labels, out, ncol=4, title=name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--icons", nargs="+", default=ICONS)
    parser.add_argument("--budgets", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overrides", nargs="*", default=[],
                        help="extra config overrides of our runs, e.g. system.generator.clean.resvg_polish=0.1")
    parser.add_argument("--out", type=Path, default=RESULTS / "vectorize.json")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.icons:
            truth = rasterize(DATA / f"{name}.svg", args.size)
            image_path = work / f"{name}.png"
            from scorestudio.utils.images import save_image

            save_image(truth[0], image_path)
            case = []
            for budget in args.budgets:
                mine = ours(image_path, budget, args, work)
                theirs = vtracer_best(truth, truth, budget)
                ours_resvg = rasterize(mine["svg"], args.size)
                row = {"icon": name, "budget": budget, "source_paths": source_paths(name),
                       "ours_paths": mine["paths"], "ours_psnr": psnr(ours_resvg, truth),
                       "ours_psnr_own": psnr(mine["own"], truth), "ours_time_s": mine["time_s"],
                       **{k: mine["metrics"].get(f"particle0/{k}") for k in ("invisible", "off_canvas", "erasers")},
                       "vtracer_paths": theirs and theirs["paths"], "vtracer_psnr": theirs and theirs["psnr"],
                       "vtracer_settings": theirs and theirs["settings"],
                       "ours_render": ours_resvg, "vtracer_render": theirs and theirs["render"]}
                print({k: v for k, v in row.items() if not k.endswith("render")}, flush=True)
                case.append(row)
            case_picture(name, truth, case, args.out.with_name(f"{args.out.stem}_{name}.png"))
            rows += case
    for row in rows:
        row.pop("ours_render")
        row.pop("vtracer_render")
    summary = {}
    for budget in args.budgets:
        group = [r for r in rows if r["budget"] == budget]
        matched = [r for r in group if r["vtracer_psnr"] is not None]
        summary[budget] = {"ours_psnr": statistics.fmean(r["ours_psnr"] for r in group),
                           "ours_psnr_own": statistics.fmean(r["ours_psnr_own"] for r in group),
                           "ours_paths": statistics.fmean(r["ours_paths"] for r in group),
                           "vtracer_psnr_matched": statistics.fmean(r["vtracer_psnr"] for r in matched) if matched else None,
                           "ours_psnr_matched": statistics.fmean(r["ours_psnr"] for r in matched) if matched else None,
                           "vtracer_paths": statistics.fmean(r["vtracer_paths"] for r in matched) if matched else None,
                           "icons_vtracer_fits": len(matched), "icons": len(group),
                           "ours_wins": sum(r["ours_psnr"] > r["vtracer_psnr"] for r in matched)}
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                                    "rows": rows}, indent=1))
    lines = ["| budget | ours PSNR (resvg / own) | ours paths | vtracer PSNR | vtracer paths | ours better |",
             "|---|---|---|---|---|---|"]
    for budget, s in summary.items():
        vt = "—" if s["vtracer_psnr_matched"] is None else f"{s['vtracer_psnr_matched']:.2f} (ours {s['ours_psnr_matched']:.2f} on these)"
        vp = "—" if s["vtracer_paths"] is None else f"{s['vtracer_paths']:.1f}"
        lines.append(f"| ≤ {budget} | {s['ours_psnr']:.2f} / {s['ours_psnr_own']:.2f} | {s['ours_paths']:.1f} | {vt} | {vp} | "
                     f"{s['ours_wins']}/{s['icons_vtracer_fits']} |")
    lines += ["", "| icon | source paths | budget | ours paths | ours PSNR | vtracer paths | vtracer PSNR | invisible / off-canvas / erasers | time s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vt = "—" if r["vtracer_psnr"] is None else f"{r['vtracer_psnr']:.2f}"
        lines.append(f"| {r['icon']} | {r['source_paths']} | {r['budget']} | {r['ours_paths']} | {r['ours_psnr']:.2f} | "
                     f"{r['vtracer_paths'] if r['vtracer_paths'] is not None else '—'} | {vt} | "
                     f"{r['invisible']} / {r['off_canvas']} / {r['erasers']} | {r['ours_time_s']:.0f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
