"""The top-level run config and the run folder layout.

    <exp_root_dir>/<name>/<tag>@<YYYYMMDD-HHMMSS>[-K]/   (-1, -2, ...: a run that started in the same second)
        configs/parsed.yaml   fully resolved config, re-runnable with --config
        configs/parsed-<mode>.yaml   the config of a later --test / --validate / --export
        ckpts/last.ckpt       written atomically, resumable with resume=...
        save/                 images, videos, meshes, SVGs
        metrics.json          final scalar metrics of the run
        cmd.txt               the command line that started the run
        csv_logs/, tb_logs/   per-step logs
"""

from __future__ import annotations

import shlex
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Optional

from omegaconf import MISSING

from scorestudio.utils.config import ConfigError


@dataclass
class TrainerConfig:
    max_steps: int = 1000               # training steps (optimizer steps × accumulate_grad_batches)
    log_every_n_steps: int = 10         # write the scalars to the CSV / TensorBoard logs this often
    val_check_interval: int = 200       # run validation (image grid) every N training steps; 0 = never
    precision: str = "32-true"          # Lightning precision string, e.g. "16-mixed" on GPUs
    accumulate_grad_batches: int = 1    # training steps whose gradients are summed per optimizer step (docs/priors.md)
    enable_progress_bar: bool = True    # the tqdm bar with step, it/s and the losses
    num_sanity_val_steps: int = 0       # validation steps before training (Lightning's sanity check)
    on_nonfinite: str = "stop"          # a NaN/inf loss, guidance gradient or parameter: stop | warn | skip
    nonfinite_patience: int = 3         # stop: after this many non-finite steps in a row


@dataclass
class CheckpointConfig:
    every_n_train_steps: int = 500      # write ckpts/last.ckpt this often (also at the end and on Ctrl-C)
    keep_all: bool = False              # also keep ckpts/step{N:06d}.ckpt for every periodic save


@dataclass
class ExperimentConfig:
    name: str = "default"               # experiment name: first level under exp_root_dir
    tag: str = ""                       # run tag, usually the prompt: <tag>@<timestamp>
    exp_root_dir: str = "outputs"       # folder under which <name>/<tag>@<timestamp> run folders are made
    seed: int = 0                       # root of every random stream (init, timesteps, noise, cameras)
    use_timestamp: bool = True          # append @YYYYMMDD-HHMMSS to the run folder
    system_type: str = MISSING          # registered system name, e.g. "toy-particles"
    system: dict = field(default_factory=dict)   # parsed by the system's own Config
    data: dict = field(default_factory=dict)     # inputs of the system (images, operators, ...)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: Optional[str] = None        # path to a checkpoint to resume from / test / export


SEED_MAX = 2 ** 32 - 1   # numpy's (and so Lightning's) seed range is 0 ... 2³² − 1


def check_experiment(cfg: ExperimentConfig) -> None:
    """One ``ConfigError`` for a run setting no run can use, before anything is built or written:
    a seed outside 0 ... 2³² − 1, step counts out of range, an unknown precision or
    ``trainer.on_nonfinite`` policy."""
    from scorestudio.utils.divergence import check_policy

    if not 0 <= cfg.seed <= SEED_MAX:
        raise ConfigError(f"seed={cfg.seed}: give a whole number from 0 to {SEED_MAX}")
    t = cfg.trainer
    least = {"trainer.max_steps": (t.max_steps, 1), "trainer.log_every_n_steps": (t.log_every_n_steps, 1),
             "trainer.val_check_interval": (t.val_check_interval, 0),
             "trainer.accumulate_grad_batches": (t.accumulate_grad_batches, 1),
             "trainer.num_sanity_val_steps": (t.num_sanity_val_steps, 0),
             "checkpoint.every_n_train_steps": (cfg.checkpoint.every_n_train_steps, 0)}
    for key, (value, low) in least.items():
        if value < low:
            raise ConfigError(f"{key}={value}: give a number ≥ {low}")
    _check_precision(t.precision)
    check_policy(t.on_nonfinite, t.nonfinite_patience)


def _check_precision(precision: str) -> None:
    from lightning.fabric.connector import _convert_precision_to_unified_args

    try:
        _convert_precision_to_unified_args(precision)
    except ValueError as err:   # Lightning's message lists the supported values
        raise ConfigError(f"trainer.precision={precision!r}: {err}") from None


TAG_MAX_BYTES = 120   # a folder name is at most 255 bytes on common file systems; the rest is the timestamp


