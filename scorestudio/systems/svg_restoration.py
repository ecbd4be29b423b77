"""svg-restoration: DreamSampler's SVG restoration (Kim et al. 2024, §4.1).

Given a blurry or low-resolution raster y, find the paths θ of the ``svg`` generator with

    λ_dc ‖y − A(2·render(θ) − 1)‖²  +  w(step) · distillation  +  Xing loss

(the paper's eq. 21; the data term is summed over the measurement and averaged over particles).
``distillation: false`` is the paper's ablation with the data term only (no prior is built).
The problem (y, A, the canvas, and for procedural inputs the ground truth) comes from
:func:`scorestudio.data.problems.load_problem`; the canvas follows the input unless
``system.generator.canvas_size`` is set. The prompt defaults to the ground truth's caption for procedural
inputs.

With ``system.generator.clean.enabled`` the paths grow during training where the measurement is
explained worst (:meth:`SvgGenerator.grow`, regions traced on the measurement shown at canvas
size), and the SVG, PNG and metrics are those of the cleaned scene, with its path counts
(``particle{i}/paths``, ``/invisible``, ``/off_canvas``, ``/erasers``, ``/coverage``).

Outputs: ``particle{i}.svg``/``.png``, ``measurement.png`` (y at its own size),
``comparison.png`` (measurement upsampled | restorations | ground truth), ``ground_truth.png``,
``optimisation.gif``, metrics.json (PSNR/SSIM when the ground truth is known, measurement
consistency, probe classes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from scorestudio.systems.base import OptimizerConfig
from scorestudio.systems.distillation import DistillationSystem, EvalConfig
from scorestudio.utils.config import ConfigError, ScheduledFloat, schedulable
from scorestudio.utils.registry import register


@register("svg-restoration")
class SvgRestorationSystem(DistillationSystem):
    """The data term, the scheduled distillation, and the restoration outputs and metrics (see the
    module docstring)."""

    @dataclass
    class Config(DistillationSystem.Config):
        n_particles: int = 1
        generator_type: str = "svg"
        guidance_type: str = "dreamsampler"
        frame_every: int = 10
        optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="Adam", args={"betas": [0.9, 0.9]}))
        # Scored against the measurement and, when known, the ground truth (with the probe's classes).
        evaluation: EvalConfig = field(default_factory=lambda: EvalConfig(evaluators=["psnr-ssim"]))
        lambda_dc: float = 1.0             # λ of the data-consistency term
        distillation: bool = True          # False: data term (+ Xing) only, the paper's ablation (no prior needed)
        # Weight of the distillation loss, scheduled: the prior resolves what the measurement leaves
        # open early on, and a weak prior (one whose autoencoder limits how sharp its images get)
        # must not pull the end result away from the data.
        distillation_weight: ScheduledFloat = schedulable(1.0)

    def configure(self) -> None:
        self.problem = self.load_problem()
        self.operator = self.problem.operator
        self.register_buffer("y", self.problem.y, persistent=False)
        super().configure()

    def load_problem(self):
        """The :class:`~scorestudio.data.problems.RestorationProblem` of the ``data`` config."""
        from scorestudio.data.problems import load_problem

        return load_problem(self.data_cfg, self.cfg.generator.get("canvas_size"))

    def build_distillation(self, **guidance_overrides) -> None:
        """The prior, prompt processor and guidance, unless ``distillation: false``."""
        if self.cfg.distillation:
            super().build_distillation(**guidance_overrides)
        else:
            self.guidance = None

    def prompt_processor_config(self) -> dict:
        """``system.prompt_processor``, its prompt defaulting to the procedural icon's caption."""
        pp = super().prompt_processor_config()
        if not pp.get("prompt"):
            if self.problem.caption is None:
                raise ConfigError("system.prompt_processor.prompt is missing: describe the image, e.g. "
                                  "system.prompt_processor.prompt=\"a red heart icon\"")
            pp["prompt"] = self.problem.caption
        return pp

    def resolved_config(self) -> dict:
        """The config with the prompt the run used (the icon's caption when none was given)."""
        cfg = super().resolved_config()
        if self.cfg.distillation:
            cfg["prompt_processor"] = {**cfg["prompt_processor"], "prompt": self.prompt_processor.cfg.prompt}
        return cfg

    def build_generator(self, generator_cls: type, **overrides):
        """The generator on the problem's canvas."""
        return super().build_generator(generator_cls, canvas_size=self.problem.canvas, **overrides)

    # ---- path growth --------------------------------------------------------------------------
    def render_step(self, step: int):
        """Grow the generator's paths first when it does at ``step``, then render."""
        if getattr(self.generator, "grows_at", lambda _: False)(step):
            self.grow_paths(step)
        return super().render_step(step)

    @torch.no_grad()
    def grow_paths(self, step: int) -> None:
        """Hide the paths the data term does not need (after step 0), then add paths where the
        render's measurement is furthest from y, both seen at canvas size
        (:func:`~scorestudio.data.problems.upsampled`), traced on y."""
        from scorestudio.data.problems import upsampled

        ids = self.local_particles()
        if step > 0:
            self.generator.prune(ids, self.fit_errors)
        images = self.generator.render(ids, None, step, training=True).images
        seen = upsampled(self.operator(2 * images - 1), self.problem.canvas)
        target = upsampled(self.y, self.problem.canvas).expand_as(seen)
        self.generator.grow(step, target, seen, ids)

    # ---- losses -------------------------------------------------------------------------------
    def data_term(self, images: Tensor) -> Tensor:
        """λ_dc ‖y − A(2x − 1)‖² per particle, averaged: images ``[N, 3, H, W]`` in [0, 1]."""
        residual = self.y - self.operator(2 * images - 1)
        return self.cfg.lambda_dc * residual.pow(2).flatten(1).sum(1).mean()

    def fit_errors(self, images: Tensor) -> Tensor:
        """Mean squared residual ``[K]`` of y − A(2x − 1) for images ``[K, 3, H, W]`` in [0, 1]."""
        return (self.y - self.operator(2 * images - 1)).pow(2).flatten(1).mean(1)

    def losses(self, rendered, cameras, step: int) -> dict[str, Tensor]:
        """The data term, the generator's regularisers, then the weighted distillation losses."""
        out = {"loss_dc": self.data_term(rendered.images), **self.generator.regularizers(rendered, step)}
        if self.cfg.distillation:
            weight = self.cfg.distillation_weight.at(step)
            out.update({k: weight * v if k.startswith("loss_") else v
                        for k, v in self.guidance_losses(rendered, cameras, step).items()})
        return out

    # ---- outputs ------------------------------------------------------------------------------
    @torch.no_grad()
    def test_images(self) -> tuple[list[Path], dict]:
        """The 2-D outputs, then ``measurement.png``, ``ground_truth.png`` and ``comparison.png``
        and the restoration metrics."""
        from scorestudio.data.problems import upsampled
        from scorestudio.utils.images import save_image, save_labelled_grid

        written, metrics = super().test_images()
        images, problem = self.render_images(), self.problem
        written.append(save_image(((self.y[0] + 1) / 2).clamp(0, 1), self.save_path("measurement.png")))
        row = [upsampled(self.y, problem.canvas).cpu(), images.cpu()]
        if problem.ground_truth is not None:
            written.append(save_image(problem.ground_truth[0], self.save_path("ground_truth.png")))
            row.append(problem.ground_truth)
        row = torch.cat(row)
        labels = ["measurement", *(f"particle {i}" for i in range(len(images))), "ground truth"][: len(row)]
        written.append(save_labelled_grid(row, labels, self.save_path("comparison.png"), ncol=len(row),
                                          title=problem.operator.name))
        if self.generator.cfg.clean.enabled:
            metrics.update(self.generator.path_reports(self.generator.all_particles()))
        return written, {"operator": problem.operator.name, "distillation": self.cfg.distillation, **metrics}
