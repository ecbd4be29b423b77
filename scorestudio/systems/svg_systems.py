"""Vector graphics from a diffusion prior: text-to-SVG (VectorFusion) and SVG restoration (DreamSampler §4.1).

Both systems optimise N particles of P closed cubic-Bézier paths (one :class:`SvgScene` batch)
through the differentiable rasterizer of :mod:`scorestudio.renderers.svg`:

- **text-to-svg** (``TextToSvgSystem``): distil the prompt into the SVGs with any guidance (SDS
  as in VectorFusion, ``dreamsampler``, ...), ± RSD repulsion between particles.
- **svg-restoration** (``SvgRestorationSystem``): given a blurry or low-resolution raster y,
  find paths θ with  λ_dc ‖y − A(2·render(θ) − 1)‖² + DreamSampler distillation  (the paper's
  eq. 21); ``distillation: false`` is the ablation with the data term only.

Shared (:class:`SvgDistillationSystem`), following VectorFusion / DreamSampler's appendix 7.1:

- initialisation, keyed per particle by (seed, "svg-init", i): P circles of 4 cubic segments,
  radius 20 px at a 600 px canvas (scaled to the canvas), random centres, random RGB fill,
  opacity ~ U[0.7, 1]; text-to-svg may then fit them to a DDIM sample of the prompt and prune the
  paths the fit does not need (VectorFusion's sample → vectorise → fine-tune pipeline);
- Adam with betas (0.9, 0.9); the control points' lr warms up linearly (0.02 → 0.2 at 600 px,
  as fractions of the peak here) and decays with a cosine to its end value; colours use the point
  lr × 1/20, the (optional, learnable) background × 1/200; colours are clamped to [0, 1] after
  every step;
- the self-intersection (Xing) loss of LIVE on every cubic, vectorised (:func:`xing_loss`);
- optional random perspective + resized crop of the renderings before the guidance, keyed per
  (particle, step) (:func:`augment`);
- a fixed number of line edges per cubic in the rasterizer (its adaptive choice is made per
  batch and would couple the particles).

The canvas may be larger than the prior's images: the prior's encoder resizes renderings to its
``image_size`` (64 for the embedded prior). Randomness comes from keyed streams only, so a
particle's result does not depend on the others (without repulsion) or on resumption.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scorestudio.data.problems import load_problem, upsampled
from scorestudio.metrics.probe import load_probe_or_warn
from scorestudio.renderers.svg import RasterizerConfig, SvgScene, circle_points, render, write_svg
from scorestudio.renderers.svg.rasterizer import control_points
from scorestudio.systems.base import OptimizerConfig
from scorestudio.systems.distillation import DistillationSystem
from scorestudio.utils.config import ConfigError, ScheduledFloat, schedulable
from scorestudio.utils.registry import register
from scorestudio.utils.seeding import per_particle_rand

REFERENCE_CANVAS = 600.0   # px: VectorFusion's canvas, the unit of the initial radius


# --------------------------------------------------------------------------------------------
# The SVG particles.
# --------------------------------------------------------------------------------------------


@dataclass
class SvgInitConfig:
    num_paths: int = 32                  # P closed paths per particle
    segments: int = 4                    # cubic segments per path (4 = the usual circle)
    radius: float = 20.0                 # initial circle radius, px at a 600 px canvas (scaled to the canvas)
    opacity: list = field(default_factory=lambda: [0.7, 1.0])   # initial fill alpha ~ U[lo, hi]
    background: list = field(default_factory=lambda: [1.0, 1.0, 1.0])   # RGB behind the paths
    learn_background: bool = False       # optimise the background colour (lr × background_ratio)


class SvgParticles(nn.Module):
    """N scenes of P closed paths as parameters: ``points [N, P, 3S, 2]`` (px), ``colors [N, P, 4]``
    (straight RGBA in [0, 1]) and ``background [N, 3]`` (a parameter or a buffer)."""

    def __init__(self, cfg: SvgInitConfig, n_particles: int, canvas: int, seed: int) -> None:
        super().__init__()
        lo, hi = cfg.opacity
        if cfg.num_paths < 1 or cfg.segments < 2 or not 0 <= lo <= hi <= 1:
            raise ConfigError(f"system.paths: need num_paths ≥ 1, segments ≥ 2 and 0 ≤ opacity[0] ≤ opacity[1] ≤ 1, "
                              f"got {cfg.num_paths}, {cfg.segments}, {cfg.opacity}")
        self.canvas = canvas
        p = cfg.num_paths
        draws = per_particle_rand((p, 6), seed, range(n_particles), "svg-init")      # [N, P, 6]
        radius = torch.full((n_particles, p), cfg.radius * canvas / REFERENCE_CANVAS)
        self.points = nn.Parameter(circle_points(draws[..., :2] * canvas, radius, cfg.segments))
        alpha = lo + (hi - lo) * draws[..., 5:]
        self.colors = nn.Parameter(torch.cat([draws[..., 2:5], alpha], -1))
        background = torch.tensor([float(v) for v in cfg.background]).expand(n_particles, 3).clone()
        if cfg.learn_background:
            self.background = nn.Parameter(background)
        else:
            self.register_buffer("background", background)
        # 0 = a pruned path: fully transparent, so it neither shows nor receives gradient.
        self.register_buffer("visible", torch.ones(n_particles, p))

    def scene(self, particles: Optional[Tensor] = None) -> SvgScene:
        """The current scenes of ``particles`` (long ``[K]``; None: all N), differentiable w.r.t.
        the parameters."""
        def rows(x: Tensor) -> Tensor:
            return x if particles is None else x[particles]

        colors = torch.cat([self.colors[..., :3], self.colors[..., 3:] * self.visible[..., None]], -1)
        return SvgScene(rows(self.points), rows(colors), self.canvas, self.canvas, background=rows(self.background))

    @torch.no_grad()
    def clamp_(self) -> None:
        """Keep colours (and the background) in [0, 1] after an optimizer step."""
        self.colors.clamp_(0, 1)
        self.background.clamp_(0, 1)


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


# --------------------------------------------------------------------------------------------
# Learning rates and augmentation.
# --------------------------------------------------------------------------------------------


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
class AugmentConfig:
    enabled: bool = False            # VectorFusion augments the renderings seen by the guidance
    distortion: float = 0.5          # perspective: corners move inwards by up to this × the half-size
    crop_scale: list = field(default_factory=lambda: [0.7, 0.9])   # area fraction of the square crop


def homographies(src: Tensor, dst: Tensor) -> Tensor:
    """Projective maps ``[N, 3, 3]`` taking the 4 points ``src [N, 4, 2]`` to ``dst [N, 4, 2]``."""
    x, y = src.unbind(-1)
    u, v = dst.unbind(-1)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -x * u, -y * u], -1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -x * v, -y * v], -1)
    h = torch.linalg.solve(torch.cat([rows_u, rows_v], 1), torch.cat([u, v], 1))
    return torch.cat([h, torch.ones_like(h[:, :1])], 1).view(-1, 3, 3)


def augment(images: Tensor, particle_ids: Tensor, step: int, seed: int, cfg: AugmentConfig) -> Tensor:
    """Random perspective, then a random square resized crop, of images ``[N, 3, H, W]`` (white
    fill outside), drawn from the stream (seed, "augment", step, particle). Differentiable."""
    n, _, h, w = images.shape
    draws = per_particle_rand((11,), seed, particle_ids.tolist(), "augment", step).to(images)  # [N, 11]
    corners = images.new_tensor([[-1, -1], [1, -1], [1, 1], [-1, 1]]).expand(n, 4, 2)
    moved = corners - corners * cfg.distortion * draws[:, :8].view(n, 4, 2)   # inwards
    lo, hi = cfg.crop_scale
    side = (lo + (hi - lo) * draws[:, 8]).sqrt()                               # [N], of the full side
    center = (1 - side)[:, None] * (2 * draws[:, 9:11] - 1)                   # [N, 2]
    ys, xs = torch.meshgrid(torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=images.device),
                            torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=images.device), indexing="ij")
    out_xy = torch.stack([xs, ys], -1).reshape(1, -1, 2) * side[:, None, None] + center[:, None]
    homog = torch.cat([out_xy, torch.ones_like(out_xy[..., :1])], -1) @ homographies(moved, corners).transpose(1, 2)
    grid = (homog[..., :2] / homog[..., 2:]).view(n, h, w, 2)
    return F.grid_sample(images - 1, grid, align_corners=False) + 1


# --------------------------------------------------------------------------------------------
# The shared system.
# --------------------------------------------------------------------------------------------


class SvgDistillationSystem(DistillationSystem):
    """What both SVG systems share: particles, optimiser and lr schedule, colour clamping, the Xing
    loss, augmentation, frames, and the per-particle SVG/PNG outputs. Subclasses call
    :meth:`build_svg` in ``configure`` and implement :meth:`losses` for ``local_particles()``."""

    shardable = True

    @dataclass
    class Config(DistillationSystem.Config):
        paths: SvgInitConfig = field(default_factory=SvgInitConfig)
        # A fixed K (line edges per cubic): the adaptive K is chosen for the whole batch, which
        # would make a particle's rendering depend on the other particles' shapes.
        renderer: RasterizerConfig = field(default_factory=lambda: RasterizerConfig(samples_per_segment=8))
        lr: SvgLrConfig = field(default_factory=SvgLrConfig)
        xing_weight: float = 0.01            # weight of the self-intersection loss (LIVE / VectorFusion)
        augment: AugmentConfig = field(default_factory=AugmentConfig)
        probe_path: Optional[str] = None     # probe for the metrics; None = the shipped one (skipped if absent)
        frame_every: int = 10                # a progress-GIF frame every k steps (save/frames/)
        optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="Adam", args={"betas": [0.9, 0.9]}))

    def build_svg(self, canvas: int) -> None:
        if self.cfg.frame_every < 1:
            raise ConfigError(f"system.frame_every={self.cfg.frame_every} must be ≥ 1")
        self.svg = SvgParticles(self.cfg.paths, self.cfg.n_particles, canvas, self.seed)

    def losses(self, step: int, ids: Tensor) -> dict[str, Tensor]:
        """Named losses (``loss_*`` are summed) and scalars to log at ``step`` for the particles
        ``ids`` (long ``[K]``); also ``"images"``, their renderings ``[K, 3, H, W]`` before the update."""
        raise NotImplementedError

    # ---- pieces -------------------------------------------------------------------------------
    def render(self, particles: Optional[Tensor] = None) -> tuple[SvgScene, Tensor]:
        """(scene, renderings ``[K, 3, canvas, canvas]`` in [0, 1]) of ``particles`` (None: all N)."""
        scene = self.svg.scene(self.row_selection(particles))
        return scene, render(scene, self.cfg.renderer)

    def distillation(self, images: Tensor, step: int, ids: Tensor) -> dict[str, Tensor]:
        """Guidance losses of the (optionally augmented) renderings ``images`` of the particles ``ids``."""
        if self.cfg.augment.enabled:
            images = augment(images, ids, step, self.seed, self.cfg.augment)
        prompts = self.prompt_processor(self.prior, batch_size=len(ids))
        return self.guidance(self.prior, images, prompts, ids, step, seed=self.seed)

    def regularisers(self, scene: SvgScene) -> dict[str, Tensor]:
        return {"loss_xing": self.cfg.xing_weight * xing_loss(scene).mean()} if self.cfg.xing_weight else {}

    # ---- Lightning ----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        step = self.global_step
        ids = self.local_particles()
        out = self.losses(step, ids)
        images = out.pop("images")
        if step % self.cfg.frame_every == 0 and self.writes_outputs:
            if self.row_selection(ids) is not None:     # sharded: the frame shows every particle
                with torch.no_grad():
                    images = self.render()[1]
            self.save_frame(images, step)
        loss = sum(v for k, v in out.items() if k.startswith("loss_"))
        self.log_scalars(out)
        return loss

    def configure_optimizers(self):
        """Groups points / colours / background (lrs from ``system.lr``, one schedule) plus the
        guidance's own groups (constant lr); optimiser class and betas from ``system.optimizer``."""
        lr, opt_cfg = self.cfg.lr, self.cfg.optimizer
        optim_cls = getattr(torch.optim, opt_cfg.name, None)
        if optim_cls is None:
            raise ConfigError(f"system.optimizer.name={opt_cfg.name!r} is not a torch.optim optimizer")
        groups = [{"params": [self.svg.points], "lr": lr.points, "name": "points"},
                  {"params": [self.svg.colors], "lr": lr.points * lr.color_ratio, "name": "colors"}]
        if isinstance(self.svg.background, nn.Parameter):
            groups.append({"params": [self.svg.background], "lr": lr.points * lr.background_ratio, "name": "background"})
        scheduled = len(groups)
        groups += self.extra_param_groups()
        args = {k: tuple(v) if k == "betas" else v for k, v in opt_cfg.args.items()}
        optimizer = optim_cls(groups, **args)
        lambdas = [lr.factor] * scheduled + [lambda _: 1.0] * (len(groups) - scheduled)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def extra_param_groups(self) -> list[dict]:
        return self.guidance.param_groups() if self.guidance is not None else []

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        self.svg.clamp_()

    def validation_step(self, batch, batch_idx):
        from scorestudio.utils.images import save_grid

        if self.writes_outputs:
            save_grid(self.render()[1], self.save_path(f"it{self.global_step}-val.png"))

    # ---- outputs ------------------------------------------------------------------------------
    def save_frame(self, images: Tensor, step: int) -> None:
        from scorestudio.utils.images import save_grid

        save_grid(images.detach(), self.save_path(f"frames/it{step:06d}.png"), ncol=len(images))

    @torch.no_grad()
    def save_particles(self) -> Tensor:
        """Write ``particle{i}.svg``/``.png``, ``particles.png`` and ``optimisation.gif``; returns the
        final renderings ``[N, 3, H, W]``."""
        from scorestudio.utils.images import load_image, save_animation, save_grid, save_image

        scene, images = self.render()
        self.save_frame(images, self.global_step)
        for i, image in enumerate(images):
            write_svg(scene, self.save_path(f"particle{i}.svg"), index=i)
            save_image(image, self.save_path(f"particle{i}.png"))
        save_grid(images, self.save_path("particles.png"))
        frames = sorted((self.run.save_dir / "frames").glob("it*.png"))
        save_animation(torch.stack([load_image(f) for f in frames]), self.save_path("optimisation.gif"), fps=8)
        return images


