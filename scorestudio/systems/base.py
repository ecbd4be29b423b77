"""Lightning base system: config parsing, particles, optimisers, run-folder outputs."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from scorestudio.utils.config import ConfigError, did_you_mean, parse_structured, to_plain
from scorestudio.utils.distributed import particle_block, world
from scorestudio.utils.io import update_json
from scorestudio.utils.run import RunContext


@dataclass
class OptimizerConfig:
    name: str = "Adam"                                  # any class in torch.optim
    args: dict = field(default_factory=lambda: {"lr": 0.01})   # default kwargs for every group
    params: dict = field(default_factory=dict)          # {attribute prefix: kwargs override}, e.g. {"background": {"lr": 0.001}}


PARTICLE_KEY = re.compile(r"^(?:(?P<group>[^/]+)/)?particle(?P<index>\d+)/(?P<name>.+)$")   # metrics.json keys


def finite_or_null(metrics: dict) -> dict:
    """``metrics`` with every NaN / ±inf float replaced by None, and why under ``null_reasons``."""
    out, reasons = {}, dict(metrics.get("null_reasons") or {})
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None
            reasons.setdefault(key, "not a finite number: the run diverged or the metric is undefined here")
        out[key] = value
    if reasons:
        out["null_reasons"] = reasons
    return out


class _Steps(IterableDataset):
    """An endless stream of empty batches: systems draw their randomness from the step index."""

    def __iter__(self):
        while True:
            yield torch.zeros(())


class _Once(IterableDataset):
    def __iter__(self):
        yield torch.zeros(())


class BaseSystem(pl.LightningModule):
    """A scorestudio system: a LightningModule configured by its nested ``Config``.

    Subclasses implement ``configure()`` (build modules), ``training_step`` and optionally
    ``validation_step`` / ``test_step`` / ``export``. Randomness must come from
    ``self.random_stream(stream, particle, step)`` so results do not depend on resumption or sharding.
    """

    @dataclass
    class Config:
        n_particles: int = 1
        optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    def __init__(self, cfg: Any = None, run: Optional[RunContext] = None, data: Any = None) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, "system")
        self.run = run or RunContext(Path("outputs/scratch"))
        self.data_cfg = data or {}
        if self.cfg.n_particles < 1:
            raise ConfigError(f"system.n_particles={self.cfg.n_particles}: a run needs at least one particle")
        self.loaded_step = 0   # the checkpoint's step in --test / --export, where global_step stays 0
        self.batches_trained = 0   # training batches since this process began (or resumed) training
        self._micro_batch: Optional[Any] = None
        self.configure()

    # ---- to override ----------------------------------------------------------------------
    def configure(self) -> None:
        """Build submodules and parameters from ``self.cfg``."""

    def export(self) -> list[Path]:
        """Write exportable assets (meshes, SVGs); returns their paths."""
        name = getattr(self, "registered_name", type(self).__name__)
        raise ConfigError(f"--export: the {name} system has nothing to export (meshes, SVGs); its pictures "
                          "are in the run folder's save/, and --test renders them again")

    # ---- particles sharded over processes (utils.distributed) -----------------------------
    shardable = False   # True in systems whose training step computes only local_particles()
    ddp_find_unused_parameters = False   # set by prepare_sharding (a module per particle)

    def local_particles(self) -> torch.Tensor:
        """Long ``[n]``: the particles this process trains: all N, or its block of N / W when
        the run is sharded over W processes."""
        rank, size = world()
        return particle_block(self.cfg.n_particles, rank, size).to(self.device)

    def row_selection(self, particles: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """``particles`` for indexing stacked parameters, or None when they are all N in order
        (one process has them all: no copies of selected rows)."""
        return None if particles is None or len(particles) == self.cfg.n_particles else particles

    @property
    def writes_outputs(self) -> bool:
        """Only the first process of a sharded run writes pictures, metrics and exports (every
        process holds all particles, so it has them all)."""
        return world()[0] == 0

    def prepare_sharding(self, processes: int) -> None:
        """Check that this run can be sharded over ``processes`` (before any process starts) and
        keep the frozen parts (the prior) out of DDP's synchronisation."""
        if processes == 1:
            return
        if not self.shardable:
            name = getattr(self, "registered_name", type(self).__name__)
            raise ConfigError(f"the {name} system runs in one process: drop --processes / the GPU list (particles "
                              "are sharded over processes by every distillation system: distillation, dreamfusion, image-particles, "
                              "text-to-svg, svg-restoration)")
        particle_block(self.cfg.n_particles, 0, processes)
        self._ddp_params_and_buffers_to_ignore = [n for n, p in self.named_parameters() if not p.requires_grad]
        # A module per particle (tiny-cuda-nn encodings) gets no gradient in the processes that do
        # not compute that particle: DDP must then look for unused parameters at every step.
        self.ddp_find_unused_parameters = any(getattr(m, "per_particle_modules", False) for m in self.modules())

    def log_scalars(self, scalars: dict[str, torch.Tensor], prog_bar=lambda key: key.startswith("loss_")) -> None:
        """Log ``train/<key>`` for every scalar but ``loss``; averaged over the processes of a
        sharded run (each process sees only its particles)."""
        sync = world()[1] > 1
        for key, value in scalars.items():
            if key != "loss":
                self.log(f"train/{key}", value, prog_bar=prog_bar(key), sync_dist=sync)

    # ---- randomness ------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        return self.run.seed

    def random_stream(self, *keys: int | str) -> torch.Generator:
        """The torch.Generator of the stream (run seed, *keys)."""
        from scorestudio.utils.seeding import generator

        return generator(self.seed, *keys)

    # Training batch i of an optimizer step (trainer.accumulate_grad_batches = k) draws from streams
    # of its own (utils.seeding.micro_batch): otherwise the k batches of a step, which share its
    # step number, would repeat one draw. Counted from the start of this process's training, which
    # is at an optimizer step (checkpoints are saved there).
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        from scorestudio.utils.seeding import micro_batch

        self._micro_batch = micro_batch(self.batches_trained % self.trainer.accumulate_grad_batches)
        self._micro_batch.__enter__()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.leave_micro_batch()
        self.batches_trained += 1

    def teardown(self, stage: str) -> None:
        self.leave_micro_batch()   # a training step that raised never reached on_train_batch_end

    def leave_micro_batch(self) -> None:
        if self._micro_batch is not None:
            self._micro_batch.__exit__(None, None, None)
            self._micro_batch = None

    # ---- outputs ---------------------------------------------------------------------------
    def resolved_config(self) -> dict:
        """The ``system`` config as this run used it, for ``configs/parsed.yaml``: ``self.cfg``
        plus what a task filled in from its data (a caption as the prompt, say)."""
        return to_plain(self.cfg)

    def save_path(self, name: str) -> Path:
        path = self.run.save_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def save_metrics(self, metrics: dict) -> dict:
        """Merge scalar metrics into the run's metrics.json (atomic, strict JSON: a non-finite
        number is written as null with its reason under ``null_reasons``)."""
        return update_json(self.run.metrics_path, finite_or_null(metrics))

    def report_metrics(self, metrics: dict) -> dict:
        """:meth:`save_metrics`, then print the run's metrics: run-wide ones a line each, then one
        line per particle for keys ``[group/]particle{i}/name``. Returns the merged metrics."""
        merged = self.save_metrics(metrics)
        shown = {k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in sorted(merged.items())}
        per_particle: dict[int, list[str]] = {}
        lines = [f"[scorestudio] metrics ({self.run.metrics_path}):"]
        for key, value in shown.items():
            match = PARTICLE_KEY.match(key)
            if match:
                name = "/".join(filter(None, (match["group"], match["name"])))
                per_particle.setdefault(int(match["index"]), []).append(f"{name} {value}")
            else:
                lines.append(f"  {key:32s} {value}")
        lines += [f"  particle {i}: " + " · ".join(items) for i, items in sorted(per_particle.items())]
        print("\n".join(lines))
        return merged

    def extra_param_groups(self) -> list[dict]:
        """Optimizer groups that modules define for themselves (e.g. a LoRA with its own lr)."""
        return []

    # ---- optimiser ---------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """Optimizer groups: the modules' own (:meth:`extra_param_groups`), one per
        ``system.optimizer.params`` prefix, and the rest of the trainable parameters."""
        groups = self.extra_param_groups()
        claimed = {id(p) for g in groups for p in g["params"]}
        for prefix, overrides in self.cfg.optimizer.params.items():
            full = self.parameter_prefix(prefix)
            params = [p for n, p in self.named_parameters() if n.startswith(full) and p.requires_grad]
            if not params:
                raise ConfigError(f"system.optimizer.params.{prefix}: no trainable parameter starts with {prefix!r}")
            claimed.update(id(p) for p in params)
            groups.append({"params": params, "name": prefix, **overrides})
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in claimed]
        if rest:
            groups.append({"params": rest, "name": "default"})
        return groups

    def parameter_prefix(self, prefix: str) -> str:
        """The parameter-name prefix a ``system.optimizer.params`` key stands for."""
        return prefix

    def configure_optimizers(self):
        """``system.optimizer`` over :meth:`param_groups`; groups that carry an ``"lr_lambda"``
        (a function of the step scaling their lr) get it through one LambdaLR stepped every step."""
        opt_cfg = self.cfg.optimizer
        optim_cls = getattr(torch.optim, opt_cfg.name, None)
        if not (isinstance(optim_cls, type) and issubclass(optim_cls, torch.optim.Optimizer)):
            base = torch.optim.Optimizer
            names = sorted(n for n, c in vars(torch.optim).items() if isinstance(c, type) and issubclass(c, base) and c is not base)
            raise ConfigError(f"system.optimizer.name={opt_cfg.name!r} is not a torch.optim optimizer."
                              f"{did_you_mean(opt_cfg.name, names)} Known: {', '.join(names)}")
        groups = self.param_groups()
        lambdas = [g.pop("lr_lambda", None) for g in groups]
        args = {k: tuple(v) if k == "betas" else v for k, v in opt_cfg.args.items()}
        try:
            optimizer = optim_cls(groups, **args)
        except (TypeError, ValueError) as err:   # an unknown argument, a value of the wrong type or range
            shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
            text = [f"{k}={v!r} is text, not a number (YAML writes NaN and infinity .nan and .inf)"
                    for k, v in args.items() if isinstance(v, str)]
            raise ConfigError(f"system.optimizer.args: {opt_cfg.name}({shown}) fails: {err}"
                              + "".join(f"; {t}" for t in text)) from None
        if all(f is None for f in lambdas):
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [f or (lambda _: 1.0) for f in lambdas])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- Lightning plumbing ----------------------------------------------------------------
    def upgrade_checkpoint(self, checkpoint: dict) -> dict:
        """A checkpoint written by an older layout of this system, renamed to this one (in place)."""
        return checkpoint

    @property
    def trained_steps(self) -> int:
        """Steps behind the current weights (also in --test / --export, where Lightning's
        global_step is not restored)."""
        return max(int(self.global_step), self.loaded_step)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.loaded_step = int(checkpoint.get("global_step", 0))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        from scorestudio.utils.checkpoint import SYSTEM_KEY

        checkpoint[SYSTEM_KEY] = getattr(self, "registered_name", type(self).__name__)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Once(), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_Once(), batch_size=None)
