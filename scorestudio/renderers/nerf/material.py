"""DreamFusion's diffuse shading with the camera's point light, and the background.

Shading of a sample with albedo ρ, unit normal n, at x, lit by a point light at l:

    lambertian  = ρ · (ambient + diffuse · max(0, n · (l − x)/|l − x|))
    textureless = ambient + diffuse · max(0, n · ...)          (white albedo: shape only)
    albedo      = ρ                                          (no light: colour only)

split into a base colour (no normal needed) and the point light's diffuse part, so that the
renderer can evaluate normals only where samples are visible (``VolumeRenderer``'s detail pass).

During training each particle draws its shading every step from its own stream: only ``albedo``
for the first ``ambient_only_steps`` (normals of the initial blob are meaningless), then albedo /
lambertian / textureless with the configured probabilities. The defaults are threestudio's
``diffuse-with-point-light-material`` (ambient 0.1, diffuse 0.9, diffuse_prob 0.75 then
textureless_prob 0.5, i.e. 0.25 / 0.375 / 0.375; threestudio/models/materials/
diffuse_with_point_light_material.py). Evaluation uses ``eval_shading``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from scorestudio.renderers.nerf.geometry import ParticleMLP
from scorestudio.utils.base import BaseModule
from scorestudio.utils.config import ConfigError
from scorestudio.utils.seeding import generator

SHADINGS = ("albedo", "lambertian", "textureless")


@dataclass
class MaterialConfig:
    ambient_light_color: float = 0.1     # grey level of the ambient light
    diffuse_light_color: float = 0.9     # grey level of the point light
    ambient_only_steps: int = 1000       # warm-up steps that render albedo only
    albedo_prob: float = 0.25            # after warm-up: P(albedo), P(lambertian), P(textureless); sum to 1
    lambertian_prob: float = 0.375
    textureless_prob: float = 0.375
    eval_shading: str = "lambertian"     # shading of validation / test renders after warm-up


class DiffuseMaterial(BaseModule):
    """Per-sample colours from albedo, normals and the point light (see the module docstring)."""

    Config = MaterialConfig
    cfg: MaterialConfig

    def configure(self) -> None:
        cfg, key = self.cfg, self.config_path
        probs = (cfg.albedo_prob, cfg.lambertian_prob, cfg.textureless_prob)
        if min(probs) < 0 or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise ConfigError(f"{key}: albedo_prob + lambertian_prob + textureless_prob must be 1 "
                              f"(each ≥ 0), got {probs}")
        if cfg.eval_shading not in SHADINGS:
            raise ConfigError(f"{key}.eval_shading={cfg.eval_shading!r}: use one of {SHADINGS}")
        self.register_buffer("cumulative", torch.tensor(probs).cumsum(0), persistent=False)

    def training_shading(self, step: int, particles: Tensor, seed: int) -> Tensor:
        """Shading index into ``SHADINGS`` per particle of ``particles`` (long ``[K]``), long ``[K]``;
        particle i's draw comes from the stream (seed, "shading", i, step)."""
        if step < self.cfg.ambient_only_steps:
            return torch.zeros(len(particles), dtype=torch.long)
        u = torch.stack([torch.rand((), generator=generator(seed, "shading", i, step)) for i in particles.tolist()])
        return torch.searchsorted(self.cumulative.cpu(), u, right=True).clamp(max=len(SHADINGS) - 1)

    def eval_shading(self, step: int, n_particles: int) -> Tensor:
        """Shading index per particle for evaluation renders: albedo during warm-up."""
        name = "albedo" if step < self.cfg.ambient_only_steps else self.cfg.eval_shading
        return torch.full((n_particles,), SHADINGS.index(name), dtype=torch.long)

    @staticmethod
    def needs_normals(shading: Tensor) -> bool:
        return bool((shading != SHADINGS.index("albedo")).any())

    def base_color(self, albedo: Tensor, shading: Tensor) -> Tensor:
        """The part of the colour ``[N, M, 3]`` that needs no normal: ρ (albedo), ambient · ρ
        (lambertian) or ambient (textureless); ``albedo`` ``[N, M, 3]``, ``shading`` ``[N]``."""
        mode = shading.to(albedo.device).view(-1, 1, 1)
        ambient = self.cfg.ambient_light_color
        lit = torch.where(mode == SHADINGS.index("textureless"), torch.full_like(albedo, ambient), ambient * albedo)
        return torch.where(mode == SHADINGS.index("albedo"), albedo, lit)

    def diffuse_color(self, albedo: Tensor, normals: Tensor, positions: Tensor, lights: Tensor,
                      shading: Tensor) -> Tensor:
        """The point light's part ``[N, M, 3]``: diffuse · max(0, n · l̂) times ρ (lambertian), 1
        (textureless) or 0 (albedo); every input ``[N, M, 3]``, ``shading`` ``[N]``."""
        to_light = F.normalize(lights - positions, dim=-1)
        light = self.cfg.diffuse_light_color * (normals * to_light).sum(-1, keepdim=True).clamp_min(0)
        mode = shading.to(albedo.device).view(-1, 1, 1)
        lit = torch.where(mode == SHADINGS.index("textureless"), light.expand_as(albedo), albedo * light)
        return torch.where(mode == SHADINGS.index("albedo"), torch.zeros_like(albedo), lit)

    def forward(self, albedo: Tensor, normals: Tensor, positions: Tensor, lights: Tensor, shading: Tensor) -> Tensor:
        """Colours ``[N, M, 3]`` = base + diffuse (see the module docstring)."""
        return self.base_color(albedo, shading) + self.diffuse_color(albedo, normals, positions, lights, shading)