# --------------------------------------------------------------------------------------------
# Text-to-SVG.
# --------------------------------------------------------------------------------------------


@dataclass
class SampleInitConfig:
    """VectorFusion's raster-then-vector start (Jain et al. 2023): before distillation, each
    particle's paths are fitted (MSE through the rasterizer) to its own DDIM sample of the prompt."""

    enabled: bool = False
    ddim_steps: int = 50             # DDIM steps of the samples
    guidance_scale: float = 7.5      # CFG s of the samples
    fit_steps: int = 300             # Adam steps of the fit, before step 0 of the run
    fit_lr: float = 0.5              # point lr of the fit, px/step (colours: × lr.color_ratio)
    prune_tolerance: float = 1e-4    # hide paths whose removal raises the fit's MSE less than this (0 = keep all)
    # λ of λ‖render − sample‖² (summed over pixels, averaged over particles) during the run: the
    # guidance refines the vectorised sample instead of redrawing it (0 = free).
    anchor_weight: float = 1.0
    # Apply the guidance's repulsion (its γ at step 0, features, kernel and c(t)) to the samples'
    # ε̂ as well, so that with γ > 0 the particles start from mutually repelled samples
    # ("particle guidance", Corso et al. 2024); γ = 0 samples independently either way. The kernel
    # sees "clean" (the predicted x̂0) or "noisy" (x_t) samples, or "off": on x̂0, γ = 20 gave
    # 3.95 distinct shapes among 4 samples of "an icon" (20 seeds; quality 0.87), on x_t 3.10
    # (0.97), off 3.10 (0.99) — on x_t the probe kernel spreads colours rather than shapes.
    repulsion: str = "clean"


