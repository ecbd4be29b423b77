"""The web app (``scorestudio ui``) in a real browser: Debian's Chromium driven by Playwright.

The app runs as ``python -m scorestudio ui`` on a free local port over a temporary outputs folder.
The page warns about a prompt the embedded prior cannot draw, launches a short image-particles run
and shows its progress, result pictures and metrics;
a 3-D run made from the command line opens in the run browser with its GLB in the 3-D viewer;
malformed uploads get a message and the server stays up. Screenshots go to
outputs/test-artefacts/ui-*.png, with ui-timings.json (seconds from the click on Run to the first
progress the page shows).

Needs /usr/bin/chromium (Debian's ``chromium``: .ci/run installs it, and so does this test when it
runs as root with apt), playwright and gradio (the test extra).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# SwiftShader: WebGL (the 3-D viewer) without a GPU.
CHROMIUM_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--headless"]
ARTEFACTS = ROOT / "outputs" / "test-artefacts"
# A 3-D run small enough for a test: 1 particle, 2 steps at 16², a 4-view orbit, a 16³ mesh.
TINY_3D = ["system.n_particles=1", "trainer.max_steps=2", "trainer.val_check_interval=2",
           "checkpoint.every_n_train_steps=2", "system.resolutions=[16]", "system.resolution_milestones=[]",
           "system.generator.renderer.num_samples_per_ray=12", "system.generator.geometry.grid.resolution=12",
           "system.generator.geometry.grid.n_features=4", "system.generator.renderer.occupancy.resolution=16",
           "system.generator.material.ambient_only_steps=1", "system.evaluation.resolution=32",
           "system.evaluation.n_views=4", "system.generator.export.resolution=16", "trainer.enable_progress_bar=false"]


def chromium() -> Path:
    """Debian's Chromium, installed with apt when missing and this test may (root); else skip."""
    if not CHROMIUM.is_file() and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
                       shell=True, capture_output=True, timeout=900)
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} and it could not be installed here: apt-get install -y chromium "
                    "(as .ci/run does) to test the web app in a browser")
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 150) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert process.poll() is None, f"scorestudio ui exited with {process.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"scorestudio ui did not answer at {url} in {timeout_s} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """``(url, outputs, process, three_d)``: the app serving a fresh outputs folder, and the
    command-line 3-D run started beside it (``Popen``; its folder is outputs/3d/tiny3d)."""
    pytest.importorskip("playwright", reason="the test extra installs playwright")
    chromium()
    outputs = tmp_path_factory.mktemp("ui") / "outputs"
    outputs.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    logs = outputs.parent
    three_d = subprocess.Popen(
        [sys.executable, "-m", "scorestudio", "train", "--config", "dreamfusion-embedded", f"exp_root_dir={outputs}",
         "name=3d", "tag=tiny3d", "use_timestamp=false", *TINY_3D],
        stdout=open(logs / "3d.log", "wb"), stderr=subprocess.STDOUT, env=env, cwd=logs)
    port = free_port()
    server_log = logs / "server.log"
    server = subprocess.Popen([sys.executable, "-m", "scorestudio", "ui", "--port", str(port), "--outputs",
                               str(outputs), "--threads", "1"], stdout=open(server_log, "wb"), stderr=subprocess.STDOUT,
                              env=env, cwd=logs)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url, server, server_log)
        yield url, outputs, server, three_d
    finally:
        for process in (server, three_d):
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(server_log, ARTEFACTS / "ui-server.log")


@pytest.fixture(scope="module")
def browser(app):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, url: str, tab: str):
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(url)
    page.get_by_role("tab", name=tab).click()
    return page


def set_number(page, elem: str, value) -> None:
    field = page.locator(f"#{elem} input")
    field.fill(str(value))
    field.press("Tab")


def shot(page, name: str) -> Path:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / f"ui-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def record(key: str, seconds: float) -> None:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / "ui-timings.json"
    timings = json.loads(path.read_text()) if path.is_file() else {}
    timings[key] = round(seconds, 2)
    path.write_text(json.dumps(timings, indent=1) + "\n")