def _safe_tag(tag: str) -> str:
    """The tag as a folder name: letters of any script, digits and ``-_.,``; cut to
    ``TAG_MAX_BYTES`` bytes of UTF-8 (a CJK character is 3), never inside a character."""
    keep = "".join(c if c.isalnum() or c in "-_.," else "_" for c in tag.strip())
    return keep.encode()[:TAG_MAX_BYTES].decode(errors="ignore") or "run"


def run_dir_for(cfg: ExperimentConfig, now: Optional[datetime] = None) -> Path:
    """Where a run writes. A resumed run reuses the folder of its checkpoint; a new run's folder
    is claimed by :meth:`RunContext.prepare`, with a suffix if another run holds this one."""
    if cfg.resume:
        ckpt = Path(cfg.resume)
        if not ckpt.is_file():
            raise ConfigError(f"resume={cfg.resume}: checkpoint file not found")
        if ckpt.parent.name == "ckpts":
            return ckpt.parent.parent
    folder = _safe_tag(cfg.tag)
    if cfg.use_timestamp:
        folder += "@" + (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return Path(cfg.exp_root_dir) / cfg.name / folder


@dataclass
class RunContext:
    """What a system needs to know about its run: where to write and the root seed."""

    root: Path
    seed: int = 0
    mode: str = "train"   # train, validate, test or export: a later --test / --export has its own metrics file
    claimed: bool = False   # whether prepare() created root for this run (not a resumed run's folder)

    @property
    def save_dir(self) -> Path:
        return self.root / "save"

    @property
    def ckpt_dir(self) -> Path:
        return self.root / "ckpts"

    @property
    def metrics_path(self) -> Path:
        """``metrics.json`` of the training run (its final test included); ``metrics-<mode>.json``
        of a later --test / --validate / --export, which never overwrites the training run's."""
        return self.root / ("metrics.json" if self.mode == "train" else f"metrics-{self.mode}.json")

    def prepare(self, parsed_config: Any = None, argv: Optional[list[str]] = None, mode: str = "train",
                resume: Optional[str] = None) -> None:
        """Creates the folders, writes the resolved config and appends the command line. A run
        resumed for --test / --export writes ``parsed-<mode>.yaml``: its overrides must not
        replace the record of how the weights were trained.

        Only the run that ``resume`` continues reuses its folder: any other run claims ``root``
        for itself, or ``root-1``, ``root-2``, ... when another run holds it (started in the same
        second, or ``use_timestamp=false``), so no run overwrites another's checkpoint, images
        or metrics; ``root`` then names the folder claimed.

        A folder that cannot be created or written (read-only, full disk) is a ``ConfigError``,
        and a folder claimed here is removed again."""
        self.mode = mode
        try:
            if not self._continues(resume):
                self.root = claim_folder(self.root)
                self.claimed = True
            with self.removed_on_failure():
                for sub in ("configs", "ckpts", "save"):
                    (self.root / sub).mkdir(parents=True, exist_ok=True)
                if parsed_config is not None:
                    from scorestudio.utils.config import dump_config

                    name = "parsed.yaml" if mode == "train" else f"parsed-{mode}.yaml"
                    dump_config(parsed_config, self.root / "configs" / name)
                argv = sys.argv if argv is None else argv
                with open(self.root / "cmd.txt", "a") as handle:
                    handle.write(shlex.join((["python"] if argv[0].endswith(".py") else []) + list(argv)) + "\n")
        except OSError as err:
            raise ConfigError(f"cannot write the run folder {self.root}: {err.strerror or err}"
                              f"{f' ({err.filename})' if err.filename else ''}") from err

    @contextmanager
    def removed_on_failure(self) -> Iterator[None]:
        """Removes the run folder when the body fails and the folder is this run's own (claimed by
        :meth:`prepare`) with no checkpoint in it: a run that never trained leaves nothing
        half-made. A resumed run's folder, or one with a checkpoint (crash.ckpt too), stays."""
        try:
            yield
        except BaseException:
            if self.claimed and not any(self.ckpt_dir.glob("*.ckpt")):
                shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _continues(self, resume: Optional[str]) -> bool:
        """Whether ``root`` is the run folder of the checkpoint ``resume`` (``<root>/ckpts/X.ckpt``)."""
        if not resume:
            return False
        ckpt = Path(resume).resolve()
        return ckpt.parent.name == "ckpts" and ckpt.parent.parent == self.root.resolve()


def claim_folder(root: Path) -> Path:
    """Create ``root``, or the first free ``root-1``, ``root-2``, ...; returns the one created.
    ``mkdir`` without ``exist_ok`` is atomic: of two processes claiming one name, one gets it."""
    root.parent.mkdir(parents=True, exist_ok=True)
    k = 0
    while True:
        folder = root.with_name(f"{root.name}-{k}") if k else root
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            k += 1
