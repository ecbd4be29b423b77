"""The guidance interface shared by SDS, NFSD, VSD, LMC-SDS, ... and the particle repulsion.

Every guidance is called the same way by every generator (NeRF, SVG, latent images)::

    out = guidance(prior, rendered, prompts, particle_ids, step, seed=..., cameras=...)
    loss = sum(v for k, v in out.items() if k.startswith("loss_"))

and returns named losses plus scalars to log. A subclass only says how to turn the prior's noise
predictions into a noise residual δ (:meth:`BaseGuidance.noise_residual`); the base class does the
rest, identically for all methods:

- timestep sampling t ~ U[min_step, max_step]·T with scheduled bounds, one t for the whole batch
  or one per particle, from generators keyed by (seed, particle, step);
- the RSD repulsion between particles (a :class:`~scorestudio.guidance.repulsion.Repulsion` built
  from ``cfg.repulsion``), added to δ of any method (or, with ``on: rendered``, to the rendered
  images as ``loss_repulsion``), across processes when the particles are sharded;
- weighting g = w(t) (δ + γ c(t) r), optional clipping, NaN/Inf replaced by 0 and counted;
- the reparameterisation loss ½‖z − sg(z − g)‖² / B, whose gradient w.r.t. z is exactly g / B.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

from scorestudio.guidance.repulsion import Repulsion, RepulsionConfig
from scorestudio.guidance.schedule import timestep_weight
from scorestudio.utils.base import BaseModule
from scorestudio.utils.config import ConfigError, ScheduledFloat, schedulable
from scorestudio.utils.seeding import generator

if TYPE_CHECKING:
    from scorestudio.priors.base import DiffusionPrior
    from scorestudio.priors.prompt_processor import PromptBatch


@dataclass
class GuidanceCall:
    """Everything a method's :meth:`noise_residual` may need about one guidance call."""

    prior: "DiffusionPrior"
    latents: Tensor            # z_0 [B, C, h, w] (the loss flows back through it)
    noisy: Tensor              # z_t [B, C, h, w], detached
    noise: Tensor              # ε [B, C, h, w]
    t: Tensor                  # long [B]
    prompts: "PromptBatch"
    particle_ids: Tensor       # long [B]
    step: int
    seed: int
    cameras: Any = None