def png(width: int, height: int, rows: bytes) -> bytes:
    """A PNG file of 8-bit RGB ``width`` × ``height`` whose IDAT compresses ``rows``."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


RED = png(32, 32, b"".join(b"\x00" + bytes([200, 30, 30]) * 32 for _ in range(32)))
MALFORMED = {   # file name: (content, what the message says)
    "truncated.png": (RED[: len(RED) // 2], "truncated"),
    "bomb.png": (png(20000, 20000, b"\x00" * 64), "decompression bomb"),
    "notes.png": (b"just some text, not a picture\n" * 10, "not a PNG or JPEG"),
}


# ---- without a browser -------------------------------------------------------------------------
def test_uploads_are_checked_before_decoding_and_rewritten_as_the_apps_own_png(tmp_path):
    from PIL import Image

    from scorestudio.ui.uploads import UploadError, prepare_image

    for name, (data, expected) in MALFORMED.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UploadError, match=expected):
            prepare_image(tmp_path / name, 64, tmp_path / "uploads")
    wide = tmp_path / "wide.png"
    Image.new("RGBA", (60, 30), (0, 0, 255, 0)).save(wide)
    out = prepare_image(wide, 16, tmp_path / "uploads")
    with Image.open(out) as image:
        assert (image.size, image.mode, image.getpixel((8, 8))) == ((16, 16), "RGB", (255, 255, 255))
    assert out.parent == tmp_path / "uploads" and out.name != "wide.png"


def test_no_name_from_the_browser_reaches_outside_the_run_folders(tmp_path):
    from scorestudio.ui.runs import find_runs, inside, run_folder

    root = tmp_path / "outputs"
    run = root / "job" / "run@1"
    (run / "configs").mkdir(parents=True)
    (run / "configs" / "parsed.yaml").write_text("system_type: toy-particles\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("no")
    (run / "save").mkdir()
    (run / "save" / "link.png").symlink_to(secret)
    (root / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    assert run_folder(root, "job/run@1") == run.resolve()
    for name in ("", "/etc", "..", "../outputs/job/run@1", "job/../../", "job", "elsewhere", str(run), "job/run@1\x00"):
        assert run_folder(root, name) is None, name
    assert inside(root, run / "save" / "link.png") is None and inside(root, secret) is None
    assert find_runs(root) == [run]


def test_settings_become_config_keys_with_checked_values(tmp_path):
    from scorestudio.ui.tasks import TASKS, build_config

    task = TASKS["image-particles"]
    cfg = build_config(task, "image-particles-sds", {"prompt": " a red cube ", "particles": 2.0, "steps": 4,
                                                     "preview": 9, "prior": "embedded"}, tmp_path)
    assert (cfg.system.prompt_processor.prompt, cfg.system.n_particles, cfg.trainer.max_steps,
            cfg.trainer.val_check_interval, cfg.exp_root_dir) == ("a red cube", 2, 4, 4, str(tmp_path))
    for values, expected in (({"prompt": "${oc.env:HOME}"}, "interpolation"), ({"particles": 0}, "between"),
                             ({"steps": 2.5}, "whole number"), ({"gamma": "nan"}, "between"),
                             ({"prior": "../weights"}, "one of")):
        with pytest.raises(ValueError, match=expected):
            build_config(task, "image-particles-sds", values, tmp_path)
    with pytest.raises(ValueError, match="one of"):
        build_config(task, "../../configs/evil", {}, tmp_path)


def test_progress_is_read_from_the_runs_own_output():
    from scorestudio.ui.jobs import Job

    job = Job(1, "x", ["train"], Path("log"))
    job.parse("[scorestudio] run folder: /o/image-particles/a@1\nEpoch 0:   0%|   | 0/4 [00:00<?, ?it/s]"
              "\rEpoch 0:  50%|█  | 2/4 [00:00<00:00,  4.61it/s, v_num=1, train/loss_sds=296.0, train/t=968.0]"
              "\rValidation DataLoader 0: 100%|███| 1/1 [00:00<00:00,  3.44it/s]")
    assert (job.folder, job.step, job.total, job.rate) == (Path("/o/image-particles/a@1"), 2, 4, "4.61it/s")
    assert job.losses == {"train/loss_sds": 296.0, "train/t": 968.0} and job.first_step_at is not None
    job.parse("Training: |          | 5/? [00:00<00:00, 15.75it/s, v_num=4604, train/loss_sds=97.20, train/t=723.0]")
    assert (job.step, job.total, job.history[5]["train/loss_sds"]) == (5, 4, 97.2)   # a resumed run's bar


def test_the_run_browser_lists_runs_newest_first_and_filters_by_system_and_prompt(tmp_path):
    """Run folders anywhere under outputs/ (CLI and batch runs alike), described from their
    parsed.yaml and metrics; filters by system and by text in the prompt or the folder's name."""
    import yaml

    from scorestudio.ui.runs import browse, matching

    def make(name, system, prompt, step=None, checkpoint=False, age=0):
        folder = tmp_path / name
        (folder / "configs").mkdir(parents=True)
        cfg = {"system_type": system, "trainer": {"max_steps": 10}, "system": {"prompt_processor": {"prompt": prompt}}}
        (folder / "configs" / "parsed.yaml").write_text(yaml.safe_dump(cfg))
        if step is not None:
            (folder / "metrics.json").write_text(json.dumps({"step": step}))
        if checkpoint:
            (folder / "ckpts").mkdir()
            (folder / "ckpts" / "last.ckpt").write_bytes(b"")
        stamp = time.time() - age
        for path in [*folder.rglob("*"), folder]:
            os.utime(path, (stamp, stamp))

    make("dreamfusion/a_red_cube@1", "dreamfusion", "a red cube", step=10, age=30)
    make("batch/a_blue_sphere-s0", "dreamfusion", "a blue sphere", checkpoint=True, age=20)
    make("text-to-svg/a_star@2", "text-to-svg", "a star icon", age=10)
    runs = browse(tmp_path)
    assert [r.name for r in runs] == ["text-to-svg/a_star@2", "batch/a_blue_sphere-s0", "dreamfusion/a_red_cube@1"]
    assert [r.status for r in runs] == ["incomplete", "stopped (resumable)", "finished"]
    assert [r.name for r in matching(runs, system="dreamfusion")] == ["batch/a_blue_sphere-s0", "dreamfusion/a_red_cube@1"]
    assert [r.name for r in matching(runs, text="SPHERE")] == ["batch/a_blue_sphere-s0"]
    assert [r.name for r in matching(runs, system="text-to-svg", text="cube")] == []
    assert [r.name for r in matching(runs, text="batch/")] == ["batch/a_blue_sphere-s0"]


