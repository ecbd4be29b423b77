"""NFSD, noise-free score distillation (Katzir et al. 2024), as in RSD appendix B.2 / RLSD app. E.

    δ = s (ε_y − ε_∅) + δ_D,   δ_D = ε_∅                 for t < t_switch (200 of 1000),
                               δ_D = ε_∅ − ε_neg          otherwise,

where ε_∅ is the unconditional prediction and ε_neg the prediction for a negative prompt that
describes what images should not look like. The sampled noise ε is never subtracted: at small t
the prior's own denoising direction replaces it, at large t the negative prompt steers away from
off-manifold images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scorestudio.guidance.base import BaseGuidance, GuidanceCall
from scorestudio.priors.prompt_processor import NFSD_NEGATIVE_PROMPT
from scorestudio.utils.config import ScheduledFloat, schedulable
from scorestudio.utils.registry import register


@register("nfsd")
class NFSDGuidance(BaseGuidance):
    loss_name = "loss_nfsd"

    @dataclass
    class Config(BaseGuidance.Config):
        guidance_scale: ScheduledFloat = schedulable(7.5)
        negative_prompt: str = NFSD_NEGATIVE_PROMPT   # the NFSD paper's default
        t_switch: int = 200                          # δ_D = ε_∅ below this timestep (of 1000)

    def t_switch(self, prior) -> int:
        """The switch timestep, rescaled when the prior has T ≠ 1000 steps."""
        return round(self.cfg.t_switch * prior.num_train_timesteps / 1000)

    def noise_residual(self, call: GuidanceCall):
        prior, b = call.prior, call.noisy.shape[0]
        negative = prior.encode_text([self.cfg.negative_prompt]).expand(b, -1, -1)
        empty = prior.encode_text([""]).expand(b, -1, -1)
        x = torch.cat([call.noisy] * 3)
        t = torch.cat([call.t] * 3)
        eps = prior.predict_noise(x, t, torch.cat([call.prompts.cond, empty, negative]))
        eps_cond, eps_uncond, eps_neg = eps.chunk(3)
        small_t = (call.t < self.t_switch(prior)).view(-1, 1, 1, 1)
        delta_d = torch.where(small_t, eps_uncond, eps_uncond - eps_neg)
        scale = self.cfg.guidance_scale.at(call.step)
        direction = prior.guided_direction(call.noisy, call.t, eps_cond, eps_uncond, call.prompts.perp_neg)
        return scale * direction + delta_d, {"frac_small_t": small_t.float().mean()}
