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

:class:`Repulsion` (built from :class:`RepulsionConfig`) applies this kernel to diffusion
particles: feature map, time scale c(t), t-window, placement (noisy z_t, clean z_0 or rendered
images) and the gather across processes. Guidances, the RLSD solver and the DDIM sampler each
hold one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal, Optional

import torch
from torch import Tensor

from scorestudio.metrics.probe import HEADS as PROBE_HEADS
from scorestudio.utils.base import Configurable
from scorestudio.utils.config import ConfigError, ScheduledFloat, schedulable
from scorestudio.utils.distributed import gather_rows, world

if TYPE_CHECKING:
    from scorestudio.priors.base import DiffusionPrior

BandwidthMode = Literal["global", "per_row"]
NETWORK_FEATURES = ("probe", "latent_probe", "dinov2")   # feature maps that load a network
PROBE_FEATURES = ("probe", "latent_probe")              # feature maps with class heads
REPULSION_FEATURES = ("latent", "pixel", *NETWORK_FEATURES)
LATENT_PLACEMENTS = ("noisy", "clean")                 # the kernel on z_t, or on the clean z_0 / predicted x̂0
REPULSION_PLACEMENTS = (*LATENT_PLACEMENTS, "rendered")  # ... or on the generator's rendered images
IMAGE_FEATURES = ("pixel", "probe", "dinov2")             # feature maps that read an image [B, 3, H, W]
TIME_SCALES = ("sigma", "sigma2", "one")


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



# --------------------------------------------------------------------------------------------
# The repulsion of diffusion particles.
# --------------------------------------------------------------------------------------------


@dataclass
class RepulsionConfig:
    """RSD repulsion between particles, usable on top of any guidance (γ = 0 turns it off)."""

    gamma: ScheduledFloat = schedulable(0.0)  # repulsion weight γ
    # Feature map f of the kernel: "latent" (flattened z_t), "pixel" (decoded image),
    # "probe" (the embedded probe's features of the decoded image), "latent_probe" (the probe
    # distilled onto the embedded prior's latents: no decoder pass), "dinov2" (local weights).
    features: str = "probe"
    feature_net_path: Optional[str] = None  # folder of the feature net: (latent_)probe (default: shipped), dinov2 (required)
    # With features probe / latent_probe: the kernel on one head's logits instead of the shared
    # features ("color", "shape", "kind", "view"). A prompt that leaves one attribute open
    # ("a cube": any colour) repelled on that attribute's head varies it and leaves the rest to the
    # guidance; the shared features also push the named attributes (the shape) apart.
    feature_head: Optional[str] = None
    scale: str = "sigma"                  # c(t): "sigma" (σ_t), "sigma2" (σ_t²), "one"
    # Kernel on the noisy particles z_t (RSD/RLSD's derivation: the forward diffusion of the
    # repulsive distribution), on the clean particles z_0, where feature differences are content only,
    # or on the generator's rendered images themselves ("rendered": no decoder pass; its gradient
    # enters the images as its own loss_repulsion; features pixel, probe or dinov2).
    on: str = "noisy"                     # "noisy", "clean" or "rendered"
    t_window: list = field(default_factory=lambda: [0.0, 1.0])  # active only for t/T in [lo, hi]
    kernel: KernelConfig = field(default_factory=KernelConfig)


