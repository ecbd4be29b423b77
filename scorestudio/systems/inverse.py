"""The ``inverse`` system: imaging inverse problems solved by RLSD and its variants in Lightning.

A thin wrapper of :class:`~scorestudio.solvers.rlsd.InverseSolver` (the maths, method table and
solver config): the problem comes from the ``data`` config (:func:`~scorestudio.data.problems.build_problem`),
one solver iteration runs per training step (``trainer.max_steps`` = L), and the test step writes
the ground truth, the measurement, the particles, an optimisation GIF and ``metrics.json``
(:func:`~scorestudio.metrics.restoration.evaluate`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from scorestudio.data.problems import build_problem, measurement_image
from scorestudio.metrics.restoration import evaluate
from scorestudio.priors.base import resize_square
from scorestudio.solvers.rlsd import InverseSolver, SolverConfig
from scorestudio.systems.base import BaseSystem
from scorestudio.utils.config import ConfigError
from scorestudio.utils.registry import find, register


@register("inverse")
class InverseSystem(BaseSystem):
    """Lightning wrapper of :class:`InverseSolver`: one solver iteration per training step
    (``trainer.max_steps`` = L), checkpoints/resume of z, x and the Adam state, outputs at test.

    The iteration runs as the *closure* of the Lightning optimizer step (the solver makes its own
    z- and x-updates inside it and leaves no gradient behind, so the outer Adam step is empty):
    Lightning then counts exactly one step per iteration and restores the optimizer on resume.
    """

    @dataclass
    class Config:
        n_particles: int = 4                # N particles per measurement (the batch)
        prior_type: str = "embedded"        # registered prior: embedded, stable-diffusion, deepfloyd-if
        prior: dict = field(default_factory=dict)
        solver: SolverConfig = field(default_factory=SolverConfig)
        probe_path: Optional[str] = None    # probe for the metrics; None = the shipped one (skipped if absent)
        frame_every: int = 10               # a GIF frame every k iterations (save/frames/, then optimisation.gif)

    def configure(self) -> None:
        cfg = self.cfg
        if cfg.frame_every < 1:
            raise ConfigError(f"system.frame_every={cfg.frame_every} must be ≥ 1")
        prior = find(cfg.prior_type, kind="priors")(cfg.prior, path="system.prior")
        self.problem = build_problem(self.data_cfg, prior.image_size)
        self.solver = InverseSolver(cfg.solver, prior, self.problem.operator, self.problem.y, cfg.n_particles,
                                    seed=self.seed)
        self.automatic_optimization = False

    def configure_optimizers(self):
        return self.solver.optimizer

    def training_step(self, batch, batch_idx):
        step, n_steps = self.global_step, self.trainer.max_steps
        if step == 0:
            self.save_frame(0)
        logs: dict[str, float] = {}
        self.optimizers().step(closure=lambda: logs.update(self.solver.step(step, n_steps)))
        self.log_scalars(logs, prog_bar=lambda key: key in ("t", "loss_z_data"))
        if (step + 1) % self.cfg.frame_every == 0 or step + 1 == n_steps:
            self.save_frame(step + 1)

    def save_frame(self, iteration: int) -> None:
        from scorestudio.utils.images import save_grid

        save_grid(self.solver.images(), self.save_path(f"frames/it{iteration:06d}.png"), ncol=self.cfg.n_particles)

    def validation_step(self, batch, batch_idx):
        from scorestudio.utils.images import save_grid

        save_grid(self.solver.images(), self.save_path(f"it{self.global_step}-val.png"))

    def test_step(self, batch, batch_idx):
        from scorestudio.utils.images import load_image, save_animation, save_grid, save_image, save_labelled_grid

        images = self.solver.images()
        problem = dataclasses.replace(self.problem, y=self.solver.y)   # y on the solver's (operator's) device
        truth, measured = problem.ground_truth, measurement_image(problem).cpu()
        save_image(truth[0], self.save_path("ground_truth.png"))
        save_image(measured[0], self.save_path("measurement.png"))
        for i, image in enumerate(images):
            save_image(image, self.save_path(f"particle{i}.png"))
        row = torch.cat([truth, resize_square(measured, truth.shape[-1]), images.cpu()])
        save_grid(row, self.save_path("grid.png"), ncol=len(row))
        labels = ["ground truth", "measurement", *(f"particle {i}" for i in range(len(images)))]
        save_labelled_grid(row, labels, self.save_path("comparison.png"), ncol=len(row),
                           title=f"{self.cfg.solver.method} · {self.solver.operator.name}")
        frames = sorted((self.run.save_dir / "frames").glob("it*.png"))
        if frames:
            save_animation(torch.stack([load_image(f) for f in frames]), self.save_path("optimisation.gif"), fps=8)
        metrics = evaluate(images, problem, self.load_probe())
        self.report_metrics({"step": self.trained_steps, "method": self.cfg.solver.method,
                             "operator": self.solver.operator.name, **metrics})

    def load_probe(self) -> Optional[nn.Module]:
        from scorestudio.metrics.probe import load_probe_or_warn

        return load_probe_or_warn(self.cfg.probe_path)
