"""gaussians: N particles of 3-D Gaussian splats (3DGS / DreamGaussian) with adaptive density control.

Every particle owns ``budget`` splat slots (means, log-scales, quaternions, opacity logits, RGB
or spherical-harmonic colours), stacked as ``[N, budget, ...]`` tensors; ``active [N, budget]``
says which slots hold a splat, so densification and pruning never change a tensor's shape (the
optimizer keeps its parameters, the particles stay one batch). A particle's initial splats
(points in a ball or a Gaussian blob) and its split samples come from streams keyed by the
particle, so it does not depend on the others. Renders show the albedo (DreamGaussian), or, with
a ``material`` section like the NeRF's, the splats lit by each camera's point light (a splat's
normal is its shortest axis), each particle drawing its shading per step from its own stream.

Adaptive control (3DGS, as DreamGaussian runs it for score distillation), per particle, every
``densify.every`` steps in ``[densify.start, densify.end)``: splats whose mean screen-space
gradient (normalised device coordinates, per rendered view) reaches ``grad_threshold`` are cloned
(small ones) or split in two (large ones) into free slots, highest gradients first; then splats
with opacity under ``min_opacity`` (and optionally too large ones) are freed; optionally the
opacities are reset. New splats start with zero optimizer moments, as in 3DGS. The gradient
statistics and the slot mask are saved with checkpoints, so a resumed run densifies exactly
like an uninterrupted one.

Export writes each particle's splats as a 3DGS PLY (``particle{i}-gaussians.ply``, what splat
viewers open) and meshes of the splats' density field Σ o·exp(−½ dᵀΣ⁻¹d) (marching cubes; vertex
colours and a baked texture of the splats' density-weighted colours). The meshes are in the
export's ``up_axis`` coordinates (:mod:`scorestudio.export.mesh`, y up for glTF / OBJ); the
splat PLY in ``splat_up_axis`` coordinates, by default those of 3DGS's PLYs (−y up, as the COLMAP
scenes 3DGS trains on), which splat viewers such as SuperSplat turn upright on loading.
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_pre_hook

from scorestudio.data.cameras import CameraBatch
from scorestudio.export.mesh import (
    UP_AXES, ExportConfig, check_export_config, extract_meshes, mesh_report, save_mesh, set_vertex_colors, texture_mesh,
)
from scorestudio.generators.base import BaseGenerator, RenderOut
from scorestudio.renderers.gaussians.ply import write_splat_ply
from scorestudio.renderers.gaussians.projection import (
    logit, quaternion_to_rotation, rgb_to_sh, rotation_to_quaternion, sh_coefficients, sh_to_rgb,
)
from scorestudio.renderers.gaussians.rasterizer import (
    RasterizerConfig, RasterOut, Splats, check_config, per_view, rasterize,
)
from scorestudio.renderers.nerf.material import DiffuseMaterial, MaterialConfig
from scorestudio.utils.config import ConfigError, ScheduledFloat, parse_structured, schedulable
from scorestudio.utils.registry import register
from scorestudio.utils.seeding import generator

STATS_KEY = "gaussian_densify_stats"   # checkpoint entry of the densification statistics
SHAPES = ("sphere", "blob")
COLORS = ("rgb", "sh")
DENSITY_CHUNK = 1 << 22                # (point, splat) pairs per step of the export's density field
# file coordinates = SPLAT_UP_AXES[splat_up_axis] @ scene coordinates (proper rotations): "-y" is
# the y-up frame of the meshes turned 180° about its z axis, which SuperSplat undoes on loading.
SPLAT_UP_AXES = {"-y": np.diag([-1.0, -1.0, 1.0]) @ UP_AXES["y"], **UP_AXES}


@dataclass
class InitConfig:
    """The splats every particle starts from."""

    shape: str = "sphere"            # sphere: uniform in a ball of `radius`; blob: normal, std radius / 2
    points: int = 1024               # active splats at step 0 (≤ budget)
    radius: float = 0.5              # scene units
    opacity: float = 0.1             # 3DGS / DreamGaussian
    scale: float = 0.0               # axis std, scene units; 0 = mean distance to the 3 nearest points (3DGS)
    color: list = field(default_factory=lambda: [0.5, 0.5, 0.5])
    color_noise: float = 0.05        # ± uniform noise on each splat's colour


@dataclass
class LrConfig:
    """Adam learning rates per attribute (DreamGaussian's); the means' decays exponentially."""

    means: float = 1.0e-3
    means_final: float = 2.0e-5
    means_decay_steps: int = 500     # steps from `means` to `means_final` (then constant); 0 = no decay
    colors: float = 0.01
    opacities: float = 0.05
    scales: float = 0.005
    rotations: float = 0.005


@dataclass
class DensifyConfig:
    """3DGS's adaptive density control, per particle."""

    start: int = 100                 # first step of densification / pruning
    end: int = 3000                  # none from this step on
    every: int = 100                 # steps between two passes; 0 = never
    grad_threshold: float = 0.01     # mean NDC gradient norm of a splat centre that densifies it
    percent_dense: float = 0.01      # splats larger than this × extent are split, smaller ones cloned
    extent: float = 4.0              # the scene extent of 3DGS's size thresholds (DreamGaussian: 4)
    min_opacity: float = 0.01        # prune fainter splats
    max_scale: float = 0.0           # prune splats with a larger axis std (scene units); 0 = off
    max_screen_radius: float = 0.0   # prune splats seen larger (3σ, px) since the last pass; 0 = off
    opacity_reset_every: int = 0     # steps between opacity resets (within [start, end)); 0 = never
    opacity_reset_value: float = 0.01


@dataclass
class LossConfig:
    """Regulariser weights (each a number or a [start_step, start, end, end_step] schedule)."""

    lambda_opaque: ScheduledFloat = schedulable(0.0)    # binary entropy of the accumulated alpha: no fog


@dataclass
class SplatExportConfig(ExportConfig):
    """Splat PLY files and meshes of the density field (``formats: []`` writes no mesh)."""

    resolution: int = 64             # marching-cubes lattice points per axis over [-radius, radius]
    threshold: float = 1.0           # density Σ o·exp(−½ dᵀΣ⁻¹d) of the surface (DreamGaussian's)
    radius: float = 1.0              # half side of the lattice's box, scene units
    splats: bool = True              # particle{i}-gaussians.ply
    # Up axis of the splat PLY: "-y" (3DGS's convention: what SuperSplat and most splat viewers
    # show upright), "y" (as the meshes: front towards +z) or "z" (scene coordinates).
    splat_up_axis: str = "-y"


def sharded() -> bool:
    """Whether the particles are sharded over several processes (a process group of ≥ 2)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class OptimizerLink:
    """The optimizer that steps ``parameter``, found when it first steps.

    torch keeps no link from a parameter to its optimizer, and the system (not the generator)
    builds the optimizer; but densification must zero the moments of the slots it refills. One
    global optimizer step pre-hook shows every stepping optimizer to the live links (held in a
    weak set), and a link keeps the one holding its parameter (weakly: neither keeps the other alive).
    """

    _live: "weakref.WeakSet[OptimizerLink]" = weakref.WeakSet()
    _hook = None

    def __init__(self, parameter: Tensor) -> None:
        self._parameter = weakref.ref(parameter)
        self._optimizer = lambda: None
        OptimizerLink._live.add(self)
        if OptimizerLink._hook is None:
            OptimizerLink._hook = register_optimizer_step_pre_hook(OptimizerLink._show)

    @staticmethod
    def _show(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        for link in list(OptimizerLink._live):
            if link._optimizer() is not optimizer and link.steps(optimizer):
                link._optimizer = weakref.ref(optimizer)

    def steps(self, optimizer: torch.optim.Optimizer) -> bool:
        parameter = self._parameter()
        return any(p is parameter for group in optimizer.param_groups for p in group["params"])

    def zero_moments(self, parameter: Tensor, rows: Tensor) -> None:
        """Zero every per-element optimizer state of ``parameter`` (Adam's moments) at ``rows``
        (a bool mask over its leading dimensions)."""
        optimizer = self._optimizer()
        if optimizer is None:
            return
        for value in optimizer.state.get(parameter, {}).values():
            if torch.is_tensor(value) and value.shape == parameter.shape:
                value[rows] = 0


@register("gaussians")
class GaussianGenerator(BaseGenerator):
    is_3d = True
    exports_assets = True

    @dataclass
    class Config:
        budget: int = 4096                   # splat slots per particle
        init: InitConfig = field(default_factory=InitConfig)
        color: str = "rgb"                   # rgb: sigmoid of a logit per channel; sh: 3DGS spherical harmonics
        sh_degree: int = 0                   # 0 or 1 (color: sh)
        background: list = field(default_factory=lambda: [1.0, 1.0, 1.0])
        # Shading as the NeRF's (albedo / lambertian / textureless, point light per camera); the
        # default draws the albedo only, as DreamGaussian does.
        material: MaterialConfig = field(default_factory=lambda: MaterialConfig(
            albedo_prob=1.0, lambertian_prob=0.0, textureless_prob=0.0, eval_shading="albedo"))
        lr: LrConfig = field(default_factory=LrConfig)
        densify: DensifyConfig = field(default_factory=DensifyConfig)
        rasterizer: RasterizerConfig = field(default_factory=RasterizerConfig)
        loss: LossConfig = field(default_factory=LossConfig)
        export: SplatExportConfig = field(default_factory=SplatExportConfig)

    cfg: Config

    def configure(self) -> None:
        self.check_config()
        cfg, n, g = self.cfg, self.n_particles, self.cfg.budget
        means, log_scales, colors = zip(*(self.initial_splats(i) for i in range(n)))
        active = torch.zeros(n, g, dtype=torch.bool)
        active[:, :cfg.init.points] = True
        quats = torch.zeros(n, g, 4)
        quats[..., 0] = 1.0
        self.means = torch.nn.Parameter(torch.stack(means))                             # [N, G, 3]
        self.log_scales = torch.nn.Parameter(torch.stack(log_scales))                   # [N, G, 3]
        self.quats = torch.nn.Parameter(quats)                                           # [N, G, 4] (w, x, y, z)
        self.opacity_logits = torch.nn.Parameter(torch.full((n, g), float(logit(cfg.init.opacity))))
        rgb = torch.stack(colors)                                                        # [N, G, 3]
        if cfg.color == "rgb":
            self.colors = torch.nn.Parameter(logit(rgb.clamp(1e-3, 1 - 1e-3)))           # [N, G, 3]
        else:
            sh = torch.zeros(n, g, sh_coefficients(cfg.sh_degree), 3)
            sh[:, :, 0] = rgb_to_sh(rgb)
            self.colors = torch.nn.Parameter(sh)                                         # [N, G, K, 3]
        self.register_buffer("active", active)
        # Densification statistics: plain tensors (not buffers, which DDP would overwrite with rank
        # 0's), saved in checkpoints by on_save_checkpoint.
        self.grad_sum = torch.zeros(n, g)            # Σ over renders of the NDC gradient norm
        self.grad_count = torch.zeros(n, g)          # renders in which the splat was visible
        self.max_radii = torch.zeros(n, g)           # largest 3σ screen radius, px
        self.background_color = torch.tensor([float(c) for c in cfg.background])
        self._pending: Optional[tuple[Tensor, RasterOut]] = None
        self._link = OptimizerLink(self.means)
        self.material = DiffuseMaterial(cfg.material, f"{self.config_path}.material")

    def check_config(self) -> None:
        cfg, key = self.cfg, self.config_path
        if cfg.init.shape not in SHAPES:
            raise ConfigError(f"{key}.init.shape={cfg.init.shape!r}: use one of {', '.join(SHAPES)}")
        if cfg.color not in COLORS:
            raise ConfigError(f"{key}.color={cfg.color!r}: use one of {', '.join(COLORS)}")
        if cfg.sh_degree not in (0, 1) or (cfg.sh_degree and cfg.color != "sh"):
            raise ConfigError(f"{key}.sh_degree={cfg.sh_degree}: 0 or 1, and 1 needs color: sh")
        if not 1 <= cfg.init.points <= cfg.budget:
            raise ConfigError(f"{key}.init.points={cfg.init.points} must be in [1, budget={cfg.budget}]")
        if len(cfg.background) != 3:
            raise ConfigError(f"{key}.background={list(cfg.background)}: an RGB triple in [0, 1]")
        check_config(cfg.rasterizer, f"{key}.rasterizer")
        check_export_config(cfg.export, f"{key}.export")
        if cfg.export.splat_up_axis not in SPLAT_UP_AXES:
            raise ConfigError(f"{key}.export.splat_up_axis={cfg.export.splat_up_axis!r}: use '-y' (3DGS, splat "
                              "viewers), 'y' (as the meshes) or 'z' (scene coordinates)")

    def initial_splats(self, particle: int) -> tuple[Tensor, Tensor, Tensor]:
        """Means, log-scales and colours ``[budget, 3]`` of particle ``particle`` (its own stream;
        the slots beyond ``init.points`` are inactive and hold copies of the first splat)."""
        init, g = self.cfg.init, self.cfg.budget
        gen = generator(self.seed, "gaussians-init", particle)
        p = init.points
        if init.shape == "sphere":
            direction = torch.nn.functional.normalize(torch.randn(p, 3, generator=gen), dim=-1)
            means = direction * init.radius * torch.rand(p, 1, generator=gen) ** (1 / 3)
        else:
            means = 0.5 * init.radius * torch.randn(p, 3, generator=gen)
        noise = (2 * torch.rand(p, 3, generator=gen) - 1) * init.color_noise
        colors = (torch.tensor([float(c) for c in init.color]) + noise).clamp(0, 1)
        if init.scale > 0:
            scales = torch.full((p, 3), float(init.scale))
        else:
            dist = torch.cdist(means, means) + torch.eye(p) * 1e9
            nearest = dist.topk(min(3, max(p - 1, 1)), largest=False).values
            scales = (nearest ** 2).mean(-1).clamp(1e-7, init.radius ** 2).sqrt()[:, None].expand(p, 3)
        pad = lambda x: torch.cat([x, x[:1].expand(g - p, -1)])        # noqa: E731
        return pad(means), pad(scales.log()), pad(colors)

    @property
    def export_after_test(self) -> bool:
        return self.cfg.export.after_test

    # ---- rendering ---------------------------------------------------------------------------
    def splats(self, rows: Optional[Tensor], cameras: Optional[CameraBatch], shading: Optional[Tensor] = None,
               panels: bool = False) -> Splats:
        """The splats of particles ``rows`` (None: all) with their colours as ``cameras`` see them
        under ``shading`` (long ``[K]``, :data:`~scorestudio.renderers.nerf.material.SHADINGS`;
        None: the albedo). Colours are per view ``[K·V, G, 3]`` when they depend on the view
        (harmonics of degree 1, lit shading), else ``[K, G, 3]``; with ``panels`` they are per
        view ``[K·V, G, 9]``: the shaded colour, the normal and the albedo."""
        pick = (lambda x: x) if rows is None else (lambda x: x[rows])
        means, quats, scales = pick(self.means), pick(self.quats), pick(self.log_scales).exp()
        colors = pick(self.colors)
        views = 1 if cameras is None else len(cameras) // len(means)
        if self.cfg.color == "rgb":
            albedo = torch.sigmoid(colors)
        elif self.cfg.sh_degree == 0:
            albedo = sh_to_rgb(colors, means)
        else:
            albedo = sh_to_rgb(colors.repeat_interleave(views, dim=0), self.view_dirs(means, cameras))
        lit = shading is not None and self.material.needs_normals(shading)
        normals = self.normals(means, quats, scales, cameras) if lit or panels else None
        if lit:
            positions = means.repeat_interleave(views, dim=0)
            lights = cameras.light_position[:, None, :].expand_as(positions)
            shaded = self.material(per_view(albedo, views, len(positions)), normals, positions, lights,
                                   shading.repeat_interleave(views))
        elif shading is not None:
            shaded = self.material.base_color(albedo, shading.repeat_interleave(len(albedo) // len(shading)))
        else:
            shaded = albedo
        if panels:
            b = len(cameras)
            shaded = torch.cat([per_view(shaded, views, b), normals, per_view(albedo, views, b)], dim=-1)
        return Splats(means=means, quats=quats, scales=scales, opacities=torch.sigmoid(pick(self.opacity_logits)),
                      colors=shaded, active=pick(self.active))

    @staticmethod
    def view_dirs(means: Tensor, cameras: CameraBatch) -> Tensor:
        """Unit directions ``[K·V, G, 3]`` from each camera to the splats ``means [K, G, 3]`` of its scene."""
        views = len(cameras) // len(means)
        eyes = cameras.camera_position.view(len(means), views, 1, 3)
        return torch.nn.functional.normalize(means[:, None] - eyes, dim=-1).flatten(0, 1)

    def normals(self, means: Tensor, quats: Tensor, scales: Tensor, cameras: CameraBatch) -> Tensor:
        """The splats' normals as each camera sees them ``[K·V, G, 3]``: their shortest axis,
        turned towards the camera."""
        views = len(cameras) // len(means)
        axes = quaternion_to_rotation(quats)                                              # [K, G, 3, 3]
        shortest = scales.argmin(-1)[..., None, None].expand(*scales.shape[:-1], 3, 1)
        normals = axes.gather(-1, shortest)[..., 0].repeat_interleave(views, dim=0)
        return torch.where((normals * self.view_dirs(means, cameras)).sum(-1, keepdim=True) > 0, -normals, normals)

    def render(self, particle_ids: Tensor, cameras: Optional[CameraBatch] = None, step: int = 0, *,
               resolution: Optional[int] = None, training: bool = True) -> RenderOut:
        """K·V particle-major ``cameras`` of ``particle_ids`` (long ``[K]``) at ``resolution``²:
        images ``[K·V, 3, H, W]`` over the background, alpha ``[K·V, H, W]``; ``aux`` holds the
        expected ``depth [K·V, H, W]``. Training renders draw their shading from streams keyed
        by particle (``material``) and keep their screen-space centres, whose gradients
        :meth:`after_optimizer_step` adds to the densification statistics; evaluation renders
        also composite the normals and the albedo (``[K·V, 3, H, W]``, no background)."""
        if cameras is None or resolution is None:
            raise ValueError("the gaussians generator renders through cameras at a resolution")
        if training:
            shading = self.material.training_shading(step, particle_ids.cpu(), self.seed)
        else:
            shading = self.material.eval_shading(step, len(particle_ids))
        splats = self.splats(self.rows(particle_ids), cameras, shading.to(self.means.device), panels=not training)
        background = torch.zeros(splats.colors.shape[-1], device=splats.means.device)
        background[:3] = self.background_color.to(background)
        out = rasterize(splats, cameras, resolution, resolution, background, self.cfg.rasterizer)
        self._pending = (particle_ids, out) if training and torch.is_grad_enabled() else None
        rendered = RenderOut(images=out.rgb[:, :3], particle_ids=particle_ids, alpha=out.alpha, aux={"depth": out.depth})
        if not training:
            rendered.normal, rendered.albedo = out.rgb[:, 3:6], out.rgb[:, 6:9]
        return rendered

    # ---- training ----------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        lr = self.cfg.lr
        decay = math.log(lr.means_final / lr.means) if lr.means_decay_steps > 0 else 0.0
        steps = max(lr.means_decay_steps, 1)
        return [
            {"params": [self.means], "name": "means", "lr": lr.means,
             "lr_lambda": lambda step: math.exp(decay * min(step / steps, 1.0))},
            {"params": [self.colors], "name": "colors", "lr": lr.colors},
            {"params": [self.opacity_logits], "name": "opacities", "lr": lr.opacities},
            {"params": [self.log_scales], "name": "scales", "lr": lr.scales},
            {"params": [self.quats], "name": "rotations", "lr": lr.rotations},
        ]

    def regularizers(self, out: RenderOut, step: int) -> dict[str, Tensor]:
        """``loss_opaque``: weight × binary entropy of the accumulated alpha (mean over pixels and
        renders)."""
        if (w := self.cfg.loss.lambda_opaque.at(step)) == 0:
            return {}
        o = out.alpha.clamp(1e-3, 1 - 1e-3)
        return {"loss_opaque": w * -(o * o.log() + (1 - o) * (1 - o).log()).mean()}

    def after_optimizer_step(self) -> None:
        """Add the last training render's screen-space gradients to the densification statistics."""
        if self._pending is None:
            return
        particle_ids, out = self._pending
        self._pending = None
        with torch.no_grad():
            k = len(particle_ids)
            # The guidance's loss is a mean over the B renders: × B gives each render's own gradient,
            # so the threshold does not depend on how many particles and views share a step.
            grad = (out.screen_gradient() * len(out.visible)).view(k, -1, self.cfg.budget).cpu()
            visible = out.visible.view(k, -1, self.cfg.budget).cpu()
            ids = particle_ids.cpu()
            self.grad_sum[ids] += (grad * visible).sum(1)
            self.grad_count[ids] += visible.sum(1)
            self.max_radii[ids] = torch.maximum(self.max_radii[ids], out.radii.view(k, -1, self.cfg.budget).amax(1).cpu())

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Densify, prune and reset opacities at the steps ``densify`` names."""
        d = self.cfg.densify
        if not (d.every > 0 and d.start <= step < d.end and step % d.every == 0):
            return
        grad_sum, grad_count, max_radii = self.global_stats()
        fresh = torch.zeros_like(self.active)
        for i in range(self.n_particles):
            grads = grad_sum[i] / grad_count[i].clamp_min(1)
            fresh[i] = self.densify_particle(i, grads.to(self.means.device), step)
            self.prune_particle(i, max_radii[i].to(self.means.device))
        if d.opacity_reset_every > 0 and step % d.opacity_reset_every == 0:
            reset = float(logit(d.opacity_reset_value))
            self.opacity_logits.clamp_(max=reset)
            self._link.zero_moments(self.opacity_logits, self.active)
        for parameter in (self.means, self.log_scales, self.quats, self.opacity_logits, self.colors):
            self._link.zero_moments(parameter, fresh.to(parameter.device))
        for stat in (self.grad_sum, self.grad_count, self.max_radii):
            stat.zero_()

    def global_stats(self) -> tuple[Tensor, Tensor, Tensor]:
        """The statistics of all particles: in a sharded run each process has those of its own
        particles (zeros elsewhere), summed here over the processes (radii: the largest)."""
        stats = (self.grad_sum.clone(), self.grad_count.clone(), self.max_radii.clone())
        if sharded():
            import torch.distributed as dist

            device = self.means.device
            stats = tuple(s.to(device) for s in stats)
            dist.all_reduce(stats[0])
            dist.all_reduce(stats[1])
            dist.all_reduce(stats[2], op=dist.ReduceOp.MAX)
        return tuple(s.cpu() for s in stats)

    def densify_particle(self, i: int, grads: Tensor, step: int) -> Tensor:
        """Clone or split particle ``i``'s splats whose mean gradient ``grads [G]`` reaches the
        threshold into its free slots (largest gradients first); returns the slots whose
        optimizer moments start from zero (bool ``[G]``)."""
        d, active = self.cfg.densify, self.active[i]
        fresh = torch.zeros_like(active)
        candidates = (active & (grads >= d.grad_threshold)).nonzero()[:, 0]
        free = (~active).nonzero()[:, 0]
        if len(candidates) == 0 or len(free) == 0:
            return fresh
        source = candidates[grads[candidates].argsort(descending=True, stable=True)][:len(free)]
        target = free[:len(source)]
        scales = self.log_scales[i, source].exp()                                           # [S, 3]
        split = scales.amax(-1) > d.percent_dense * d.extent
        for parameter in (self.means, self.log_scales, self.quats, self.opacity_logits, self.colors):
            parameter[i, target] = parameter[i, source]
        # A split splat becomes two samples of itself with 1/1.6 of its size (3DGS); both are new.
        halves = source[split], target[split]
        if len(halves[0]):
            gen = generator(self.seed, "gaussians-split", i, step)
            local = torch.randn(2, len(halves[0]), 3, generator=gen).to(scales) * scales[split]
            rotation = quaternion_to_rotation(self.quats[i, halves[0]])
            centre = self.means[i, halves[0]]
            for half, offset in zip(halves, local):
                self.means[i, half] = centre + (rotation @ offset[..., None])[..., 0]
                self.log_scales[i, half] = (scales[split] / 1.6).log()
                fresh[half] = True
        fresh[target] = True
        self.active[i, target] = True
        return fresh

    def prune_particle(self, i: int, max_radii: Tensor) -> None:
        """Free particle ``i``'s slots of faint (and, if configured, too large) splats."""
        d = self.cfg.densify
        prune = torch.sigmoid(self.opacity_logits[i]) < d.min_opacity
        if d.max_scale > 0:
            prune |= self.log_scales[i].exp().amax(-1) > d.max_scale
        if d.max_screen_radius > 0:
            prune |= max_radii > d.max_screen_radius
        self.active[i] &= ~prune
        if not self.active[i].any():
            warnings.warn(f"particle {i}: pruning left no splat (densify.min_opacity={d.min_opacity})")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The statistics gathered since the last densification decide the next one: saved with
        # the weights (summed over processes), so a resumed run densifies like an uninterrupted one.
        checkpoint[STATS_KEY] = dict(zip(("grad_sum", "grad_count", "max_radii"), self.global_stats()))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        stats = checkpoint.get(STATS_KEY)
        if stats is None:
            return
        own = torch.ones(self.n_particles, dtype=torch.bool)
        if sharded():   # each process keeps its own particles' share of the sums
            from scorestudio.utils.distributed import particle_block, world

            own[:] = False
            own[particle_block(self.n_particles, *world())] = True
        for name in ("grad_sum", "grad_count", "max_radii"):
            getattr(self, name).copy_(torch.where(own[:, None], stats[name], torch.zeros_like(stats[name])))

    # ---- export ------------------------------------------------------------------------------
    def base_colors(self, i: int) -> Tensor:
        """Particle ``i``'s view-independent colours ``[G, 3]`` (for harmonics: the degree-0 part)."""
        if self.cfg.color == "rgb":
            return torch.sigmoid(self.colors[i])
        return sh_to_rgb(self.colors[i, :, :1], self.means[i])

    @torch.no_grad()
    def density(self, points: Tensor, particles: Optional[Tensor] = None, colors: bool = False) -> Tensor:
        """The splats' density Σ o·exp(−½ dᵀΣ⁻¹d) ``[K, P]`` at ``points [K, P, 3]`` of particles
        ``particles`` (None: all), or with ``colors`` the density-weighted mean colour ``[K, P, 3]``."""
        ids = range(self.n_particles) if particles is None else particles.tolist()
        return torch.stack([self.particle_density(i, x, colors) for i, x in zip(ids, points)])

    def particle_density(self, i: int, points: Tensor, colors: bool) -> Tensor:
        """:meth:`density` of particle ``i`` at ``points [P, 3]``: the exponent of every (point,
        splat) pair is one matrix product over the point's quadratic features."""
        slots = self.active[i]
        means, opacity = self.means[i, slots], torch.sigmoid(self.opacity_logits[i, slots])
        scaled = quaternion_to_rotation(self.quats[i, slots]) / self.log_scales[i, slots].exp()[..., None, :]
        precision = scaled @ scaled.transpose(-1, -2)                                      # R S⁻² Rᵀ [g, 3, 3]
        lam_mu = (precision @ means[..., None])[..., 0]
        # log o − ½ (x − μ)ᵀΛ(x − μ) = [x xᵀ, x, 1] · [−½ Λ, Λμ, log o − ½ μᵀΛμ]
        coef = torch.cat([-0.5 * precision.flatten(-2), lam_mu,
                          (opacity.log() - 0.5 * (means * lam_mu).sum(-1))[:, None]], dim=-1)   # [g, 13]
        rgb = self.base_colors(i)[slots]
        chunk = max(1, DENSITY_CHUNK // max(len(means), 1))
        out = []
        for x in points.split(chunk):
            feats = torch.cat([(x[:, :, None] * x[:, None, :]).flatten(1), x, torch.ones_like(x[:, :1])], dim=-1)
            weight = (feats @ coef.T).clamp_max(0).exp()                                    # [p, g]
            out.append((weight @ rgb) / weight.sum(-1, keepdim=True).clamp_min(1e-8) if colors else weight.sum(-1))
        return torch.cat(out)

    def export_settings(self, config: Optional[dict] = None) -> dict:
        cfg = self.cfg.export if config is None else parse_structured(self.Config, config, self.config_path).export
        return {"mc": cfg.resolution, "tex": cfg.texture_size if cfg.texture else 0, "faces": cfg.max_faces}

    @torch.no_grad()
    def export(self, particle_ids: Tensor, folder: Path) -> tuple[list[Path], dict]:
        """For every particle of ``particle_ids``: ``folder/particle{i}-gaussians.ply`` (its active
        splats, in ``export.splat_up_axis`` coordinates) and meshes ``particle{i}.{formats}`` of
        the density field (vertex colours, and a baked texture for OBJ / GLB with ``texture``, in
        ``export.up_axis`` coordinates), with their reports."""
        cfg, device = self.cfg.export, self.device_of()
        paths, report = [], {}
        for i in particle_ids.tolist():
            report[f"export/particle{i}/splats"] = int(self.active[i].sum())
            if cfg.splats:
                paths.append(self.write_ply(i, folder / f"particle{i}-gaussians.ply"))
        if not cfg.formats:
            return paths, report
        meshes = extract_meshes(lambda p: self.density(p.to(device)), None, self.n_particles, cfg.radius, cfg)
        for i in particle_ids.tolist():
            mesh, removed = meshes[i]
            key = f"export/particle{i}"
            report.update({f"{key}/{k}": v for k, v in mesh_report(mesh, removed).items()})
            if len(mesh.faces) == 0:
                warnings.warn(f"particle {i}: the splats' density never reaches export.threshold={cfg.threshold}; no mesh written")
                continue

            def albedo(points: Tensor, normals: Tensor, i: int = i) -> Tensor:
                return self.particle_density(i, points.to(device), colors=True).cpu()

            set_vertex_colors(mesh, albedo(torch.tensor(np.array(mesh.vertices), dtype=torch.float32), None).numpy())
            textured = None
            if cfg.texture and {"obj", "glb"} & set(cfg.formats):
                textured = texture_mesh(mesh, albedo, cfg)
                report[f"{key}/texture_mean_rgb"] = [round(255 * c, 1) for c in textured.mean_color.tolist()]
            paths += save_mesh(mesh, folder / f"particle{i}", list(cfg.formats), cfg.up_axis, textured)
        return paths, report

    def write_ply(self, i: int, path: Path) -> Path:
        """Particle ``i``'s active splats as a 3DGS PLY in ``export.splat_up_axis`` coordinates
        (colours as spherical harmonics, whose degree-1 part turns with the frame)."""
        slots = self.active[i]
        turn = torch.as_tensor(SPLAT_UP_AXES[self.cfg.export.splat_up_axis], dtype=self.means.dtype,
                               device=self.means.device)
        sh = rgb_to_sh(self.base_colors(i)[slots])[:, None, :] if self.cfg.color == "rgb" else self.colors[i, slots]
        if sh.shape[1] > 1:   # Y_1 = C1 · (−y, z, −x) · d: its coefficients turn by M·turn·Mᵀ
            basis = torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]]).to(turn)
            sh = torch.cat([sh[:, :1], (basis @ turn @ basis.T) @ sh[:, 1:]], dim=1)
        quats = rotation_to_quaternion(turn @ quaternion_to_rotation(self.quats[i, slots]))
        return write_splat_ply(path, (self.means[i, slots] @ turn.T).cpu().numpy(), sh.cpu().numpy(),
                               self.opacity_logits[i, slots].cpu().numpy(), self.log_scales[i, slots].cpu().numpy(),
                               quats.cpu().numpy())
