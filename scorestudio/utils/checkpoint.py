"""Checkpoints: atomic writes, periodic/last/interrupt saves, and safe (weights-only) loading."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from scorestudio.utils.config import ConfigError
from scorestudio.utils.divergence import DivergenceError, diverged_tensors
from scorestudio.utils.io import atomic_open

SYSTEM_KEY = "scorestudio_system"   # the registered name of the system that wrote a checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that never leaves a truncated checkpoint behind."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any = None) -> None:
        with atomic_open(path, "wb") as handle:
            torch.save(checkpoint, handle)


class RunCheckpoint(pl.Callback):
    """Writes ``ckpts/last.ckpt`` every ``every_n_steps`` steps, at the end of training and when
    training is interrupted (Ctrl-C, SIGTERM), so no finished work is lost.

    ``last.ckpt`` only ever holds a good state: a run that fails with an exception saves its
    state to ``ckpts/crash.ckpt`` (to inspect, not to resume), and a state with a non-finite
    parameter or buffer (see :func:`nonfinite_tensors`) goes there too, with a warning, instead
    of replacing ``last.ckpt``. A run stopped because it diverged
    (:class:`~scorestudio.utils.divergence.DivergenceError`) saves as an interrupted one does.
    With ``keep_all`` it also keeps ``ckpts/step{N:06d}.ckpt`` for every periodic save.
    """

    def __init__(self, ckpt_dir: str | os.PathLike, every_n_steps: int, keep_all: bool = False) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.every_n_steps = every_n_steps
        self.keep_all = keep_all
        self._last_saved_step = -1

    @property
    def last_path(self) -> Path:
        return self.ckpt_dir / "last.ckpt"

    @property
    def crash_path(self) -> Path:
        return self.ckpt_dir / "crash.ckpt"

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, keep: bool = False) -> None:
        step = trainer.global_step
        if step == self._last_saved_step:
            return
        bad = nonfinite_tensors(pl_module.state_dict())
        if bad:
            warnings.warn(f"step {step}: {', '.join(bad[:3])}{' and more' if len(bad) > 3 else ''} not finite: "
                          f"saved to {self.crash_path}; {self.last_path} keeps the last finite state")
            trainer.save_checkpoint(self.crash_path)
        else:
            trainer.save_checkpoint(self.last_path)
            if keep:
                trainer.save_checkpoint(self.ckpt_dir / f"step{step:06d}.ckpt")
        self._last_saved_step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0:
            self._save(trainer, pl_module, keep=self.keep_all)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.global_step == 0 or trainer.state.fn != TrainerFn.FITTING:
            return
        if isinstance(exception, DivergenceError):   # last.ckpt if still finite, else crash.ckpt with a warning
            self._save(trainer, pl_module)
        elif isinstance(exception, (KeyboardInterrupt, SIGTERMException)):   # a good state, stopped early
            print(f"\n{type(exception).__name__}: saving {self.last_path} at step {trainer.global_step}")
            self._save(trainer, pl_module)
        else:
            print(f"\n{type(exception).__name__}: saving the failing state to {self.crash_path} at step "
                  f"{trainer.global_step}; {self.last_path} keeps the last good one")
            try:
                trainer.save_checkpoint(self.crash_path)
            except OSError as err:   # a full disk, say: the run's own error is the one to report
                print(f"could not save {self.crash_path}: {err}")


class CtrlC(pl.Callback):
    """The first Ctrl-C stops training at the end of the step in progress; a second one at once.

    Python raises KeyboardInterrupt wherever the main thread is when SIGINT arrives, which can be
    inside a ``queue.Queue`` call of TensorBoard's event writer: the queue's condition loses its
    waiter, the writer thread never sees the shutdown request, and closing the logger after the
    interrupt waited forever. As Lightning does for SIGTERM, the signal handler only sets a flag;
    the KeyboardInterrupt is raised at the step's end (agreed by all processes of a sharded run),
    and Lightning's usual handling follows (``last.ckpt`` saved, exit status 130)."""

    def __init__(self) -> None:
        self._pressed = False
        self._previous: Any = None   # the SIGINT handler before fit, while ours is installed

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is threading.main_thread():   # handlers can only be set there
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        if self._pressed:
            self._restore()
            raise KeyboardInterrupt
        self._pressed = True
        print("\nCtrl-C: stopping at the end of this step (Ctrl-C again stops at once)", file=sys.stderr, flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.strategy.reduce_boolean_decision(self._pressed, all=False):
            self._restore()
            raise KeyboardInterrupt

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):   # Lightning now ignores SIGINT while it shuts down
            self._previous = None
        self._restore()

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class OptimizerSettings(pl.Callback):
    """A resumed run trains with the optimizer settings of its config, not of its checkpoint.

    Lightning restores an optimizer's state (moments, step counts) together with the
    hyperparameters it was saved with (lr, betas, weight decay, ...), so a setting changed at
    resume (``system.optimizer.args.lr=...``, a generator's lr) was silently ignored while
    ``parsed.yaml`` recorded it. The settings of the freshly configured optimizers are read
    before the restore (``on_fit_start``) and put back after it (``on_train_start``), each change
    printed. A group under a LambdaLR schedule keeps its place in the schedule: its configured lr
    (``initial_lr``, the scheduler's base lr) changes, and its lr is that × the schedule's factor now.
    """

    def __init__(self) -> None:
        self._fresh: list[list[dict]] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fresh = [[_settings(g) for g in optimizer.param_groups] for optimizer in trainer.optimizers]

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.ckpt_path is None:
            return
        schedules = {id(c.scheduler.optimizer): c.scheduler for c in trainer.lr_scheduler_configs
                     if isinstance(c.scheduler, torch.optim.lr_scheduler.LambdaLR)}
        for optimizer, fresh in zip(trainer.optimizers, self._fresh):
            schedule = schedules.get(id(optimizer))
            for i, (group, wanted) in enumerate(zip(optimizer.param_groups, fresh)):
                saved = _settings(group)
                for key, value in wanted.items():
                    if key not in saved or _same(saved[key], value):
                        continue
                    print(f"[scorestudio] resume: optimizer group {group.get('name', i)!r}: {key} {saved[key]} -> "
                          f"{value} (as configured now; the checkpoint had {saved[key]})")
                    if key == "lr" and "initial_lr" in group:
                        group["initial_lr"] = value
                        if schedule is not None:
                            schedule.base_lrs[i] = value
                            group["lr"] = value * schedule.lr_lambdas[i](schedule.last_epoch)
                    else:
                        group[key] = value


