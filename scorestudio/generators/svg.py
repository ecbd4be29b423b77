"""The SVG generator: N particles of P closed cubic-Bézier paths, rendered by the differentiable
rasterizer of :mod:`scorestudio.renderers.svg`.

Following VectorFusion / DreamSampler's appendix 7.1:

- initialisation, keyed per particle by (seed, "svg-init", i): P circles of S cubic segments,
  radius 20 px at a 600 px canvas (scaled to the canvas), random centres, random RGB fill,
  opacity ~ U[0.7, 1];
- the control points' lr warms up linearly and decays with a cosine to its end value (fractions
  of the peak, :class:`SvgLrConfig`); colours use the point lr × 1/20, the (optional, learnable)
  background × 1/200; colours are clamped to [0, 1] after every step;
- the self-intersection (Xing) loss of LIVE on every cubic, vectorised (:func:`xing_loss`);
- a fixed number of line edges per cubic in the rasterizer (its adaptive choice is made per
  batch and would couple the particles).

The canvas may be larger than the prior's images: the prior's encoder resizes renderings to its
``image_size``. The raster-to-vector start of text-to-SVG (fit the paths to target images, then
prune the paths the fit does not need) is :func:`fit_to_images` and :func:`prune_paths`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scorestudio.generators.base import BaseGenerator, RenderOut
from scorestudio.renderers.svg import RasterizerConfig, SvgScene, circle_points, write_svg
from scorestudio.renderers.svg import render as rasterize
from scorestudio.renderers.svg.rasterizer import control_points
from scorestudio.utils.config import ConfigError
from scorestudio.utils.registry import register
from scorestudio.utils.seeding import per_particle_rand

REFERENCE_CANVAS = 600.0   # px: VectorFusion's canvas, the unit of the initial radius


@dataclass
class SvgInitConfig:
    num_paths: int = 32                  # P closed paths per particle
    segments: int = 4                    # cubic segments per path (4 = the usual circle)
    radius: float = 20.0                 # initial circle radius, px at a 600 px canvas (scaled to the canvas)
    opacity: list = field(default_factory=lambda: [0.7, 1.0])   # initial fill alpha ~ U[lo, hi]
    background: list = field(default_factory=lambda: [1.0, 1.0, 1.0])   # RGB behind the paths
    learn_background: bool = False       # optimise the background colour (lr × background_ratio)


@dataclass
class SvgLrConfig:
    points: float = 0.5              # peak Adam lr of the control points, px per step (paper: 0.2 at 600 px, 10k steps)
    start_fraction: float = 0.1      # warm-up starts at this × peak (paper: 0.02 / 0.2)
    end_fraction: float = 0.25       # the cosine decay ends at this × peak (paper: 0.05 / 0.2)
    warmup_steps: int = 100          # linear warm-up length (paper: 500 of 10k)
    total_steps: int = 1000          # end of the cosine decay: set to trainer.max_steps
    color_ratio: float = 0.05        # colour lr = point lr × this (paper: 20× lower)
    background_ratio: float = 0.005  # background lr = point lr × this (paper: 200× lower)

    def factor(self, step: int) -> float:
        """Point lr at ``step`` as a fraction of the peak: linear warm-up, then cosine decay."""
        if step < self.warmup_steps:
            return self.start_fraction + (1 - self.start_fraction) * step / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.end_fraction + (1 - self.end_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


def xing_loss(scene: SvgScene) -> Tensor:
    """LIVE's self-intersection loss per scene ``[N]``: mean over the real cubic segments of
    relu(−sign(d1 × d2) · sin∠(d1, d3)), with d1, d2, d3 the legs of the control polygon p0→p1→p2→p3.

    A cubic whose first and last legs turn against the turn of its first two legs crosses itself
    (bow-tie); consistently turning (convex) segments cost nothing.
    """
    ctrl = control_points(scene)                                          # [N, P, S, 4, 2]
    d1, d2, d3 = (ctrl[..., i + 1, :] - ctrl[..., i, :] for i in range(3))

    def cross(a: Tensor, b: Tensor) -> Tensor:
        return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]

    sine = cross(d1, d3) / (d1.norm(dim=-1) * d3.norm(dim=-1)).clamp_min(1e-8)
    per_segment = F.relu(-cross(d1, d2).sign() * sine)                    # [N, P, S]
    real = (scene.contour >= 0).to(per_segment)
    return (per_segment * real).sum((1, 2)) / real.sum().clamp_min(1)


@register("svg")
class SvgGenerator(BaseGenerator):
    """N scenes of P closed paths as parameters: ``points [N, P, 3S, 2]`` (px), ``colors [N, P, 4]``
    (straight RGBA in [0, 1]) and ``background [N, 3]`` (a parameter or a buffer); renders
    ``[K, 3, C, C]`` in [0, 1] at the canvas side C = ``canvas_size``."""

    # Keys that older configs set at system level (system.paths, ...): the system moves them here.
    system_keys = ("paths", "renderer", "lr", "xing_weight", "canvas_size")
    legacy_state_prefixes = ("svg.",)
    exports_assets = True

    @dataclass
    class Config:
        paths: SvgInitConfig = field(default_factory=SvgInitConfig)
        # A fixed K (line edges per cubic): the adaptive K is chosen for the whole batch, which
        # would make a particle's rendering depend on the other particles' shapes.
        renderer: RasterizerConfig = field(default_factory=lambda: RasterizerConfig(samples_per_segment=8))
        lr: SvgLrConfig = field(default_factory=SvgLrConfig)
        xing_weight: float = 0.01            # weight of the self-intersection loss (LIVE / VectorFusion)
        canvas_size: Optional[int] = 64      # px; systems that derive it from their data pass it in

    def configure(self) -> None:
        cfg, n = self.cfg.paths, self.n_particles
        lo, hi = cfg.opacity
        if cfg.num_paths < 1 or cfg.segments < 2 or not 0 <= lo <= hi <= 1:
            raise ConfigError(f"{self.config_path}.paths: need num_paths ≥ 1, segments ≥ 2 and 0 ≤ opacity[0] ≤ "
                              f"opacity[1] ≤ 1, got {cfg.num_paths}, {cfg.segments}, {cfg.opacity}")
        if self.cfg.canvas_size is None or self.cfg.canvas_size < 1:
            raise ConfigError(f"{self.config_path}.canvas_size={self.cfg.canvas_size}: set the canvas side in px")
        self.canvas = canvas = self.cfg.canvas_size
        p = cfg.num_paths
        draws = per_particle_rand((p, 6), self.seed, range(n), "svg-init")          # [N, P, 6]
        radius = torch.full((n, p), cfg.radius * canvas / REFERENCE_CANVAS)
        self.points = nn.Parameter(circle_points(draws[..., :2] * canvas, radius, cfg.segments))
        alpha = lo + (hi - lo) * draws[..., 5:]
        self.colors = nn.Parameter(torch.cat([draws[..., 2:5], alpha], -1))
        background = torch.tensor([float(v) for v in cfg.background]).expand(n, 3).clone()
        if cfg.learn_background:
            self.background = nn.Parameter(background)
        else:
            self.register_buffer("background", background)
        # 0 = a pruned path: fully transparent, so it neither shows nor receives gradient.
        self.register_buffer("visible", torch.ones(n, p))

    def scene(self, particles: Optional[Tensor] = None) -> SvgScene:
        """The current scenes of ``particles`` (long ``[K]``; None: all N), differentiable w.r.t.
        the parameters."""
        def rows(x: Tensor) -> Tensor:
            return x if particles is None else x[particles]

        colors = torch.cat([self.colors[..., :3], self.colors[..., 3:] * self.visible[..., None]], -1)
        return SvgScene(rows(self.points), rows(colors), self.canvas, self.canvas, background=rows(self.background))

    # ---- the generator interface --------------------------------------------------------------
    def render(self, particle_ids: Optional[Tensor] = None, cameras=None, step: int = 0, *,
               resolution: Optional[int] = None, training: bool = True) -> RenderOut:
        """Renderings ``[K, 3, C, C]`` in [0, 1] of ``particle_ids`` (None: all N); the scene is
        ``aux["scene"]`` (for the Xing loss). No camera, no resolution: the canvas is fixed."""
        if particle_ids is None:
            particle_ids = self.all_particles()
        scene = self.scene(self.rows(particle_ids))
        return RenderOut(rasterize(scene, self.cfg.renderer), particle_ids, aux={"scene": scene})

    def regularizers(self, out: RenderOut, step: int) -> dict[str, Tensor]:
        weight = self.cfg.xing_weight
        return {"loss_xing": weight * xing_loss(out.aux["scene"]).mean()} if weight else {}

    def param_groups(self) -> list[dict]:
        """Points, colours and (when learnt) the background, their lrs from ``lr`` under one
        schedule (:meth:`SvgLrConfig.factor`)."""
        lr = self.cfg.lr
        groups = [{"params": [self.points], "lr": lr.points, "name": "points"},
                  {"params": [self.colors], "lr": lr.points * lr.color_ratio, "name": "colors"}]
        if isinstance(self.background, nn.Parameter):
            groups.append({"params": [self.background], "lr": lr.points * lr.background_ratio, "name": "background"})
        return [{**group, "lr_lambda": lr.factor} for group in groups]

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Keep colours (and the background) in [0, 1]."""
        self.colors.clamp_(0, 1)
        self.background.clamp_(0, 1)

    @torch.no_grad()
    def export(self, particle_ids: Tensor, folder: Path) -> tuple[list[Path], dict]:
        """``particle{i}.svg`` for every i in ``particle_ids``."""
        scene = self.scene(self.rows(particle_ids))
        paths = [write_svg(scene, Path(folder) / f"particle{int(i)}.svg", index=k) for k, i in enumerate(particle_ids)]
        return paths, {}


