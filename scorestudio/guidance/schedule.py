"""Noise-schedule helpers shared by guidance, solvers and toy systems (DDPM discrete time)."""

from __future__ import annotations

import torch


def ddpm_alphas_cumprod(num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                        schedule: str = "scaled_linear") -> torch.Tensor:
    """ᾱ_t for t = 0..T-1 (float64 → float32), as diffusers' DDPMScheduler computes it.

    "scaled_linear" is Stable Diffusion's schedule (linear in √β); "linear" is DDPM's.
    """
    if schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    elif schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    else:
        raise ValueError(f"unknown beta schedule {schedule!r}; use 'scaled_linear' or 'linear'")
    return torch.cumprod(1.0 - betas, dim=0).float()


def alpha_sigma(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(α_t, σ_t) = (√ᾱ_t, √(1 − ᾱ_t)) for integer timesteps ``t`` of any shape."""
    abar = alphas_cumprod.to(t.device)[t]
    return abar.sqrt(), (1.0 - abar).sqrt()


def timestep_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, kind: str) -> torch.Tensor:
    """w(t) of score distillation: "sds" = 1 − ᾱ_t (DreamFusion), "uniform" = 1,
    "fantasia3d" = √ᾱ_t (1 − ᾱ_t) (Fantasia3D's weighting)."""
    abar = alphas_cumprod.to(t.device)[t]
    if kind == "sds":
        return 1.0 - abar
    if kind == "uniform":
        return torch.ones_like(abar)
    if kind == "fantasia3d":
        return abar.sqrt() * (1.0 - abar)
    raise ValueError(f"unknown weighting {kind!r}; use 'sds', 'uniform' or 'fantasia3d'")
