"""The command line: ``scorestudio <command>``, launch.py's flags, usage errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scorestudio.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "configs" / "toy-particles.yaml")
SMALL = ["system.n_realizations=16", "system.gammas=[0,10]", "trainer.enable_progress_bar=false",
         "trainer.val_check_interval=0", "use_timestamp=false", "trainer.max_steps=3"]


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, command in COMMANDS.items():
        assert f"  {name}" in out and command.help in out


@pytest.mark.parametrize("argv, message", [([], "name a command"),
                                           (["trian"], "unknown command 'trian'. Did you mean 'train'"),
                                           (["train", "--config", "c.yaml", "--test"],
                                            "unrecognised arguments ['--test']")])
def test_bad_usage_exits_with_2_and_says_why(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_every_command_has_a_tool_with_main():
    import importlib

    for command in COMMANDS.values():
        assert callable(importlib.import_module(f"scorestudio.tools.{command.module}").main)


def test_train_command_equals_launch_flags(tmp_path):
    """``scorestudio train --config X`` and ``launch.py --config X --train`` make the same run."""
    main(["train", "--config", TOY, f"exp_root_dir={tmp_path}", "tag=command", *SMALL])
    main(["--config", TOY, "--train", f"exp_root_dir={tmp_path}", "tag=flags", *SMALL])

    def particles(tag):
        ckpt = tmp_path / "toy-particles" / tag / "ckpts" / "last.ckpt"
        return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]["particles"]

    assert torch.equal(particles("command"), particles("flags"))


def test_python_m_scorestudio_runs_a_tool_and_returns_its_status(tmp_path):
    done = subprocess.run([sys.executable, "-m", "scorestudio", "svg", "info", str(tmp_path / "none.svg")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "SVG file not found" in done.stderr
