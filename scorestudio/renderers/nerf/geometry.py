"""Density and albedo fields of N particles, evaluated for all particles in one batched call.

    field = ParticleGeometry(cfg, n_particles=4, seed=0)
    out = field(points)                # points [N, P, 3] → density [N, P], albedo [N, P, 3], raw [N, P]
    n = field.normals(points, out["raw"])   # [N, P, 3], finite differences of the density

Every parameter is stacked along a leading particle axis (the encoding's grid / hash tables, the
MLP's weights ``[N, d_in, d_out]`` applied with ``torch.baddbmm``), so particle i's outputs and
gradients only involve particle i's parameters. ``particles`` (long ``[K]``) evaluates a subset:
row k of the points belongs to particle ``particles[k]``.

Density = activation(raw + blob(x)): the DreamFusion / Magic3D initial blob puts a soft ball of
density at the centre (threestudio's ``density_bias``), softplus or exp activation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scorestudio.renderers.nerf.encodings import GridConfig, HashGridConfig, build_encoding, select_particles
from scorestudio.utils.base import BaseModule
from scorestudio.utils.config import ConfigError
from scorestudio.utils.seeding import generator

DENSITY_ACTIVATIONS = {"softplus": F.softplus, "exp": torch.exp}


@dataclass
class GeometryConfig:
    radius: float = 1.0              # scene = ball of this radius; objects should fit in ~0.7 of it
    encoding: str = "grid"           # "grid" (dense volume, CPU default) or "hashgrid"
    grid: GridConfig = field(default_factory=GridConfig)
    hashgrid: HashGridConfig = field(default_factory=HashGridConfig)
    hidden_dim: int = 32             # width of the MLP after the encoding
    hidden_layers: int = 1           # hidden layers (ReLU) before the 4 outputs (raw density, albedo)
    density_activation: str = "softplus"   # "softplus" or "exp"
    # Initial blob added to the raw density: "blob_magic3d" = blob_density · (1 − r / blob_radius),
    # "blob_dreamfusion" = blob_density · exp(−r² / (2 blob_radius²)), or "none".
    density_bias: str = "blob_magic3d"
    blob_density: float = 10.0
    blob_radius: float = 0.5         # scene units
    normal_eps: float = 0.01         # finite-difference step of the normals, scene units
    # Points (all particles together) per evaluation of the encoding + MLP: ~128k keeps the
    # hidden activations in a CPU's last-level cache, which one call over a whole batch of
    # particles does not. 0 = everything at once (GPUs).
    chunk_points: int = 131072


class ParticleLinear(nn.Module):
    """N independent affine maps ``x [K, P, d_in] → [K, P, d_out]`` (weight ``[N, d_in, d_out]``,
    bias ``[N, 1, d_out]``), initialised like ``nn.Linear`` from each particle's own stream."""

    def __init__(self, d_in: int, d_out: int, n_particles: int, seed: int, name: str) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)
        draws = [torch.rand(d_in + 1, d_out, generator=generator(seed, "init", i, name)) * 2 - 1
                 for i in range(n_particles)]
        init = torch.stack(draws) * bound                                  # [N, d_in + 1, d_out]
        self.weight = nn.Parameter(init[:, :d_in].contiguous())
        self.bias = nn.Parameter(init[:, d_in:].contiguous())

    def forward(self, x: Tensor, particles: Optional[Tensor] = None) -> Tensor:
        return torch.baddbmm(select_particles(self.bias, particles), x, select_particles(self.weight, particles))


