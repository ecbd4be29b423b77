"""Volume rendering of N particles: samples along rays inside the scene ball, then compositing.

    renderer = VolumeRenderer(cfg, n_particles=N, radius=1.0)
    out = renderer(field_fn, origins, dirs, jitter=..., detail_fn=...)   # origins, dirs [N, R, 3]

``field_fn(points [N, M, 3], samples) -> {"density": [N, M], name: [N, M, C], ...}`` is any
field (the NeRF geometry and base colour, or an analytic density in tests); its ``[N, M, C]``
values are alpha-composited per ray. ``detail_fn`` adds what is only worth computing where
something is visible (normals, point-light shading) on the samples whose weight exceeds
``prune_weight``. Two ways to place the samples, chosen by device:

- dense (CPU, and anywhere with ``estimator: dense``): ``num_samples_per_ray`` stratified samples
  between the ray's entry and exit of the ball, composited with nerfacc's dense functions on
  ``[rays, samples]`` tensors (pure PyTorch, autograd on the CPU);
- occupancy (CUDA only): a nerfacc ``OccGridEstimator`` per particle skips empty space and
  returns packed samples, composited with nerfacc's packed CUDA kernels. nerfacc's packed and
  estimator functions need its CUDA extension, so they are never called on a CPU tensor.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from scorestudio.utils.base import BaseModule
from scorestudio.utils.config import ConfigError


@dataclass
class OccupancyConfig:
    resolution: int = 64           # occupancy cells per axis over the scene's bounding box
    update_every: int = 16         # re-estimate occupancy every this many training steps
    threshold: float = 0.01        # a cell is occupied when density · step size exceeds this


@dataclass
class RendererConfig:
    num_samples_per_ray: int = 48  # dense: samples per ray inside the ball; occupancy: step = 2·radius / this
    stratified: bool = True        # training samples at a random point of their bin (eval: bin centres)
    estimator: str = "auto"        # "dense", "occupancy" (CUDA) or "auto" (= occupancy grids, used on CUDA)
    # Normals and point-light shading are evaluated only at samples whose compositing weight
    # exceeds this (the others add < prune_weight each to their pixel); 0 = at every sample.
    prune_weight: float = 1e-3
    occupancy: OccupancyConfig = field(default_factory=OccupancyConfig)


@dataclass
class RaySamples:
    """Samples along the rays of N particles; M samples per particle.

    Dense: M = R · S, ray-major (sample m belongs to ray m // S); packed: each particle's samples
    padded to the longest particle, padding marked False in ``valid``.
    """

    ray_index: Tensor              # long [N, M]: ray 0..R-1 of each sample
    t_starts: Tensor               # [N, M] interval of each sample along its ray
    t_ends: Tensor                 # [N, M]
    t_points: Tensor               # [N, M] where the field is evaluated (inside the interval)
    n_rays: int                    # R
    per_ray: Optional[int] = None  # S when dense
    valid: Optional[Tensor] = None  # bool [N, M] when packed

    def gather(self, per_ray_values: Tensor) -> Tensor:
        """Per-ray values ``[N, R, K]`` → per-sample ``[N, M, K]``."""
        if self.per_ray is not None:
            n, r, k = per_ray_values.shape
            return per_ray_values[:, :, None, :].expand(n, r, self.per_ray, k).reshape(n, -1, k)
        return per_ray_values.gather(1, self.ray_index[..., None].expand(-1, -1, per_ray_values.shape[-1]))


def ray_sphere_interval(origins: Tensor, dirs: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """Entry and exit distances ``[...]`` of unit rays ``[..., 3]`` through the ball of ``radius``
    at the origin (entry clamped to ≥ 0). Rays that miss it get an empty interval (near = far)."""
    b = (origins * dirs).sum(-1)
    disc = b * b - (origins * origins).sum(-1) + radius ** 2
    root = disc.clamp_min(0).sqrt()
    near = (-b - root).clamp_min(0)
    far = torch.maximum(-b + root, near)
    hit = disc > 0
    return torch.where(hit, near, torch.zeros_like(near)), torch.where(hit, far, torch.zeros_like(far))


def dense_samples(origins: Tensor, dirs: Tensor, radius: float, n_samples: int,
                  jitter: Optional[Tensor] = None) -> RaySamples:
    """S = ``n_samples`` equal bins per ray between entry and exit of the ball.

    origins, dirs: ``[N, R, 3]``; jitter: ``[N, R, S]`` in [0, 1) places each point inside its bin
    (None: bin centres).
    """
    n, r, _ = origins.shape
    near, far = ray_sphere_interval(origins, dirs, radius)                   # [N, R]
    steps = torch.arange(n_samples + 1, device=origins.device, dtype=origins.dtype) / n_samples
    edges = near[..., None] + (far - near)[..., None] * steps                # [N, R, S + 1]
    offset = 0.5 if jitter is None else jitter
    points = near[..., None] + (far - near)[..., None] * (steps[:-1] + offset / n_samples)
    ray_index = torch.arange(r, device=origins.device).repeat_interleave(n_samples).expand(n, -1)
    return RaySamples(ray_index, edges[..., :-1].reshape(n, -1), edges[..., 1:].reshape(n, -1),
                      points.reshape(n, -1), r, per_ray=n_samples)


def composite_dense(samples: RaySamples, density: Tensor, values: dict[str, Tensor]) -> tuple[Tensor, dict]:
    """Weights ``[N, M]`` and composited values ``{name: [N, R, K]}`` (nerfacc dense path)."""
    import nerfacc

    n, s, r = density.shape[0], samples.per_ray, samples.n_rays
    weights, _, _ = nerfacc.render_weight_from_density(
        samples.t_starts.view(n * r, s), samples.t_ends.view(n * r, s), density.view(n * r, s))
    out = {name: nerfacc.accumulate_along_rays(weights, v.reshape(n * r, s, -1)).view(n, r, -1)
           for name, v in values.items()}
    return weights.view(n, -1), out


def composite_packed(samples: RaySamples, density: Tensor, values: dict[str, Tensor]) -> tuple[Tensor, dict]:
    """The same with nerfacc's packed CUDA kernels on the valid samples."""
    import nerfacc

    n, r = density.shape[0], samples.n_rays
    valid = samples.valid
    rays = (samples.ray_index + torch.arange(n, device=density.device)[:, None] * r)[valid]
    w, _, _ = nerfacc.render_weight_from_density(samples.t_starts[valid], samples.t_ends[valid], density[valid],
                                                 ray_indices=rays, n_rays=n * r)
    out = {name: nerfacc.accumulate_along_rays(w, v[valid], ray_indices=rays, n_rays=n * r).view(n, r, -1)
           for name, v in values.items()}
    weights = torch.zeros_like(density).masked_scatter(valid, w)
    return weights, out


class OccupancyGridSampler(nn.Module):
    """CUDA only: one nerfacc ``OccGridEstimator`` per particle over the ball's bounding box.

    nerfacc's grids cannot be batched over independent scenes, so the estimator calls loop over
    particles (one fused kernel each); the field itself is still evaluated for all particles at
    once on the padded samples. nerfacc draws its stratified offsets and occupancy updates from
    the global CUDA RNG, so GPU runs are not bitwise reproducible.
    """

    def __init__(self, cfg: OccupancyConfig, n_particles: int, radius: float) -> None:
        super().__init__()
        import nerfacc

        self.cfg = cfg
        box = [-radius] * 3 + [radius] * 3
        self.estimators = nn.ModuleList(nerfacc.OccGridEstimator(roi_aabb=box, resolution=cfg.resolution)
                                        for _ in range(n_particles))

    @torch.no_grad()
    def update(self, step: int, density_fn: Callable[[Tensor, int], Tensor], step_size: float) -> None:
        """Re-estimate occupancy every ``update_every`` steps; ``density_fn(points [P, 3], i)`` →
        particle i's density ``[P]``."""
        for i, estimator in enumerate(self.estimators):
            estimator.update_every_n_steps(step, lambda x, i=i: density_fn(x, i) * step_size,
                                           occ_thre=self.cfg.threshold, n=self.cfg.update_every)

    @torch.no_grad()
    def sample(self, origins: Tensor, dirs: Tensor, near: Tensor, far: Tensor, step_size: float,
               stratified: bool) -> RaySamples:
        per = [est.sampling(origins[i], dirs[i], t_min=near[i], t_max=far[i], render_step_size=step_size,
                            stratified=stratified) for i, est in enumerate(self.estimators)]
        m = max(1, max(len(ray) for ray, _, _ in per))
        n, r = origins.shape[:2]
        ray_index = torch.zeros(n, m, dtype=torch.long, device=origins.device)
        starts, ends = (torch.zeros(n, m, device=origins.device) for _ in range(2))
        valid = torch.zeros(n, m, dtype=torch.bool, device=origins.device)
        for i, (ray, t0, t1) in enumerate(per):
            ray_index[i, : len(ray)], starts[i, : len(ray)], ends[i, : len(ray)] = ray, t0, t1
            valid[i, : len(ray)] = True
        return RaySamples(ray_index, starts, ends, (starts + ends) / 2, r, valid=valid)


class VolumeRenderer(BaseModule):
    """Samples rays, evaluates a field, composites it (see the module docstring)."""

    Config = RendererConfig
    cfg: RendererConfig

    def __init__(self, cfg=None, n_particles: int = 1, radius: float = 1.0, path: str = "system.renderer") -> None:
        self.n_particles, self.radius = n_particles, radius   # read by configure()
        super().__init__(cfg, path)

    def configure(self) -> None:
        cfg = self.cfg
        if cfg.estimator not in ("auto", "dense", "occupancy"):
            raise ConfigError(f"{self.config_path}.estimator={cfg.estimator!r}: use 'auto', 'dense' or 'occupancy'")
        if cfg.num_samples_per_ray < 1:
            raise ConfigError(f"{self.config_path}.num_samples_per_ray must be ≥ 1")
        if cfg.estimator != "dense":
            self.occupancy = OccupancyGridSampler(cfg.occupancy, self.n_particles, self.radius)
        self._warned = False

    @property
    def step_size(self) -> float:
        return 2 * self.radius / self.cfg.num_samples_per_ray

    def uses_occupancy(self, device: torch.device) -> bool:
        if self.cfg.estimator == "dense":
            return False
        if device.type != "cuda":
            if self.cfg.estimator == "occupancy" and not self._warned:
                warnings.warn("renderer.estimator=occupancy needs CUDA (nerfacc's kernels); "
                              "rendering with dense samples on this device")
                self._warned = True
            return False
        return True

    def update(self, step: int, density_fn: Callable[[Tensor, int], Tensor], device: torch.device) -> None:
        """Per training step: refresh the occupancy grids (CUDA); nothing for dense sampling."""
        if self.uses_occupancy(device):
            self.occupancy.update(step, density_fn, self.step_size)

    def sample(self, origins: Tensor, dirs: Tensor, jitter: Optional[Tensor]) -> RaySamples:
        if self.uses_occupancy(origins.device):
            near, far = ray_sphere_interval(origins, dirs, self.radius)
            return self.occupancy.sample(origins, dirs, near, far, self.step_size, jitter is not None)
        return dense_samples(origins, dirs, self.radius, self.cfg.num_samples_per_ray, jitter)

    def forward(self, field_fn: Callable[[Tensor, RaySamples], dict[str, Tensor]], origins: Tensor,
                dirs: Tensor, jitter: Optional[Tensor] = None,
                detail_fn: Optional[Callable[[Tensor, dict[str, Tensor], Tensor], dict[str, Tensor]]] = None) -> dict:
        """Render rays ``origins``, ``dirs`` ``[N, R, 3]`` (unit directions).

        ``jitter`` ``[N, R, S]`` in [0, 1) (dense) or any tensor (occupancy: nerfacc's own
        stratification) turns stratified sampling on; None samples bin centres.

        ``detail_fn(points [N, K, 3], fields, rays [N, K])`` is a second pass over the K visible
        samples only (weight > ``prune_weight``; ``fields``: the first pass's per-sample values
        there; ``rays``: their ray indices), for what is costly and only matters where something
        is seen (normals, the point light's shading). Its values are composited with the same
        weights and added to the first pass's values of the same name.

        Returns ``opacity`` ``[N, R]``, ``depth`` ``[N, R]``, each composited value ``[N, R, C]``,
        per-sample ``weights`` ``[N, M]``, the ``samples`` and the first pass's ``fields``; with
        ``detail_fn`` also ``detail`` = :meth:`visible`'s ``index``, ``rays``, ``valid``,
        ``weights`` ``[N, K]`` and the second pass's per-sample values.
        """
        samples = self.sample(origins, dirs, jitter)
        points = samples.gather(origins) + samples.gather(dirs) * samples.t_points[..., None]
        fields = field_fn(points, samples)
        values = {k: v for k, v in fields.items() if k != "density" and v.ndim == 3}
        values["depth"] = samples.t_points[..., None]
        values["opacity"] = torch.ones_like(samples.t_points)[..., None]
        composite = composite_packed if samples.valid is not None else composite_dense
        weights, out = composite(samples, fields["density"], values)
        out["depth"], out["opacity"] = out["depth"][..., 0], out["opacity"][..., 0]
        out.update(weights=weights, samples=samples, fields=fields)
        if detail_fn is not None:
            detail = self.visible(weights, samples)
            index, rays = detail["index"], detail["rays"]
            picked = {k: v.gather(1, index[..., None].expand(-1, -1, v.shape[-1])) if v.ndim == 3 else v.gather(1, index)
                      for k, v in fields.items()}
            values = detail_fn(points.gather(1, index[..., None].expand(-1, -1, 3)), picked, rays)
            for name, v in values.items():
                contrib = detail["weights"][..., None] * v                           # [N, K, C]
                added = contrib.new_zeros(contrib.shape[0], samples.n_rays, contrib.shape[-1]).scatter_add(
                    1, rays[..., None].expand_as(contrib), contrib)
                out[name] = out[name] + added if name in out else added
            out["detail"] = {**detail, **values}
        return out

    def visible(self, weights: Tensor, samples: RaySamples) -> dict[str, Tensor]:
        """The samples with weight > ``prune_weight``, first in each particle's row, padded to the
        particle with the most: ``index`` into the M samples and their ``rays`` (long ``[N, K]``),
        ``valid`` ``[N, K]`` and ``weights`` ``[N, K]`` (0 where not valid)."""
        keep = weights.detach() > self.cfg.prune_weight
        if samples.valid is not None:
            keep &= samples.valid
        k = max(1, int(keep.sum(1).max()))
        index = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :k]
        valid = keep.gather(1, index)
        return {"index": index, "rays": samples.ray_index.gather(1, index), "valid": valid,
                "weights": weights.gather(1, index) * valid}
