"""image-particles: N latent images distilled from the prior (the ``latent`` generator), ± repulsion.

The RSD paper's 2-D experiment: each particle is a latent initialised from its own seed and
optimised with Adam (lr 0.03, 500 steps) by any guidance, optionally with repulsion between
particles. At the end the decoded particles are scored by the probe: diversity (1 − mean
pairwise cosine similarity of probe features), the number of distinct shapes/colours, and
quality (mean probe probability of the attributes the prompt names). ``system.prompts`` gives
each particle its own prompt (many prompts distilled in one batched run, LMC-SDS §5.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scorestudio.systems.base import OptimizerConfig
from scorestudio.systems.distillation import DistillationSystem
from scorestudio.utils.registry import register


@register("image-particles")
class ImageParticlesSystem(DistillationSystem):
    @dataclass
    class Config(DistillationSystem.Config):
        n_particles: int = 8
        generator_type: str = "latent"
        optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="Adam", args={"lr": 0.03}))
