"""An exported GLB in a real glTF viewer: ``@google/model-viewer`` (tests/viewer, npm) in headless
Chromium driven by Playwright, served from 127.0.0.1. The screenshot from the front must show the
object upright (a cone: taller than wide, apex at the top) in the colour class of our own render.

Needs /usr/bin/chromium (Debian's ``chromium``; .ci/run installs it), playwright (the test
extra) and tests/viewer/node_modules (``npm ci`` there; ``make setup`` and this test run it).
Screenshots are kept under outputs/test-artefacts/.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from scorestudio.export.checks import color_class, foreground, mean_color, silhouette

ROOT = Path(__file__).resolve().parents[1]
VIEWER = ROOT / "tests" / "viewer"
MODEL_VIEWER = VIEWER / "node_modules" / "@google" / "model-viewer" / "dist" / "model-viewer.min.js"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--headless"]
ARTEFACTS = ROOT / "outputs" / "test-artefacts"


def viewer_installed() -> None:
    """Skip when Chromium is missing (it comes from apt, outside pip's reach); install the
    viewer's npm packages when they are missing."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium (apt-get install -y chromium, "
                    "as .ci/run does) to check exported meshes in a browser")
    if not MODEL_VIEWER.is_file():
        npm = shutil.which("npm")
        assert npm, "tests/viewer needs npm to install @google/model-viewer (npm ci in tests/viewer)"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=VIEWER, check=True, capture_output=True)


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """An HTTP server of ``folder`` on 127.0.0.1 at a free port; yields its base URL."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def viewer_screenshot(glb: Path, out: Path, timeout_s: float = 60) -> np.ndarray:
    """model-viewer's picture of ``glb`` from the front (tests/viewer/index.html), saved as
    ``out``: ``[H, W, 3]`` uint8."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    viewer_installed()
    site = out.parent / f".site-{out.stem}"
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    shutil.copy(VIEWER / "index.html", site / "index.html")
    shutil.copy(glb, site / "model.glb")
    (site / "node_modules").symlink_to(VIEWER / "node_modules")
    try:
        with serve(site) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 512, "height": 512})
                page.goto(f"{url}/index.html?src=model.glb")
                page.wait_for_function("document.body.dataset.state !== 'waiting'", timeout=timeout_s * 1000)
                state = page.evaluate("document.body.dataset.state")
                assert state == "loaded", f"model-viewer did not show {glb}: {state}"
                page.screenshot(path=str(out), clip={"x": 0, "y": 0, "width": 512, "height": 512},
                                timeout=timeout_s * 1000)
            finally:
                browser.close()
    finally:
        shutil.rmtree(site, ignore_errors=True)
    return np.asarray(Image.open(out).convert("RGB"))


def front_render(density_fn, albedo_fn, resolution: int = 128) -> np.ndarray:
    """Our own render of a field seen from the front (azimuth 0, elevation 0), albedo on white:
    ``[H, W, 3]`` uint8."""
    from scorestudio.data.cameras import cameras_from_angles, get_rays
    from scorestudio.renderers.nerf import VolumeRenderer

    origins, dirs = get_rays(cameras_from_angles(0.0, 0.0, 2.5, 40.0), resolution, resolution)
    origins, dirs = origins.reshape(1, -1, 3), dirs.reshape(1, -1, 3)
    renderer = VolumeRenderer({"num_samples_per_ray": 128, "estimator": "dense"}, 1, radius=1.0)
    out = renderer(lambda p, s: {"density": density_fn(p), "rgb": albedo_fn(p)}, origins, dirs)
    rgb = out["rgb"] + (1 - out["opacity"][..., None])
    return (rgb.reshape(resolution, resolution, 3).clamp(0, 1) * 255).round().byte().numpy()


def test_exported_cone_stands_upright_in_model_viewer_in_our_colour(tmp_path):
    from PIL import Image

    from scorestudio.export.mesh import ExportConfig, extract_meshes, save_mesh, texture_mesh
    from tests.test_assets import cone_density

    viewer_installed()

    def albedo(points):
        return torch.tensor([0.75, 0.12, 0.1]).expand(*points.shape[:-1], 3)

    cfg = ExportConfig(resolution=48, texture_size=128, formats=["glb"])
    ((mesh, _),) = extract_meshes(cone_density, lambda p, ids: albedo(p), 1, 1.0, cfg)
    save_mesh(mesh, tmp_path / "cone", ["glb"], textured=texture_mesh(mesh, lambda p, n: albedo(p), cfg))
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shot = viewer_screenshot(tmp_path / "cone.glb", ARTEFACTS / "viewer-cone.png")
    ours = front_render(cone_density, albedo)
    Image.fromarray(ours).save(ARTEFACTS / "viewer-cone-ours.png")

    for name, image in (("model-viewer", shot), ("our render", ours)):
        mask = foreground(image)
        facts = silhouette(mask)
        assert facts is not None, f"{name}: nothing but background"
        assert facts["upright"] and facts["apex_at_top"], f"{name}: not an upright cone: {facts}"
    assert color_class(mean_color(shot, foreground(shot))) == color_class(mean_color(ours, foreground(ours))) == "red"