def test_a_cancelled_job_keeps_its_checkpoint_and_resumes_from_it(tmp_path):
    """The queue's cancel stops a run with SIGTERM (exit 143, ckpts/last.ckpt at the step it had
    reached); resume continues that run folder from there, and its bar counts on from that step."""
    from scorestudio.ui.jobs import EXIT_CANCELLED, JobQueue, Launcher
    from scorestudio.utils.checkpoint import load_checkpoint

    queue = JobQueue(Launcher(threads=1, cold=True), tmp_path / "logs", poll_s=0.1)

    def run_until_step(job, least: int):
        deadline = time.time() + 120
        while job.step < least and job.active and time.time() < deadline:
            time.sleep(0.1)
        assert job.step >= least, (job.status, job_log(job))
        assert queue.cancel(job.id).startswith(f"job {job.id}: stopping")
        while job.active and time.time() < deadline:
            time.sleep(0.1)
        assert (job.status, job.returncode) == ("cancelled", EXIT_CANCELLED), job_log(job)
        return load_checkpoint(job.folder / "ckpts" / "last.ckpt")["global_step"]

    def job_log(job):
        return job.log.read_text(errors="replace")[-2000:]

    try:
        first = queue.submit("toy", ["train", "--config", str(ROOT / "configs" / "toy-particles.yaml"),
                                     f"exp_root_dir={tmp_path}", "tag=cancel", "use_timestamp=false",
                                     "trainer.max_steps=1000000", "trainer.val_check_interval=0"])
        stopped_at = run_until_step(first, 20)
        resumed = queue.resume(first.folder, "toy, resumed")
        again_at = run_until_step(resumed, stopped_at + 20)
    finally:
        queue.shutdown(timeout_s=30)
    assert stopped_at >= 20 and again_at >= stopped_at + 20
    assert resumed.folder == first.folder


