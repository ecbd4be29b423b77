"""image-particles: N latent images distilled from the prior (identity generator), ± repulsion.

The RSD paper's 2-D experiment: each particle is a latent ``[C, h, w]`` initialised at random
from its own seed and optimised with Adam (lr 0.03, 500 steps) by any guidance, optionally with
repulsion between particles. At the end the decoded particles are classified by the probe:
diversity (1 − mean pairwise cosine similarity of probe features), the number of distinct
shapes/colours, and quality (mean probe probability of the attributes the prompt names).

Options for optimisation-based synthesis (LMC-SDS §5.1): ``init: grey`` starts every particle at
the encoding of a uniform grey image instead of noise, and ``prompts`` gives each particle its
own prompt (many prompts distilled in one batched run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from scorestudio.systems.base import OptimizerConfig
from scorestudio.systems.distillation import DistillationSystem
from scorestudio.utils.config import ConfigError
from scorestudio.utils.registry import register


@register("image-particles")
class ImageParticlesSystem(DistillationSystem):
    shardable = True

    @dataclass
    class Config(DistillationSystem.Config):
        n_particles: int = 8
        init_std: float = 1.0                # latents start at N(0, init_std² I), one stream per particle
        init: str = "random"                 # "random": N(0, init_std² I); "grey": the latent of a grey image
        grey_level: float = 0.5              # pixel value of the "grey" init, in [0, 1]
        prompts: Optional[list] = None       # one prompt per particle (len n_particles); None: the prompt processor's
        probe_path: Optional[str] = None     # probe for the final metrics; None = the shipped one
        optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="Adam", args={"lr": 0.03}))

    def configure(self) -> None:
        cfg = self.cfg
        self.build_distillation(rgb_as_latents=True)
        if cfg.prompts is not None and len(cfg.prompts) != cfg.n_particles:
            raise ConfigError(f"system.prompts has {len(cfg.prompts)} prompts for {cfg.n_particles} particles: "
                              "give one per particle (or set system.n_particles to match)")
        self.latents = torch.nn.Parameter(self.initial_latents())      # [N, C, h, w]

    def initial_latents(self) -> torch.Tensor:
        """``[N, C, h, w]``: noise from each particle's own stream, or the grey image's latent."""
        cfg = self.cfg
        shape = (self.prior.latent_channels, self.prior.latent_size, self.prior.latent_size)
        if cfg.init == "random":
            return torch.stack([torch.randn(shape, generator=self.generator("init", i)) * cfg.init_std
                                for i in range(cfg.n_particles)])
        if cfg.init == "grey":
            size = self.prior.image_size
            grey = torch.full((1, 3, size, size), float(cfg.grey_level), device=self.prior.device)
            with torch.no_grad():
                z = self.prior.encode_images(grey).cpu()
            return z.expand(cfg.n_particles, *shape).clone()
        raise ConfigError(f"system.init={cfg.init!r}: use 'random' or 'grey'")

    def prompt_batch(self):
        """Text conditioning of the N particles: per-particle ``prompts`` or the processor's prompt."""
        n = self.cfg.n_particles
        if self.cfg.prompts is None:
            return self.prompt_processor(self.prior, batch_size=n)
        from scorestudio.priors.prompt_processor import PromptBatch

        prompts = [str(p) for p in self.cfg.prompts]
        cond = self.prior.encode_text(prompts)
        uncond = self.prior.encode_text([self.prompt_processor.cfg.negative_prompt]).expand_as(cond)
        return PromptBatch(cond=cond, uncond=uncond, prompts=prompts)

    def distill_step(self, step: int) -> dict[str, torch.Tensor]:
        """Guidance outputs for this process's particles (all of them unless sharded) at
        ``step``; ``"loss"`` is what to minimise."""
        ids = self.local_particles()
        prompts = self.prompt_batch().index(ids)
        rows = self.row_selection(ids)
        latents = self.latents if rows is None else self.latents[rows]
        out = self.guidance(self.prior, latents, prompts, ids, step, seed=self.seed)
        out["loss"] = sum(v for k, v in out.items() if k.startswith("loss_"))
        return out

    def training_step(self, batch, batch_idx):
        out = self.distill_step(self.global_step)
        self.log_scalars(out, prog_bar=lambda key: key.startswith("loss_") or key == "t")
        return out["loss"]

    @torch.no_grad()
    def decoded(self) -> torch.Tensor:
        """The particles as images ``[N, 3, H, W]`` in [0, 1]."""
        return self.prior.decode_latents(self.latents).clamp(0, 1)

    def validation_step(self, batch, batch_idx):
        from scorestudio.utils.images import save_grid

        if self.writes_outputs:
            save_grid(self.decoded(), self.save_path(f"it{self.global_step}-val.png"))

    def test_step(self, batch, batch_idx):
        from scorestudio.utils.images import save_grid, save_image

        if not self.writes_outputs:
            return
        images = self.decoded()
        save_grid(images, self.save_path("particles.png"))
        for i, image in enumerate(images):
            save_image(image, self.save_path(f"particle{i}.png"))
        self.report_metrics({"step": int(self.global_step), **self.probe_metrics(images)})

    @torch.no_grad()
    def probe_metrics(self, images: torch.Tensor) -> dict:
        from scorestudio.metrics.attributes import probe_report
        from scorestudio.metrics.probe import load_probe

        probe = load_probe(self.cfg.probe_path).to(images.device)
        report = probe_report(images, self.prompt_processor.cfg.prompt, probe)
        if self.cfg.prompts is not None:   # quality of each particle w.r.t. its own prompt
            from scorestudio.metrics.attributes import attribute_probabilities, prompt_attributes

            logits = probe(images)
            quality = [attribute_probabilities({k: v[i:i + 1] for k, v in logits.items()},
                                               prompt_attributes(str(p))) for i, p in enumerate(self.cfg.prompts)]
            report["quality"] = float(torch.cat(quality).nanmean())
        return report
