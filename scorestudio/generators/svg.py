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

With ``clean.enabled`` (restoration, vectorisation) the P paths are a budget of slots that fill
up during training, each traced on the largest region the render still gets wrong, and what is
written and scored is the cleaned scene (:mod:`scorestudio.generators.svg_paths`), drawn as resvg
draws its file; the last ``clean.resvg_polish`` of the run trains on that same image
(straight-through, :func:`~scorestudio.renderers.svg.tiny_skia.straight_through`).

The canvas may be larger than the prior's images: the prior's encoder resizes renderings to its
``image_size``. The raster-to-vector start of text-to-SVG (fit the paths to target images, then
prune the paths the fit does not need) is :func:`fit_to_images` and :func:`prune_paths`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scorestudio.generators.base import BaseGenerator, RenderOut
from scorestudio.generators.svg_paths import CleanPathConfig, clean_scene, path_report, region_masks, slot_layout, traced_path
from scorestudio.renderers.svg import CAPS, JOINS, RasterizerConfig, Stroke, SvgScene, circle_points, write_svg
from scorestudio.renderers.svg import render as rasterize
from scorestudio.renderers.svg.rasterizer import control_points
from scorestudio.renderers.svg.tiny_skia import straight_through
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


@dataclass
class SvgStrokeConfig:
    """Paths drawn as strokes (sketches: CLIPasso, DiffSketcher) instead of filled shapes."""

    enabled: bool = False            # draw every path as a stroke, with no fill
    open: bool = True                # leave each path's last segment undrawn (open strokes, round caps)
    width: float = 1.5               # initial stroke width, px at the canvas
    learn_width: bool = True         # optimise each stroke's width (lr = point lr × width_ratio)
    width_ratio: float = 0.1
    width_range: list = field(default_factory=lambda: [0.5, 4.0])   # px: widths are kept in [lo, hi]
    ink: Optional[list] = field(default_factory=lambda: [0.0, 0.0, 0.0])   # fixed RGB ink; None: learnt colours


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
        # Paths grown where the residual is largest and a cleaned file (restoration, vectorisation);
        # paths.num_paths is then the budget and paths.segments is unused.
        clean: CleanPathConfig = field(default_factory=CleanPathConfig)
        stroke: SvgStrokeConfig = field(default_factory=SvgStrokeConfig)   # sketches: strokes instead of fills

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
        self.contour = self.fill_rule = None
        if self.cfg.clean.enabled:
            self.configure_slots()
        if self.cfg.stroke.enabled:
            self.configure_strokes()

    def configure_strokes(self) -> None:
        """Stroke widths ``[N, P]`` (a parameter when learnt) for sketches; the fill is not drawn."""
        stroke, (n, p) = self.cfg.stroke, self.colors.shape[:2]
        lo, hi = stroke.width_range
        if not 0 < lo <= stroke.width <= hi or self.cfg.clean.enabled:
            raise ConfigError(f"{self.config_path}.stroke: need 0 < width_range[0] ≤ width ≤ width_range[1] and "
                              f"clean.enabled false, got width {stroke.width}, width_range {stroke.width_range}")
        width = torch.full((n, p), float(stroke.width))
        if stroke.learn_width:
            self.widths = nn.Parameter(width)
        else:
            self.register_buffer("widths", width)
        if stroke.ink is not None:
            with torch.no_grad():
                self.colors.data[..., :3] = torch.tensor([float(c) for c in stroke.ink])

    def stroked(self, scene: SvgScene, widths: Tensor) -> SvgScene:
        """``scene`` drawn as strokes of its paths' colours and ``widths [N, P]`` px, without fill."""
        p, s = scene.num_paths, scene.num_segments
        drawn = torch.ones(p, s, dtype=torch.bool, device=scene.points.device)
        drawn[:, -1] = not self.cfg.stroke.open
        round_ = torch.full((p,), JOINS.index("round"), device=drawn.device)
        stroke = Stroke(scene.fill, widths, stroked=drawn,
                        join=round_, cap=torch.full((p,), CAPS.index("round"), device=drawn.device))
        return SvgScene(scene.points, torch.zeros_like(scene.fill.detach()), scene.width, scene.height,
                        background=scene.background, contour=scene.contour, fill_rule=scene.fill_rule, stroke=stroke)

    def configure_slots(self) -> None:
        """Empty slots for grown paths: every path has the layout of :func:`slot_layout` (even-odd
        fill), its points collapsed at the canvas centre (no coverage, no gradient, so its Adam
        moments stay zero until it is traced), hidden; ``used [N]`` counts the slots taken (paths
        are added on top, never in a freed slot below)."""
        clean, n, p = self.cfg.clean, self.n_particles, self.cfg.paths.num_paths
        if clean.initial_paths < 1 or clean.paths_per_round < 0 or clean.add_every < 1 or clean.outer_segments < 3:
            raise ConfigError(f"{self.config_path}.clean: need initial_paths ≥ 1, paths_per_round ≥ 0, add_every ≥ 1 and "
                              f"outer_segments ≥ 3, got {clean.initial_paths}, {clean.paths_per_round}, "
                              f"{clean.add_every}, {clean.outer_segments}")
        layout = slot_layout(clean)
        self.contour = layout.expand(p, -1).clone()
        self.fill_rule = torch.ones(p, dtype=torch.bool)
        with torch.no_grad():
            self.points.data = torch.full((n, p, 3 * layout.numel(), 2), self.canvas / 2)
            self.colors.data[..., 3] = 1.0
        self.visible.zero_()
        self.register_buffer("used", torch.zeros(n, dtype=torch.long))
        # Collapsed points (unused segments and contours) get no update: one that moved would draw.
        self.register_buffer("frozen", torch.ones(n, p, 3 * layout.numel(), dtype=torch.bool))
        self.points.register_hook(lambda grad: grad.masked_fill(self.frozen[..., None], 0))
        # Grown paths stay opaque: a translucent path is a blend of two colours that the fit would
        # use instead of a boundary, and it cannot merge with its neighbours of the same colour.
        self.colors.register_hook(lambda grad: torch.cat([grad[..., :3], torch.zeros_like(grad[..., 3:])], -1))
        self._clean_cache: dict = {}

    def scene(self, particles: Optional[Tensor] = None) -> SvgScene:
        """The current scenes of ``particles`` (long ``[K]``; None: all N), differentiable w.r.t.
        the parameters."""
        def rows(x: Tensor) -> Tensor:
            return x if particles is None else x[particles]

        colors = torch.cat([self.colors[..., :3], self.colors[..., 3:] * self.visible[..., None]], -1)
        scene = SvgScene(rows(self.points), rows(colors), self.canvas, self.canvas, background=rows(self.background),
                         contour=self.contour, fill_rule=self.fill_rule)
        return self.stroked(scene, rows(self.widths)) if self.cfg.stroke.enabled else scene

    # ---- grown paths (clean.enabled) ----------------------------------------------------------
    def grows_at(self, step: int) -> bool:
        """Whether a round of path pruning and growth comes before the training step ``step``: every
        ``clean.add_every`` steps before ``clean.add_until``, and at ``clean.add_until`` (pruning only)."""
        clean = self.cfg.clean
        return clean.enabled and (step == clean.add_until or (step < clean.add_until and step % clean.add_every == 0))

    @torch.no_grad()
    def prune(self, particle_ids: Tensor, error: Callable[[Tensor], Tensor]) -> int:
        """Hide the paths the fit does not need: from the top of each particle's visible paths
        down, a path is hidden when the fit error ``error(images [K, 3, H, W]) → [K]`` with it (and
        the paths already hidden) left out stays within ``clean.prune_db`` dB of the error with all
        of them. Returns the paths hidden."""
        budget = 10 ** (self.cfg.clean.prune_db / 10)
        hidden = 0
        for i in particle_ids.tolist():
            row = torch.tensor([i])

            def fit() -> float:
                return float(error(rasterize(self.scene(row), self.cfg.renderer))[0])

            allowed = fit() * budget
            shown = self.visible[i].nonzero(as_tuple=True)[0].tolist()
            for p in reversed(shown[1:]):                      # a particle keeps at least one path
                self.visible[i, p] = 0
                if fit() <= allowed:
                    hidden += 1
                else:
                    self.visible[i, p] = 1
        return hidden

    @torch.no_grad()
    def grow(self, step: int, targets: Tensor, renders: Tensor, particle_ids: Optional[Tensor] = None) -> int:
        """Trace new paths on the largest error regions of ``renders`` against ``targets`` (both
        ``[K, 3, H, W]`` in [0, 1], canvas size, of ``particle_ids``; None: all N), on top of the
        others: ``clean.initial_paths`` at step 0, ``clean.paths_per_round`` at later rounds, none
        at ``clean.add_until``. Returns the paths added."""
        clean, budget = self.cfg.clean, self.cfg.paths.num_paths
        ids = self.all_particles() if particle_ids is None else particle_ids
        count = clean.initial_paths if step == 0 else clean.paths_per_round if step < clean.add_until else 0
        added = 0
        for k, i in enumerate(ids.tolist()):
            room = min(count, budget - int(self.used[i]))
            if room <= 0:
                continue
            for mask, color in region_masks(targets[k], renders[k], self.background[i], clean, room):
                slot = int(self.used[i])
                pts, frozen = traced_path(mask, clean, self.canvas)
                self.points.data[i, slot] = torch.as_tensor(pts, dtype=self.points.dtype)
                self.frozen[i, slot] = torch.as_tensor(frozen)
                self.colors.data[i, slot] = torch.tensor([*color.tolist(), 1.0], dtype=self.colors.dtype)
                self.visible[i, slot] = 1
                self.used[i] += 1
                added += 1
        return added

    def clean_scenes(self, particle_ids: Tensor) -> list[tuple[SvgScene, Tensor]]:
        """The written scene of each particle and its render ``[3, H, W]``
        (:func:`scorestudio.generators.svg_paths.clean_scene` of its visible paths), cached until
        the parameters change."""
        out = []
        for i in particle_ids.tolist():
            key = (i, self.points._version, self.colors._version, self.background._version, int(self.used[i]))
            if key not in self._clean_cache:
                shown = self.visible[i].nonzero(as_tuple=True)[0]
                scene = self.scene(torch.tensor([i]))
                if len(shown):
                    scene = SvgScene(scene.points[:, shown], scene.fill[:, shown], scene.width, scene.height,
                                     fill_rule=scene.fill_rule[shown], contour=scene.contour[shown],
                                     background=scene.background)
                    self._clean_cache[key] = clean_scene(scene.detach(), self.cfg.clean, self.cfg.renderer)
                else:
                    self._clean_cache[key] = (scene.detach(), rasterize(scene.detach(), self.cfg.renderer)[0])
            out.append(self._clean_cache[key])
        return out

    def path_reports(self, particle_ids: Tensor) -> dict:
        """``particle{i}/paths``, ``/invisible``, ``/off_canvas``, ``/erasers``, ``/coverage`` of the
        written scenes (:class:`~scorestudio.generators.svg_paths.PathReport`)."""
        out = {}
        for i, (scene, _) in zip(particle_ids.tolist(), self.clean_scenes(particle_ids)):
            report = path_report(scene, self.cfg.renderer, self.cfg.clean.background_tolerance)
            out.update(report.as_dict(f"particle{i}/"))
        return out

    # ---- the generator interface --------------------------------------------------------------
    def render(self, particle_ids: Optional[Tensor] = None, cameras=None, step: int = 0, *,
               resolution: Optional[int] = None, training: bool = True) -> RenderOut:
        """Renderings ``[K, 3, C, C]`` in [0, 1] of ``particle_ids`` (None: all N); the scene is
        ``aux["scene"]`` (for the Xing loss). No camera, no resolution: the canvas is fixed."""
        if particle_ids is None:
            particle_ids = self.all_particles()
        if self.cfg.clean.enabled and not training:
            images = torch.stack([image for _, image in self.clean_scenes(particle_ids)])
            return RenderOut(images, particle_ids)
        scene = self.scene(self.rows(particle_ids))
        images = rasterize(scene, self.cfg.renderer)
        if self.polishes_at(step):
            images = straight_through(images, [scene.index(k) for k in range(len(particle_ids))])
        return RenderOut(images, particle_ids, aux={"scene": scene})

    def polishes_at(self, step: int) -> bool:
        """Whether training at ``step`` sees resvg's image (``clean.resvg_polish``: the last fraction
        of ``lr.total_steps``)."""
        clean = self.cfg.clean
        return clean.enabled and clean.resvg_polish > 0 and step >= (1 - clean.resvg_polish) * self.cfg.lr.total_steps

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
        if self.cfg.stroke.enabled and isinstance(self.widths, nn.Parameter):
            groups.append({"params": [self.widths], "lr": lr.points * self.cfg.stroke.width_ratio, "name": "widths"})
        return [{**group, "lr_lambda": lr.factor} for group in groups]

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Keep colours (and the background) in [0, 1]."""
        self.colors.clamp_(0, 1)
        self.background.clamp_(0, 1)
        if self.cfg.stroke.enabled:
            self.widths.clamp_(*self.cfg.stroke.width_range)
            if self.cfg.stroke.ink is not None:                            # fixed ink: only the alpha learns
                self.colors[..., :3] = torch.tensor([float(c) for c in self.cfg.stroke.ink])

    @torch.no_grad()
    def export(self, particle_ids: Tensor, folder: Path) -> tuple[list[Path], dict]:
        """``particle{i}.svg`` for every i in ``particle_ids`` (with ``clean.enabled``: the
        cleaned scenes, and their path reports as metrics)."""
        if self.cfg.clean.enabled:
            scenes = [scene for scene, _ in self.clean_scenes(particle_ids)]
            paths = [write_svg(s, Path(folder) / f"particle{int(i)}.svg") for s, i in zip(scenes, particle_ids)]
            return paths, self.path_reports(particle_ids)
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