# --------------------------------------------------------------------------------------------
# Raster to vector: fit the paths to images, then prune the paths the fit does not need.
# --------------------------------------------------------------------------------------------


def fit_error(scene: SvgScene, targets: Tensor, renderer: RasterizerConfig) -> Tensor:
    """Mean squared error ``[N]`` of each scene's rendering to ``targets [N, 3, H, W]`` in [0, 1]."""
    return (rasterize(scene, renderer) - targets).pow(2).flatten(1).mean(1)


def fit_to_images(svg: SvgGenerator, targets: Tensor, steps: int, lr: float, color_ratio: float,
                  renderer: RasterizerConfig, xing_weight: float) -> None:
    """Fit all particles' paths to ``targets [N, 3, H, W]`` (the canvas size) by Adam (VectorFusion's
    betas) on the mean squared error plus the Xing loss."""
    from tqdm.auto import tqdm

    optimizer = torch.optim.Adam([{"params": [svg.points], "lr": lr},
                                  {"params": [svg.colors], "lr": lr * color_ratio}], betas=(0.9, 0.9))
    bar = tqdm(range(steps), desc="fit paths to samples", unit="step")
    for _ in bar:
        scene = svg.scene()
        mse = fit_error(scene, targets, renderer)
        loss = mse.sum() + xing_weight * xing_loss(scene).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        svg.after_optimizer_step()
        bar.set_postfix(mse=f"{float(mse.detach().mean()):.4f}")
    svg.zero_grad(set_to_none=True)


@torch.no_grad()
def prune_paths(svg: SvgGenerator, targets: Tensor, renderer: RasterizerConfig, tolerance: float) -> None:
    """Hide the paths a fit does not need, as LIVE / VectorFusion keep only useful paths: in painter's
    order, a path is hidden when hiding it raises its particle's :func:`fit_error` by less than
    ``tolerance``. Left visible, such paths (parked off-shape, white on white, nearly transparent)
    drift into faint clutter under the guidance."""
    current = fit_error(svg.scene(), targets, renderer)
    for p in range(svg.visible.shape[1]):
        was = svg.visible[:, p].clone()
        svg.visible[:, p] = 0
        trial = fit_error(svg.scene(), targets, renderer)
        needed = trial - current >= tolerance                               # [N]
        svg.visible[:, p] = torch.where(needed, was, torch.zeros_like(was))
        current = torch.where(needed, current, trial)