def _settings(group: dict) -> dict:
    """An optimizer param group's hyperparameters; a scheduled group's lr is its configured one
    (``initial_lr``), not the schedule's current value."""
    out = {k: v for k, v in group.items() if k not in ("params", "initial_lr")}
    if "initial_lr" in group:
        out["lr"] = group["initial_lr"]
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal settings; a list and a tuple of the same numbers are the same (betas from YAML)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return tuple(a) == tuple(b)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):   # a tensor lr (capturable optimizers)
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and bool(torch.equal(a, b))
    return a == b


def interrupting_signal(stop: SystemExit) -> Optional[signal.Signals]:
    """The signal behind ``stop`` when it is how Lightning ends an interrupted run: SIGTERM (its
    ``SIGTERMException``, a ``SystemExit`` of status 0) or Ctrl-C (``sys.exit(1)`` while handling
    the ``KeyboardInterrupt``); None for any other exit. A command exits with 128 + this signal,
    as shells and schedulers expect of a process stopped by it (130, 143)."""
    if isinstance(stop, SIGTERMException):
        return signal.SIGTERM
    if isinstance(stop.__context__, KeyboardInterrupt):
        return signal.SIGINT
    return None


def nonfinite_tensors(state: dict[str, Any]) -> list[str]:
    """The names of the floating tensors of ``state`` that hold a NaN, an infinity or a value so
    large that its square overflows (:func:`~scorestudio.utils.divergence.diverged_tensors`)."""
    return diverged_tensors(state.items())


