"""The guidance interface shared by SDS, NFSD, VSD, LMC-SDS, ... and the particle repulsion.

Every guidance is called the same way by every generator (NeRF, SVG, latent images)::

    out = guidance(prior, rendered, prompts, particle_ids, step, seed=..., cameras=...)
    loss = sum(v for k, v in out.items() if k.startswith("loss_"))

and returns named losses plus scalars to log. A subclass only says how to turn the prior's noise
predictions into a noise residual δ (:meth:`BaseGuidance.noise_residual`); the base class does the
rest, identically for all methods:

- timestep sampling t ~ U[min_step, max_step]·T with scheduled bounds, one t for the whole batch
  or one per particle, from generators keyed by (seed, particle, step);
- the RSD repulsion between particles (:class:`RepulsionConfig`), added to δ of any method (or,
  with ``on: rendered``, to the rendered images as ``loss_repulsion``), across processes when the
  particles are sharded (``utils.distributed``);
- weighting g = w(t) (δ + γ c(t) r), optional clipping, NaN/Inf replaced by 0 and counted;
- the reparameterisation loss ½‖z − sg(z − g)‖² / B, whose gradient w.r.t. z is exactly g / B.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import Tensor

from scorestudio.guidance.repulsion import KernelConfig, repulsion_gradient
from scorestudio.guidance.schedule import timestep_weight
from scorestudio.utils.base import BaseModule
from scorestudio.utils.config import ConfigError, ScheduledFloat, schedulable
from scorestudio.utils.distributed import gather_rows, world
from scorestudio.utils.seeding import generator

if TYPE_CHECKING:
    from scorestudio.priors.base import DiffusionPrior
    from scorestudio.priors.prompt_processor import PromptBatch


NETWORK_FEATURES = ("probe", "latent_probe", "dinov2")   # feature maps that load a network
REPULSION_FEATURES = ("latent", "pixel", *NETWORK_FEATURES)
LATENT_PLACEMENTS = ("noisy", "clean")                 # the kernel on z_t, or on the clean z_0 / predicted x̂0
REPULSION_PLACEMENTS = (*LATENT_PLACEMENTS, "rendered")  # ... or on the generator's rendered images
IMAGE_FEATURES = ("pixel", "probe", "dinov2")             # feature maps that read an image [B, 3, H, W]


@dataclass
class RepulsionConfig:
    """RSD repulsion between particles, usable on top of any guidance (γ = 0 turns it off)."""

    gamma: ScheduledFloat = schedulable(0.0)  # repulsion weight γ
    # Feature map f of the kernel: "latent" (flattened z_t), "pixel" (decoded image),
    # "probe" (the embedded probe's features of the decoded image), "latent_probe" (the probe
    # distilled onto the embedded prior's latents: no decoder pass; SDS overhead +8% instead of +216%),
    # "dinov2" (local weights).
    features: str = "probe"
    feature_net_path: Optional[str] = None  # folder of the feature net: (latent_)probe (default: shipped), dinov2 (required)
    scale: str = "sigma"                  # c(t): "sigma" (σ_t), "sigma2" (σ_t²), "one"
    # Kernel on the noisy particles z_t (RSD/RLSD's derivation: the forward diffusion of the
    # repulsive distribution), on the clean particles z_0, where feature differences are content only,
    # or on the generator's rendered images themselves ("rendered": no decoder pass; its gradient
    # enters the images as its own loss_repulsion; features pixel, probe or dinov2).
    on: str = "noisy"                     # "noisy", "clean" or "rendered"
    t_window: list = field(default_factory=lambda: [0.0, 1.0])  # active only for t/T in [lo, hi]
    kernel: KernelConfig = field(default_factory=KernelConfig)


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
    """Score-distillation guidance; subclasses implement :meth:`noise_residual`."""

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
        # A plain dict, so the frozen feature network never enters this module's state dict.
        self._frozen: dict[str, torch.nn.Module] = {}
        rep = self.cfg.repulsion
        for key, value, choices in (("features", rep.features, REPULSION_FEATURES),
                                    ("scale", rep.scale, ("sigma", "sigma2", "one")),
                                    ("on", rep.on, REPULSION_PLACEMENTS)):
            if value not in choices:   # at build time, not at the first repulsive step
                raise ConfigError(f"{self.config_path}.repulsion.{key}={value!r}: use one of {', '.join(choices)}")
        if rep.on == "rendered" and (self.cfg.rgb_as_latents or rep.features not in IMAGE_FEATURES):
            raise ConfigError(f"{self.config_path}.repulsion.on=rendered needs rendered images and a feature map that "
                              f"reads them (features: {', '.join(IMAGE_FEATURES)}; rgb_as_latents: false), got "
                              f"features={rep.features!r}, rgb_as_latents={self.cfg.rgb_as_latents}; for latent "
                              "particles use on=clean")

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
        on_images = self.cfg.repulsion.on == "rendered"
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
        """:meth:`repulsion` of the call's noisy latents z_t (``on="clean"``: of z_0), or of the
        ``rendered`` images ``[B, 3, H, W]`` when given (``on="rendered"``)."""
        if rendered is not None:
            return self.repulsion(call.prior, rendered.detach(), call.t, call.particle_ids, call.step, images=True,
                                  sharded=True)
        source = call.noisy if self.cfg.repulsion.on == "noisy" else call.latents.detach()
        return self.repulsion(call.prior, source, call.t, call.particle_ids, call.step, sharded=True)

    def repulsion(self, prior: "DiffusionPrior", source: Tensor, t: Tensor, ids: Tensor, step: int,
                  images: bool = False, sharded: bool = False) -> Optional[Tensor]:
        """γ c(t) ∇_z log Σ_j k(f(z^i), f(z^j)) for latents ``source [B, C, h, w]`` (``images``:
        images ``[B, 3, H, W]`` in [0, 1], read by the feature map without decoding) at ``t [B]`` of
        particles ``ids [B]``, or None when inactive. Added to an ε-like direction (δ of a guidance,
        ε̂ of a sampler) it moves each particle down the kernel density of the others.

        ``sharded``: the batch is this process's block of a run sharded over processes (a
        guidance call in training); the kernel then gathers the other blocks' features. A sampler
        called with all particles in every process leaves it False.

        A particle's feature is the concatenation of the features of all its views in the
        batch, so B = particles × views items repel as N particles. One VJP through the
        decoder and the feature network serves the whole batch.
        """
        rep = self.cfg.repulsion
        gamma = rep.gamma.at(step)
        particles = ids.unique()
        processes = world()[1] if sharded else 1   # > 1: every process has a block of as many particles
        if gamma == 0 or len(particles) * processes < 2:
            return None
        frac = t.float() / prior.num_train_timesteps
        active = (frac >= rep.t_window[0]) & (frac <= rep.t_window[1])
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
                                         gather_rows if processes > 1 else None, **rep.kernel.kwargs())
        grad = torch.empty_like(source)
        grad[order] = grad_sorted.flatten(0, 1)
        scale = self.time_scale(prior, t) * active.float()
        return gamma * scale.view(-1, 1, 1, 1) * grad

    def time_scale(self, prior: "DiffusionPrior", t: Tensor) -> Tensor:
        """c(t) ``[B]``: σ_t, σ_t² or 1."""
        kind = self.cfg.repulsion.scale
        if kind == "sigma":
            return prior.sigma(t)
        if kind == "sigma2":
            return prior.sigma(t) ** 2
        if kind == "one":
            return torch.ones_like(t, dtype=torch.float32)
        raise ValueError(f"repulsion.scale={kind!r}: use 'sigma', 'sigma2' or 'one'")

    def feature_fn(self, prior: "DiffusionPrior", decode: bool = True) -> Callable[[Tensor], Tensor]:
        """z ``[B, C, h, w]`` → features ``[B, D]`` for the repulsion kernel (differentiable);
        ``decode=False``: of images ``[B, 3, H, W]`` (image feature maps only)."""
        kind = self.cfg.repulsion.features
        to_image = prior.decode_latents if decode else (lambda x: x)
        if kind == "latent":
            return lambda z: z.flatten(1)
        if kind == "pixel":
            return lambda z: to_image(z).flatten(1)
        if kind == "latent_probe":
            return self.feature_network(prior).features
        if kind in ("probe", "dinov2"):
            net = self.feature_network(prior)
            return lambda z: net.features(to_image(z))
        raise ValueError(f"repulsion.features={kind!r}: use 'latent', 'pixel', 'probe', 'latent_probe' or 'dinov2'")

    def feature_network(self, prior: "DiffusionPrior") -> torch.nn.Module:
        """The frozen feature network (loaded once, kept out of the state dict)."""
        if "features" not in self._frozen:
            from scorestudio.metrics.features import load_feature_network

            net = load_feature_network(self.cfg.repulsion.features, self.cfg.repulsion.feature_net_path)
            self._frozen["features"] = net
        self._frozen["features"].to(prior.device)
        return self._frozen["features"]
