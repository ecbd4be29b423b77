"""Particles sharded over processes with Lightning's DDP (``launch.py --gpu 0,1`` or ``--processes 2``).

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

import torch
from torch import Tensor

from scorestudio.utils.config import ConfigError

# The run folder rank 0 chose, for the processes Lightning starts for ranks ≥ 1 (they inherit it).
RUN_ROOT_ENV = "SCORESTUDIO_RUN_ROOT"


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