def load_checkpoint(path: str | os.PathLike, key: Optional[str] = None, require: Sequence[str] = (),
                    mmap: bool = False, map_location: Any = "cpu") -> dict:
    """Load a checkpoint or ``.pt`` file the safe way: ``weights_only`` unpickling, which builds
    tensors, numbers, strings and containers but never imports or calls anything, so a crafted
    file cannot run code. Every file the project writes loads this way.

    A missing, truncated, random or crafted file, or one without the ``require``d keys, is one
    ``ConfigError`` naming the file (as ``key=path`` when a setting named it) and what is wrong,
    raised before the caller changes any state. ``mmap`` maps a zip checkpoint instead of reading it.
    """
    name = f"{key}={path}" if key else str(path)
    if not Path(path).is_file():
        raise ConfigError(f"{name}: checkpoint file not found")
    try:
        with warnings.catch_warnings():   # torch's note on a foreign file's pickle protocol: the error says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location=map_location, weights_only=True,
                              mmap=mmap and zipfile.is_zipfile(path))   # torch's mmap needs its zip format
    except Exception as err:   # noqa: BLE001  (garbage makes the unpickler raise almost anything)
        raise ConfigError(f"{name}: {_load_failure(err)}") from None
    if not isinstance(ckpt, dict):
        raise ConfigError(f"{name}: holds a {type(ckpt).__name__}, not a checkpoint (a dict of saved state)")
    missing = [k for k in require if k not in ckpt]
    if missing:
        raise ConfigError(f"{name}: not a checkpoint of this kind: no {', '.join(map(repr, missing))} in it "
                          f"(it has {', '.join(map(repr, list(ckpt)[:6])) or 'nothing'})")
    return ckpt


def _load_failure(err: BaseException) -> str:
    """What a failed safe load means for a user, from torch's long message."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    if found:   # the weights-only unpickler met an import: no file the project writes has one
        return (f"refused to load: it would import and call {found.group(1)}, which no checkpoint needs "
                "(unpickling it could run arbitrary code); only load files from sources you trust")
    return f"truncated, corrupt or not a PyTorch checkpoint (torch.load: {type(err).__name__})"


def check_checkpoint(system: pl.LightningModule, path: str | os.PathLike) -> None:
    """A ``ConfigError`` that says how to fix it when the checkpoint at ``path`` is unsafe or
    unreadable (see :func:`load_checkpoint`), or was not written by a system of this config:
    another system, or parameters of other names or shapes (another ``n_particles``, grid
    resolution, ...). Read memory-mapped, before Lightning loads it."""
    ckpt = system.upgrade_checkpoint(load_checkpoint(path, key="resume", require=("state_dict",), mmap=True))
    fix = "pass the config that wrote it (configs/parsed.yaml in its run folder)"
    ours, theirs = getattr(system, "registered_name", None), ckpt.get(SYSTEM_KEY)
    if theirs is not None and theirs != ours:
        raise ConfigError(f"resume={path} is a checkpoint of a {theirs!r} run, but this config runs {ours!r}: {fix}")
    saved, expected = ckpt["state_dict"], system.state_dict()
    problems = [f"{k} missing" for k in expected if k not in saved]
    problems += [f"{k} not in this config" for k in saved if k not in expected]
    problems += [f"{k} is {list(saved[k].shape)} there but {list(v.shape)} here"   # empty here: sized at the first step
                 for k, v in expected.items() if k in saved and v.numel() and saved[k].shape != v.shape]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise ConfigError(f"resume={path} does not fit this config's {ours or type(system).__name__} system "
                          f"({shown}): {fix}, with the same n_particles and sizes")