# ---- in the browser ----------------------------------------------------------------------------
def test_a_run_from_the_page_shows_progress_then_its_pictures_and_metrics(app, browser):
    url, outputs, server, _ = app
    page = open_page(browser, url, "Image particles")
    prompt, warning = page.locator("#image-particles-prompt textarea"), page.locator("#image-particles-warning")
    assert "cylinder" in page.locator("#image-particles-vocabulary").inner_text()   # the embedded prior's words
    prompt.fill("a hamburger")
    warning.filter(has_text="'a hamburger' names none of them").wait_for(timeout=60_000)
    shot(page, "vocabulary-warning")
    prompt.fill("a red cube")
    page.wait_for_function("!document.querySelector('#image-particles-warning').innerText.includes('names none')",
                           timeout=60_000)
    for elem, value in (("particles", 2), ("steps", 4), ("preview", 2)):
        set_number(page, f"image-particles-{elem}", value)
    # the settings reach the config before "run" is clicked (on a loaded machine the click could overtake them)
    page.locator("#image-particles-yaml").filter(has_text="max_steps: 4").wait_for(timeout=30_000)
    clicked = time.time()
    page.locator("#image-particles-run").click()
    progress = page.locator("#job-progress")
    progress.filter(has_text=re.compile(r"step [1-9]\d*/")).wait_for(timeout=60_000)
    record("click_to_first_progress_s", time.time() - clicked)
    progress.filter(has_text="finished").wait_for(timeout=90_000)
    title = page.locator("#results-title h3")
    title.wait_for(timeout=20_000)
    run = outputs / title.inner_text().strip()
    assert (run / "configs" / "parsed.yaml").is_file() and (run / "metrics.json").is_file(), run
    assert json.loads((run / "metrics.json").read_text())["step"] == 4
    pictures = page.locator("#results-pictures img")
    pictures.first.wait_for(timeout=20_000)
    page.wait_for_function("[...document.querySelectorAll('#results-pictures img')].some(i => i.naturalWidth > 0)",
                           timeout=20_000)
    metrics = page.locator("#results-metrics")
    metrics.filter(has_text="quality").wait_for(timeout=20_000)
    assert "diversity" in metrics.inner_text()
    shot(page, "image-particles")
    assert server.poll() is None


def test_malformed_uploads_get_a_message_and_the_server_stays_up(app, browser, tmp_path):
    url, outputs, server, _ = app
    page = open_page(browser, url, "SVG restoration")
    upload = page.locator("#svg-restoration-upload input[type=file]")
    note = page.locator("#svg-restoration-upload-message")
    for name, (data, expected) in MALFORMED.items():
        path = tmp_path / name
        path.write_bytes(data)
        upload.set_input_files(str(path))
        note.filter(has_text=expected).wait_for(timeout=30_000)
        assert "⚠" in note.inner_text()
        assert "Traceback" not in page.content()
        page.screenshot(path=str(ARTEFACTS / f"ui-upload-{path.stem}.png"))
        page.locator("#svg-restoration-upload button[aria-label='Clear']").first.click()
    (tmp_path / "icon.png").write_bytes(RED)
    upload.set_input_files(str(tmp_path / "icon.png"))
    note.filter(has_text="accepted").wait_for(timeout=30_000)
    page.locator("#svg-restoration-upload-preview img").wait_for(timeout=30_000)
    deadline = time.time() + 90   # the config shown (and saved) now names the app's copy of the upload
    while not any("/ui/uploads/" in p.read_text() for p in (outputs / "ui" / "configs").glob("svg-restoration-*")):
        assert time.time() < deadline, ("no svg-restoration config names the accepted upload; the page says: "
                                        + page.locator("#svg-restoration-message").inner_text())
        time.sleep(0.5)
    assert "Traceback" not in page.content()
    assert server.poll() is None
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
    shot(page, "upload-accepted")


def test_a_3d_run_from_the_command_line_opens_with_its_glb_in_the_viewer(app, browser):
    from PIL import Image
    import numpy as np

    url, outputs, server, three_d = app
    assert three_d.wait(timeout=300) == 0, (outputs.parent / "3d.log").read_text()[-3000:]
    page = open_page(browser, url, "Runs")
    page.locator("#runs-refresh").click()
    page.locator("#runs-table").filter(has_text="3d/tiny3d").wait_for(timeout=20_000)
    pick = page.locator("#runs-pick input")
    pick.click()
    page.get_by_role("option", name="3d/tiny3d", exact=False).first.click()
    # the choice reaches the server before "open" is clicked (on a loaded machine the click could overtake it)
    page.wait_for_function("document.querySelector('#runs-pick input').value.includes('3d/tiny3d')",
                           timeout=30_000)
    page.wait_for_timeout(500)
    with page.expect_response(lambda r: r.url.endswith(".glb") and r.status == 200, timeout=120_000):
        page.locator("#runs-open").click()
    canvas = page.locator("#results-model canvas")
    canvas.wait_for(timeout=30_000)
    page.wait_for_timeout(3000)   # the viewer draws the model after the file loaded
    canvas.scroll_into_view_if_needed()
    path = ARTEFACTS / "ui-model3d.png"
    canvas.screenshot(path=str(path))
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    drawn = (np.abs(pixels - 255).sum(-1) > 60).mean()
    assert drawn > 0.005, f"the 3-D viewer shows nothing but background ({drawn:.4f} of its pixels differ)"
    assert page.locator("#results-turntables img").count() >= 1
    shot(page, "3d-run")
    assert server.poll() is None
