"""VSD, variational score distillation (ProlificDreamer, Wang et al. 2023).

    δ = ε̂_pretrained,cfg(z_t, t, y) − ε̂_lora(z_t, t, y, c)

ε̂_lora is a UNet with a LoRA adapter (peft, on the attention projections) and a camera
embedding c (flattened camera-to-world 4×4 → the UNet's class embedding; a zero camera is
"unconditional"). It models the distribution of the current renderings: each step it takes one
denoising update on the detached particle latents at a fresh t (MSE to the noise, or to
v = α_t ε − σ_t z_0 for a v-prediction LoRA model), with the camera dropped with probability 0.1.
The LoRA is conditioned on the prompt without its view suffix (the camera tells it the view), the
pretrained prediction on the view-dependent prompt, as in ProlificDreamer and threestudio.

By default the frozen prior and the LoRA share the prior's UNet: the pretrained prediction runs
with the adapter disabled and no camera embedding. ``pretrained_model_name_or_path_lora`` gives
the LoRA its own base model instead, as ProlificDreamer / threestudio do (SD 2.1-base as the
prior, SD 2.1 (768, v-prediction) under the LoRA); it must share the prior's noise schedule and
text encoder.

Precision: the UNet(s) run in the prior's dtype; the LoRA weights and the camera embedding are
float32 master weights (so is their Adam state): peft casts a layer's input to the LoRA's dtype
and the sum back to the layer's, diffusers casts the class embedding's output to the UNet's.
LoRA weights in float16 would be NaN after one Adam step (ε = 1e-8 is 0 in float16).
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
        # The LoRA's own base model (folder or cached hub id; threestudio: stabilityai/stable-diffusion-2-1);
        # None: the prior's UNet carries the LoRA (one model in memory).
        pretrained_model_name_or_path_lora: Optional[str] = None

    def attach(self, prior: "DiffusionPrior") -> None:
        from peft import LoraConfig

        if self.cfg.pretrained_model_name_or_path_lora:
            # A submodule of the prior: moved with it, its frozen weights left out of checkpoints.
            prior.unet_lora, self.lora_prediction_type = prior.load_unet(
                self.cfg.pretrained_model_name_or_path_lora, f"{self.config_path}.pretrained_model_name_or_path_lora")
        else:
            self.lora_prediction_type = prior.prediction_type
        unet = self.lora_unet(prior)
        alpha = self.cfg.lora_alpha if self.cfg.lora_alpha is not None else self.cfg.lora_rank
        unet.add_adapter(LoraConfig(r=self.cfg.lora_rank, lora_alpha=alpha,
                                    target_modules=list(self.cfg.lora_target_modules)), adapter_name=ADAPTER)
        time_dim = unet.time_embedding.linear_2.out_features
        self.camera_embedding = nn.Sequential(nn.Linear(16, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        nn.init.zeros_(self.camera_embedding[2].weight)   # starts as the pretrained model exactly
        nn.init.zeros_(self.camera_embedding[2].bias)
        self.lora_parameters = [p for n, p in unet.named_parameters() if "lora_" in n]
        for p in self.lora_parameters:   # peft makes them in the UNet's dtype: float32 master weights
            p.data = p.data.float()
            p.requires_grad_(True)

    @staticmethod
    def lora_unet(prior: "DiffusionPrior") -> nn.Module:
        """The UNet that carries the LoRA: the separate base model if one was loaded, else the prior's."""
        separate = getattr(prior, "unet_lora", None)
        return prior.unet if separate is None else separate

    def param_groups(self) -> list[dict]:
        params = [*self.lora_parameters, *self.camera_embedding.parameters()]
        return [{"params": params, "lr": self.cfg.lora_lr, "name": "vsd-lora"}]

    # ---- the two predictions ----------------------------------------------------------------
    @contextmanager
    def pretrained(self, prior: "DiffusionPrior") -> Iterator[None]:
        """The frozen prior: adapter disabled (no camera embedding is attached outside lora())."""
        shared = self.lora_unet(prior) is prior.unet
        if shared:
            prior.unet.disable_adapters()
        try:
            yield
        finally:
            if shared:
                prior.unet.enable_adapters()

    @contextmanager
    def lora(self, prior: "DiffusionPrior") -> Iterator[nn.Module]:
        """The LoRA model: adapter on, the camera embedding plugged in as the class embedding."""
        unet = self.lora_unet(prior)
        unet.set_adapter(ADAPTER)
        unet.class_embedding = self.camera_embedding
        try:
            yield unet
        finally:
            unet.class_embedding = None

    def lora_eps(self, prior: "DiffusionPrior", unet: nn.Module, x_t: Tensor, t: Tensor, text: Tensor,
                 cameras: Tensor) -> Tensor:
        """ε̂_lora ``[B, C, h, w]`` (converted from v for a v-prediction LoRA model)."""
        out = prior.denoiser_output(x_t, t, text, class_labels=cameras, unet=unet)
        return prior.eps_from_output(out, x_t, t, self.lora_prediction_type)

    def lora_prediction(self, call: GuidanceCall, cameras: Tensor) -> Tensor:
        prior = call.prior
        scale = self.cfg.guidance_scale_lora
        with self.lora(prior) as unet:
            if scale == 1.0:
                return self.lora_eps(prior, unet, call.noisy, call.t, call.prompts.without_view, cameras)
            eps = self.lora_eps(prior, unet, torch.cat([call.noisy] * 2), torch.cat([call.t] * 2),
                                torch.cat([call.prompts.without_view, call.prompts.uncond]),
                                torch.cat([cameras, torch.zeros_like(cameras)]))
        eps_cam, eps_uncond = eps.chunk(2)
        return eps_uncond + scale * (eps_cam - eps_uncond)

    def cameras_of(self, call: GuidanceCall) -> Tensor:
        cams = call.cameras if self.cfg.camera_condition else None
        return camera_labels(cams, call.noisy.shape[0], call.noisy.device)

    def noise_residual(self, call: GuidanceCall):
        with self.pretrained(call.prior):
            eps_pretrained, _, _ = call.prior.predict_noise_cfg(
                call.noisy, call.t, call.prompts.cond, call.prompts.uncond, self.cfg.guidance_scale.at(call.step),
                perp_neg=call.prompts.perp_neg)
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
        with self.lora(prior) as unet:
            out = prior.denoiser_output(prior.add_noise(z0, noise, t), t, call.prompts.without_view, class_labels=cameras,
                                        unet=unet)
        target = prior.velocity(z0, noise, t) if self.lora_prediction_type == "v_prediction" else noise
        return {"loss_lora": F.mse_loss(out, target)}
