"""dreamfusion: text-to-3D with N NeRF particles distilled from a prior, ± repulsion (RSD §6.1.3).

The distillation system with the ``nerf`` generator and DreamFusion's defaults: RSD's 3-D runs
scale the repulsion by σ_t² and optimise with Adam (betas 0.9/0.99, eps 1e-15); the test orbit
is scored by the probe and the opacity evaluators. Each step renders ``views_per_particle``
random cameras of every particle in one batch (the particles' fields are stacked, never looped
over) and feeds the B = N × V images to any guidance with view-dependent prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scorestudio.systems.base import OptimizerConfig
from scorestudio.systems.distillation import DistillationSystem, EvalConfig
from scorestudio.utils.registry import register


@register("dreamfusion")
class DreamFusionSystem(DistillationSystem):
    @dataclass
    class Config(DistillationSystem.Config):
        n_particles: int = 4
        generator_type: str = "nerf"
        guidance: dict = field(default_factory=lambda: {"repulsion": {"scale": "sigma2"}})
        evaluation: EvalConfig = field(default_factory=lambda: EvalConfig(evaluators=["probe", "opacity"]))
        optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(
            name="Adam", args={"lr": 0.01, "betas": [0.9, 0.99], "eps": 1e-15}))
