"""DDIM sampling from a prior, with a guidance interval and an optional ε correction such as
the RSD repulsion between the samples of a batch ("particle guidance").

Sample i starts from the noise of stream ``("sample", i)`` of the seed, so without repulsion it is
the same image whatever the number of samples and the batch size are; with a repulsion the
samples of a batch repel each other (:func:`repulsion_correction`, applied to the sampler's ε̂).

Guidance interval (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval improves
sample and distribution quality"): CFG is applied only at the steps with lo ≤ t/T ≤ hi; the other
steps use the conditional ε alone (one UNet pass instead of two). Guidance at the noisiest steps
is what collapses an ambiguous prompt onto its largest mode, while guidance at the later steps
makes fully specified captions more accurate (on the embedded prior:
``benchmarks/results/prior.json`` vs ``prior_cfg_every_step.json``).
:func:`ddim_sample` applies CFG at every step unless told otherwise; the command line
(``scorestudio sample``) defaults to the prior's ``sampling_guidance_interval``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import Tensor

from scorestudio.guidance.base import BaseGuidance
from scorestudio.guidance.repulsion import LATENT_PLACEMENTS, Repulsion
from scorestudio.utils.seeding import per_particle_randn

if TYPE_CHECKING:
    from scorestudio.priors.base import DiffusionPrior

EpsCorrection = Callable[[Tensor, Tensor, Tensor, Tensor], Optional[Tensor]]


def checked_guidance_interval(interval) -> tuple[float, float]:
    """``(lo, hi)`` as floats, or a ValueError unless 0 ≤ lo ≤ hi ≤ 1 (fractions of T)."""
    lo, hi = (float(v) for v in interval)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"guidance_interval {tuple(interval)}: expected 0 <= lo <= hi <= 1 (fractions of T)")
    return lo, hi


@torch.no_grad()
def ddim_sample(prior: DiffusionPrior, prompts: list[str], steps: int, cfg: float, seed: int,
                eta: float = 0.0, negative_prompt: str = "", batch_size: Optional[int] = None,
                progress: bool = False, eps_correction: Optional[EpsCorrection] = None,
                guidance_interval: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """DDIM samples, one per prompt: images ``[N, 3, H, W]`` in [0, 1] on the prior's device.

    Args:
        prompts: N prompts (repeat a prompt for several samples of it).
        steps: DDIM steps; cfg: guidance scale s (ε_u + s (ε_c − ε_u); 1 = no guidance).
        seed: sample i's initial noise is drawn from ``generator(seed, "sample", i)`` and its
            per-step DDIM noise (eta > 0) from ``generator(seed, "sample-eta", step, i)``.
        eta: DDIM stochasticity (0 = deterministic DDIM, 1 = DDPM-like).
        negative_prompt: the unconditional prompt of CFG.
        batch_size: samples per UNet batch (each call runs 2 × batch_size for CFG); None = all N.
        progress: show a tqdm bar over the denoising steps.
        eps_correction: ``(x_t, ε̂, t [B], sample ids [B]) → [B, C, h, w]`` or None, added to the
            CFG estimate ε̂ ``[B, C, h, w]`` at every step: e.g. the particle repulsion of
            :func:`repulsion_correction`, which then acts within each batch of samples.
        guidance_interval: ``(lo, hi)`` fractions of T: CFG at the steps with lo ≤ t/T ≤ hi, the
            conditional ε alone elsewhere. (0, 1) = CFG at every step.
    """
    from diffusers import DDIMScheduler
    from tqdm.auto import tqdm

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    lo, hi = checked_guidance_interval(guidance_interval)
    # The prior returns ε even for v-prediction checkpoints.
    scheduler = DDIMScheduler.from_config(prior.scheduler_config, prediction_type="epsilon")
    scheduler.set_timesteps(steps, device=prior.device)
    shape = (prior.latent_channels, prior.latent_size, prior.latent_size)
    n = len(prompts)
    batch_size = batch_size or n
    images = []
    bar = tqdm(total=steps * math.ceil(n / batch_size), desc="ddim", disable=not progress)
    for start in range(0, n, batch_size):
        ids = list(range(start, min(start + batch_size, n)))
        cond = prior.encode_text([prompts[i] for i in ids])
        uncond = prior.encode_text([negative_prompt] * len(ids))
        x = per_particle_randn(shape, seed, ids, "sample", device=prior.device) * scheduler.init_noise_sigma
        for step, t in enumerate(scheduler.timesteps):
            if lo <= float(t) / prior.num_train_timesteps <= hi:
                eps = prior.predict_noise_cfg(x, t, cond, uncond, cfg)[0]
            else:
                eps = prior.predict_noise(x, t, cond)
            if eps_correction is not None:
                correction = eps_correction(x, eps, t.expand(len(ids)), torch.tensor(ids, device=x.device))
                eps = eps if correction is None else eps + correction
            noise = per_particle_randn(shape, seed, ids, "sample-eta", step, device=prior.device) if eta > 0 else None
            x = scheduler.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
            bar.update(1)
        images.append(prior.decode_latents(x))
    bar.close()
    return torch.cat(images)


def repulsion_correction(repulsion: Repulsion | BaseGuidance, prior: DiffusionPrior,
                         on: Optional[str] = None) -> EpsCorrection:
    """An RSD :class:`Repulsion` (or a guidance's own) as a sampler ε correction, with its γ at
    step 0, features, kernel and c(t): the samples of a batch repel each other ("particle
    guidance", Corso et al. 2024). With ``on="clean"`` (default: the repulsion's ``on``) the
    kernel sees the predicted x̂0 = (x_t − σ_t ε̂) / α_t, with ``"noisy"`` x_t."""
    if isinstance(repulsion, BaseGuidance):
        repulsion = repulsion.repulsion
    on = on or repulsion.cfg.on
    if on not in LATENT_PLACEMENTS:   # a sampler has latents only, no rendered images
        raise ValueError(f"repulsion placement {on!r} for a sampler: use one of {', '.join(LATENT_PLACEMENTS)}")

    def correction(x: Tensor, eps: Tensor, t: Tensor, ids: Tensor) -> Optional[Tensor]:
        source = prior.denoised(x, eps, t) if on == "clean" else x
        return repulsion(prior, source, t, ids, step=0)

    return correction
