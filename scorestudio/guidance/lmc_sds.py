"""LMC-SDS: score distillation with a learned manifold corrective (Kolotouros et al. 2024).

SDS's residual splits exactly (paper Eq. 6) into a prompt term and a "projection" term:

    ε̂_cfg − ε = ω (ε_y − ε_∅)  +  (ε_∅ − ε)          ("L_cond" + "L_proj")
    ε_∅ − ε   = (α_t / σ_t) (z − ẑ_t),                ẑ_t = (z_t − σ_t ε_∅) / α_t  (Eq. 7)

and ẑ_t is a *biased* (blurred) estimate of z, so L_proj removes detail; DreamFusion then needs
ω = 100 to outweigh it, which over-saturates. LMC-SDS keeps L_cond and replaces z in L_proj by
b̂ψ(z, t), a learned model of the prior's bias (:mod:`.manifold_corrective`), without the
α_t/σ_t weight (paper §4: it improves fidelity):

    δ = (1/ω) [ ω (ε_y − ε_∅)  +  λ (b̂ψ(z, t) − ẑ_t) ]    (no Jacobians; 1/ω as the paper's set-up;
                                                          λ = ``lmc_weight``, 1 in the paper)

b̂ψ is rescaled to ẑ_t's per-sample mean and std before the difference (the normalisation of
Eq. 10 absorbed into b̂, as trained). ``fixed_epsilon``: L_cond uses one ε per particle for the
whole run (drawn from the particle's own seed stream), L_lmc keeps a fresh ε each step — the
paper's diversity mode. Timesteps, weighting w(t), repulsion and the reparametrised loss are the
shared ones of :class:`~scorestudio.guidance.base.BaseGuidance`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from scorestudio.guidance.base import BaseGuidance, GuidanceCall
from scorestudio.guidance.manifold_corrective import (FOLDER_NAME, TRAIN_HINT, CorrectiveWeightsNotFound,
                                                      IdentityCorrective, load_corrective, match_statistics)
from scorestudio.utils.config import ScheduledFloat, schedulable
from scorestudio.utils.registry import register

if TYPE_CHECKING:
    from scorestudio.priors.base import DiffusionPrior

FIXED_EPSILON_STREAM = "fixed-epsilon"   # sample_noise stream of the fixed ε (step key 0 forever)


@register("lmc-sds")
class LMCSDSGuidance(BaseGuidance):
    loss_name = "loss_lmc_sds"

    @dataclass
    class Config(BaseGuidance.Config):
        guidance_scale: ScheduledFloat = schedulable(7.5)   # ω; the paper works at 5-20 instead of SDS's 100
        # w(t): the paper's gradients carry none ("omitted in the sequel"); uniform also beats SDS's
        # 1 − ᾱ_t on the embedded prior (benchmarks/RESULTS.md, "LMC-SDS").
        weighting: str = "uniform"
        # Folder of b̂ψ (config.json + model.safetensors). None: <prior folder>/manifold_corrective
        # (shipped with the embedded prior). "identity": b̂(z, t) = z, an ablation.
        corrective_path: Optional[str] = None
        fixed_epsilon: bool = False          # one ε per particle for the whole run, in L_cond only
        normalize_corrective: bool = True    # rescale b̂ψ to ẑ_t's mean/std (as trained with L_k)
        scale_by_inverse_omega: bool = True  # δ /= ω, so ω can be swept without changing the step size
        lmc_weight: float = 1.0              # λ, multiplies L_lmc (1 = the paper; the embedded-prior configs use 2)

    cfg: Config

    # ---- b̂ψ -------------------------------------------------------------------------------
    def attach(self, prior: "DiffusionPrior") -> None:
        """Load b̂ψ when the system is built, so missing weights fail before any step runs."""
        self.corrective(prior)

    def corrective_folder(self, prior: "DiffusionPrior") -> Path:
        """Where b̂ψ is read from: ``corrective_path`` or the prior folder's ``manifold_corrective/``."""
        if self.cfg.corrective_path:
            return Path(self.cfg.corrective_path).expanduser()
        source = Path(prior.locate_weights())
        if not source.is_dir():   # a hub id (Stable Diffusion, IF): nothing ships with it
            raise CorrectiveWeightsNotFound(
                f"LMC-SDS needs b̂ψ weights for the prior {source}, and none ship with it: {TRAIN_HINT} "
                f"(--prior-type/--prior-path for this prior) and pass system.guidance.corrective_path=FOLDER")
        return source / FOLDER_NAME

    def corrective(self, prior: "DiffusionPrior") -> torch.nn.Module:
        """The frozen b̂ψ on the prior's device (kept out of the state dict: it ships with the prior)."""
        if "corrective" not in self._frozen:
            if self.cfg.corrective_path == "identity":
                net = IdentityCorrective()
            else:
                net = load_corrective(self.corrective_folder(prior), latent_channels=prior.latent_channels)
            self._frozen["corrective"] = net
        return self._frozen["corrective"].to(prior.device)

    def corrected(self, prior: "DiffusionPrior", latents: Tensor, t: Tensor, z_hat: Tensor) -> Tensor:
        """b̂ψ(z, t) ``[B, C, h, w]`` (normalised to ẑ_t's statistics unless switched off)."""
        frac = t.float() / prior.num_train_timesteps
        b = self.corrective(prior)(latents, frac)
        return match_statistics(b, z_hat) if self.cfg.normalize_corrective else b

    # ---- the residual -----------------------------------------------------------------------
    def fixed_noise(self, call: GuidanceCall) -> Tensor:
        """ε ``[B, C, h, w]`` of L_cond in fixed mode: the base's per-particle noise stream, keyed
        by a step that never changes, so a particle (and each of its views) keeps its ε."""
        return self.sample_noise(call.latents, call.particle_ids, 0, call.seed, stream=FIXED_EPSILON_STREAM)

    def noise_residual(self, call: GuidanceCall) -> tuple[Tensor, dict[str, Tensor]]:
        prior, n = call.prior, call.noisy.shape[0]
        omega = self.cfg.guidance_scale.at(call.step)
        empty = prior.encode_text([""]).expand(n, -1, -1)
        latents = call.latents.detach()
        cond_noisy = prior.add_noise(latents, self.fixed_noise(call), call.t) if self.cfg.fixed_epsilon else call.noisy
        # ε_∅ for L_lmc must be the plain unconditional prediction at the *sampled* z_t (what b̂ψ
        # was trained on); L_cond's ε_∅ is the same call unless ε is fixed or a negative prompt is set.
        shared = not self.cfg.fixed_epsilon and torch.equal(call.prompts.uncond, empty)
        inputs = [cond_noisy, cond_noisy] + ([] if shared else [call.noisy])
        texts = [call.prompts.cond, call.prompts.uncond] + ([] if shared else [empty])
        eps = prior.predict_noise(torch.cat(inputs), torch.cat([call.t] * len(inputs)), torch.cat(texts))
        eps_y, eps_u = eps[:n], eps[n:2 * n]
        eps_empty = eps_u if shared else eps[2 * n:]

        cond = omega * prior.guided_direction(cond_noisy, call.t, eps_y, eps_u, call.prompts.perp_neg)   # L_cond
        z_hat = prior.denoised(call.noisy, eps_empty, call.t)
        lmc = self.cfg.lmc_weight * (self.corrected(prior, latents, call.t, z_hat) - z_hat)   # L_lmc
        delta = cond + lmc
        if self.cfg.scale_by_inverse_omega:
            delta = delta / omega
        logs = {"cond_norm": cond.flatten(1).norm(dim=1).mean(), "lmc_norm": lmc.flatten(1).norm(dim=1).mean()}
        return delta, logs
