"""DreamSampler (Kim, Park & Ye 2024): score distillation that follows a reverse-diffusion schedule.

DDIM sampling is a proximal update from the Tweedie estimate, and its loss is a score
distillation loss (paper §2.2). DreamSampler runs that sampler through an arbitrary generator
g(θ) (SVG, NeRF, latents: §3.1–3.2, Algorithm 2). At optimisation step k:

1. t_k follows a *decreasing* schedule tied to the step (not a random draw): from
   ``max_step_percent``·T down to ``min_step_percent``·T, linear in k over ``num_steps`` steps,
   with ``nfe`` distinct levels (each held for ``num_steps / nfe`` steps);
2. the noisy latent is formed from the generator's current latent and the noise estimated at
   the PREVIOUS step, z_t = α_t z(θ) + σ_t ε̃ with

       ε̃ = √(1 − η²) · ε̂_prev + η · ε,     ε from the keyed stream (seed, "noise", particle, step, view)

   η = 0 re-uses the previous estimate (deterministic DDIM), η = 1 draws fresh noise every step
   (SDS-like). η is the fraction σ_t/√(1 − ᾱ_{t−1}) of fresh noise in DDIM's update, set
   directly. The first step of a particle has no previous estimate and uses ε;
3. δ = ε̂_cfg(z_t, t, y) − ε̃ is the distillation residual; everything after that (weighting w(t),
   repulsion, NaN handling, the reparameterised loss whose gradient is g / B) is the shared
   :class:`~scorestudio.guidance.base.BaseGuidance` machinery. Regularisers such as data
   consistency are added by the system with their own weights.

State: the estimate carried to the next step (``carry``: the unconditional ε̂ by default, as the
authors' editing code does; the CFG estimate with a large guidance scale is far from unit
variance and would blow up z_t) is kept per item in the buffers ``prev_eps [P, V, C, h, w]``
and ``prev_valid [P, V]``, indexed by (particle id, view k of that particle in the batch). They
are in the checkpoint, so a resumed run continues the same trajectory; they grow on demand and
are resized to the checkpoint's shapes when one is loaded.

Works for every generator through the one guidance call (``guidance_type: dreamsampler``); set
``num_steps`` to the run's ``trainer.max_steps`` (the configs interpolate it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from scorestudio.guidance.base import BaseGuidance, GuidanceCall
from scorestudio.utils.config import ConfigError, ScheduledFloat, schedulable
from scorestudio.utils.distributed import gather_rows
from scorestudio.utils.registry import register

if TYPE_CHECKING:
    from scorestudio.priors.base import DiffusionPrior

CARRY = ("uncond", "cond", "cfg")


@register("dreamsampler")
class DreamSamplerGuidance(BaseGuidance):
    loss_name = "loss_dreamsampler"

    @dataclass
    class Config(BaseGuidance.Config):
        guidance_scale: ScheduledFloat = schedulable(7.5)  # CFG s of ε̂_cfg (the paper: 100 with SD for SVGs)
        num_steps: int = 1000          # optimisation steps over which t descends (= trainer.max_steps)
        nfe: Optional[int] = None      # distinct timesteps on the way (the paper's NFE); None = num_steps
        eta: float = 0.0               # fresh-noise fraction η of ε̃ (0 = deterministic, 1 = fresh each step)
        carry: str = "uncond"          # ε̂ carried to the next step: "uncond", "cond" or "cfg"

    cfg: Config

    def configure(self) -> None:
        super().configure()
        cfg = self.cfg
        if cfg.num_steps < 1 or (cfg.nfe is not None and not 1 <= cfg.nfe <= cfg.num_steps):
            raise ConfigError(f"{self.config_path}: need num_steps ≥ 1 and 1 ≤ nfe ≤ num_steps, got "
                              f"num_steps={cfg.num_steps}, nfe={cfg.nfe}")
        if not 0.0 <= cfg.eta <= 1.0:
            raise ConfigError(f"{self.config_path}.eta={cfg.eta}: the fresh-noise fraction must lie in [0, 1]")
        if cfg.carry not in CARRY:
            raise ConfigError(f"{self.config_path}.carry={cfg.carry!r}: expected one of {', '.join(CARRY)}")
        self.register_buffer("prev_eps", torch.zeros(0, 0, 0, 0, 0))
        self.register_buffer("prev_valid", torch.zeros(0, 0, dtype=torch.bool))

    # ---- the reverse schedule -------------------------------------------------------------------
    def timestep(self, prior: "DiffusionPrior", step: int) -> int:
        """t_k at optimisation ``step``: level k = ⌊step · nfe / num_steps⌋ (capped at nfe − 1),
        t = hi − (hi − lo) · k / (nfe − 1) rounded, with [lo, hi] the scheduled step bounds."""
        n_levels = self.cfg.nfe or self.cfg.num_steps
        lo, hi = self.step_bounds(prior, step)
        level = min(n_levels - 1, max(0, step) * n_levels // self.cfg.num_steps)
        return hi if n_levels == 1 else round(hi - (hi - lo) * level / (n_levels - 1))

    def sample_timesteps(self, prior: "DiffusionPrior", particle_ids: Tensor, step: int, seed: int) -> Tensor:
        """Long ``[B]``: every item at the schedule's t_k (no randomness)."""
        return torch.full((len(particle_ids),), self.timestep(prior, step), dtype=torch.long,
                          device=particle_ids.device)

    # ---- the carried noise ----------------------------------------------------------------------
    def sample_noise(self, latents: Tensor, particle_ids: Tensor, step: int, seed: int,
                     stream: str = "noise") -> Tensor:
        """ε̃ ``[B, C, h, w]`` = √(1 − η²) ε̂_prev + η ε for items with a previous estimate, ε
        (the base class's keyed draw) for the others."""
        fresh = super().sample_noise(latents, particle_ids, step, seed, stream)
        if self.cfg.eta == 1.0:
            return fresh
        previous, valid = self.previous_estimates(particle_ids, latents)
        carried = math.sqrt(1.0 - self.cfg.eta ** 2) * previous + self.cfg.eta * fresh
        return torch.where(valid.view(-1, 1, 1, 1), carried, fresh)

    def state_index(self, particle_ids: Tensor) -> tuple[Tensor, Tensor]:
        """(particle, view) row of every item in the state buffers, long ``[B]`` each."""
        keys = torch.tensor(self.item_keys(particle_ids), dtype=torch.long).view(-1, 2)
        return keys[:, 0], keys[:, 1]

    def previous_estimates(self, particle_ids: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """The stored ε̂ of each item ``[B, C, h, w]`` (zeros where there is none) and whether it
        exists ``[B]`` bool."""
        p, k = self.state_index(particle_ids)
        rows, cols = self.prev_valid.shape
        inside = (p < rows) & (k < cols)
        if not bool(inside.any()):
            return torch.zeros_like(like), inside.to(like.device)
        if self.prev_eps.shape[2:] != like.shape[1:]:
            raise ValueError(f"dreamsampler: the stored noise estimates are {tuple(self.prev_eps.shape[2:])} but "
                             f"the latents are {tuple(like.shape[1:])}; the prior changed since they were stored")
        device = self.prev_eps.device
        p, k = p.clamp(max=rows - 1).to(device), k.clamp(max=cols - 1).to(device)
        valid = inside.to(device) & self.prev_valid[p, k]
        previous = torch.where(valid.view(-1, 1, 1, 1), self.prev_eps[p, k], 0.0)
        return previous.to(like), valid.to(like.device)

    def remember(self, particle_ids: Tensor, eps: Tensor) -> None:
        """Store ``eps [B, C, h, w]`` as the items' previous estimate (growing the buffers). In a
        run sharded over processes every process stores every particle's estimate, as it holds
        every particle's parameters, so that any process's checkpoint resumes all of them
        (:func:`gather_rows` returns the rows themselves in a run of one process)."""
        particle_ids, _ = gather_rows(particle_ids.to(eps.device))
        eps, _ = gather_rows(eps)
        p, k = self.state_index(particle_ids)
        rows, cols = int(p.max()) + 1, int(k.max()) + 1
        old_rows, old_cols = self.prev_valid.shape
        if rows > old_rows or cols > old_cols or self.prev_eps.shape[2:] != eps.shape[1:]:
            self.resize_state((max(rows, old_rows), max(cols, old_cols), *eps.shape[1:]), eps)
        p, k = p.to(self.prev_eps.device), k.to(self.prev_eps.device)
        self.prev_eps[p, k] = eps.detach().to(self.prev_eps)
        self.prev_valid[p, k] = True

    def resize_state(self, shape: tuple[int, ...], like: Tensor) -> None:
        """Grow the buffers to ``shape`` = (P, V, C, h, w), keeping stored rows (all are dropped
        if the latent shape changed)."""
        eps = torch.zeros(shape, dtype=like.dtype, device=like.device)
        valid = torch.zeros(shape[:2], dtype=torch.bool, device=like.device)
        if self.prev_eps.shape[2:] == tuple(shape[2:]):
            r, c = self.prev_valid.shape
            eps[:r, :c] = self.prev_eps.to(eps)
            valid[:r, :c] = self.prev_valid.to(valid.device)
        self.prev_eps, self.prev_valid = eps, valid

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Take the checkpoint's buffer shapes (the state grows with the particles it has seen)."""
        for name in ("prev_eps", "prev_valid"):
            stored = state_dict.get(prefix + name)
            if stored is not None:
                setattr(self, name, torch.empty_like(stored, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- the residual ---------------------------------------------------------------------------
    def noise_residual(self, call: GuidanceCall):
        scale = self.cfg.guidance_scale.at(call.step)
        eps_cfg, eps_cond, eps_uncond = call.prior.predict_noise_cfg(
            call.noisy, call.t, call.prompts.cond, call.prompts.uncond, scale, perp_neg=call.prompts.perp_neg)
        self.remember(call.particle_ids, {"uncond": eps_uncond, "cond": eps_cond, "cfg": eps_cfg}[self.cfg.carry])
        return eps_cfg - call.noise, {"noise_std": call.noise.std()}
