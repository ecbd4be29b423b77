"""Particles sharded over processes with Lightning's DDP (``launch.py --gpu 0,1`` or ``--processes 2``,
over several machines with ``--nodes N`` under torchrun or SLURM: docs/distributed.md).

Every process holds all N particles (parameters and optimizer state) and renders, guides and
back-propagates only its own contiguous block of N / W of them. DDP then averages the gradients
as usual; since a particle's gradient comes from one process only (the others contribute zeros)
and each process normalises its losses by its own batch (N / W particles), the average is
exactly the single-process gradient, and every process applies the same Adam update to all
particles. So the processes stay identical, checkpoints are ordinary ones (resumable with any
number of processes), and validation / test / export run unchanged on rank 0. Shared trainable
parts (VSD's LoRA) are averaged like any DDP model. The repulsion kernel sees every particle:
:func:`gather_rows` collects the features of all blocks.

The cost of this design is memory: each process stores all N particles (N × one particle's
parameters and Adam state), which is small next to the prior for the NeRF grids of this toolkit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.environments import (ClusterEnvironment, LightningEnvironment, LSFEnvironment,
                                                   SLURMEnvironment, TorchElasticEnvironment)
from torch import Tensor

from scorestudio.utils.config import ConfigError
from scorestudio.utils.run import RunContext

# The run folder rank 0 chose, for the processes Lightning starts for ranks ≥ 1 (they inherit it).
RUN_ROOT_ENV = "SCORESTUDIO_RUN_ROOT"


def outside_launcher() -> Optional[ClusterEnvironment]:
    """Lightning's cluster environment when a launcher started every process of the run (torchrun,
    SLURM's srun, LSF), detected as Lightning detects it (torchrun first: it also runs inside
    SLURM jobs); None when Lightning starts the processes itself."""
    for env_type in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment):
        if env_type.detect():
            return env_type()
    return None


def check_launcher_world(processes: int, nodes: int) -> None:
    """An outside launcher's number of processes must be ``nodes × processes`` per node (Lightning
    would fail later, inside the trainer, with the names of its own arguments)."""
    env = outside_launcher()
    if env is not None and env.world_size() != processes * nodes:
        raise ConfigError(f"{type(env).__name__} started {env.world_size()} processes but --nodes {nodes} "
                          f"× {processes} process(es) per node is {processes * nodes}: give --nodes (the "
                          f"launcher's nodes) and --processes or --gpu (its processes per node)")


def is_first_process(started_by_rank0: bool) -> bool:
    """Whether this process is the run's global rank 0, known before any process group exists:
    the rank torchrun or SLURM gave it, else whether a user started it on node 0 (``NODE_RANK``;
    the processes Lightning starts for the other local ranks are ``started_by_rank0``)."""
    if started_by_rank0:
        return False
    env = outside_launcher()
    if env is not None:
        return env.global_rank() == 0
    return LightningEnvironment().node_rank() == 0


class SharedRunRoot(pl.Callback):
    """Every process of a sharded run takes global rank 0's run folder once the process group
    exists. Processes started by torchrun, SLURM or on another node each chose a folder of their
    own (another timestamp); only rank 0 writes, but any path a process uses must be the run's."""

    def __init__(self, run: RunContext) -> None:
        self.run = run

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.run.root = Path(trainer.strategy.broadcast(str(self.run.root), src=0))


def world() -> tuple[int, int]:
    """(rank, number of processes) of the initialised default process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def particle_block(n_particles: int, rank: int, size: int) -> Tensor:
    """Long ``[N / size]``: the particles process ``rank`` of ``size`` computes (a contiguous block,
    so the blocks gathered in rank order are the particles in order)."""
    if n_particles % size:
        raise ConfigError(f"system.n_particles={n_particles} cannot be split over {size} processes: "
                          f"use a multiple of {size} particles, or {_divisors(n_particles)} processes")
    per = n_particles // size
    return torch.arange(rank * per, (rank + 1) * per)


def _divisors(n: int) -> str:
    return " / ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def gather_rows(rows: Tensor) -> tuple[Tensor, int]:
    """All processes' ``rows`` ``[n, ...]`` (the same n everywhere) stacked in rank order
    ``[W·n, ...]``, detached, and where this process's rows start. Without a process group:
    ``(rows, 0)``. Every process must call it (a collective)."""
    rank, size = world()
    if size == 1:
        return rows.detach(), 0
    import torch.distributed as dist

    parts = [torch.empty_like(rows) for _ in range(size)]
    dist.all_gather(parts, rows.detach().contiguous())
    return torch.cat(parts), rank * rows.shape[0]
