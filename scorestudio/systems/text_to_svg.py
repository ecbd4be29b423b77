"""text-to-svg: VectorFusion-style text-to-SVG with N particles of the ``svg`` generator.

The prompt is distilled into the particles' paths by any guidance (SDS as in VectorFusion,
``dreamsampler``, ...), ± RSD repulsion between particles; the renderings the guidance sees may
be augmented (``system.augment``). What differs from a plain distillation run is the start: with
``system.init_from_sample.enabled`` the run begins as VectorFusion's full pipeline does (sample →
vectorise → fine-tune): particle i's paths are fitted to a DDIM sample of the prompt drawn from
stream (seed, "svg-init-sample", i), saved as ``init_samples.png``, the paths the fit does not
need are pruned, and an anchor term keeps the run near the samples.

Outputs: ``save/particle{i}.svg`` and ``.png``, ``particles.png``, ``optimisation.gif`` and
metrics.json with the evaluators' metrics (the probe's diversity, quality and classes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from scorestudio.systems.base import OptimizerConfig
from scorestudio.systems.distillation import DistillationSystem
from scorestudio.utils.config import ConfigError
from scorestudio.utils.registry import register


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
    # sees "clean" (the predicted x̂0) or "noisy" (x_t) samples, or "off": on x_t the probe
    # kernel spreads colours rather than shapes (benchmarks/RESULTS.md, "SVG").
    repulsion: str = "clean"


@register("text-to-svg")
class TextToSvgSystem(DistillationSystem):
    """Text-to-SVG (see the module docstring): the ``svg`` generator, VectorFusion's Adam betas,
    progress frames, and the optional sample → fit → prune start with its anchor term."""

    @dataclass
    class Config(DistillationSystem.Config):
        n_particles: int = 4
        generator_type: str = "svg"
        frame_every: int = 10
        optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="Adam", args={"betas": [0.9, 0.9]}))
        prompt_suffix: str = ""      # appended to the prompt, e.g. ", minimal flat 2d vector icon" for SD
        init_from_sample: SampleInitConfig = field(default_factory=SampleInitConfig)

    def configure(self) -> None:
        from scorestudio.guidance.repulsion import LATENT_PLACEMENTS

        init = self.cfg.init_from_sample
        if init.repulsion not in (*LATENT_PLACEMENTS, "off"):
            raise ConfigError(f"system.init_from_sample.repulsion={init.repulsion!r}: "
                              f"use 'clean' (kernel on x̂0), 'noisy' (on x_t) or 'off'")
        super().configure()
        if init.enabled:   # the samples, kept for the anchor term and for resuming
            canvas = self.generator.canvas
            self.register_buffer("samples", torch.zeros(self.cfg.n_particles, 3, canvas, canvas))

    def prompt_processor_config(self) -> dict:
        """``system.prompt_processor`` with ``prompt_suffix`` appended to its prompt."""
        pp = super().prompt_processor_config()
        if self.cfg.prompt_suffix and "prompt" in pp:   # no prompt: the processor says it is missing
            pp["prompt"] = pp["prompt"] + self.cfg.prompt_suffix
        return pp

    # ---- sample → fit → prune -----------------------------------------------------------------
    def on_train_start(self) -> None:
        if self.cfg.init_from_sample.enabled and self.global_step == 0:   # not when resuming
            self.fit_to_samples()

    @torch.no_grad()
    def prompt_samples(self) -> Tensor:
        """One DDIM sample of the prompt per particle, at the canvas size ``[N, 3, C, C]`` in [0, 1]."""
        from scorestudio.solvers.ddim import ddim_sample, repulsion_correction
        from scorestudio.utils.seeding import derive_seed

        init, pp = self.cfg.init_from_sample, self.prompt_processor.cfg
        correction = (repulsion_correction(self.guidance, self.prior, on=init.repulsion)
                      if init.repulsion != "off" else None)
        samples = ddim_sample(self.prior, [pp.prompt] * self.cfg.n_particles, init.ddim_steps, init.guidance_scale,
                              derive_seed(self.seed, "svg-init-sample"), negative_prompt=pp.negative_prompt,
                              progress=True, eps_correction=correction)
        return F.interpolate(samples.float(), size=(self.generator.canvas,) * 2, mode="bilinear", antialias=True,
                             align_corners=False).clamp(0, 1)

    def fit_to_samples(self) -> None:
        """Every process fits all particles, identically (their samples come from per-particle
        streams), so a sharded run starts where a one-process run does."""
        from scorestudio.generators.svg import fit_error, fit_to_images, prune_paths
        from scorestudio.utils.images import save_grid

        init, svg = self.cfg.init_from_sample, self.generator
        renderer = svg.cfg.renderer
        samples = self.prompt_samples()
        self.samples.copy_(samples)
        if self.writes_outputs:
            save_grid(samples, self.save_path("init_samples.png"))
        with torch.enable_grad():
            fit_to_images(svg, samples, init.fit_steps, init.fit_lr, svg.cfg.lr.color_ratio, renderer, svg.cfg.xing_weight)
        if init.prune_tolerance > 0:
            prune_paths(svg, samples, renderer, init.prune_tolerance)
        with torch.no_grad():
            mse = fit_error(svg.scene(), samples, renderer)
        if self.writes_outputs:
            self.save_metrics({"init_fit_psnr": [round(float(-10 * torch.log10(m)), 2) for m in mse.clamp_min(1e-10)],
                               "init_visible_paths": svg.visible.sum(1).int().tolist()})

    def losses(self, rendered, cameras, step: int) -> dict[str, Tensor]:
        """The distillation losses, plus λ‖render − sample‖² (summed over pixels, averaged over
        particles) when the run started from samples."""
        out = super().losses(rendered, cameras, step)
        weight = self.cfg.init_from_sample.anchor_weight
        if self.cfg.init_from_sample.enabled and weight:
            anchor = rendered.images - self.samples[rendered.particle_ids]
            out["loss_anchor"] = weight * anchor.pow(2).flatten(1).sum(1).mean()
        return out