class ParticleMLP(nn.Module):
    """ReLU MLP with a particle axis: ``[K, P, d_in] → [K, P, d_out]``."""

    def __init__(self, d_in: int, d_out: int, hidden_dim: int, hidden_layers: int, n_particles: int,
                 seed: int, name: str) -> None:
        super().__init__()
        dims = [d_in] + [hidden_dim] * hidden_layers + [d_out]
        self.layers = nn.ModuleList(ParticleLinear(a, b, n_particles, seed, f"{name}.{i}")
                                    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])))

    def forward(self, x: Tensor, particles: Optional[Tensor] = None) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, particles)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class ParticleGeometry(BaseModule):
    """Density + albedo fields of ``n_particles`` particles (see the module docstring)."""

    Config = GeometryConfig
    cfg: GeometryConfig

    def __init__(self, cfg=None, n_particles: int = 1, seed: int = 0, path: str = "system.geometry") -> None:
        self.n_particles, self.init_seed = n_particles, seed   # read by configure()
        super().__init__(cfg, path)

    def configure(self) -> None:
        cfg, key = self.cfg, self.config_path
        if cfg.density_activation not in DENSITY_ACTIVATIONS:
            raise ConfigError(f"{key}.density_activation={cfg.density_activation!r}: use 'softplus' or 'exp'")
        if cfg.density_bias not in ("blob_magic3d", "blob_dreamfusion", "none"):
            raise ConfigError(f"{key}.density_bias={cfg.density_bias!r}: use 'blob_magic3d', 'blob_dreamfusion' or 'none'")
        self.encoding = build_encoding(cfg.encoding, cfg.grid, cfg.hashgrid, self.n_particles, self.init_seed, key)
        self.mlp = ParticleMLP(self.encoding.out_dim, 4, cfg.hidden_dim, cfg.hidden_layers,
                               self.n_particles, self.init_seed, "geometry.mlp")

    def density_bias(self, points: Tensor) -> Tensor:
        """The initial blob ``[K, P]`` at points ``[K, P, 3]`` (scene units)."""
        cfg = self.cfg
        if cfg.density_bias == "none":
            return torch.zeros_like(points[..., 0])
        r = points.norm(dim=-1)
        if cfg.density_bias == "blob_magic3d":
            return cfg.blob_density * (1 - r / cfg.blob_radius)
        return cfg.blob_density * torch.exp(-0.5 * (r / cfg.blob_radius) ** 2)

    def raw(self, points: Tensor, particles: Optional[Tensor] = None) -> Tensor:
        """Pre-activation density and albedo logits ``[K, P, 4]`` at points ``[K, P, 3]``,
        evaluated in chunks of ``chunk_points`` points along P (every particle in each chunk)."""
        k, p, _ = points.shape
        step = max(1, self.cfg.chunk_points // k) if self.cfg.chunk_points else p
        if step >= p:
            return self.raw_chunk(points, particles)
        return torch.cat([self.raw_chunk(points[:, i: i + step], particles) for i in range(0, p, step)], dim=1)

    def raw_chunk(self, points: Tensor, particles: Optional[Tensor] = None) -> Tensor:
        x = (points / self.cfg.radius).clamp(-1, 1)
        out = self.mlp(self.encoding(x, particles), particles)
        return torch.cat([out[..., :1] + self.density_bias(points)[..., None], out[..., 1:]], dim=-1)

    def forward(self, points: Tensor, particles: Optional[Tensor] = None) -> dict[str, Tensor]:
        """``density`` ``[K, P]`` (≥ 0), ``albedo`` ``[K, P, 3]`` in [0, 1] and ``raw`` ``[K, P]``
        (pre-activation density) at points ``[K, P, 3]``."""
        out = self.raw(points, particles)
        raw = out[..., 0]
        return {"density": DENSITY_ACTIVATIONS[self.cfg.density_activation](raw),
                "albedo": torch.sigmoid(out[..., 1:]), "raw": raw}

    def density(self, points: Tensor, particles: Optional[Tensor] = None) -> Tensor:
        """Activated density ``[K, P]`` only."""
        return DENSITY_ACTIVATIONS[self.cfg.density_activation](self.raw(points, particles)[..., 0])

    def normals(self, points: Tensor, raw: Tensor, particles: Optional[Tensor] = None) -> Tensor:
        """Unit normals ``[K, P, 3]`` = −∇raw / |∇raw| by forward differences (3 extra evaluations
        in one call); ``raw`` ``[K, P]`` is the pre-activation density at ``points`` (the
        activation is monotone, so it has the same gradient direction and never saturates)."""
        eps = self.cfg.normal_eps
        k, p, _ = points.shape
        offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps
        shifted = (points[:, :, None, :] + offsets).reshape(k, p * 3, 3)
        raw_shifted = self.raw(shifted, particles)[..., 0].view(k, p, 3)
        grad = (raw_shifted - raw[..., None]) / eps
        return -F.normalize(grad, dim=-1)

    def tv_loss(self) -> Tensor:
        """Total variation of the feature grid per particle ``[N]`` (grid encoding only)."""
        if not hasattr(self.encoding, "tv_loss"):
            raise ConfigError(f"{self.config_path}: the TV regulariser needs encoding=grid, "
                              f"not {self.cfg.encoding!r}; set its weight to 0")
        return self.encoding.tv_loss()