class Repulsion(Configurable):
    """γ c(t) ∇_z log Σ_j k(f(z^i), f(z^j)) between the particles of a batch (:class:`RepulsionConfig`).

    ``path`` is where the config sits in the run config (``system.guidance.repulsion``); it
    prefixes the errors. The frozen feature network is held in a plain dict, so it never enters
    a state dict, whoever holds this object.
    """

    Config = RepulsionConfig
    cfg: RepulsionConfig

    def configure(self) -> None:
        self._frozen: dict[str, torch.nn.Module] = {}
        cfg = self.cfg
        for key, value, choices in (("features", cfg.features, REPULSION_FEATURES),
                                    ("scale", cfg.scale, TIME_SCALES),
                                    ("on", cfg.on, REPULSION_PLACEMENTS)):
            if value not in choices:   # at build time, not at the first repulsive step
                raise ConfigError(f"{self.config_path}.{key}={value!r}: use one of {', '.join(choices)}")
        if cfg.feature_head is not None and (cfg.features not in PROBE_FEATURES or cfg.feature_head not in PROBE_HEADS):
            raise ConfigError(f"{self.config_path}.feature_head={cfg.feature_head!r}: a head of the probe "
                              f"({', '.join(PROBE_HEADS)}) with features {' or '.join(PROBE_FEATURES)} "
                              f"(features={cfg.features!r}); null for the shared features")
        if cfg.on == "rendered" and cfg.features not in IMAGE_FEATURES:
            raise ConfigError(f"{self.config_path}.on=rendered needs a feature map that reads images (features: "
                              f"{', '.join(IMAGE_FEATURES)}), got features={cfg.features!r}; for latent particles "
                              "use on=clean")

    # ---- what the holder asks ---------------------------------------------------------------------
    def is_active(self, step: int) -> bool:
        """γ ≠ 0 at ``step`` (the t-window and the number of particles may still turn it off)."""
        return self.cfg.gamma.at(step) != 0

    @property
    def on_images(self) -> bool:
        """The kernel reads the generator's rendered images (``on: rendered``), not latents."""
        return self.cfg.on == "rendered"

    def latent_source(self, noisy: Tensor, clean: Tensor) -> Tensor:
        """What the kernel reads of latent particles ``[B, C, h, w]``: z_t (``on: noisy``) or z_0."""
        return noisy if self.cfg.on == "noisy" else clean

    def load_network(self, prior: "DiffusionPrior") -> None:
        """Load the feature network now if γ is ever nonzero and the features need one, so that
        missing weights fail when the run is built rather than at the first repulsive step."""
        if self.cfg.features in NETWORK_FEATURES and self.cfg.gamma.ever_nonzero():
            self.feature_network(prior)

    # ---- the gradient ---------------------------------------------------------------------------
    def __call__(self, prior: "DiffusionPrior", source: Tensor, t: Tensor, particle_ids: Tensor, step: int,
                 images: bool = False, sharded: bool = False) -> Optional[Tensor]:
        """γ c(t) ∇_z log Σ_j k(f(z^i), f(z^j)) for latents ``source [B, C, h, w]`` (``images``:
        images ``[B, 3, H, W]`` in [0, 1], read by the feature map without decoding) at ``t [B]`` of
        particles ``particle_ids [B]``, or None when inactive. Added to an ε-like direction (δ of a
        guidance, ε̂ of a sampler) it moves each particle down the kernel density of the others.

        ``sharded``: the batch is this process's block of a run sharded over processes (a
        guidance call in training); the kernel then gathers the other blocks' features. A sampler
        or solver that holds all particles in every process leaves it False.

        A particle's feature is the concatenation of the features of all its views in the
        batch, so B = particles × views items repel as N particles. One VJP through the
        decoder and the feature network serves the whole batch.
        """
        cfg, ids = self.cfg, particle_ids
        gamma = cfg.gamma.at(step)
        particles = ids.unique()
        processes = world()[1] if sharded else 1   # > 1: every process has a block of as many particles
        if gamma == 0 or len(particles) * processes < 2:
            return None
        frac = t.float() / prior.num_train_timesteps
        active = (frac >= cfg.t_window[0]) & (frac <= cfg.t_window[1])
        if not bool(active.any()) and processes == 1:   # sharded: every process joins the gather
            return None
        feature_fn = self.feature_fn(prior, decode=not images)
        order = torch.argsort(ids, stable=True)
        views = len(ids) // len(particles)
        if views * len(particles) != len(ids) or not torch.equal(ids[order].view(len(particles), views),
                                                                  particles[:, None].expand(-1, views)):
            raise ValueError("repulsion needs the same number of views for every particle in the batch")

        def grouped_features(z_sorted: Tensor) -> Tensor:   # [B, ...] sorted by particle → [N, views · D]
            return feature_fn(z_sorted).reshape(len(particles), views, -1).flatten(1)

        source_sorted = source[order].reshape(len(particles), views, *source.shape[1:])
        grad_sorted = repulsion_gradient(source_sorted, lambda z: grouped_features(z.flatten(0, 1)),
                                         gather_rows if processes > 1 else None, **cfg.kernel.kwargs())
        grad = torch.empty_like(source)
        grad[order] = grad_sorted.flatten(0, 1)
        scale = self.time_scale(prior, t) * active.float()
        return gamma * scale.view(-1, 1, 1, 1) * grad

    def time_scale(self, prior: "DiffusionPrior", t: Tensor) -> Tensor:
        """c(t) ``[B]``: σ_t, σ_t² or 1."""
        kind = self.cfg.scale
        if kind == "sigma":
            return prior.sigma(t)
        if kind == "sigma2":
            return prior.sigma(t) ** 2
        if kind == "one":
            return torch.ones_like(t, dtype=torch.float32)
        raise ValueError(f"repulsion.scale={kind!r}: use {', '.join(TIME_SCALES)}")

    def feature_fn(self, prior: "DiffusionPrior", decode: bool = True) -> Callable[[Tensor], Tensor]:
        """z ``[B, C, h, w]`` → features ``[B, D]`` for the kernel (differentiable);
        ``decode=False``: of images ``[B, 3, H, W]`` (image feature maps only)."""
        kind = self.cfg.features
        to_image = prior.decode_latents if decode else (lambda x: x)
        if kind == "latent":
            return lambda z: z.flatten(1)
        if kind == "pixel":
            return lambda z: to_image(z).flatten(1)
        if kind in PROBE_FEATURES and self.cfg.feature_head is not None:
            net, head = self.feature_network(prior), self.cfg.feature_head
            read = (lambda z: z) if kind == "latent_probe" else to_image
            return lambda z: net(read(z))[head]
        if kind == "latent_probe":
            return self.feature_network(prior).features
        if kind in ("probe", "dinov2"):
            net = self.feature_network(prior)
            return lambda z: net.features(to_image(z))
        raise ValueError(f"repulsion.features={kind!r}: use {', '.join(REPULSION_FEATURES)}")

    def feature_network(self, prior: "DiffusionPrior") -> torch.nn.Module:
        """The frozen feature network on the prior's device (loaded once)."""
        if "features" not in self._frozen:
            from scorestudio.metrics.features import load_feature_network

            self._frozen["features"] = load_feature_network(self.cfg.features, self.cfg.feature_net_path)
        self._frozen["features"].to(prior.device)
        return self._frozen["features"]
