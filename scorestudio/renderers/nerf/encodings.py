"""Position encodings with a particle axis: N independent feature fields in one batched call.

Both encodings map points ``[K, P, 3]`` in [-1, 1]^3 (K particles, or K rows selected from the N
stacked ones by ``particles``) to features ``[K, P, D]``; particle k only reads its own parameters,
so gradients never cross particles.

- ``grid``: a dense feature volume ``[N, C, R, R, R]`` read by one 5-D ``F.grid_sample``
  (trilinear, batched over particles). The CPU default; has a total-variation regulariser.
- ``hashgrid``: the multiresolution hash encoding of Instant-NGP (Müller et al. 2022), tables
  ``[N, T, F]`` per level, vectorised in PyTorch; on CUDA with tiny-cuda-nn installed (``backend: auto``
  or ``tcnn``) the fused kernels of :mod:`~scorestudio.renderers.nerf.tcnn_backend` run instead, same config keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scorestudio.renderers.nerf.tcnn_backend import TcnnHashGrid, tcnn_available
from scorestudio.utils.config import ConfigError, did_you_mean
from scorestudio.utils.seeding import generator

# tiny-cuda-nn's spatial hash primes (one per axis).
HASH_PRIMES = (1, 2654435761, 805459861)


@dataclass
class GridConfig:
    resolution: int = 48          # voxels per axis of each particle's feature volume over [-radius, radius]
    n_features: int = 16          # C: features per voxel, input width of the MLP
    init_std: float = 0.1         # features start N(0, init_std²), one stream per particle


@dataclass
class HashGridConfig:
    n_levels: int = 16            # L resolutions from base_resolution up by per_level_scale
    n_features_per_level: int = 2 # F
    log2_hashmap_size: int = 19   # T = 2^19 entries per level and particle
    base_resolution: int = 16
    per_level_scale: float = 1.447269237440378   # finest level 16 · 1.447^15 ≈ 4096 (threestudio)
    init_range: float = 1e-4      # entries start U(-init_range, init_range), as in tiny-cuda-nn
    backend: str = "auto"         # "auto": tiny-cuda-nn on CUDA when installed, else PyTorch; "torch"; "tcnn"


def select_particles(param: Tensor, particles: Optional[Tensor]) -> Tensor:
    """Rows of a stacked parameter ``[N, ...]``: all (``particles`` None) or ``param[particles]``."""
    return param if particles is None else param[particles]


class GridEncoding(nn.Module):
    """Dense trilinear feature volumes ``grid`` ``[N, C, R, R, R]``."""

    def __init__(self, cfg: GridConfig, n_particles: int, seed: int) -> None:
        super().__init__()
        r, c = cfg.resolution, cfg.n_features
        init = torch.stack([torch.randn(c, r, r, r, generator=generator(seed, "init", i, "grid"))
                            for i in range(n_particles)])
        self.grid = nn.Parameter(init * cfg.init_std)
        self.out_dim = c

    def forward(self, x: Tensor, particles: Optional[Tensor] = None) -> Tensor:
        """Points ``[K, P, 3]`` in [-1, 1] → features ``[K, P, C]`` (x indexes the last grid axis)."""
        return sample_grid(select_particles(self.grid, particles), x)

    def tv_loss(self) -> Tensor:
        """Total variation per particle ``[N]``: mean |difference| of neighbouring voxels."""
        return GridTotalVariation.apply(self.grid)


# Each batch item beyond the first costs a grid-sized gradient buffer in the backward (R³ · C
# floats): many threads must not cut a small point set into items that cost more than they save.
MIN_POINTS_PER_ITEM = 1024


def sample_grid(grid: Tensor, x: Tensor, items: Optional[int] = None) -> Tensor:
    """Trilinear features ``[K, P, C]`` of volumes ``grid`` ``[K, C, R, R, R]`` at points ``x``
    ``[K, P, 3]`` in [-1, 1] (x indexes the last axis), borders clamped.

    PyTorch's CPU ``grid_sample`` (5-D, forward and backward) spreads over threads by batch item
    only, so a single particle would use one core. On the CPU each particle's points are therefore
    cut into ``items`` batch items (default: enough for every thread, each of at least
    MIN_POINTS_PER_ITEM points; 1 on other devices) that read the same volume.
    """
    k, p, _ = x.shape
    if items is None:
        items = min(torch.get_num_threads() // k, p // MIN_POINTS_PER_ITEM) if x.device.type == "cpu" else 1
    items = max(1, min(items, p))
    per_item = -(-p // items)
    if per_item * items != p:
        x = F.pad(x, (0, 0, 0, per_item * items - p))                  # [K, items · per_item, 3]
    volumes = grid[:, None].expand(k, items, *grid.shape[1:]).flatten(0, 1)   # a view when K = 1
    out = F.grid_sample(volumes, x.view(k * items, per_item, 1, 1, 3), mode="bilinear",
                        padding_mode="border", align_corners=True)       # [K · items, C, per_item, 1, 1]
    out = out.view(k, items, -1, per_item).transpose(2, 3)             # [K, items, per_item, C]
    return out.flatten(1, 2)[:, :p]


class GridTotalVariation(torch.autograd.Function):
    """Mean |difference| of neighbouring voxels of a grid ``[N, C, D, H, W]`` along D, H and W,
    averaged over the three axes: ``[N]``.

    Written out because autograd's backward of ``grid.diff(dim)`` zero-fills a grid-sized tensor
    for each of its two slices and negates another, a sizeable share of a CPU step for dense
    grids. Here the backward writes ±sign into one gradient, in place.
    """

    @staticmethod
    def forward(ctx, grid: Tensor) -> Tensor:
        ctx.save_for_backward(grid)
        return sum(grid.diff(dim=d).abs_().flatten(1).mean(1) for d in (2, 3, 4)) / 3

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:
        (grid,) = ctx.saved_tensors
        grad = torch.zeros_like(grid)
        for d in (2, 3, 4):
            sign = grid.diff(dim=d).sign_()                               # d|a - b| / da, at 0 as abs: 0
            sign.mul_((grad_out / (3 * sign[0].numel())).view(-1, 1, 1, 1, 1))
            length = grid.shape[d] - 1
            grad.narrow(d, 1, length).add_(sign)                         # the later voxel of each pair
            grad.narrow(d, 0, length).sub_(sign)                         # the earlier one
        return grad


class HashGridEncoding(nn.Module):
    """Multiresolution hash encoding in PyTorch: per level a table ``[N, T, F]``.

    Level l has scale s_l = base · per_level_scale^l − 1 and reads the 8 corners of the cell of
    x_l = u · s_l + 0.5 (u = (x + 1)/2 in [0, 1]); a level whose (ceil(s_l) + 1)^3 vertices fit in
    T is indexed densely, the others through tiny-cuda-nn's xor-of-primes hash. Levels loop in
    Python (L ≤ 16); particles and points are one batch.
    """

    def __init__(self, cfg: HashGridConfig, n_particles: int, seed: int) -> None:
        super().__init__()
        self.cfg = cfg
        size = 2 ** cfg.log2_hashmap_size
        # One [N, T, F] table per level: the backward of one level then never touches the others.
        self.tables = nn.ParameterList()
        for level in range(cfg.n_levels):
            init = torch.stack([torch.rand(size, cfg.n_features_per_level,
                                           generator=generator(seed, "init", i, "hashgrid", level))
                                for i in range(n_particles)])
            self.tables.append(nn.Parameter((init * 2 - 1) * cfg.init_range))
        self.out_dim = cfg.n_levels * cfg.n_features_per_level

    def level_scale(self, level: int) -> float:
        return self.cfg.base_resolution * self.cfg.per_level_scale ** level - 1.0

    def forward(self, x: Tensor, particles: Optional[Tensor] = None) -> Tensor:
        """Points ``[K, P, 3]`` in [-1, 1] → features ``[K, P, L · F]``."""
        k, p, _ = x.shape
        size = 2 ** self.cfg.log2_hashmap_size
        u = ((x + 1) / 2).clamp(0, 1)
        offsets = (torch.arange(k, device=x.device) * size).view(k, 1, 1)   # flat row of each particle
        feats = []
        for level, table in enumerate(self.tables):
            scale = self.level_scale(level)
            pos = u * scale + 0.5
            cell = pos.floor()
            frac = pos - cell                                                 # [K, P, 3]
            # Per axis the two vertex coordinates and weights [K, P, 2]; the 8 corners are their
            # outer combinations (x slowest), never materialised as [K, P, 8, 3].
            vertex = [cell[..., d, None].long() + torch.arange(2, device=x.device) for d in range(3)]
            side = math.ceil(scale) + 1
            if side ** 3 <= size:
                terms = [vertex[0], vertex[1] * side, vertex[2] * side * side]
                index = corners(terms, torch.add) % size
            else:
                index = corners([v * prime for v, prime in zip(vertex, HASH_PRIMES)], torch.bitwise_xor) & (size - 1)
            rows = select_particles(table, particles).reshape(k * size, -1)   # [K·T, F]
            # index_select with int64 indices: the fastest forward + backward on the CPU, ahead of
            # F.embedding and int32 indices (benchmarks/bench_hash_gather.py).
            flat = index + offsets
            values = rows.index_select(0, flat.flatten()).view(*flat.shape, -1)   # [K, P, 8, F]
            w = corners([torch.stack([1 - frac[..., d], frac[..., d]], dim=-1) for d in range(3)], torch.mul)
            feats.append((values * w[..., None]).sum(2))
        return torch.cat(feats, dim=-1)


def corners(per_axis: list[Tensor], combine) -> Tensor:
    """Combine per-axis values ``[K, P, 2]`` (x, y, z) into the 8 cell corners ``[K, P, 8]``."""
    x, y, z = per_axis
    return combine(combine(x[..., :, None, None], y[..., None, :, None]), z[..., None, None, :]).flatten(-3)


def build_encoding(kind: str, grid: GridConfig, hashgrid: HashGridConfig, n_particles: int,
                   seed: int, key: str = "system.geometry") -> nn.Module:
    """The encoding named by ``kind`` ("grid" or "hashgrid") for ``n_particles`` particles."""
    if kind == "grid":
        return GridEncoding(grid, n_particles, seed)
    if kind != "hashgrid":
        raise ConfigError(f"{key}.encoding={kind!r}: use 'grid' (dense, CPU default) or 'hashgrid'."
                          + did_you_mean(kind, ["grid", "hashgrid"]))
    backend = hashgrid.backend
    if backend not in ("auto", "torch", "tcnn"):
        raise ConfigError(f"{key}.hashgrid.backend={backend!r}: use 'auto', 'torch' or 'tcnn'")
    if backend == "torch":
        return HashGridEncoding(hashgrid, n_particles, seed)
    if backend == "tcnn" or tcnn_available():
        return TcnnHashGrid(hashgrid, n_particles, seed)
    return HashGridEncoding(hashgrid, n_particles, seed)