def fit_error(scene: SvgScene, targets: Tensor, renderer: RasterizerConfig) -> Tensor:
    """Mean squared error ``[N]`` of each scene's rendering to ``targets [N, 3, H, W]`` in [0, 1]."""
    return (render(scene, renderer) - targets).pow(2).flatten(1).mean(1)


def fit_to_images(svg: SvgParticles, targets: Tensor, steps: int, lr: float, color_ratio: float,
                  renderer: RasterizerConfig, xing_weight: float) -> None:
    """Fit the particles' paths to ``targets [N, 3, H, W]`` (the canvas size) by Adam (VectorFusion's
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
        svg.clamp_()
        bar.set_postfix(mse=f"{float(mse.detach().mean()):.4f}")
    svg.zero_grad(set_to_none=True)


@torch.no_grad()
def prune_paths(svg: SvgParticles, targets: Tensor, renderer: RasterizerConfig, tolerance: float) -> None:
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


@register("text-to-svg")
class TextToSvgSystem(SvgDistillationSystem):
    """VectorFusion-style text-to-SVG with N particles (see the module docstring).

    With ``system.init_from_sample.enabled`` the run starts as VectorFusion's full pipeline does:
    particle i's paths are fitted to a DDIM sample of the prompt drawn from stream
    (seed, "svg-init-sample", i) — saved as ``init_samples.png`` — before the guidance fine-tunes them.

    Outputs: ``save/particle{i}.svg`` and ``.png``, ``particles.png``, ``optimisation.gif`` and
    metrics.json with the probe's diversity, quality and distinct shapes/colours.
    """

    @dataclass
    class Config(SvgDistillationSystem.Config):
        n_particles: int = 4
        canvas_size: int = 64        # px; the guidance sees the renderings resized to the prior's size
        prompt_suffix: str = ""      # appended to the prompt, e.g. ", minimal flat 2d vector icon" for SD
        init_from_sample: SampleInitConfig = field(default_factory=SampleInitConfig)

    def configure(self) -> None:
        from scorestudio.priors.prompt_processor import PromptProcessor

        self.build_distillation()
        if self.cfg.prompt_suffix:
            pp = self.prompt_processor.cfg
            self.prompt_processor = PromptProcessor({**vars(pp), "prompt": pp.prompt + self.cfg.prompt_suffix},
                                                    path="system.prompt_processor")
        self.build_svg(self.cfg.canvas_size)
        from scorestudio.guidance.repulsion import LATENT_PLACEMENTS

        if self.cfg.init_from_sample.repulsion not in (*LATENT_PLACEMENTS, "off"):
            raise ConfigError(f"system.init_from_sample.repulsion={self.cfg.init_from_sample.repulsion!r}: "
                              f"use 'clean' (kernel on x̂0), 'noisy' (on x_t) or 'off'")
        if self.cfg.init_from_sample.enabled:   # the samples, kept for the anchor term and for resuming
            canvas = self.cfg.canvas_size
            self.register_buffer("samples", torch.zeros(self.cfg.n_particles, 3, canvas, canvas))

    def on_train_start(self) -> None:
        if self.cfg.init_from_sample.enabled and self.global_step == 0:   # not when resuming
            self.fit_to_samples()

    @torch.no_grad()
    def prompt_samples(self) -> Tensor:
        """One DDIM sample of the prompt per particle, at the canvas size ``[N, 3, C, C]`` in [0, 1]."""
        from scorestudio.sample import ddim_sample, repulsion_correction
        from scorestudio.utils.seeding import derive_seed

        init, pp = self.cfg.init_from_sample, self.prompt_processor.cfg
        correction = (repulsion_correction(self.guidance, self.prior, on=init.repulsion)
                      if init.repulsion != "off" else None)
        samples = ddim_sample(self.prior, [pp.prompt] * self.cfg.n_particles, init.ddim_steps, init.guidance_scale,
                              derive_seed(self.seed, "svg-init-sample"), negative_prompt=pp.negative_prompt,
                              progress=True, eps_correction=correction)
        return F.interpolate(samples.float(), size=(self.svg.canvas,) * 2, mode="bilinear", antialias=True,
                             align_corners=False).clamp(0, 1)

    def fit_to_samples(self) -> None:
        """Every process fits all particles, identically (their samples come from per-particle
        streams), so a sharded run starts where a one-process run does."""
        from scorestudio.utils.images import save_grid

        init = self.cfg.init_from_sample
        samples = self.prompt_samples()
        self.samples.copy_(samples)
        if self.writes_outputs:
            save_grid(samples, self.save_path("init_samples.png"))
        with torch.enable_grad():
            fit_to_images(self.svg, samples, init.fit_steps, init.fit_lr, self.cfg.lr.color_ratio,
                          self.cfg.renderer, self.cfg.xing_weight)
        if init.prune_tolerance > 0:
            prune_paths(self.svg, samples, self.cfg.renderer, init.prune_tolerance)
        with torch.no_grad():
            mse = fit_error(self.svg.scene(), samples, self.cfg.renderer)
        if self.writes_outputs:
            self.save_metrics({"init_fit_psnr": [round(float(-10 * torch.log10(m)), 2) for m in mse.clamp_min(1e-10)],
                               "init_visible_paths": self.svg.visible.sum(1).int().tolist()})

    def losses(self, step: int, ids: Tensor) -> dict[str, Tensor]:
        scene, images = self.render(ids)
        out = {**self.distillation(images, step, ids), **self.regularisers(scene), "images": images}
        weight = self.cfg.init_from_sample.anchor_weight
        if self.cfg.init_from_sample.enabled and weight:
            out["loss_anchor"] = weight * (images - self.samples[ids]).pow(2).flatten(1).sum(1).mean()
        return out

    def test_step(self, batch, batch_idx):
        from scorestudio.metrics.attributes import probe_report

        if not self.writes_outputs:
            return
        images = self.save_particles()
        metrics = {"step": int(self.global_step)}
        probe = load_probe_or_warn(self.cfg.probe_path)
        if probe is not None:
            metrics.update(probe_report(images, self.prompt_processor.cfg.prompt, probe.to(images.device)))
            metrics["classes"] = [{k: p[k] for k in ("shape", "color")} for p in probe.classify(images)]
        self.report_metrics(metrics)


# --------------------------------------------------------------------------------------------
# SVG restoration.
# --------------------------------------------------------------------------------------------

@register("svg-restoration")
class SvgRestorationSystem(SvgDistillationSystem):
    """DreamSampler's SVG restoration (§4.1): λ_dc‖y − A(2·render(θ) − 1)‖² (summed over the
    measurement, averaged over particles) + distillation + Xing loss.

    The prompt defaults to the ground truth's caption for procedural inputs. Outputs:
    ``particle{i}.svg``/``.png``, ``measurement.png`` (y at its own size), ``comparison.png``
    (measurement upsampled | restorations | ground truth), ``ground_truth.png``,
    ``optimisation.gif``, metrics.json (PSNR/SSIM when the ground truth is known, measurement
    consistency, probe classes).
    """

    @dataclass
    class Config(SvgDistillationSystem.Config):
        n_particles: int = 1
        canvas_size: Optional[int] = None  # px; None = the input size (blur) or scale × it (super-resolution)
        lambda_dc: float = 1.0             # λ of the data-consistency term
        distillation: bool = True          # False: data term (+ Xing) only, the paper's ablation (no prior needed)
        # Weight of the distillation loss, scheduled: the prior resolves what the measurement leaves
        # open early on, and a weak prior (the embedded one's VAE caps its images near 31 dB) must
        # not pull the end result away from the data.
        distillation_weight: ScheduledFloat = schedulable(1.0)
        guidance_type: str = "dreamsampler"

    def configure(self) -> None:
        cfg = self.cfg
        problem = load_problem(self.data_cfg, cfg.canvas_size)
        self.problem = problem
        self.operator = problem.operator
        self.register_buffer("y", problem.y, persistent=False)
        if cfg.distillation:
            pp = dict(cfg.prompt_processor)
            if not pp.get("prompt"):
                if problem.caption is None:
                    raise ConfigError("system.prompt_processor.prompt is missing: describe the image, e.g. "
                                      "system.prompt_processor.prompt=\"a red heart icon\"")
                cfg.prompt_processor = {**pp, "prompt": problem.caption}
            self.build_distillation()
        else:
            self.guidance = None
        self.build_svg(problem.canvas)

    def data_term(self, images: Tensor) -> Tensor:
        """λ_dc ‖y − A(2x − 1)‖² per particle, averaged: images ``[N, 3, H, W]`` in [0, 1]."""
        residual = self.y - self.operator(2 * images - 1)
        return self.cfg.lambda_dc * residual.pow(2).flatten(1).sum(1).mean()

    def losses(self, step: int, ids: Tensor) -> dict[str, Tensor]:
        scene, images = self.render(ids)
        out = {"loss_dc": self.data_term(images), **self.regularisers(scene), "images": images}
        if self.cfg.distillation:
            weight = self.cfg.distillation_weight.at(step)
            out.update({k: weight * v if k.startswith("loss_") else v
                        for k, v in self.distillation(images, step, ids).items()})
        return out

    def test_step(self, batch, batch_idx):
        from scorestudio.utils.images import save_grid, save_image

        if not self.writes_outputs:
            return
        images = self.save_particles()
        problem = self.problem
        save_image(((self.y[0] + 1) / 2).clamp(0, 1), self.save_path("measurement.png"))
        row = [upsampled(self.y, problem.canvas).cpu(), images.cpu()]
        if problem.ground_truth is not None:
            save_image(problem.ground_truth[0], self.save_path("ground_truth.png"))
            row.append(problem.ground_truth)
        row = torch.cat(row)
        save_grid(row, self.save_path("comparison.png"), ncol=len(row))
        self.report_metrics({"step": int(self.global_step), "operator": problem.operator.name,
                             "distillation": self.cfg.distillation, **self.restoration_metrics(images)})

    @torch.no_grad()
    def restoration_metrics(self, images: Tensor) -> dict:
        """PSNR/SSIM (and the measurement's own PSNR, the baseline) when the ground truth is known,
        measurement consistency, and the probe's classes of the restorations."""
        from scorestudio.metrics.image_quality import measurement_consistency, psnr
        from scorestudio.data.problems import Problem
        from scorestudio.metrics.restoration import evaluate

        problem, probe = self.problem, load_probe_or_warn(self.cfg.probe_path)
        images = images.detach().float()
        if problem.ground_truth is not None:
            truth = problem.ground_truth.to(images.device)
            out = evaluate(images, Problem(truth, self.operator, self.y, problem.labels), probe)
            out["psnr_measurement"] = float(psnr(upsampled(self.y, problem.canvas), truth)[0])
        else:
            out = {"consistency_mean": float(measurement_consistency(self.operator, images, self.y).mean())}
        if probe is not None:
            out["classes"] = [{k: p[k] for k in ("shape", "color")} for p in probe.to(images.device).classify(images)]
        return out