class BaseGuidance(BaseModule):
    """Score-distillation guidance; subclasses implement :meth:`noise_residual`.

    ``self.repulsion`` is the :class:`Repulsion` of ``cfg.repulsion`` (callable on any latents or
    images, e.g. by a sampler that reuses a guidance's repulsion).
    """

    loss_name = "loss_sds"

    @dataclass
    class Config:
        guidance_scale: ScheduledFloat = schedulable(7.5)  # CFG scale s: ε_u + s(ε_c − ε_u)
        min_step_percent: ScheduledFloat = schedulable(0.02)  # t ~ U[min, max] · T
        max_step_percent: ScheduledFloat = schedulable(0.98)
        timestep_per_particle: bool = False  # one t per particle (True) or for the batch (False)
        weighting: str = "sds"               # w(t): "sds" (1 − ᾱ_t), "uniform", "fantasia3d"
        grad_clip: Optional[float] = None    # clamp g elementwise to [−c, c]; None = off
        rgb_as_latents: bool = False         # inputs are already model-space latents
        repulsion: RepulsionConfig = field(default_factory=RepulsionConfig)

    cfg: Config

    def configure(self) -> None:
        # A plain dict, so the frozen networks of a method never enter this module's state dict.
        self._frozen: dict[str, torch.nn.Module] = {}
        self.repulsion = Repulsion(self.cfg.repulsion, path=f"{self.config_path}.repulsion")
        if self.repulsion.on_images and self.cfg.rgb_as_latents:
            raise ConfigError(f"{self.config_path}.repulsion.on=rendered needs rendered images, but the inputs are "
                              "latents (rgb_as_latents: true); for latent particles use on=clean")

    # ---- to override ------------------------------------------------------------------------
    def attach(self, prior: "DiffusionPrior") -> None:
        """Called once by the system with its prior (VSD adds its LoRA here)."""

    def param_groups(self) -> list[dict]:
        """Optimizer groups of the guidance's own trainable parts, with their learning rates."""
        return []

    def noise_residual(self, call: GuidanceCall) -> tuple[Tensor, dict[str, Tensor]]:
        """δ ``[B, C, h, w]`` (before w(t)) and extra scalars to log, without autograd."""
        raise NotImplementedError

    def extra_losses(self, call: GuidanceCall) -> dict[str, Tensor]:
        """Losses of the method's own networks (e.g. VSD's LoRA); empty by default."""
        return {}

    # ---- the shared call --------------------------------------------------------------------
    def __call__(self, prior: "DiffusionPrior", rendered: Tensor, prompts: "PromptBatch",
                 particle_ids: Tensor, step: int, seed: int = 0, cameras: Any = None) -> dict[str, Tensor]:
        """Distillation losses for a batch of B = particles × views renderings.

        Args:
            prior: the frozen diffusion prior.
            rendered: ``[B, 3, H, W]`` in [0, 1], or model-space latents ``[B, C, h, w]`` when
                ``rgb_as_latents``.
            prompts: text conditioning, rows aligned with ``rendered``.
            particle_ids: long ``[B]``: the particle each item belongs to.
            step: global optimisation step (schedules, random streams).
            seed: run seed; randomness is keyed by (seed, particle, step), never global.
            cameras: per-item camera information (view-dependent methods, VSD).
        Returns:
            ``{loss_name: loss, ...losses, "grad_norm", "t", "n_nonfinite", ...}``.
        """
        latents = rendered if self.cfg.rgb_as_latents else prior.encode_images(rendered)
        particle_ids = particle_ids.to(latents.device).long()
        t = self.sample_timesteps(prior, particle_ids, step, seed)
        noise = self.sample_noise(latents, particle_ids, step, seed)
        noisy = prior.add_noise(latents.detach(), noise, t)
        call = GuidanceCall(prior, latents, noisy, noise, t, prompts, particle_ids, step, seed, cameras)
        with torch.no_grad():
            delta, logs = self.noise_residual(call)
        weight = timestep_weight(prior.alphas_cumprod, t, self.cfg.weighting).view(-1, 1, 1, 1)
        on_images = self.repulsion.on_images
        repulsion = self.repulsion_term(call, rendered if on_images else None)
        if repulsion is not None:
            logs["repulsion_norm"] = repulsion.flatten(1).norm(dim=1).mean()
            if not on_images:
                delta = delta + repulsion
        grad, n_bad = self.sanitize(weight * delta)
        out = {self.loss_name: self.gradient_loss(latents, grad), **self.extra_losses(call)}
        if on_images and repulsion is not None:
            image_grad, n_bad_images = self.sanitize(weight * repulsion)
            out["loss_repulsion"] = self.gradient_loss(rendered, image_grad)
            n_bad += n_bad_images
        out.update(grad_norm=grad.flatten(1).norm(dim=1).mean(), t=t.float().mean(),
                   n_nonfinite=torch.tensor(float(n_bad)), **logs)
        return out

    @staticmethod
    def gradient_loss(x: Tensor, grad: Tensor) -> Tensor:
        """½‖x − sg(x − g)‖² / B: ∂/∂x = g / B exactly, whatever the generator behind x ``[B, ...]``."""
        target = (x - grad).detach()
        return 0.5 * (x - target).pow(2).sum() / x.shape[0]

    # ---- pieces -----------------------------------------------------------------------------
    def step_bounds(self, prior: "DiffusionPrior", step: int) -> tuple[int, int]:
        """Integer timestep range [lo, hi] at ``step`` from the scheduled percentages."""
        n = prior.num_train_timesteps
        lo = int(self.cfg.min_step_percent.at(step) * n)
        hi = int(self.cfg.max_step_percent.at(step) * n)
        lo, hi = max(0, min(lo, n - 1)), max(0, min(hi, n - 1))
        return lo, max(lo, hi)

    def sample_timesteps(self, prior: "DiffusionPrior", particle_ids: Tensor, step: int, seed: int) -> Tensor:
        """Long ``[B]``: one t per particle (keyed by particle) or one for all (keyed by step)."""
        lo, hi = self.step_bounds(prior, step)
        if not self.cfg.timestep_per_particle:
            t = torch.randint(lo, hi + 1, (), generator=generator(seed, "t", step))
            return t.expand(len(particle_ids)).to(particle_ids.device)
        per = {int(p): torch.randint(lo, hi + 1, (), generator=generator(seed, "t", int(p), step))
               for p in particle_ids.unique().tolist()}
        return torch.stack([per[int(p)] for p in particle_ids.tolist()]).to(particle_ids.device)

    @staticmethod
    def item_keys(particle_ids: Tensor) -> list[tuple[int, int]]:
        """(particle, k) per item, k = how many items of that particle came before: the random
        stream of an item then depends on its particle, not on its position in the batch."""
        seen: dict[int, int] = {}
        keys = []
        for p in particle_ids.tolist():
            keys.append((p, seen.get(p, 0)))
            seen[p] = keys[-1][1] + 1
        return keys

    @classmethod
    def sample_noise(cls, latents: Tensor, particle_ids: Tensor, step: int, seed: int,
                     stream: str = "noise") -> Tensor:
        """ε ``[B, C, h, w]``: item k of particle p uses stream (seed, stream, p, step, k)."""
        rows = [torch.randn(latents.shape[1:], generator=generator(seed, stream, p, step, k))
                for p, k in cls.item_keys(particle_ids)]
        return torch.stack(rows).to(device=latents.device, dtype=latents.dtype)

    def sanitize(self, grad: Tensor) -> tuple[Tensor, int]:
        """Replace NaN/Inf by 0 (counted, never propagated), then clip if configured."""
        bad = ~torch.isfinite(grad)
        n_bad = int(bad.sum())
        if n_bad:
            grad = torch.where(bad, torch.zeros_like(grad), grad)
        if self.cfg.grad_clip is not None:
            grad = grad.clamp(-self.cfg.grad_clip, self.cfg.grad_clip)
        return grad, n_bad

    # ---- repulsion --------------------------------------------------------------------------
    def repulsion_term(self, call: GuidanceCall, rendered: Optional[Tensor] = None) -> Optional[Tensor]:
        """:attr:`repulsion` of the call's noisy latents z_t (``on="clean"``: of z_0), or of the
        ``rendered`` images ``[B, 3, H, W]`` when given (``on="rendered"``); this process's block
        of a sharded run."""
        if rendered is not None:
            return self.repulsion(call.prior, rendered.detach(), call.t, call.particle_ids, call.step, images=True,
                                  sharded=True)
        source = self.repulsion.latent_source(call.noisy, call.latents.detach())
        return self.repulsion(call.prior, source, call.t, call.particle_ids, call.step, sharded=True)
