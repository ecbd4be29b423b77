"""End-to-end runs of the toy system: run folder, resume equivalence, kill/Ctrl-C, atomic saves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from scorestudio.cli import parse_args, run
from scorestudio.utils.io import atomic_open

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "configs" / "toy-particles.yaml")
SMALL = ["system.n_realizations=16", "system.gammas=[0,10]", "trainer.enable_progress_bar=false",
         "trainer.val_check_interval=0", "use_timestamp=false"]


def train(tmp_path, *overrides, tag="run"):
    args, extra = parse_args(["--config", TOY, "--train", f"exp_root_dir={tmp_path}", f"tag={tag}", *SMALL, *overrides])
    return run(args, extra)


def particles(ckpt: Path) -> torch.Tensor:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]["particles"]


def test_run_folder_layout_and_metrics(tmp_path):
    ctx = train(tmp_path, "trainer.max_steps=30", "checkpoint.every_n_train_steps=10")
    root = tmp_path / "toy-particles" / "run"
    assert ctx.root == root
    for rel in ("configs/parsed.yaml", "ckpts/last.ckpt", "cmd.txt", "metrics.json",
                "save/particle_paths.png", "save/collapse_vs_gamma.png"):
        assert (root / rel).is_file(), rel
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["step"] == 30 and 0.0 <= metrics["collapse_fraction/gamma=0"] <= 1.0
    parsed = yaml.safe_load((root / "configs/parsed.yaml").read_text())
    assert parsed["system"]["n_realizations"] == 16 and parsed["system"]["kernel"]["bandwidth_mode"] == "global"
    # parsed.yaml is re-runnable as a config of its own
    args, extra = parse_args(["--config", str(root / "configs/parsed.yaml"), "--train", "trainer.max_steps=2", "tag=rerun"])
    assert (run(args, extra).root / "ckpts/last.ckpt").is_file()


def test_test_mode_keeps_the_training_config(tmp_path):
    """--test with overrides on a finished run writes parsed-test.yaml, not over parsed.yaml."""
    ctx = train(tmp_path, "trainer.max_steps=10")
    before = (ctx.root / "configs/parsed.yaml").read_text()
    args, extra = parse_args(["--config", str(ctx.root / "configs/parsed.yaml"), "--test",
                              f"resume={ctx.root / 'ckpts/last.ckpt'}", "system.kernel.bandwidth_mode=per_row"])
    run(args, extra)
    assert (ctx.root / "configs/parsed.yaml").read_text() == before
    assert yaml.safe_load((ctx.root / "configs/parsed-test.yaml").read_text())["system"]["kernel"]["bandwidth_mode"] == "per_row"


def test_resume_equals_uninterrupted_run(tmp_path):
    train(tmp_path, "trainer.max_steps=40", tag="full")
    train(tmp_path, "trainer.max_steps=20", tag="part")
    part = tmp_path / "toy-particles" / "part" / "ckpts" / "last.ckpt"
    train(tmp_path, "trainer.max_steps=40", f"resume={part}", tag="ignored")
    full = particles(tmp_path / "toy-particles" / "full" / "ckpts" / "last.ckpt")
    resumed = particles(part)  # resuming reuses the checkpoint's run folder
    assert torch.equal(full, resumed)


def _default_sigint() -> None:
    # A run launched from a background job inherits SIGINT ignored (POSIX shells without job
    # control), and Python then never raises KeyboardInterrupt: give the child a terminal's default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(tmp_path, tag, *overrides):
    cmd = [sys.executable, str(ROOT / "launch.py"), "--config", TOY, "--train", f"exp_root_dir={tmp_path}",
           f"tag={tag}", *SMALL, *overrides]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=_default_sigint)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    start = time.time()
    while not path.is_file():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - start < timeout, "no checkpoint appeared"
        time.sleep(0.05)


def test_kill_then_resume_equals_uninterrupted_run(tmp_path):
    proc = _spawn(tmp_path, "killed", "trainer.max_steps=100000", "checkpoint.every_n_train_steps=25")
    ckpt = tmp_path / "toy-particles" / "killed" / "ckpts" / "last.ckpt"
    _wait_for(ckpt, proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert step > 0 and step % 25 == 0
    target = step + 30
    train(tmp_path, f"trainer.max_steps={target}", f"resume={ckpt}")
    train(tmp_path, f"trainer.max_steps={target}", tag="straight")
    assert torch.equal(particles(ckpt), particles(tmp_path / "toy-particles" / "straight" / "ckpts" / "last.ckpt"))


def test_ctrl_c_saves_a_checkpoint(tmp_path):
    proc = _spawn(tmp_path, "interrupted", "trainer.max_steps=100000", "checkpoint.every_n_train_steps=100000",
                  "trainer.log_every_n_steps=1")
    root = tmp_path / "toy-particles" / "interrupted"
    start = time.time()
    # Interrupt during training, not during start-up imports (slow in a fresh clone): wait for
    # the CSV logger's first flush of training metrics.
    while not list(root.glob("csv_logs/**/metrics.csv")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - start < 120, "training never started"
        time.sleep(0.05)
    time.sleep(1.0)  # let it train a while without any periodic checkpoint
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("Ctrl-C did not stop the run; its output ends with:\n" + proc.communicate()[0][-3000:])
    ckpt = tmp_path / "toy-particles" / "interrupted" / "ckpts" / "last.ckpt"
    assert ckpt.is_file(), out
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] > 0


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"old complete checkpoint")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "wb") as handle:
            handle.write(b"half of a new")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old complete checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_cli_reports_config_errors_without_traceback(tmp_path):
    cmd = [sys.executable, str(ROOT / "launch.py"), "--config", TOY, "--train", f"exp_root_dir={tmp_path}",
           "system.gamas=[1]"]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 2
    assert "unknown config key 'system.gamas'" in res.stderr and "'gammas'" in res.stderr
    assert "Traceback" not in res.stderr
    res = subprocess.run([*cmd[:-1], "system_type=toy-particle"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 2 and "Did you mean 'toy-particles'" in res.stderr


def test_save_animation_formats(tmp_path, monkeypatch):
    """GIF round trip (frame count and pixels); MP4 without imageio-ffmpeg is one clear error."""
    import imageio.v3 as iio

    from scorestudio.utils import images

    frames = torch.stack([torch.full((3, 8, 8), v) for v in (0.0, 0.5, 1.0)])
    gif = iio.imread(images.save_animation(frames, tmp_path / "a.gif"), index=None)
    assert gif.shape[0] == 3 and abs(int(gif[1, 0, 0, 0]) - 128) <= 1
    monkeypatch.setattr(images, "mp4_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs imageio-ffmpeg"):
        images.save_animation(frames, tmp_path / "a.mp4")
    with pytest.raises(ValueError, match=".gif or .mp4"):
        images.save_animation(frames, tmp_path / "a.tif")


def test_checkpoint_of_another_config_is_one_clear_error(tmp_path):
    """A checkpoint written with other sizes or by another system is refused before Lightning
    loads it, with what differs and how to fix it; --export of a system without exports too."""
    from scorestudio.utils.checkpoint import SYSTEM_KEY
    from scorestudio.utils.config import ConfigError

    ctx = train(tmp_path, "trainer.max_steps=2")
    ckpt = ctx.root / "ckpts" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state[SYSTEM_KEY] == "toy-particles"
    with pytest.raises(ConfigError, match=r"particles is \[2, 16, 2, 2\] there but \[2, 8, 2, 2\] here.*n_particles"):
        train(tmp_path, "trainer.max_steps=4", "system.n_realizations=8", f"resume={ckpt}")
    state[SYSTEM_KEY] = "dreamfusion"
    other = tmp_path / "other.ckpt"
    torch.save(state, other)
    args, extra = parse_args(["--config", TOY, "--test", f"exp_root_dir={tmp_path}", *SMALL, f"resume={other}"])
    with pytest.raises(ConfigError, match="a 'dreamfusion' run, but this config runs 'toy-particles'"):
        run(args, extra)
    args, extra = parse_args(["--config", TOY, "--export", f"exp_root_dir={tmp_path}", *SMALL, f"resume={ckpt}"])
    with pytest.raises(ConfigError, match="nothing to export"):
        run(args, extra)


def test_particle_count_and_toy_settings_are_checked(tmp_path):
    from scorestudio.utils.config import ConfigError

    with pytest.raises(ConfigError, match="system.n_particles=0: a run needs at least one particle"):
        train(tmp_path, "system.n_particles=0")
    with pytest.raises(ConfigError, match="system.gammas"):
        train(tmp_path, "system.gammas=[]")


def test_report_metrics_prints_a_line_per_particle(tmp_path, capsys):
    from scorestudio.systems.toy_particles import ToyParticlesSystem
    from scorestudio.utils.run import RunContext

    system = ToyParticlesSystem({"n_realizations": 2}, run=RunContext(tmp_path, 0))
    merged = system.report_metrics({"step": 3, "quality": 0.123456, "particle1/color_fraction": 0.5,
                                    "particle0/majority_color": "red", "export/particle1/watertight": True})
    assert merged == json.loads((tmp_path / "metrics.json").read_text())
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:3] == ["  quality                          0.1235", "  step                             3"]
    assert lines[3:] == ["  particle 0: majority_color red",
                         "  particle 1: export/watertight True · color_fraction 0.5"]


def test_quiet_lightning_drops_its_info_lines_and_intended_warnings():
    """Without --verbose a run prints scorestudio's lines, not Lightning's INFO ("GPU available",
    tips) nor its warnings about what scorestudio does on purpose; other warnings still show."""
    import logging
    import warnings

    import lightning.pytorch as pl

    from scorestudio.cli import quiet_lightning

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.levels = []

        def emit(self, record):
            self.levels.append(record.levelno)

    logger = logging.getLogger("lightning.pytorch")
    level, handler = logger.level, Records()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)                      # as Lightning's import leaves it (earlier runs quieted it)
    try:
        pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False)
        assert logging.INFO in handler.levels          # Lightning's default: a few INFO lines per Trainer
        handler.levels.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_lightning()
            pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False)
            warnings.warn("Found 3 module(s) in eval mode at the start of training. This may lead to ...")
            warnings.warn("The 'train_dataloader' does not have many workers which may be a bottleneck.")
            warnings.warn("something else")
        assert all(lv >= logging.WARNING for lv in handler.levels)
        shown = [str(w.message) for w in caught]   # on a CUDA machine also Lightning's "GPU available but not used"
        assert "something else" in shown and not any("eval mode" in m or "many workers" in m for m in shown)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
