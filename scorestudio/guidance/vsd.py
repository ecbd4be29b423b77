"""VSD, variational score distillation (ProlificDreamer, Wang et al. 2023).

    δ = ε̂_pretrained,cfg(z_t, t, y) − ε̂_lora(z_t, t, y, c)

ε̂_lora is the prior's own UNet with a LoRA adapter (peft, on the attention projections) and a
camera embedding c (flattened camera-to-world 4×4 → the UNet's class embedding; a zero camera is
"unconditional"). It models the distribution of the current renderings: each step it takes one
denoising update on the detached particle latents at a fresh t (MSE to the noise), with the
camera dropped with probability 0.1. The frozen prior and the LoRA share one UNet: the
pretrained prediction runs with the adapter disabled and no camera embedding.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scorestudio.guidance.base import BaseGuidance, GuidanceCall
from scorestudio.utils.config import ScheduledFloat, schedulable
from scorestudio.utils.registry import register
from scorestudio.utils.seeding import generator

if TYPE_CHECKING:
    from scorestudio.priors.base import DiffusionPrior

ADAPTER = "vsd_lora"


def camera_labels(cameras: Any, batch: int, device: torch.device) -> Tensor:
    """Flattened camera-to-world matrices ``[B, 16]``; zeros (unconditional) without cameras."""
    if cameras is None:
        return torch.zeros(batch, 16, device=device)
    c2w = cameras.c2w if hasattr(cameras, "c2w") else torch.as_tensor(cameras)
    return c2w.reshape(batch, 16).to(device=device, dtype=torch.float32)


@register("vsd")
class VSDGuidance(BaseGuidance):
    loss_name = "loss_vsd"

    @dataclass
    class Config(BaseGuidance.Config):
        guidance_scale: ScheduledFloat = schedulable(7.5)   # CFG of the pretrained prediction
        guidance_scale_lora: float = 1.0      # CFG of the LoRA prediction (camera vs zero camera)
        lora_rank: int = 4
        lora_alpha: Optional[float] = None    # LoRA scaling numerator; None → rank (scale 1)
        lora_target_modules: list = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
        lora_lr: float = 1e-4                 # Adam lr of the LoRA and the camera embedding
        camera_condition: bool = True         # condition the LoRA on the camera (3D); False → zeros
        camera_dropout: float = 0.1           # probability of a zero camera in the LoRA update
        weighting: str = "sds"

    def attach(self, prior: "DiffusionPrior") -> None:
        from peft import LoraConfig

        unet = prior.unet
        alpha = self.cfg.lora_alpha if self.cfg.lora_alpha is not None else self.cfg.lora_rank
        unet.add_adapter(LoraConfig(r=self.cfg.lora_rank, lora_alpha=alpha,
                                    target_modules=list(self.cfg.lora_target_modules)), adapter_name=ADAPTER)
        time_dim = unet.time_embedding.linear_2.out_features
        self.camera_embedding = nn.Sequential(nn.Linear(16, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        nn.init.zeros_(self.camera_embedding[2].weight)   # starts as the pretrained model exactly
        nn.init.zeros_(self.camera_embedding[2].bias)
        self.lora_parameters = [p for n, p in unet.named_parameters() if "lora_" in n]
        for p in self.lora_parameters:
            p.requires_grad_(True)

    def param_groups(self) -> list[dict]:
        params = [*self.lora_parameters, *self.camera_embedding.parameters()]
        return [{"params": params, "lr": self.cfg.lora_lr, "name": "vsd-lora"}]

    # ---- the two predictions ----------------------------------------------------------------
    @contextmanager
    def pretrained(self, prior: "DiffusionPrior") -> Iterator[None]:
        """The frozen prior: adapter disabled (no camera embedding is attached outside lora())."""
        prior.unet.disable_adapters()
        try:
            yield
        finally:
            prior.unet.enable_adapters()

    @contextmanager
    def lora(self, prior: "DiffusionPrior") -> Iterator[None]:
        """The LoRA model: adapter on, the camera embedding plugged in as the class embedding."""
        prior.unet.set_adapter(ADAPTER)
        prior.unet.class_embedding = self.camera_embedding
        try:
            yield
        finally:
            prior.unet.class_embedding = None

    def lora_prediction(self, call: GuidanceCall, cameras: Tensor) -> Tensor:
        prior = call.prior
        scale = self.cfg.guidance_scale_lora
        with self.lora(prior):
            if scale == 1.0:
                return prior.predict_noise(call.noisy, call.t, call.prompts.cond, class_labels=cameras)
            eps = prior.predict_noise(torch.cat([call.noisy] * 2), torch.cat([call.t] * 2),
                                      torch.cat([call.prompts.cond, call.prompts.uncond]),
                                      class_labels=torch.cat([cameras, torch.zeros_like(cameras)]))
        eps_cam, eps_uncond = eps.chunk(2)
        return eps_uncond + scale * (eps_cam - eps_uncond)

    def cameras_of(self, call: GuidanceCall) -> Tensor:
        cams = call.cameras if self.cfg.camera_condition else None
        return camera_labels(cams, call.noisy.shape[0], call.noisy.device)

    def noise_residual(self, call: GuidanceCall):
        with self.pretrained(call.prior):
            eps_pretrained, _, _ = call.prior.predict_noise_cfg(
                call.noisy, call.t, call.prompts.cond, call.prompts.uncond, self.cfg.guidance_scale.at(call.step))
        eps_lora = self.lora_prediction(call, self.cameras_of(call))
        return eps_pretrained - eps_lora, {}

    def extra_losses(self, call: GuidanceCall) -> dict[str, Tensor]:
        """One denoising step of the LoRA on the detached latents at fresh t, noise and dropout."""
        prior, z0 = call.prior, call.latents.detach()
        keys = self.item_keys(call.particle_ids)
        t = torch.stack([torch.randint(0, prior.num_train_timesteps, (), generator=generator(call.seed, "lora_t", p, call.step, k))
                         for p, k in keys]).to(z0.device)
        noise = self.sample_noise(z0, call.particle_ids, call.step, call.seed, stream="lora_noise")
        drop = torch.stack([torch.rand((), generator=generator(call.seed, "lora_drop", p, call.step, k))
                            for p, k in keys]).to(z0.device) < self.cfg.camera_dropout
        cameras = self.cameras_of(call) * (~drop).float()[:, None]
        with self.lora(prior):
            eps = prior.predict_noise(prior.add_noise(z0, noise, t), t, call.prompts.cond, class_labels=cameras)
        return {"loss_lora": F.mse_loss(eps, noise)}
