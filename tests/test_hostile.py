"""Hostile inputs and faults: crafted and broken checkpoints, each with its exact outcome."""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scorestudio.cli import parse_args, run
from scorestudio.utils.checkpoint import load_checkpoint
from scorestudio.utils.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "configs" / "toy-particles.yaml")
SMALL = ["system.n_realizations=16", "system.gammas=[0,10]", "trainer.enable_progress_bar=false",
         "trainer.val_check_interval=0", "use_timestamp=false"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


class _Touch:
    """Unpickling this calls ``os.system("touch <marker>")``: what a crafted checkpoint can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted_checkpoint(folder: Path, legacy: bool = False) -> tuple[Path, Path]:
    """A ``last.ckpt`` whose unpickling would create ``marker``; (checkpoint, marker).
    ``legacy``: a plain pickle instead of torch's zip format."""
    marker = folder / "pwned"
    ckpt = folder / "evil" / "ckpts" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    state = {"state_dict": {"particles": _Touch(marker)}, "global_step": 1}
    if legacy:
        ckpt.write_bytes(pickle.dumps(state, protocol=2))   # torch.save's legacy format pickles with 2
    else:
        torch.save(state, ckpt)
    return ckpt, marker


@pytest.mark.parametrize("mode", ["--train", "--test"])
def test_crafted_checkpoint_given_as_resume_runs_nothing(tmp_path, mode, capsys):
    """launch.py's main in-process (a crafted pickle would run its code in this process as well)."""
    from scorestudio.tools.launch import main

    ckpt, marker = crafted_checkpoint(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["--config", TOY, mode, f"exp_root_dir={tmp_path / 'out'}", *SMALL, "trainer.max_steps=2",
              f"resume={ckpt}"])
    stderr = capsys.readouterr().err
    assert stop.value.code == 2, stderr
    assert (f"scorestudio: error: resume={ckpt}: refused to load: it would import and call posix.system, "
            "which no checkpoint needs (unpickling it could run arbitrary code)") in stderr
    assert "Traceback" not in stderr
    assert not marker.exists()
    # nothing written: neither in the checkpoint's run folder nor under exp_root_dir
    assert sorted(p.name for p in ckpt.parent.parent.iterdir()) == ["ckpts"]
    assert not (tmp_path / "out").exists()


def test_crafted_legacy_pickle_and_export_run_nothing(tmp_path):
    ckpt, marker = crafted_checkpoint(tmp_path, legacy=True)
    for mode in ("train", "export"):
        args, extra = parse_args(["--config", TOY, f"--{mode}", f"exp_root_dir={tmp_path / 'out'}", *SMALL,
                                  f"resume={ckpt}"])
        with pytest.raises(ConfigError, match=r"refused to load: it would import and call posix.system"):
            run(args, extra)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_broken_checkpoints_are_one_clear_error(tmp_path):
    """Truncated, random, empty and foreign files: one ConfigError naming the file and what is
    wrong, raised before a run folder is made."""
    args, extra = parse_args(["--config", TOY, "--train", f"exp_root_dir={tmp_path}", *SMALL, "trainer.max_steps=2",
                              "tag=good"])
    good = run(args, extra).root / "ckpts" / "last.ckpt"
    data = good.read_bytes()
    cases = {
        "truncated": (data[: len(data) // 2], "truncated, corrupt or not a PyTorch checkpoint"),
        "random": (random.Random(0).randbytes(4096), "truncated, corrupt or not a PyTorch checkpoint"),
        "empty": (b"", "truncated, corrupt or not a PyTorch checkpoint"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.ckpt"
        path.write_bytes(content)
        with pytest.raises(ConfigError, match=rf"^resume={path}: {message}"):
            load_checkpoint(path, key="resume")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match=r"list.pt: holds a list, not a checkpoint"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "weights.pt")
    with pytest.raises(ConfigError, match=r"weights.pt: not a checkpoint of this kind: no 'state_dict' in it "
                                          r"\(it has 'weights'\)"):
        load_checkpoint(tmp_path / "weights.pt", require=("state_dict",))
    with pytest.raises(ConfigError, match=r"missing.ckpt: checkpoint file not found"):
        load_checkpoint(tmp_path / "missing.ckpt")
    before = sorted(p.name for p in (tmp_path / "toy-particles").iterdir())
    for name in ("truncated", "random", "list"):
        path = tmp_path / (f"{name}.pt" if name == "list" else f"{name}.ckpt")
        args, extra = parse_args(["--config", TOY, "--train", f"exp_root_dir={tmp_path}", *SMALL, f"tag={name}",
                                  f"resume={path}"])
        with pytest.raises(ConfigError, match=rf"^resume={path}: "):
            run(args, extra)
    assert sorted(p.name for p in (tmp_path / "toy-particles").iterdir()) == before


def test_a_checkpoint_the_project_writes_loads_safely(tmp_path):
    """weights_only loading takes every key of a toy run's checkpoint (Lightning's loops,
    optimizer and scheduler states, the system's name)."""
    args, extra = parse_args(["--config", TOY, "--train", f"exp_root_dir={tmp_path}", *SMALL, "trainer.max_steps=2"])
    ckpt = load_checkpoint(run(args, extra).root / "ckpts" / "last.ckpt", require=("state_dict", "optimizer_states"))
    assert ckpt["global_step"] == 2 and ckpt["scorestudio_system"] == "toy-particles"


def test_crafted_training_command_checkpoint_runs_nothing(tmp_path):
    """The trainers' ``ckpt.pt`` (scorestudio train-prior / train-corrective / ...) loads safely too."""
    from scorestudio.tools.training import StageRun

    marker = tmp_path / "pwned"
    torch.save({"model": _Touch(marker), "optimizer": {}, "step": 1}, tmp_path / "ckpt.pt")
    net = torch.nn.Linear(2, 2)
    stage = StageRun(tmp_path, net, torch.optim.SGD(net.parameters(), lr=0.1))
    with pytest.raises(SystemExit, match=rf"{tmp_path / 'ckpt.pt'}: refused to load: it would import and call"):
        stage.load()
    assert not marker.exists()


def train(tmp_path: Path, *overrides: str):
    args, extra = parse_args(["--config", TOY, "--train", f"exp_root_dir={tmp_path}", *SMALL, *overrides])
    return run(args, extra)


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    from datetime import datetime

    from scorestudio.utils.run import ExperimentConfig, RunContext, run_dir_for

    now = datetime(2030, 1, 2, 3, 4, 5)
    cfg = ExperimentConfig(system_type="toy-particles", exp_root_dir=str(tmp_path), tag="same")
    runs = [RunContext(run_dir_for(cfg, now)) for _ in range(3)]
    assert len({r.root for r in runs}) == 1
    for r in runs:
        r.prepare({"seed": 0})
    base = tmp_path / "default" / "same@20300102-030405"
    assert [r.root for r in runs] == [base, base.with_name(base.name + "-1"), base.with_name(base.name + "-2")]
    assert all((r.root / "configs" / "parsed.yaml").is_file() and (r.root / "ckpts").is_dir() for r in runs)


def test_claiming_a_folder_is_exclusive_under_concurrency(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from scorestudio.utils.run import claim_folder

    with ThreadPoolExecutor(8) as pool:
        claimed = list(pool.map(lambda _: claim_folder(tmp_path / "x" / "run"), range(16)))
    assert len(set(claimed)) == 16
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == sorted(["run"] + [f"run-{k}" for k in range(1, 16)])


def test_a_new_run_never_writes_into_an_earlier_runs_folder(tmp_path):
    """use_timestamp=false: a second run of the same tag gets ``tag-1``; the first run's
    checkpoint and metrics stay as they were; resuming the first returns to its folder."""
    first = train(tmp_path, "trainer.max_steps=2", "tag=same").root
    second = train(tmp_path, "trainer.max_steps=3", "tag=same").root
    assert (first.name, second.name) == ("same", "same-1")
    assert json.loads((first / "metrics.json").read_text())["step"] == 2
    assert json.loads((second / "metrics.json").read_text())["step"] == 3
    assert load_checkpoint(first / "ckpts" / "last.ckpt")["global_step"] == 2
    resumed = train(tmp_path, "trainer.max_steps=4", "tag=same", f"resume={first / 'ckpts' / 'last.ckpt'}").root
    assert resumed == first and load_checkpoint(first / "ckpts" / "last.ckpt")["global_step"] == 4
    assert json.loads((first / "metrics.json").read_text())["step"] == 4
    assert sorted(p.name for p in first.parent.iterdir()) == ["same", "same-1"]


def test_a_long_chinese_prompt_is_cut_by_bytes(tmp_path):
    from scorestudio.utils.run import TAG_MAX_BYTES, _safe_tag

    prompt = "一只红色的立方体" * 12 + "猫猫猫猫"   # 100 characters, 300 bytes of UTF-8
    assert len(prompt) == 100
    tag = _safe_tag(prompt)
    assert len(tag.encode()) == TAG_MAX_BYTES == 120 and prompt.startswith(tag)
    assert _safe_tag("ab" + "é" * 100).encode() == ("ab" + "é" * 59).encode()   # 2 + 59·2 bytes: é never split
    root = train(tmp_path, "trainer.max_steps=1", f"tag={prompt}", "use_timestamp=true").root
    assert root.name.startswith(tag + "@") and (root / "ckpts" / "last.ckpt").is_file()


def _toy_fault(monkeypatch, at_step: int, fault: str) -> None:
    """Make toy-particles fail at ``at_step``: ``raise`` an error, or turn its particles to ``nan``."""
    from scorestudio.systems.toy_particles import ToyParticlesSystem

    step = ToyParticlesSystem.training_step

    def faulty(self, batch, batch_idx):
        if self.global_step == at_step:
            if fault == "raise":
                raise RuntimeError("injected failure")
            with torch.no_grad():
                self.particles.fill_(float("nan"))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(ToyParticlesSystem, "training_step", faulty)


def test_a_failing_run_keeps_its_last_good_checkpoint(tmp_path, monkeypatch):
    """An exception at step 5 saves the failing state to crash.ckpt; last.ckpt stays at step 4
    and resumes."""
    _toy_fault(monkeypatch, 5, "raise")
    with pytest.raises(RuntimeError, match="injected failure"):
        train(tmp_path, "trainer.max_steps=10", "checkpoint.every_n_train_steps=2", "tag=failing")
    ckpts = tmp_path / "toy-particles" / "failing" / "ckpts"
    assert sorted(p.name for p in ckpts.iterdir()) == ["crash.ckpt", "last.ckpt"]
    assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == 4
    assert load_checkpoint(ckpts / "crash.ckpt")["global_step"] == 5
    monkeypatch.undo()
    train(tmp_path, "trainer.max_steps=6", "tag=failing", f"resume={ckpts / 'last.ckpt'}")
    assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == 6


def test_a_nonfinite_state_never_replaces_last_ckpt(tmp_path, monkeypatch):
    """Particles turned NaN at step 5: the save of step 6 goes to crash.ckpt, and the run stops
    there (trainer.on_nonfinite=stop: NaN parameters never recover)."""
    from scorestudio.utils.divergence import DivergenceError

    _toy_fault(monkeypatch, 5, "nan")
    saved = r"step 6: particles, paths not finite: saved to .*crash.ckpt; .*last.ckpt keeps"
    with pytest.warns(UserWarning, match=saved), \
            pytest.raises(DivergenceError, match=r"^the run diverged: step 6: the loss is nan; particles not finite "
                                                 r"\(or beyond 1.8e\+19\), and parameters that are not finite never"):
        train(tmp_path, "trainer.max_steps=8", "checkpoint.every_n_train_steps=2", "tag=nan")
    ckpts = tmp_path / "toy-particles" / "nan" / "ckpts"
    assert sorted(p.name for p in ckpts.iterdir()) == ["crash.ckpt", "last.ckpt"]
    last, crash = load_checkpoint(ckpts / "last.ckpt"), load_checkpoint(ckpts / "crash.ckpt")
    assert last["global_step"] == 4 and torch.isfinite(last["state_dict"]["particles"]).all()
    assert crash["global_step"] == 6 and torch.isnan(crash["state_dict"]["particles"]).all()


def test_sigterm_saves_and_exits_143(tmp_path):
    """A pre-empted job (SIGTERM) saves last.ckpt and exits 128 + 15, not 0; the checkpoint resumes."""
    ckpt = tmp_path / "toy-particles" / "sigterm" / "ckpts" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--config", TOY, "--train",
                             f"exp_root_dir={tmp_path}", "tag=sigterm", *SMALL, "trainer.max_steps=100000",
                             "checkpoint.every_n_train_steps=25"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    start = time.time()
    while not ckpt.is_file():   # training, not start-up imports, gets the signal
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < 120, "no checkpoint appeared"
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "scorestudio: stopped by SIGTERM: exit status 143" in err
    step = load_checkpoint(ckpt)["global_step"]
    assert step > 0 and sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt"]
    train(tmp_path, f"trainer.max_steps={step + 2}", f"resume={ckpt}")
    assert load_checkpoint(ckpt)["global_step"] == step + 2


def test_ctrl_c_saves_and_exits_130(tmp_path, monkeypatch):
    """Ctrl-C (a KeyboardInterrupt at step 30, raised in-process: a real SIGINT can also land in
    TensorBoard's writer queue) saves last.ckpt at step 30 and exits 128 + 2, not 1."""
    from scorestudio.systems.toy_particles import ToyParticlesSystem
    from scorestudio.tools.launch import main

    step = ToyParticlesSystem.training_step

    def interrupted(self, batch, batch_idx):
        if self.global_step == 30:
            raise KeyboardInterrupt
        return step(self, batch, batch_idx)

    monkeypatch.setattr(ToyParticlesSystem, "training_step", interrupted)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as stop:
            main(["--config", TOY, "--train", f"exp_root_dir={tmp_path}", "tag=ctrl-c", *SMALL,
                  "trainer.max_steps=100"])
    finally:
        signal.signal(signal.SIGINT, handler)   # Lightning ignores further Ctrl-C after the first
    assert stop.value.code == 130
    ckpt = tmp_path / "toy-particles" / "ctrl-c" / "ckpts" / "last.ckpt"
    assert load_checkpoint(ckpt)["global_step"] == 30
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt"]


# ---------------------------------------------------------------------- untrusted SVG files and images


def use_bomb(path: Path, levels: int = 8, fan: int = 10) -> Path:
    """About 2 KB of SVG whose nested ``<use>`` expand to ``fan ** levels`` rectangles."""
    defs = ['<rect id="a0" width="1" height="1" fill="red"/>']
    defs += [f'<g id="a{k}">' + f'<use xlink:href="#a{k - 1}"/>' * fan + "</g>" for k in range(1, levels + 1)]
    path.write_text('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
                    f'width="100" height="100"><defs>{"".join(defs)}</defs><use xlink:href="#a{levels}"/></svg>')
    return path


def svg_file(path: Path, body: str, size: str = 'width="100" height="100"') -> Path:
    path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" {size}>{body}</svg>')
    return path


def svg_cli(*argv: str, capsys) -> tuple[int, str]:
    from scorestudio.tools.svg import main

    status = main(list(argv))
    return status, capsys.readouterr().err


def test_a_use_bomb_fails_fast_naming_the_limit(tmp_path, capsys):
    from scorestudio.renderers.svg import SvgError, read_svg

    bomb = use_bomb(tmp_path / "bomb.svg")
    assert bomb.stat().st_size < 2500
    start = time.perf_counter()
    with pytest.raises(SvgError, match=rf"^{bomb}: more than 100000 elements after expanding <use>, over the limit "
                                       r"scorestudio.renderers.svg.io.MAX_SVG_ELEMENTS = 100000; raise it "
                                       r"\(scorestudio.renderers.svg.io.MAX_SVG_ELEMENTS = ...\) for files you trust$"):
        read_svg(bomb)
    assert time.perf_counter() - start < 2
    status, err = svg_cli("render", str(bomb), str(tmp_path / "out.png"), capsys=capsys)
    assert status == 2 and "MAX_SVG_ELEMENTS" in err and not (tmp_path / "out.png").exists()
    # the same file with 10 × 10 rectangles is fine: the limit counts, it does not forbid <use>
    assert read_svg(use_bomb(tmp_path / "small.svg", levels=2)).num_paths == 100


def test_deep_nesting_and_self_reference_are_refused(tmp_path):
    from scorestudio.renderers.svg import SvgError, read_svg

    rect = '<rect width="5" height="5" fill="red"/>'
    assert read_svg(svg_file(tmp_path / "98.svg", "<g>" * 98 + rect + "</g>" * 98)).num_paths == 1   # 100 levels
    deep = svg_file(tmp_path / "99.svg", "<g>" * 99 + rect + "</g>" * 99)
    with pytest.raises(SvgError, match=r"99.svg: elements nest more than 100 levels deep \(counting what <use> "
                                       r"inserts\), over the limit scorestudio.renderers.svg.io.MAX_SVG_DEPTH = 100"):
        read_svg(deep)
    loop = svg_file(tmp_path / "loop.svg", f'<g id="a">{rect}<use href="#a"/></g>')
    with pytest.raises(SvgError, match=r'loop.svg: <g id="a"> contains a <use> of itself: an endless expansion'):
        read_svg(loop)


def test_huge_canvases_are_refused_before_allocating(tmp_path, capsys):
    from scorestudio.renderers.svg import SvgError, read_svg

    rect = '<rect width="5" height="5" fill="red"/>'
    wide = svg_file(tmp_path / "wide.svg", rect, 'width="1e9" height="10"')
    limit = (r"is larger than the limit scorestudio.renderers.svg.rasterizer.MAX_CANVAS_PIXELS = 67108864 \(8192²\); "
             r"ask for a smaller size, or raise the limit if your memory holds such a render")
    with pytest.raises(SvgError, match=rf"wide.svg: the canvas 1000000000 x 10 px = 1e\+10 pixels {limit}"):
        read_svg(wide)
    with pytest.raises(SvgError, match=r"no positive size"):
        read_svg(svg_file(tmp_path / "inf.svg", rect, 'width="1e999" height="10"'))
    small = svg_file(tmp_path / "small.svg", rect)
    out = tmp_path / "out.png"
    status, err = svg_cli("render", str(small), str(out), "--width", "1000000", capsys=capsys)
    assert status == 2 and not out.exists()
    assert err.startswith(f"scorestudio svg: error: {small}: the canvas 1000000 x 1000000 px = 1e+12 pixels is "
                          "larger than the limit scorestudio.renderers.svg.rasterizer.MAX_CANVAS_PIXELS")


def test_far_coordinates_are_refused_by_the_reader_and_rendered_in_bounded_work(tmp_path):
    """A file with coordinates of 1e12 is refused; a scene that diverged there (an optimiser's
    step, not a file) renders in time bounded by the canvas: the triangle covers the canvas."""
    from scorestudio.renderers.svg import SvgError, SvgScene, polygon_points, read_svg, render

    far = svg_file(tmp_path / "far.svg", '<path d="M -1e12 -1e12 L 1e12 0 L 0 1e12 Z" fill="red"/>')
    with pytest.raises(SvgError, match=r"far.svg: a control point lies 1e\+12 px from the origin of the 100 x 100 px "
                                       r"canvas, over the limit scorestudio.renderers.svg.io.MAX_SVG_COORDINATE = "
                                       r"1e\+06; raise it"):
        read_svg(far)
    for magnitude in (1e6, 1e12, 1e20, 1e30):   # 1e12: 4 TB before; 1e20, 1e30: "repeats can not be negative"
        corners = torch.tensor([[[[-magnitude, -magnitude], [magnitude, 0.0], [0.0, magnitude]]]])
        scene = SvgScene(polygon_points(corners), torch.tensor([[[1.0, 0.0, 0.0, 1.0]]]), 48, 32)
        scene.points.requires_grad_(True)
        start = time.perf_counter()
        image = render(scene)
        image.sum().backward()
        assert time.perf_counter() - start < 5, magnitude
        assert torch.equal(image[0], torch.tensor([1.0, 0.0, 0.0])[:, None, None].expand(3, 32, 48)), magnitude
    with pytest.raises(ValueError, match="cannot rasterize: the scene has NaN or infinite control points"):
        render(SvgScene(polygon_points(corners * 1e8), torch.tensor([[[1.0, 0.0, 0.0, 1.0]]]), 48, 32))


def png_bomb(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A 1-pixel PNG whose header declares ``width`` × ``height`` (Pillow reads the size from it)."""
    import io
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), "red").save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)                          # IHDR's width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))         # and its CRC
    path.write_bytes(bytes(data))
    return path


def test_a_png_bomb_given_as_data_image_is_exit_2_without_a_run_folder(tmp_path, capsys):
    from scorestudio.tools.launch import main
    from scorestudio.utils.images import load_image

    bomb = png_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 100
    with pytest.raises(ValueError, match=rf"^{bomb}: refused to decode: 400000000 pixels, over the limit "
                                         r"scorestudio.utils.images.MAX_IMAGE_PIXELS = 67108864 \(a possible "
                                         r"decompression bomb\); raise it"):
        load_image(bomb)
    with pytest.raises(ValueError, match=r"9000 x 8000 = 72000000 pixels, over the limit"):   # under Pillow's limit
        load_image(png_bomb(tmp_path / "big.png", 9000, 8000))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        main(["--config", str(ROOT / "configs" / "svg-restoration.yaml"), "--train", f"exp_root_dir={out}",
              f"data.image={bomb}", "system.distillation=false", "trainer.max_steps=2"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err == (f"scorestudio: error: data.image: {bomb}: refused to decode: 400000000 pixels, over the limit "
                   "scorestudio.utils.images.MAX_IMAGE_PIXELS = 67108864 (a possible decompression bomb); raise it "
                   "(and Pillow's PIL.Image.MAX_IMAGE_PIXELS = 89478485 beyond that) for images you trust\n")
    assert not out.exists()


# ---------------------------------------------------------------------- divergence: trainer.on_nonfinite


def launch_main(*argv: str, capsys) -> tuple[object, str]:
    """``scorestudio train ...`` in-process: (exit status, the last line of stderr: above it only
    progress bars of model loading); status None when it returns."""
    from scorestudio.tools.launch import main

    try:
        main(list(argv))
        status = None
    except SystemExit as stop:
        status = stop.code
    return status, capsys.readouterr().err.rstrip("\n").rsplit("\n", 1)[-1]


def tiny_particles(tmp_path: Path, tiny, *overrides: str, tag: str) -> list[str]:
    """image-particles (SDS) on the tiny prior: 2 particles, a checkpoint every step."""
    return ["--config", str(ROOT / "configs" / "image-particles-sds.yaml"), "--train", f"exp_root_dir={tmp_path}",
            f"tag={tag}", "use_timestamp=false", "trainer.enable_progress_bar=false", "trainer.val_check_interval=0",
            f"system.prior.pretrained_model_name_or_path={tiny[0]}", "system.guidance.repulsion.features=probe",
            "system.n_particles=2", "trainer.max_steps=6", "checkpoint.every_n_train_steps=1", *overrides]


CAUSES = ("Usual causes: a learning rate too high (system.optimizer.args.lr, or the generator's own lr); a guidance "
          "scale too high or NaN (system.guidance.guidance_scale); a loss weight too high or NaN "
          "(system.loss.lambda_*, or the generator's regularizer weights)")


def test_a_nan_guidance_scale_stops_the_run_with_exit_2(tmp_path, tiny, capsys):
    """CFG NaN: the guidance zeroes every gradient element, the latents stay finite; stopped after
    3 such steps, exit 2, last.ckpt at step 3 (finite), no pictures and no metrics."""
    status, err = launch_main(*tiny_particles(tmp_path, tiny, "system.guidance.guidance_scale=.nan", tag="cfg"),
                              capsys=capsys)
    assert status == 2
    assert err == ("scorestudio: error: the run diverged: step 3: the guidance zeroed 128 NaN or infinite gradient "
                   "elements, for 3 steps in a row (trainer.nonfinite_patience=3); trainer.on_nonfinite=warn or skip "
                   "trains on regardless. " + CAUSES + ". The last finite state is in ckpts/last.ckpt if one was "
                   "saved before (checkpoint.every_n_train_steps)")
    root = tmp_path / "image-particles" / "cfg"
    assert sorted(p.name for p in (root / "ckpts").iterdir()) == ["last.ckpt"]
    last = load_checkpoint(root / "ckpts" / "last.ckpt")
    assert last["global_step"] == 3 and torch.isfinite(last["state_dict"]["generator.latents"]).all()
    assert not (root / "metrics.json").exists() and not any((root / "save").iterdir())


def test_an_svg_run_whose_paths_turn_nan_stops_with_exit_2_whatever_the_policy(tmp_path, capsys):
    """svg-restoration with a NaN data-term weight and trainer.on_nonfinite=warn: its control points
    turn NaN at the first update, which no policy trains on from (a rasterizer cannot draw NaN
    paths): one clear error, exit 2, instead of the rasterizer's traceback at the next step."""
    status, err = launch_main("--config", "svg-restoration.yaml", "--train", f"exp_root_dir={tmp_path}", "tag=svg",
                              "use_timestamp=false", "trainer.enable_progress_bar=false", "trainer.max_steps=4",
                              "trainer.on_nonfinite=warn", "system.lambda_dc=.nan", "system.distillation=false",
                              capsys=capsys)
    assert status == 2
    assert re.match(r"scorestudio: error: the run diverged: step 1: .*generator\.points.* not finite .*never recover "
                    r"\(whatever trainer.on_nonfinite says\)", err), err


def test_a_huge_learning_rate_stops_the_run_without_a_single_nan(tmp_path, tiny, capsys):
    """lr=1e30 sends the latents to ~1e30 at the first update (finite, no NaN anywhere): beyond
    √(float32 max) they count as diverged, and the run stops at once. No finite state after step 0:
    crash.ckpt only, nothing else written."""
    status, err = launch_main(*tiny_particles(tmp_path, tiny, "system.optimizer.args.lr=1e30", tag="lr"),
                              capsys=capsys)
    assert status == 2
    assert err.startswith("scorestudio: error: the run diverged: step 1: generator.latents not finite (or beyond "
                          "1.8e+19), and parameters that are not finite never recover (whatever trainer.on_nonfinite says). "
                          "Usual causes: ")
    root = tmp_path / "image-particles" / "lr"
    assert sorted(p.name for p in (root / "ckpts").iterdir()) == ["crash.ckpt"]
    assert not (root / "metrics.json").exists() and not any((root / "save").iterdir())


@pytest.mark.parametrize("lr, message", [
    (".nan", "system.optimizer.args: Adam(lr=nan) fails: Invalid learning rate: nan"),
    ("nan", "system.optimizer.args: Adam(lr='nan') fails: '<=' not supported between instances of 'float' and 'str'; "
            "lr='nan' is text, not a number (YAML writes NaN and infinity .nan and .inf)"),
])
def test_a_nan_learning_rate_is_refused_before_training(tmp_path, tiny, capsys, lr, message):
    status, err = launch_main(*tiny_particles(tmp_path, tiny, f"system.optimizer.args.lr={lr}", tag="nan"),
                              capsys=capsys)
    assert (status, err) == (2, f"scorestudio: error: {message}")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]   # the run folder made for it is gone


def test_with_warn_a_diverging_run_finishes_and_warns(tmp_path, tiny):
    """trainer.on_nonfinite=warn: the CFG-NaN run trains its 6 steps and writes its outputs (the
    latents stayed finite), with a warning at the first non-finite step."""
    argv = tiny_particles(tmp_path, tiny, "system.guidance.guidance_scale=.nan", "trainer.on_nonfinite=warn", tag="w")
    with pytest.warns(UserWarning, match=r"^step 1: the guidance zeroed 128 NaN or infinite gradient elements "
                                         r"\(trainer.on_nonfinite=warn: training goes on\). Usual causes: "):
        ctx = run(*parse_args(argv))
    assert load_checkpoint(ctx.root / "ckpts" / "last.ckpt")["global_step"] == 6
    assert (ctx.save_dir / "particles.png").is_file() and json.loads(ctx.metrics_path.read_text())["step"] == 6


def _nan_loss_at(monkeypatch, steps: set[int]) -> None:
    """toy-particles returns a NaN loss (so NaN gradients) at ``steps``."""
    from scorestudio.systems.toy_particles import ToyParticlesSystem

    step = ToyParticlesSystem.training_step

    def nan_at(self, batch, batch_idx):
        return step(self, batch, batch_idx) * (float("nan") if self.global_step in steps else 1)

    monkeypatch.setattr(ToyParticlesSystem, "training_step", nan_at)


def test_skip_drops_the_update_of_a_nonfinite_step(tmp_path, monkeypatch):
    """One NaN loss at step 3: with skip its update is dropped and the run ends finite, as a run
    without that step's update; with stop the NaN update poisons the particles and the run stops."""
    _nan_loss_at(monkeypatch, {3})
    with pytest.warns(UserWarning, match=r"^step 4: the loss is nan \(trainer.on_nonfinite=skip: its update dropped\)"):
        skipped = train(tmp_path, "trainer.max_steps=6", "trainer.on_nonfinite=skip", "tag=skip").root
    particles = load_checkpoint(skipped / "ckpts" / "last.ckpt")["state_dict"]["particles"]
    assert torch.isfinite(particles).all()
    with pytest.raises(ConfigError, match=r"^the run diverged: step 4: the loss is nan; particles not finite"):
        train(tmp_path, "trainer.max_steps=6", "tag=stop")
    monkeypatch.undo()
    _nan_loss_at(monkeypatch, set())
    reference = train(tmp_path, "trainer.max_steps=6", "tag=reference").root
    reference_particles = load_checkpoint(reference / "ckpts" / "last.ckpt")["state_dict"]["particles"]
    assert not torch.equal(particles, reference_particles)   # 5 updates, not 6


def test_nonfinite_images_are_not_written(tmp_path):
    from scorestudio.utils.images import save_animation, save_grid, save_image

    image = torch.rand(3, 8, 8)
    image[1, 2, 3] = float("nan")
    with pytest.warns(UserWarning, match=r"nan.png: not written: 1 of 192 values are NaN or infinite \(the run "
                                         r"diverged\?\)"):
        save_image(image, tmp_path / "nan.png")
    with pytest.warns(UserWarning, match=r"grid.png: not written: 2 of"):
        save_grid(torch.stack([image, image]), tmp_path / "grid.png")
    with pytest.warns(UserWarning, match=r"anim.gif: not written: 1 of 384"):
        save_animation([image, torch.rand(3, 8, 8)], tmp_path / "anim.gif")
    assert not list(tmp_path.iterdir())
    save_image(image.nan_to_num(0.5), tmp_path / "fine.png")
    assert (tmp_path / "fine.png").is_file()


# ---------------------------------------------------------------------- bad inputs: one message, exit 2, no run folder


@pytest.mark.parametrize("override, message", [
    ("seed=-1", "seed=-1: give a whole number from 0 to 4294967295"),
    ("seed=99999999999", "seed=99999999999: give a whole number from 0 to 4294967295"),
    ("trainer.max_steps=-5", "trainer.max_steps=-5: give a number ≥ 1"),
    ("trainer.precision=half", "trainer.precision='half': Precision 'half' is invalid. Allowed precision values: "
                               "('transformer-engine', 'transformer-engine-float16', '16-true', '16-mixed', "
                               "'bf16-true', 'bf16-mixed', '32-true', '64-true', 64, 32, 16, '64', '32', '16', "
                               "'bf16')"),
    ("trainer.on_nonfinite=ignore", "trainer.on_nonfinite='ignore': expected one of stop, warn, skip"),
    ("trainer.nonfinite_patience=0", "trainer.nonfinite_patience=0: give a number of steps ≥ 1"),
    ("system.optimizer.args.foo=1", "system.optimizer.args: SGD(lr=0.05, foo=1) fails: SGD.__init__() got an "
                                    "unexpected keyword argument 'foo'"),
    ("system.optimizer.args.lr=-1", "system.optimizer.args: SGD(lr=-1) fails: Invalid learning rate: -1"),
])
def test_bad_inputs_are_one_message_and_exit_2_without_a_run_folder(tmp_path, capsys, override, message):
    out = tmp_path / "out"
    status, err = launch_main("--config", TOY, "--train", f"exp_root_dir={out}", *SMALL, "trainer.max_steps=2",
                              override, capsys=capsys)
    assert (status, err) == (2, f"scorestudio: error: {message}")
    assert not [p for p in out.rglob("*") if p.is_file()]


@pytest.mark.parametrize("where", ["under a file", "read-only"])
def test_an_output_folder_that_cannot_be_written_is_exit_2(tmp_path, capsys, where):
    if where == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        root = tmp_path / "ro"
        root.mkdir(mode=0o555)
        reason = f"Permission denied ({root / 'toy-particles'})"
    else:
        (tmp_path / "file").write_text("")
        root = tmp_path / "file" / "out"
        reason = f"Not a directory ({root / 'toy-particles'})"
    status, err = launch_main("--config", TOY, "--train", f"exp_root_dir={root}", *SMALL, "trainer.max_steps=2",
                              "tag=x", capsys=capsys)
    assert (status, err) == (2, f"scorestudio: error: cannot write the run folder {root / 'toy-particles' / 'x'}: "
                                f"{reason}")


def test_a_full_disk_is_exit_2_and_a_run_without_checkpoint_leaves_nothing(tmp_path, capsys, monkeypatch):
    """Every checkpoint write fails with ENOSPC (the atomic write leaves no torn file): one message,
    exit 2, and the run folder, which holds no checkpoint, is removed."""
    import errno

    from scorestudio.utils.checkpoint import AtomicCheckpointIO

    def full(self, checkpoint, path, storage_options=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", full)
    status, err = launch_main("--config", TOY, "--train", f"exp_root_dir={tmp_path / 'out'}", *SMALL,
                              "trainer.max_steps=4", "checkpoint.every_n_train_steps=2", "tag=full", capsys=capsys)
    ckpts = tmp_path / "out" / "toy-particles" / "full" / "ckpts"
    assert (status, err) == (2, f"scorestudio: error: [Errno 28] No space left on device: '{ckpts / 'last.ckpt'}'")
    assert not (tmp_path / "out" / "toy-particles" / "full").exists()


def test_svg_render_reports_an_output_it_cannot_write(tmp_path, capsys):
    small = svg_file(tmp_path / "small.svg", '<rect width="5" height="5" fill="red"/>')
    (tmp_path / "file").write_text("")
    for out, reason in [(tmp_path / "noext", "unknown file extension: "),
                        (tmp_path / "file" / "out.png", f"[Errno 17] File exists: '{tmp_path / 'file'}'")]:
        status, err = svg_cli("render", str(small), str(out), capsys=capsys)
        assert (status, err) == (2, f"scorestudio svg: error: cannot write {out}: {reason}\n")
    assert svg_cli("render", str(tmp_path / "missing.svg"), str(tmp_path / "x.png"), capsys=capsys) == (
        2, f"scorestudio svg: error: {tmp_path / 'missing.svg'}: SVG file not found\n")


# ---------------------------------------------------------------------- optimizer settings changed at resume


def test_an_lr_given_at_resume_is_the_lr_the_run_trains_with(tmp_path, capsys):
    first = train(tmp_path, "trainer.max_steps=2", "tag=lr").root
    ckpt = first / "ckpts" / "last.ckpt"
    assert load_checkpoint(ckpt)["optimizer_states"][0]["param_groups"][0]["lr"] == 0.05
    train(tmp_path, "trainer.max_steps=4", "tag=lr", f"resume={ckpt}", "system.optimizer.args.lr=0.5")
    assert ("[scorestudio] resume: optimizer group 'default': lr 0.05 -> 0.5 (as configured now; the checkpoint had "
            "0.05)") in capsys.readouterr().out
    assert load_checkpoint(ckpt)["optimizer_states"][0]["param_groups"][0]["lr"] == 0.5
    train(tmp_path, "trainer.max_steps=6", "tag=lr", f"resume={ckpt}", "system.optimizer.args.lr=0.5")
    assert "resume: optimizer group" not in capsys.readouterr().out   # nothing changed: nothing said


def test_a_scheduled_lr_given_at_resume_keeps_its_place_in_the_schedule(tmp_path, capsys):
    """A LambdaLR group: the scheduler's base lr and the group's initial_lr become the new lr and
    the current lr is the new lr × the schedule's factor at the resumed step."""
    import lightning.pytorch as pl

    from scorestudio.utils.checkpoint import OptimizerSettings

    class Tiny(pl.LightningModule):
        def __init__(self, lr: float) -> None:
            super().__init__()
            self.lr, self.w = lr, torch.nn.Parameter(torch.ones(3))

        def training_step(self, batch, batch_idx):
            return (self.w ** 2).sum()

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.zeros(100, 1), batch_size=1)

        def configure_optimizers(self):
            opt = torch.optim.Adam([{"params": [self.w], "name": "w"}], lr=self.lr)
            schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def fit(lr: float, steps: int, resume=None):
        trainer = pl.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             enable_checkpointing=False, callbacks=[OptimizerSettings()], default_root_dir=tmp_path)
        trainer.fit(Tiny(lr), ckpt_path=resume, weights_only=False)
        return trainer

    fit(0.1, 2).save_checkpoint(tmp_path / "a.ckpt")
    trainer = fit(0.4, 4, tmp_path / "a.ckpt")
    group = trainer.optimizers[0].param_groups[0]
    assert (group["initial_lr"], trainer.lr_scheduler_configs[0].scheduler.base_lrs) == (0.4, [0.4])
    assert group["lr"] == pytest.approx(0.4 / (1 + 4))
    assert "optimizer group 'w': lr 0.1 -> 0.4" in capsys.readouterr().out


def test_a_real_ctrl_c_stops_at_the_end_of_the_step(tmp_path, monkeypatch, capsys):
    """SIGINT during step 10 (sent by the step itself) lets the step finish: last.ckpt at step 11,
    exit 130. Raised wherever the signal landed, a KeyboardInterrupt inside TensorBoard's writer
    queue left its thread waiting forever when the logger closed (a hang in 2 runs of 8)."""
    from scorestudio.systems.toy_particles import ToyParticlesSystem

    step = ToyParticlesSystem.training_step

    def interrupted(self, batch, batch_idx):
        if self.global_step == 10:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(ToyParticlesSystem, "training_step", interrupted)
    handler = signal.getsignal(signal.SIGINT)
    try:
        status, err = launch_main("--config", TOY, "--train", f"exp_root_dir={tmp_path}", "tag=sigint", *SMALL,
                                  "trainer.max_steps=100", capsys=capsys)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert (status, err) == (130, "scorestudio: stopped by SIGINT: exit status 130")
    ckpt = tmp_path / "toy-particles" / "sigint" / "ckpts" / "last.ckpt"
    assert load_checkpoint(ckpt)["global_step"] == 11
