"""Volume rendering of N particles: samples along rays inside the scene ball, then compositing.

    renderer = VolumeRenderer(cfg, n_particles=N, radius=1.0)
    out = renderer(field_fn, origins, dirs, jitter=..., detail_fn=...)   # origins, dirs [N, R, 3]

``field_fn(points [N, M, 3], samples) -> {"density": [N, M], name: [N, M, C], ...}`` is any
field (the NeRF geometry and base colour, or an analytic density in tests); its ``[N, M, C]``
values are alpha-composited per ray. ``detail_fn`` adds what is only worth computing where
something is visible (normals, point-light shading) on the samples whose weight exceeds
``prune_weight``. Two ways to place the samples, chosen by device:

- ``dense``: ``num_samples_per_ray`` stratified samples between the ray's entry and exit of the
  ball, composited with nerfacc's dense functions on ``[rays, samples]`` tensors (pure PyTorch,
  autograd on the CPU);
- ``occupancy``: the dense samples, but while training the field is evaluated only at those in
  occupied cells of an :class:`EmptySpaceMask` (the others get density 0), which cuts the field's
  forward and backward, the bulk of a CPU step (``benchmarks/bench_nerf.py``). Plain PyTorch,
  any device;
- ``nerfacc`` (CUDA only): a nerfacc ``OccGridEstimator`` per particle skips empty space and
  returns packed samples, composited with nerfacc's packed CUDA kernels. nerfacc's packed and
  estimator functions need its CUDA extension, so they are never called on a CPU tensor;
- ``auto``: ``nerfacc`` on CUDA, ``dense`` elsewhere.

Evaluation renders (validation grids, test orbits: many more rays than a training step) with dense
samples skip space too, but with a grid of their own, re-estimated once per trained step at a
threshold (``eval_skip_threshold``) so low that the skipped samples cannot show: the training grid's
threshold would hide the faint fog the evaluation is there to measure.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scorestudio.utils.base import BaseModule
from scorestudio.utils.config import ConfigError


ESTIMATORS = ("auto", "dense", "occupancy", "nerfacc")


@dataclass
class OccupancyConfig:
    resolution: int = 64           # occupancy cells per axis over the scene's bounding box
    update_every: int = 16         # re-estimate occupancy every this many training steps
    threshold: float = 0.01        # a cell is occupied when density · step size exceeds this
    dilation: int = 1              # EmptySpaceMask: also keep cells this many cells around occupied ones,
                                   # so that density can grow into them before the next update


@dataclass
class RendererConfig:
    num_samples_per_ray: int = 48  # samples per ray inside the ball; nerfacc: step = 2·radius / this
    stratified: bool = True        # training samples at a random point of their bin (eval: bin centres)
    # "dense", "occupancy" (EmptySpaceMask: dense samples, the field only in occupied cells; any
    # device), "nerfacc" (nerfacc's occupancy grids, CUDA only) or "auto" (nerfacc on CUDA, else dense)
    estimator: str = "auto"
    # Normals and point-light shading are evaluated only at samples whose compositing weight
    # exceeds this (the others add < prune_weight each to their pixel); 0 = at every sample.
    prune_weight: float = 1e-3
    # Evaluation renders with dense samples evaluate the field only in cells (occupancy.resolution,
    # occupancy.dilation) where density · step size exceeds this; 0 = at every sample.
    eval_skip_threshold: float = 1e-5
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
        samples.t_starts.view(n * r, s), samples.t_ends.view(n * r, s), density.reshape(n * r, s))
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

    def sample(self, origins: Tensor, dirs: Tensor, near: Tensor, far: Tensor, step_size: float,
               stratified: bool, particles: Optional[Tensor] = None) -> RaySamples:
        """Rays ``[K, R, 3]`` of the particles ``particles`` (long ``[K]``; None: all N)."""
        ids = range(len(self.estimators)) if particles is None else particles.tolist()
        per = [self.estimators[p].sampling(origins[i], dirs[i], t_min=near[i], t_max=far[i],
                                           render_step_size=step_size, stratified=stratified)
               for i, p in enumerate(ids)]
        m = max(1, max(len(ray) for ray, _, _ in per))
        n, r = origins.shape[:2]
        ray_index = torch.zeros(n, m, dtype=torch.long, device=origins.device)
        starts, ends = (torch.zeros(n, m, device=origins.device) for _ in range(2))
        valid = torch.zeros(n, m, dtype=torch.bool, device=origins.device)
        for i, (ray, t0, t1) in enumerate(per):
            ray_index[i, : len(ray)], starts[i, : len(ray)], ends[i, : len(ray)] = ray, t0, t1
            valid[i, : len(ray)] = True
        return RaySamples(ray_index, starts, ends, (starts + ends) / 2, r, valid=valid)


class EmptySpaceMask:
    """Empty-space skipping in PyTorch: per particle a boolean occupancy grid ``[N, G, G, G]`` over the
    ball's bounding box, re-estimated every ``update_every`` training steps from the density at
    the cell centres and dilated by ``dilation`` cells.

    Written here because nerfacc's ``OccGridEstimator`` samples with CUDA kernels only; here the
    samples stay dense and the mask only says where the field is worth evaluating.
    """

    def __init__(self, cfg: OccupancyConfig, radius: float) -> None:
        self.cfg, self.radius = cfg, radius
        self.occupied: Optional[Tensor] = None     # bool [N, G³], x fastest

    @torch.no_grad()
    def update(self, step: int, density_fn: Callable[[Tensor], Tensor], n_particles: int, step_size: float,
               device: torch.device) -> None:
        """Re-estimate at every ``update_every``-th step, or when there is no mask yet.
        ``density_fn(points [N, P, 3])`` → density ``[N, P]`` of all particles."""
        if self.occupied is not None and step % self.cfg.update_every != 0:
            return
        g = self.cfg.resolution
        centres = (torch.arange(g, device=device, dtype=torch.float32) + 0.5) / g * 2 * self.radius - self.radius
        z, y, x = torch.meshgrid(centres, centres, centres, indexing="ij")
        points = torch.stack([x, y, z], dim=-1).reshape(1, -1, 3).expand(n_particles, -1, -1)
        occupied = (density_fn(points) * step_size > self.cfg.threshold).float().view(n_particles, 1, g, g, g)
        width = 2 * self.cfg.dilation + 1
        occupied = F.max_pool3d(occupied, width, stride=1, padding=self.cfg.dilation) > 0
        self.occupied = occupied.view(n_particles, -1)

    def lookup(self, points: Tensor, particles: Optional[Tensor] = None) -> Tensor:
        """Whether each point ``[K, M, 3]`` of the particles ``particles`` (long ``[K]``; None: all
        N) lies in one of their occupied cells: bool ``[K, M]``."""
        g = self.cfg.resolution
        # Cell coordinates and the flat index in float32 (exact below 2^24 cells), one conversion to
        # long at the end: cheaper on a CPU than integer arithmetic on the [N, M, 3] coordinates.
        cell = ((points.float() + self.radius) * (g / (2 * self.radius))).clamp_(0, g - 1).floor_()
        flat = (cell[..., 0] + g * (cell[..., 1] + g * cell[..., 2])).long()
        if self.occupied.device != points.device:             # restored from a checkpoint on the CPU
            self.occupied = self.occupied.to(points.device)
        occupied = self.occupied if particles is None else self.occupied[particles.to(self.occupied.device)]
        return occupied.gather(1, flat)


def pack(keep: Tensor) -> tuple[Tensor, Tensor]:
    """The True entries of ``keep`` ``[N, M]``, first in each row and in order, padded to the row
    with the most: ``index`` into the M entries (long ``[N, K]``, padding points at entry 0) and
    ``valid`` ``[N, K]``.

    A running count gives each True entry its place; one scatter writes them there (the False
    entries all go to a spare column K, dropped), cheaper on a CPU than a stable argsort of the
    mask."""
    n, m = keep.shape
    placed = keep.cumsum(1)                                               # True entries up to here
    counts = placed[:, -1]
    k = max(1, int(counts.max()))                                         # ≥ 1: never an empty batch
    slot = torch.where(keep, placed - 1, k)
    columns = torch.arange(m, device=keep.device).expand(n, m)
    index = torch.zeros(n, k + 1, dtype=torch.long, device=keep.device).scatter_(1, slot, columns)[:, :k]
    return index, torch.arange(k, device=keep.device) < counts[:, None]


def evaluate_where(field_fn: Callable[[Tensor, RaySamples], dict[str, Tensor]], points: Tensor,
                   samples: RaySamples, keep: Tensor) -> dict[str, Tensor]:
    """``field_fn`` at the points ``[N, M, 3]`` where ``keep`` ``[N, M]``; elsewhere every field is 0
    (density 0: nothing there). The kept points are packed (:func:`pack`), evaluated in one call,
    and scattered back into dense ``[N, M(, C)]`` fields."""
    n, m = keep.shape
    index, valid = pack(keep)
    fields = field_fn(points.gather(1, index[..., None].expand(-1, -1, 3)), samples)
    target = torch.where(valid, index, m)                                  # padding → row m, dropped
    dense = {}
    for name, value in fields.items():
        rows = target.view(*target.shape, *[1] * (value.ndim - 2)).expand_as(value)
        dense[name] = value.new_zeros(n, m + 1, *value.shape[2:]).scatter(1, rows, value)[:, :m]
    return dense


class VolumeRenderer(BaseModule):
    """Samples rays, evaluates a field, composites it (see the module docstring)."""

    Config = RendererConfig
    cfg: RendererConfig

    def __init__(self, cfg=None, n_particles: int = 1, radius: float = 1.0, path: str = "system.renderer") -> None:
        self.n_particles, self.radius = n_particles, radius   # read by configure()
        super().__init__(cfg, path)

    def configure(self) -> None:
        cfg = self.cfg
        if cfg.estimator not in ESTIMATORS:
            raise ConfigError(f"{self.config_path}.estimator={cfg.estimator!r}: use one of {', '.join(ESTIMATORS)}")
        if cfg.num_samples_per_ray < 1:
            raise ConfigError(f"{self.config_path}.num_samples_per_ray must be ≥ 1")
        occ = cfg.occupancy
        for key, value, least in (("resolution", occ.resolution, 1), ("update_every", occ.update_every, 1),
                                  ("dilation", occ.dilation, 0)):
            if value < least:
                raise ConfigError(f"{self.config_path}.occupancy.{key}={value}: must be ≥ {least}")
        if occ.resolution > 256:   # EmptySpaceMask.lookup indexes cells in float32: exact up to 2^24 cells
            raise ConfigError(f"{self.config_path}.occupancy.resolution={occ.resolution}: at most 256 cells per axis")
        if cfg.estimator in ("nerfacc", "auto"):
            self.occupancy = OccupancyGridSampler(cfg.occupancy, self.n_particles, self.radius)
        self.empty_space = EmptySpaceMask(cfg.occupancy, self.radius)
        self.eval_space = EmptySpaceMask(replace(cfg.occupancy, threshold=cfg.eval_skip_threshold), self.radius)
        self.eval_space_step: Optional[int] = None   # the trained step eval_space was estimated at

    @property
    def step_size(self) -> float:
        return 2 * self.radius / self.cfg.num_samples_per_ray

    def uses_nerfacc(self, device: torch.device) -> bool:
        """nerfacc's occupancy grids and packed samples (CUDA)."""
        if self.cfg.estimator == "nerfacc" and device.type != "cuda":
            raise ConfigError(f"{self.config_path}.estimator=nerfacc needs CUDA (nerfacc's kernels), not {device}; "
                              "use occupancy (empty-space skipping on any device) or dense")
        return self.cfg.estimator == "nerfacc" or (self.cfg.estimator == "auto" and device.type == "cuda")

    @property
    def skips_empty_space(self) -> bool:
        """Dense samples with the field evaluated only in occupied cells (while training)."""
        return self.cfg.estimator == "occupancy" and self.training

    def update(self, step: int, density_fn: Callable[..., Tensor], device: torch.device) -> None:
        """Per training step: refresh the occupancy grids every ``occupancy.update_every`` steps
        (nothing for dense sampling). ``density_fn(points [K, P, 3], particles [K] | None)`` →
        density ``[K, P]`` (None: all N particles), as ``ParticleGeometry.density``."""
        if self.uses_nerfacc(device):
            def particle_density(points: Tensor, i: int) -> Tensor:
                return density_fn(points[None], torch.tensor([i], device=device))[0]
            self.occupancy.update(step, particle_density, self.step_size)
        elif self.skips_empty_space:
            self.empty_space.update(step, lambda points: density_fn(points, None), self.n_particles,
                                    self.step_size, device)

    def prepare_evaluation(self, step: int, density_fn: Callable[..., Tensor], device: torch.device) -> None:
        """Before evaluation renders of the field trained for ``step`` steps: the cells they skip,
        re-estimated only when the step changed (``density_fn`` as in :meth:`update`)."""
        if self.cfg.eval_skip_threshold <= 0 or self.uses_nerfacc(device) or self.eval_space_step == step:
            return
        self.eval_space.occupied = None
        self.eval_space.update(step, lambda points: density_fn(points, None), self.n_particles, self.step_size, device)
        self.eval_space_step = step

    def skipped_space(self) -> Optional[EmptySpaceMask]:
        """The mask whose occupied cells alone are evaluated in this render, None for all samples."""
        if self.skips_empty_space:
            return self.empty_space if self.empty_space.occupied is not None else None
        if not self.training and self.eval_space_step is not None:
            return self.eval_space
        return None

    def sample(self, origins: Tensor, dirs: Tensor, jitter: Optional[Tensor],
               particles: Optional[Tensor] = None) -> RaySamples:
        if self.uses_nerfacc(origins.device):
            near, far = ray_sphere_interval(origins, dirs, self.radius)
            return self.occupancy.sample(origins, dirs, near, far, self.step_size, jitter is not None, particles)
        return dense_samples(origins, dirs, self.radius, self.cfg.num_samples_per_ray, jitter)

    def forward(self, field_fn: Callable[[Tensor, RaySamples], dict[str, Tensor]], origins: Tensor,
                dirs: Tensor, jitter: Optional[Tensor] = None,
                detail_fn: Optional[Callable[[Tensor, dict[str, Tensor], Tensor], dict[str, Tensor]]] = None,
                particles: Optional[Tensor] = None) -> dict:
        """Render rays ``origins``, ``dirs`` ``[N, R, 3]`` (unit directions) of the particles
        ``particles`` (long ``[N]``, for their occupancy grids; None: all of them, in order).

        ``jitter`` ``[N, R, S]`` in [0, 1) (dense samples) or any tensor (nerfacc: its own
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
        samples = self.sample(origins, dirs, jitter, particles)
        points = samples.gather(origins) + samples.gather(dirs) * samples.t_points[..., None]
        space = self.skipped_space() if samples.valid is None else None
        if space is not None:
            fields = evaluate_where(field_fn, points, samples, space.lookup(points, particles))
        else:
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
        index, valid = pack(keep)
        return {"index": index, "rays": samples.ray_index.gather(1, index), "valid": valid,
                "weights": weights.gather(1, index) * valid}
