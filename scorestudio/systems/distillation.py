"""Base of every system that distils a prior: owns the prior, prompt processor and guidance."""

from __future__ import annotations

from dataclasses import dataclass, field

from scorestudio.systems.base import BaseSystem
from scorestudio.utils.registry import find


class DistillationSystem(BaseSystem):
    """Builds ``self.prior``, ``self.prompt_processor`` and ``self.guidance`` from the config.

    The prior is a frozen submodule (moved with the system, left out of checkpoints); the
    guidance may add trainable parts of its own (VSD's LoRA), optimised in their own groups.
    """

    @dataclass
    class Config(BaseSystem.Config):
        prior_type: str = "embedded"          # registered prior: embedded, stable-diffusion, deepfloyd-if
        prior: dict = field(default_factory=dict)
        prompt_processor: dict = field(default_factory=dict)   # prompt, negative_prompt, view thresholds
        guidance_type: str = "sds"            # registered guidance: sds, nfsd, vsd, ...
        guidance: dict = field(default_factory=dict)

    def build_distillation(self, **guidance_overrides) -> None:
        cfg = self.cfg
        self.prior = find(cfg.prior_type, kind="priors")(cfg.prior, path="system.prior")
        self.prompt_processor = find("prompt-processor")(cfg.prompt_processor, path="system.prompt_processor")
        self.guidance = find(cfg.guidance_type, kind="guidance")(
            {**cfg.guidance, **guidance_overrides}, path="system.guidance")
        self.guidance.attach(self.prior)

    def extra_param_groups(self) -> list[dict]:
        return self.guidance.param_groups()
