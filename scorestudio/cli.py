"""The scorestudio command line: ``scorestudio <command> ...`` (or ``python -m scorestudio``).

    scorestudio train --config configs/toy-particles.yaml [--gpu 0] [--seed 1] key=value ...
    scorestudio sample --prompt "a red cube" --out DIR
    scorestudio <command> --help

Each command is the ``main(argv)`` of a module of :mod:`scorestudio.tools`, imported only when
it runs. threestudio's form, ``python launch.py --config X --train key=value`` (a --train,
--validate, --test or --export flag instead of a command), works too.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from importlib import import_module
from typing import Any, NoReturn, Optional

from scorestudio.utils.config import did_you_mean


@dataclass(frozen=True)
class Command:
    module: str                 # scorestudio.tools.<module>.main(argv) runs the command
    help: str
    passive_threads: bool = False   # a long training process: see main()


LAUNCH = "launch"
COMMANDS = {
    "train": Command(LAUNCH, "train a system from a YAML config, then write its test outputs"),
    "validate": Command(LAUNCH, "validate a trained system (resume=CKPT)"),
    "test": Command(LAUNCH, "write a trained system's test outputs (resume=CKPT)"),
    "export": Command(LAUNCH, "export a trained system: meshes, SVG files (resume=CKPT)"),
    "sample": Command("sample", "DDIM samples of a prompt from a prior"),
    "probe": Command("probe", "name the shape, colour, kind and view of images with the probe"),
    "svg": Command("svg", "render an SVG file with the training rasterizer, or describe it (svg render|info)"),
    "train-prior": Command("train_prior", "train the embedded prior (VAE, UNet) and its probe", True),
    "train-corrective": Command("train_corrective", "train LMC-SDS's manifold corrective for a prior", True),
    "train-latent-probe": Command("train_latent_probe", "distil the probe onto a prior's latents", True),
    "text-embeddings": Command("text_embeddings", "precompute a prior's text embeddings into one file"),
    "procedural": Command("procedural", "preview the procedural training images and their captions"),
    "config-reference": Command("config_reference", "write docs/config-reference.md from the modules' Config dataclasses"),
    "batch": Command("batch", "train prompts × seeds of one config as Ray tasks, with an index (scorestudio[ray])"),
    "ui": Command("ui", "the web app: launch runs, watch them train, look at results (scorestudio[ui])"),
}

# The launch API under its import path of before the commands (``from scorestudio.cli import run``).
_LAUNCH_NAMES = ("parse_args", "run", "select_devices", "quiet_lightning")


def __getattr__(name: str) -> Any:
    if name in _LAUNCH_NAMES:
        return getattr(import_module("scorestudio.tools.launch"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def usage() -> str:
    """``scorestudio --help``: one line per command."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {cmd.help}" for name, cmd in COMMANDS.items()]
    return "\n".join(["usage: scorestudio <command> [options]   (scorestudio <command> --help: its options)",
                      "", "commands:", *lines, "",
                      "python launch.py --config X --train key=value is scorestudio train --config X key=value"])


def usage_error(message: str) -> NoReturn:
    """Exit with status 2 after a usage line and ``message``, as argparse does."""
    print(f"usage: scorestudio <command> [options]\nscorestudio: error: {message}\n"
          f"commands: {', '.join(COMMANDS)} (scorestudio --help says what each does)", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Optional[list[str]] = None) -> int:
    """Run ``scorestudio <command> ...``; returns the exit status (a usage error exits with 2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        usage_error("name a command")
    name, rest = argv[0], argv[1:]
    if name in ("-h", "--help"):
        print(usage())
        return 0
    if name.startswith("-"):                      # launch.py's form: --config X --train ...
        import_module("scorestudio.tools.launch").main(argv)
        return 0
    if name not in COMMANDS:
        usage_error(f"unknown command {name!r}.{did_you_mean(name, list(COMMANDS))}")
    command = COMMANDS[name]
    if command.passive_threads:
        # Trainers run for many minutes on cores other jobs share: OpenMP workers that spin while a
        # peer thread is descheduled waste the cores, passive waiting does not. Set before the
        # tool imports torch (its OpenMP runtime reads it once); a value the user set is kept.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    tool = import_module(f"scorestudio.tools.{command.module}")
    status = tool.main(rest, mode=name) if command.module == LAUNCH else tool.main(rest)
    return status if isinstance(status, int) else 0
