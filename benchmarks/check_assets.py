"""Issue 28's acceptance on trained runs: are the exported meshes upright, textured and shaded in a
real viewer, and does their colour match the renders' albedo?

    python benchmarks/check_assets.py RUN [RUN ...] [--out outputs/assets-check] [--no-test]

For each run folder (a finished ``dreamfusion-embedded`` run) it runs ``scorestudio test`` on
the run's last checkpoint with the shipped config's evaluation and export settings (turntables at
256², meshes with textures in ``save/it{step}-test[-...]/``), then for every particle:
screenshots its GLB in model-viewer (tests/test_viewer.py: headless Chromium) from the front and
checks the silhouette (taller than wide; a cone's apex at the top), that the GLB has normals and a
baseColorTexture and the OBJ ``vn`` and ``map_Kd``, that the texture's mean colour is within 10
(0-255) of the orbit's mean albedo, and that the viewer's colour class equals that of our own
front render. Prints one line per particle and writes ``check.json`` under ``--out``.
``--no-test`` checks the newest test folder and the newest folder with meshes (``--test`` or
``--export``) that the run already has.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_test(run: Path) -> tuple[Path, float]:
    """``scorestudio test`` of the run's last checkpoint with the shipped demo's evaluation and
    export settings; returns the test folder and the seconds it took."""
    import yaml

    from scorestudio.cli import parse_args, run as launch

    shipped = yaml.safe_load((ROOT / "configs" / "dreamfusion-embedded.yaml").read_text())["system"]
    e, x = shipped["evaluation"], shipped["generator"]["export"]
    overrides = [f"system.evaluation.{k}={v}" for k, v in e.items()]
    overrides += [f"system.generator.export.{k}={v}" for k, v in x.items() if k != "formats"]
    before = set((run / "save").iterdir())
    start = time.perf_counter()
    args, extra = parse_args(["--config", str(run / "configs" / "parsed.yaml"), "--test",
                              f"resume={run / 'ckpts' / 'last.ckpt'}", *overrides])
    launch(args, extra)
    seconds = time.perf_counter() - start
    new = sorted(p for p in set((run / "save").iterdir()) - before if "-test" in p.name) or \
        sorted((run / "save").glob("it*-test*"), key=lambda p: p.stat().st_mtime)
    return new[-1], seconds


def newest(run: Path, pattern: str, file: str) -> Path:
    """The most recently written ``save/<pattern>`` folder holding ``file``."""
    return max((f for f in (run / "save").glob(pattern) if (f / file).is_file()), key=lambda f: (f / file).stat().st_mtime)


def run_metrics(run: Path) -> dict:
    """metrics.json of the run updated by those of its later --test / --export, oldest first."""
    metrics: dict = {}
    for path in sorted(run.glob("metrics*.json"), key=lambda p: p.stat().st_mtime):
        metrics.update(json.loads(path.read_text()))
    return metrics


def check_particle(run: Path, folder: Path, meshes: Path, i: int, metrics: dict, out: Path, shape: str) -> dict:
    from tests.test_assets import glb_json
    from tests.test_viewer import viewer_screenshot

    from scorestudio.export.checks import color_class, foreground, mean_color, silhouette

    glb = meshes / f"particle{i}.glb"
    gltf = glb_json(glb)
    primitive = gltf["meshes"][0]["primitives"][0]
    pbr = gltf["materials"][primitive["material"]]["pbrMetallicRoughness"]
    obj, mtl = (meshes / f"particle{i}.obj").read_text(), (meshes / f"particle{i}.mtl").read_text()
    shot = viewer_screenshot(glb, out / f"{run.name}-particle{i}-viewer.png")
    facts = silhouette(foreground(shot)) or {}
    viewer_color = mean_color(shot, foreground(shot)) if facts else np.zeros(3)
    texture = np.array(metrics[f"export/particle{i}/texture_mean_rgb"])
    albedo = np.array(metrics[f"particle{i}/albedo_mean_rgb"])
    ours = ours_front(folder, i)
    return {"particle": i, "upright": facts.get("upright"), "apex_at_top": facts.get("apex_at_top"),
            "bbox_hw": [facts.get("height"), facts.get("width")],
            "normals": "NORMAL" in primitive["attributes"], "textured": "baseColorTexture" in pbr,
            "obj_vn_map_Kd": "\nvn " in obj and "map_Kd" in mtl,
            "texture_mean_rgb": texture.round(1).tolist(), "albedo_mean_rgb": albedo.round(1).tolist(),
            "texture_minus_albedo_max": float(np.abs(texture - albedo).max()),
            "viewer_color": color_class(viewer_color), "viewer_mean_rgb": viewer_color.round(1).tolist(),
            "render_color": color_class(ours), "shape": shape}


def ours_front(folder: Path, i: int) -> np.ndarray:
    """Mean colour of particle i's foreground in the first turntable frame's rgb panel."""
    from PIL import Image

    from scorestudio.export.checks import foreground, mean_color

    with Image.open(folder / f"particle{i}.gif") as gif:
        frame = np.asarray(gif.convert("RGB"))
    size = (frame.shape[1] - 2) // 3 - 2            # three panels of equal width, 2-px borders
    rgb = frame[-size - 2: -2, 2: 2 + size]           # bottom-aligned under the labels
    return mean_color(rgb, foreground(rgb))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "assets-check")
    parser.add_argument("--no-test", action="store_true", help="check the run's existing outputs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report = []
    for run in args.runs:
        folder, seconds = (newest(run, "it*-test*", "particle0.gif"), None) if args.no_test else run_test(run)
        meshes = newest(run, "it*-*", "particle0.glb")
        metrics = run_metrics(run)
        prompt = json.dumps(run.name)
        shape = "cone" if "cone" in prompt else "cylinder" if "cylinder" in prompt else "other"
        for i in range(4):
            if not (meshes / f"particle{i}.glb").is_file():
                report.append({"run": run.name, "particle": i, "missing": True})
                continue
            row = {"run": run.name, "test_folder": folder.name, "mesh_folder": meshes.name,
                   "test_seconds": seconds and round(seconds, 1),
                   **check_particle(run, folder, meshes, i, metrics, args.out, shape)}
            report.append(row)
            print(json.dumps(row))
    (args.out / "check.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
