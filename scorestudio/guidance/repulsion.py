"""RBF-kernel repulsion between particles (RSD, Zilberstein et al.).

Particle i feels the gradient of the log kernel density of the ensemble at its own features,

    r_i = ∇_{f_i} log Σ_j k(f_i, f_j),      k(a, b) = exp(-‖a − b‖² / h).

Adding ``γ · r_i`` (pulled back to the particle's parameters) to a descent gradient moves
particle i *down* the kernel density, i.e. away from the others. The bandwidth h is treated as
a constant of each step (no gradient through the median), as in SVGD.

Bandwidth: the papers use h = med² / log N with med the median pairwise distance. Two pitfalls
for small ensembles are avoided here: the median is taken over *off-diagonal* pairs only (with
the zero self-distances included the median of an N = 2 ensemble is 0, the kernel collapses and
the repulsion vanishes), and the denominator is log N, never log(N − 1) (zero at N = 2, an
infinite bandwidth and again no repulsion). ``min_bandwidth`` floors h so coincident particles
do not divide by zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch

BandwidthMode = Literal["global", "per_row"]


@dataclass
class KernelConfig:
    """The RBF kernel between particle features."""

    bandwidth: Optional[float] = None   # fixed h; None → median heuristic h = med² / log N
    bandwidth_mode: str = "global"      # "global": one median per ensemble; "per_row": per particle
    min_bandwidth: float = 1e-8         # floor on h (coincident particles)
    interacting: Optional[int] = None   # hybrid mode: only the first k particles repel; None → all

    def kwargs(self) -> dict:
        return {"bandwidth": self.bandwidth, "mode": self.bandwidth_mode,
                "min_bandwidth": self.min_bandwidth, "interacting": self.interacting}


def pairwise_sq_dists(features: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``[*, N, N]`` between rows of ``features`` ``[*, N, D]``."""
    diff = features.unsqueeze(-2) - features.unsqueeze(-3)
    return diff.pow(2).sum(-1)


def median_bandwidth(sq_dists: torch.Tensor, mode: BandwidthMode = "global",
                     min_bandwidth: float = 1e-8) -> torch.Tensor:
    """h = median(off-diagonal distances)² / log N.

    Args:
        sq_dists: ``[*, N, N]`` squared distances, N ≥ 2.
        mode: "global" (one h per ensemble, shape ``[*, 1, 1]``) or "per_row" (``[*, N, 1]``).
    """
    n = sq_dists.shape[-1]
    off_diag = ~torch.eye(n, dtype=torch.bool, device=sq_dists.device)
    dists = sq_dists.clamp_min(0).sqrt()
    if mode == "global":
        flat = dists[..., off_diag]  # [*, N(N-1)]
        med = flat.median(dim=-1).values[..., None, None]
    elif mode == "per_row":
        rows = dists[..., off_diag].reshape(*dists.shape[:-1], n - 1)  # [*, N, N-1]
        med = rows.median(dim=-1).values[..., None]
    else:
        raise ValueError(f"unknown bandwidth mode {mode!r}; use 'global' or 'per_row'")
    return (med.pow(2) / math.log(n)).clamp_min(min_bandwidth)


def kernel_log_density_grad(features: torch.Tensor, bandwidth: float | torch.Tensor | None = None,
                            mode: BandwidthMode = "global", min_bandwidth: float = 1e-8,
                            interacting: int | None = None) -> torch.Tensor:
    """r_i = ∇_{f_i} log Σ_j exp(-‖f_i − f_j‖² / h) for every particle, in closed form.

    Args:
        features: ``[*, N, D]`` particle features (any leading batch of independent ensembles).
        bandwidth: fixed h; ``None`` → the median heuristic with ``mode``.
        interacting: only the first ``interacting`` particles repel each other (RLSD's hybrid
            mode); the others get zero. ``None`` → all interact.

    Returns:
        ``[*, N, D]``, detached from the graph of ``features``.
    """
    feats = features.detach()
    n = feats.shape[-2]
    k = n if interacting is None else min(interacting, n)
    out = torch.zeros_like(feats)
    if k < 2:
        return out
    sub = feats[..., :k, :]
    sq = pairwise_sq_dists(sub)
    h = median_bandwidth(sq, mode, min_bandwidth) if bandwidth is None else torch.as_tensor(bandwidth, dtype=feats.dtype)
    weights = torch.softmax(-sq / h, dim=-1)  # k_ij / Σ_j k_ij, stable for large distances
    # ∇_{f_i} (-‖f_i − f_j‖²/h) = -2 (f_i − f_j) / h, averaged with the softmax weights.
    grad = -2.0 / h * (sub - weights @ sub)
    out[..., :k, :] = grad
    return out


def repulsion_gradient(particles: torch.Tensor, feature_fn=None, gather=None, **kernel_kwargs) -> torch.Tensor:
    """Repulsion pulled back to the particles: ``J_fᵀ r`` for all particles in one VJP.

    Args:
        particles: ``[N, ...]`` particle variables (e.g. noisy latents z_t).
        feature_fn: maps ``[N, ...]`` → ``[N, D]`` features (decoder + feature net). ``None`` →
            features are the flattened particles.
        gather: ``features [N, D] → (features of the whole ensemble [M, D], where these N start)``
            when the ensemble is sharded over processes (``utils.distributed.gather_rows``); the
            kernel then sees all M particles. ``None``: the N particles are the ensemble.
        **kernel_kwargs: passed to :func:`kernel_log_density_grad`.

    Returns:
        ``[N, ...]`` gradient of ``log Σ_j k`` w.r.t. each particle; add ``γ·c(t)·`` it to a
        descent direction to push particles apart.
    """
    def kernel_grad(feats: torch.Tensor) -> torch.Tensor:
        if gather is None:
            return kernel_log_density_grad(feats, **kernel_kwargs)
        everyone, start = gather(feats)
        return kernel_log_density_grad(everyone, **kernel_kwargs)[start: start + feats.shape[0]]

    if feature_fn is None:
        flat = particles.detach().reshape(particles.shape[0], -1)
        return kernel_grad(flat).reshape(particles.shape)
    with torch.enable_grad():
        x = particles.detach().requires_grad_(True)
        feats = feature_fn(x).reshape(x.shape[0], -1)
        (grad,) = torch.autograd.grad(feats, x, grad_outputs=kernel_grad(feats))
    return grad
