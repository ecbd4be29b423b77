"""SDS (DreamFusion, Poole et al. 2022): δ = ε̂_cfg(z_t, t, y) − ε."""

from __future__ import annotations

from dataclasses import dataclass

from scorestudio.guidance.base import BaseGuidance, GuidanceCall
from scorestudio.utils.config import ScheduledFloat, schedulable
from scorestudio.utils.registry import register


@register("sds")
class SDSGuidance(BaseGuidance):
    loss_name = "loss_sds"

    @dataclass
    class Config(BaseGuidance.Config):
        guidance_scale: ScheduledFloat = schedulable(100.0)  # DreamFusion's CFG for SD; 20 for IF

    def noise_residual(self, call: GuidanceCall):
        scale = self.cfg.guidance_scale.at(call.step)
        eps_cfg, _, _ = call.prior.predict_noise_cfg(call.noisy, call.t, call.prompts.cond,
                                                    call.prompts.uncond, scale, perp_neg=call.prompts.perp_neg)
        return eps_cfg - call.noise, {}
