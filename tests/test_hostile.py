"""Hostile inputs and faults (issue 26): crafted and broken checkpoints, each with its exact outcome."""

from __future__ import annotations

import json
import os
import pickle
import random
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


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), "--config", TOY, *args],
                          capture_output=True, text=True, env=ENV, timeout=300)


@pytest.mark.parametrize("mode", ["--train", "--test"])
def test_crafted_checkpoint_given_as_resume_runs_nothing(tmp_path, mode):
    ckpt, marker = crafted_checkpoint(tmp_path)
    res = cli(mode, f"exp_root_dir={tmp_path / 'out'}", *SMALL, "trainer.max_steps=2", f"resume={ckpt}")
    assert res.returncode == 2, res.stderr
    assert (f"scorestudio: error: resume={ckpt}: refused to load: it would import and call posix.system, "
            "which no checkpoint needs (unpickling it could run arbitrary code)") in res.stderr
    assert "Traceback" not in res.stderr
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
    _toy_fault(monkeypatch, 5, "nan")
    with pytest.warns(UserWarning, match=r"step 6: particles, paths not finite: saved to .*crash.ckpt; .*last.ckpt keeps"):
        train(tmp_path, "trainer.max_steps=8", "checkpoint.every_n_train_steps=2", "tag=nan")
    ckpts = tmp_path / "toy-particles" / "nan" / "ckpts"
    assert sorted(p.name for p in ckpts.iterdir()) == ["crash.ckpt", "last.ckpt"]
    last, crash = load_checkpoint(ckpts / "last.ckpt"), load_checkpoint(ckpts / "crash.ckpt")
    assert last["global_step"] == 4 and torch.isfinite(last["state_dict"]["particles"]).all()
    assert crash["global_step"] == 8 and torch.isnan(crash["state_dict"]["particles"]).all()


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