@dataclass
class BackgroundConfig:
    type: str = "solid"                  # "solid": a fixed colour; "mlp": learned colour of the ray direction
    color: list = field(default_factory=lambda: [1.0, 1.0, 1.0])   # solid colour (white, like the embedded prior's data)
    n_frequencies: int = 2               # mlp: sin/cos of the direction at 2^0..2^(n−1) · π
    hidden_dim: int = 16                 # mlp width (one hidden layer, sigmoid output)


class Background(BaseModule):
    """Background colour ``[N, R, 3]`` for ray directions ``[N, R, 3]``, one MLP per particle."""

    Config = BackgroundConfig
    cfg: BackgroundConfig

    def __init__(self, cfg=None, n_particles: int = 1, seed: int = 0, path: str = "system.background") -> None:
        self.n_particles, self.init_seed = n_particles, seed   # read by configure()
        super().__init__(cfg, path)

    def configure(self) -> None:
        cfg = self.cfg
        if cfg.type not in ("solid", "mlp"):
            raise ConfigError(f"{self.config_path}.type={cfg.type!r}: use 'solid' or 'mlp'")
        if len(cfg.color) != 3:
            raise ConfigError(f"{self.config_path}.color must be [r, g, b] in [0, 1], got {cfg.color}")
        self.register_buffer("color", torch.tensor(cfg.color, dtype=torch.float32), persistent=False)
        if cfg.type == "mlp":
            self.mlp = ParticleMLP(3 + 6 * cfg.n_frequencies, 3, cfg.hidden_dim, 1, self.n_particles,
                                   self.init_seed, "background.mlp")

    def forward(self, dirs: Tensor, particles: Optional[Tensor] = None) -> Tensor:
        if self.cfg.type == "solid":
            return self.color.expand_as(dirs)
        scales = (2.0 ** torch.arange(self.cfg.n_frequencies, device=dirs.device)) * math.pi
        angles = (dirs[..., None, :] * scales[:, None]).flatten(-2)
        return torch.sigmoid(self.mlp(torch.cat([dirs, angles.sin(), angles.cos()], dim=-1), particles))
