"""latent: N images as model-space latents of the prior (the identity generator of RSD's 2-D runs).

Each particle is a latent ``[C, h, w]`` initialised from its own stream, or the encoding of a
uniform grey image (LMC-SDS §5.1's optimisation-based synthesis). Training renders are the
latents themselves (the guidance skips the encoder); evaluation renders decode them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from scorestudio.generators.base import BaseGenerator, RenderOut
from scorestudio.utils.config import ConfigError
from scorestudio.utils.registry import register
from scorestudio.utils.seeding import generator


@register("latent")
class LatentGenerator(BaseGenerator):
    renders_latents = True
    # Keys that configs written before the generator layer set directly under ``system``.
    system_keys = ("init_std", "init", "grey_level")

    @dataclass
    class Config:
        init: str = "random"       # "random": N(0, init_std² I), one stream per particle; "grey": a grey image's latent
        init_std: float = 1.0
        grey_level: float = 0.5    # pixel value of the "grey" init, in [0, 1]

    cfg: Config

    def configure(self) -> None:
        if self.prior is None:
            raise ConfigError(f"{self.config_path}: the latent generator needs the prior (its latent shape)")
        self.latents = torch.nn.Parameter(self.initial_latents())      # [N, C, h, w]

    def initial_latents(self) -> Tensor:
        """``[N, C, h, w]``: noise from each particle's own stream, or the grey image's latent."""
        cfg, prior, n = self.cfg, self.prior, self.n_particles
        shape = (prior.latent_channels, prior.latent_size, prior.latent_size)
        if cfg.init == "random":
            return torch.stack([torch.randn(shape, generator=generator(self.seed, "init", i)) * cfg.init_std
                                for i in range(n)])
        if cfg.init == "grey":
            size = prior.image_size
            grey = torch.full((1, 3, size, size), float(cfg.grey_level), device=prior.device)
            with torch.no_grad():
                z = prior.encode_images(grey).cpu()
            return z.expand(n, *shape).clone()
        raise ConfigError(f"{self.config_path}.init={cfg.init!r}: use 'random' or 'grey'")

    def render(self, particle_ids: Tensor, cameras=None, step: int = 0, *, resolution: Optional[int] = None,
               training: bool = True) -> RenderOut:
        """Training: the latents ``[K, C, h, w]`` of ``particle_ids``; evaluation: their decoded
        images ``[K, 3, H, W]`` in [0, 1]."""
        rows = self.rows(particle_ids)
        latents = self.latents if rows is None else self.latents[rows]
        if training:
            return RenderOut(images=latents, particle_ids=particle_ids)
        return RenderOut(images=self.prior.decode_latents(latents).clamp(0, 1), particle_ids=particle_ids)
