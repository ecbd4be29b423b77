"""Speed, memory and accuracy of the SVG rasterizer (``scorestudio.renderers.svg``).

    python benchmarks/bench_rasterizer.py [--runs 5] [--threads 1,2] [--out benchmarks/results/rasterizer.json]

For 224² / 128 paths and 512² / 256 paths, with small (radius 1–5 % of the canvas) and large
(5–25 %) random circles, blobs and stars: median wall time of the forward pass and of
forward + backward (loss = image · fixed random weights) after one warm-up run, resvg-py's time
for the same scenes (render + PNG encoding), and the peak memory of one forward + backward as the
growth of the process's peak resident set (``VmHWM`` of /proc/self/status, Linux; tracemalloc
does not see torch's allocations), in a fresh subprocess per configuration. CPU time (all
threads) is reported next to wall time: on a shared machine it is the steadier number. Then the
mean absolute error against resvg over 20 scenes at 224² and at 512². Prints a table and writes
a JSON file.

    python benchmarks/bench_rasterizer.py --strokes [--runs 5]

instead times forward + backward of a stroke-heavy 512² scene (random open 4-cubic curves, stroke
widths 2-6 px, round joins and caps, no fill; gradients to points, widths and colours) against
the same paths filled (closed, no stroke), and writes ``rasterizer_strokes.json`` and a picture
of both scenes next to ``--out``.

    python benchmarks/bench_rasterizer.py --real-files [--runs 5] [--files 6]

times real files instead: the ``--files`` most complex documents (by paths drawn) of the icon sets
in ``benchmarks/data/`` at 256 px wide: parsing (``parse_svg``), our forward, forward + backward
(to every point and colour), and resvg-py's render of the file; writes ``rasterizer_real.json``
and a picture of the most complex file (ours | resvg) next to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scorestudio.renderers.svg import (  # noqa: E402
    CAPS,
    JOINS,
    RasterizerConfig,
    Stroke,
    SvgScene,
    random_scene,
    render,
    svg_string,
)
from scorestudio.utils.images import load_image  # noqa: E402

CASES = [  # (name, size, paths, radius as a fraction of the size)
    ("224² / 128 small", 224, 128, (0.01, 0.05)),
    ("224² / 128 large", 224, 128, (0.05, 0.25)),
    ("512² / 256 small", 512, 256, (0.01, 0.05)),
    ("512² / 256 large", 512, 256, (0.05, 0.25)),
]


def case_scene(size: int, paths: int, radius: tuple[float, float], seed: int = 0):
    return random_scene(paths, size, torch.Generator().manual_seed(seed), radius=radius)


def time_render(scene, runs: int, backward: bool) -> tuple[float, float]:
    """Median wall and CPU seconds of ``runs`` renders (after one warm-up), with or without
    backward."""
    weights = torch.rand(1, 3, scene.height, scene.width, generator=torch.Generator().manual_seed(1))
    wall, cpu = [], []
    for i in range(runs + 1):
        points = scene.points.detach().requires_grad_(backward)
        fill = scene.fill.detach().requires_grad_(backward)
        start, start_cpu = time.perf_counter(), time.process_time()
        image = render(type(scene)(points, fill, scene.width, scene.height, scene.fill_rule, scene.contour))
        if backward:
            (image * weights).sum().backward()
        if i:
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def resvg_image(svg: str, folder: Path):
    import resvg_py

    png = folder / "resvg.png"
    png.write_bytes(bytes(resvg_py.svg_to_bytes(svg_string=svg, background="#ffffff")))
    return load_image(png)


def time_resvg(scene, runs: int) -> float:
    import resvg_py

    svg = svg_string(scene)
    resvg_py.svg_to_bytes(svg_string=svg)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        resvg_py.svg_to_bytes(svg_string=svg)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_mb(case_index: int) -> float:
    """Peak-RSS growth (MB) of one forward + backward, in a fresh process."""
    command = [sys.executable, __file__, "--memory-case", str(case_index), "--threads", "1"]
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def _peak_rss_mb() -> float:
    """Peak resident set of this process (VmHWM; unlike ru_maxrss, not inherited over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (the memory measurement needs Linux)")


def _memory_case(index: int) -> None:
    _, size, paths, radius = CASES[index]
    scene = case_scene(size, paths, radius)
    render(case_scene(32, 4, radius))                                   # load kernels, allocator
    before = _peak_rss_mb()
    points = scene.points.requires_grad_()
    render(type(scene)(points, scene.fill, size, size, scene.fill_rule, scene.contour)).sum().backward()
    print(_peak_rss_mb() - before)


def mae_vs_resvg(size: int, scenes: int, folder: Path) -> float:
    """Mean over scenes of the mean |ours (8 bit) − resvg| in 1/255 units (64 paths per scene)."""
    errors = []
    for seed in range(scenes):
        scene = case_scene(size, 64, (0.02, 0.2), seed=100 + seed)
        ours = (render(scene)[0] * 255).round()
        errors.append(float((ours - resvg_image(svg_string(scene), folder) * 255).abs().mean()))
    return statistics.mean(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--threads", help="comma-separated torch thread counts to time (default: 1 and "
                        "torch's default); on a loaded machine 1 thread avoids OpenMP threads spinning "
                        "against each other")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/rasterizer.json"))
    parser.add_argument("--memory-case", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--strokes", action="store_true", help="time strokes against fills instead (see above)")
    parser.add_argument("--real-files", action="store_true", help="time real files against resvg instead (see above)")
    parser.add_argument("--files", type=int, default=6, help="--real-files: how many of the most complex files")
    args = parser.parse_args()
    if args.strokes:
        strokes_vs_fills(args.runs, Path(args.out).parent)
        return
    if args.real_files:
        real_files(args.runs, args.files, Path(args.out).parent)
        return
    threads = sorted({int(t) for t in args.threads.split(",")} if args.threads else {1, torch.get_num_threads()})
    if args.memory_case is not None:
        torch.set_num_threads(threads[0])
        _memory_case(args.memory_case)
        return

    load_before = os.getloadavg()
    rows = timing_rows(threads, args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        mae = {f"{size}": mae_vs_resvg(size, 20, Path(tmp)) for size in (224, 512)}
    result = {
        "rows": rows,
        "mae_vs_resvg_255": mae,
        "mae_note": "20 scenes of 64 random circles/blobs/stars (radius 2-20 % of the size), "
                    "ours rounded to 8 bit vs resvg-py's PNG, in 1/255 units",
        "memory_note": "growth of the peak resident set (VmHWM) over one forward + backward, fresh "
                       "process, 1 thread",
        "time_note": "medians after one warm-up; *_cpu_s is process CPU time over all torch threads",
        "resvg_note": "resvg-py svg_to_bytes: parse + render + PNG encode, no gradients",
        "machine": {"cpus": os.cpu_count(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "config": vars(RasterizerConfig()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {out}")


def timing_rows(threads: list[int], runs: int) -> list[dict]:
    """One row per (case, thread count): render times, resvg time and peak memory."""
    rows = []
    for index, (name, size, paths, radius) in enumerate(CASES):
        scene = case_scene(size, paths, radius)
        resvg_s, memory = time_resvg(scene, runs), peak_memory_mb(index)
        for count in threads:
            torch.set_num_threads(count)
            forward, forward_cpu = time_render(scene, runs, backward=False)
            both, both_cpu = time_render(scene, runs, backward=True)
            rows.append({
                "case": name, "size": size, "paths": paths, "radius_fraction": list(radius),
                "threads": count, "forward_s": forward, "forward_backward_s": both,
                "forward_cpu_s": forward_cpu, "forward_backward_cpu_s": both_cpu,
                "resvg_forward_s": resvg_s, "peak_rss_mb": memory,
            })
        print(f"{name}: done", file=sys.stderr)
    return rows


def print_table(result: dict) -> None:
    print(f"{'case':<18} {'threads':>7} {'fwd s':>7} {'fwd+bwd s':>10} {'(CPU s)':>14} {'resvg s':>8} {'peak MB':>8}")
    for r in result["rows"]:
        print(f"{r['case']:<18} {r['threads']:>7} {r['forward_s']:>7.3f} {r['forward_backward_s']:>10.3f} "
              f"({r['forward_cpu_s']:.3f}/{r['forward_backward_cpu_s']:.3f}) "
              f"{r['resvg_forward_s']:>8.4f} {r['peak_rss_mb']:>8.0f}")
    mae, machine = result["mae_vs_resvg_255"], result["machine"]
    print(f"MAE vs resvg (1/255): 224² {mae['224']:.3f}, 512² {mae['512']:.3f}")
    print(f"{machine['cpus']} CPUs, load average {machine['load_average_before'][0]:.1f} → "
          f"{machine['load_average_after'][0]:.1f}")


def sketch_scenes(size: int, paths: int, seed: int = 0) -> tuple[SvgScene, SvgScene]:
    """The same random curves (4 cubics from a random walk) as open round strokes without fill,
    and as closed filled paths without stroke."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.rand(1, paths, 1, 2, generator=gen) * size
    steps = torch.randn(1, paths, 12, 2, generator=gen) * size * 0.04
    points = start + torch.cat([torch.zeros(1, paths, 1, 2), steps[:, :, :-1].cumsum(2)], 2)   # [1, P, 12, 2]
    color = torch.rand(1, paths, 4, generator=gen)
    color[..., 3] = 1.0
    width = 2 + 4 * torch.rand(1, paths, generator=gen)
    stroked = torch.tensor([True, True, True, False]).expand(paths, 4)      # the closing cubic is not drawn
    strokes = SvgScene(points, torch.zeros_like(color), size, size,
                       stroke=Stroke(color, width, stroked=stroked, join=torch.full((paths,), JOINS.index("round")),
                                     cap=torch.full((paths,), CAPS.index("round"))))
    return strokes, SvgScene(points, color, size, size)


def time_scene(make, runs: int) -> float:
    """Median wall seconds of forward + backward of the scene ``make()`` builds, after a warm-up."""
    weights = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(1))
    wall = []
    for i in range(runs + 1):
        start = time.perf_counter()
        (render(make()) * weights).sum().backward()
        if i:
            wall.append(time.perf_counter() - start)
    return statistics.median(wall)


def strokes_vs_fills(runs: int, folder: Path) -> None:
    from PIL import Image

    strokes, fills = sketch_scenes(512, 128)

    def stroked():
        pts, col, w = (t.detach().clone().requires_grad_() for t in (strokes.points, strokes.stroke.color,
                                                                      strokes.stroke.width))
        s = strokes.stroke
        return SvgScene(pts, strokes.fill, 512, 512, stroke=Stroke(col, w, stroked=s.stroked, join=s.join, cap=s.cap))

    def filled():
        pts, col = (t.detach().clone().requires_grad_() for t in (fills.points, fills.fill))
        return SvgScene(pts, col, 512, 512)

    order = [("fill", filled), ("stroke", stroked), ("stroke", stroked), ("fill", filled)]   # palindromic
    times = {"fill": [], "stroke": []}
    for name, make in order:
        times[name].append(time_scene(make, runs))
    fill_s, stroke_s = min(times["fill"]), min(times["stroke"])
    result = {"scene": "512², 128 random 4-cubic curves; strokes: open, width 2-6 px, round joins/caps, no fill; "
                       "fills: the same paths closed, no stroke",
              "fwd_bwd_fill_s": fill_s, "fwd_bwd_stroke_s": stroke_s, "ratio": stroke_s / fill_s,
              "runs": runs, "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
              "note": "best of two palindromic rounds of medians of `runs` forward+backward passes"}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rasterizer_strokes.json").write_text(json.dumps(result, indent=2) + "\n")
    with torch.no_grad():
        picture = torch.cat([render(strokes)[0], render(fills)[0]], 2)
    Image.fromarray((picture.permute(1, 2, 0) * 255).round().byte().numpy()).save(folder / "rasterizer_strokes.png")
    print(json.dumps(result, indent=2))


def median_time(fn, runs: int) -> float:
    """Median wall seconds of ``fn()`` over ``runs`` calls after a warm-up."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def real_files(runs: int, count: int, folder: Path, width: int = 256) -> None:
    import warnings

    import resvg_py
    from PIL import Image

    from scorestudio.renderers.svg.io import parse_svg

    data = ROOT / "benchmarks" / "data"
    files = sorted(p for p in [*(data / "svg").glob("*/*.svg"), *(data / "vectorize").glob("*.svg")]
                   if "resvg-tests" not in p.parts)
    sized = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            try:
                scene, _ = parse_svg(path, width)
            except ValueError:
                continue
            sized.append((scene.points.shape[1], path, scene))
    rows = []
    for paths, path, scene in sorted(sized, key=lambda item: -item[0])[:count]:
        weights = torch.rand(1, 3, scene.height, scene.width, generator=torch.Generator().manual_seed(1))

        def forward_backward(scene=scene, weights=weights):
            points, fill = scene.points.detach().requires_grad_(), scene.fill.detach().requires_grad_()
            (render(dataclasses.replace(scene, points=points, fill=fill)) * weights).sum().backward()

        with torch.no_grad():
            forward_s = median_time(lambda scene=scene: render(scene), runs)
        row = {"file": str(path.relative_to(ROOT)), "paths": paths,
               "parse_ms": 1000 * median_time(lambda path=path: parse_svg(path, width), runs),
               "forward_ms": 1000 * forward_s,
               "forward_backward_ms": 1000 * median_time(forward_backward, runs),
               "resvg_ms": 1000 * median_time(lambda path=path: resvg_py.svg_to_bytes(svg_path=str(path), width=width),
                                              runs)}
        row["forward_over_resvg"] = row["forward_ms"] / row["resvg_ms"]
        rows.append(row)
        print(f"{row['file']}: {paths} paths, parse {row['parse_ms']:.1f} ms, forward {row['forward_ms']:.1f} ms, "
              f"fwd+bwd {row['forward_backward_ms']:.1f} ms, resvg {row['resvg_ms']:.1f} ms "
              f"({row['forward_over_resvg']:.2f}x)")
    result = {"width": width, "runs": runs, "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
              "note": "medians after a warm-up; resvg: resvg-py svg_to_bytes of the file (parse + render + PNG)",
              "rows": rows}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rasterizer_real.json").write_text(json.dumps(result, indent=2) + "\n")
    top = sized and max(sized, key=lambda item: item[0])
    with torch.no_grad():
        ours = (render(top[2])[0].permute(1, 2, 0) * 255).round().byte().numpy()
    reference = np.asarray(Image.open(io.BytesIO(bytes(resvg_py.svg_to_bytes(svg_path=str(top[1]), width=width,
                                                                              background="#ffffff")))).convert("RGB"))
    Image.fromarray(np.concatenate([ours, reference], 1)).save(folder / "rasterizer_real.png")


if __name__ == "__main__":
    main()
