"""The Python entry points: train a config, open a finished run, render and export its particles.

    import scorestudio

    run = scorestudio.train("configs/image-particles-sds.yaml", trainer__max_steps=50,
                            system__prompt_processor__prompt="a red cube")
    run.metrics["quality"]
    images = run.render()              # [N, 3, H, W] in [0, 1]: one picture of every particle
    run = scorestudio.load_run(run.root)
    run.export()                        # meshes / SVGs of generators that have assets

Keyword overrides use ``__`` for the dots of the command line's ``key=value`` overrides
(``trainer__max_steps=50`` is ``trainer.max_steps=50``); strings of the form ``"key=value"`` may
be passed positionally as well.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from scorestudio.utils.config import ConfigError, load_config, parse_structured
from scorestudio.utils.registry import find
from scorestudio.utils.run import ExperimentConfig, RunContext


def overrides_from(args: tuple[str, ...], kwargs: dict[str, Any]) -> list[str]:
    """Dot-list overrides from ``"key=value"`` strings and ``key__sub=value`` keywords."""
    bad = [a for a in args if not isinstance(a, str) or "=" not in a]
    if bad:
        raise ConfigError(f"overrides look like 'key=value' (or key__sub=value keywords), got {bad}")
    return [*args, *(f"{key.replace('__', '.')}={json.dumps(value) if not isinstance(value, str) else value}"
                     for key, value in kwargs.items())]


def train(config: str | os.PathLike, *overrides: str, gpu: Optional[str] = None, **kw_overrides: Any) -> "Run":
    """Train (then test) ``config`` (a YAML path) with overrides; returns the finished :class:`Run`.
    The same as ``scorestudio train --config CONFIG key=value ...``."""
    from scorestudio.tools.launch import parse_args, run

    argv = ["--config", str(config), "--train", *overrides_from(overrides, kw_overrides)]
    if gpu is not None:
        argv += ["--gpu", gpu]
    ctx = run(*parse_args(argv))
    return load_run(ctx.root)


def load_run(folder: str | os.PathLike) -> "Run":
    """The run in ``folder`` (a run folder with ``configs/parsed.yaml``, as ``train`` writes it)."""
    root = Path(folder)
    parsed = root / "configs" / "parsed.yaml"
    if not parsed.is_file():
        raise ConfigError(f"{root} is not a scorestudio run folder: it has no configs/parsed.yaml")
    return Run(root=root, config=parse_structured(ExperimentConfig, load_config(parsed)))


@dataclass
class Run:
    """A run folder: its config, metrics, checkpoint and (built on first use) its system with the
    checkpoint's weights, to render and export the particles."""

    root: Path
    config: ExperimentConfig
    _system: Any = field(default=None, repr=False)

    @property
    def checkpoint(self) -> Path:
        return self.root / "ckpts" / "last.ckpt"

    @property
    def metrics(self) -> dict:
        path = self.root / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    @property
    def save_dir(self) -> Path:
        return self.root / "save"

    @property
    def system(self):
        """The run's system (a LightningModule) with the checkpoint's weights, in eval mode."""
        if self._system is None:
            from scorestudio.utils.checkpoint import check_checkpoint, load_checkpoint

            exp = self.config
            system = find(exp.system_type, kind="systems")(exp.system, run=RunContext(self.root, exp.seed),
                                                            data=exp.data)
            check_checkpoint(system, self.checkpoint)
            ckpt = load_checkpoint(self.checkpoint, key="checkpoint", require=("state_dict",))
            system.on_load_checkpoint(ckpt)
            system.load_state_dict(ckpt["state_dict"])
            self._system = system.eval()
        return self._system

    @property
    def generator(self):
        """The particles (a :class:`scorestudio.generators.base.BaseGenerator`)."""
        return self.system.generator

    @torch.no_grad()
    def render(self) -> Tensor:
        """One picture of every particle ``[N, 3, H, W]`` in [0, 1]: the validation view of a 3-D
        generator, the evaluation render of a 2-D one."""
        return self.system.render_images()

    def export(self) -> list[Path]:
        """The generator's assets (meshes, SVGs) under ``save/it{step}-export/``; their paths."""
        return self.system.export()
