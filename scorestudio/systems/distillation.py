"""distillation: any generator distilled from any prior by any guidance, ± repulsion between particles.

    system_type: distillation
    system:
      generator_type: nerf        # registered generator: nerf, svg, latent, ...
      generator: {...}            # its Config
      prior_type: embedded
      guidance_type: sds
      guidance: {repulsion: {gamma: 10}}

Each training step renders this process's particles (``views_per_particle`` random cameras each
when the generator is 3-D, drawn from streams keyed by particle), feeds the renders to the
guidance with their prompts (view-dependent for 3-D, one per particle with ``prompts``), adds the
generator's regularisers, and optimises. The system owns what every generator shares: cameras and
the resolution schedule, prompts, the guidance call, augmentation, validation grids, progress
frames, test outputs (orbit GIF/MP4 for 3-D; PNGs, ``particles.png`` and the generator's files
for 2-D), evaluators (``evaluation.evaluators``) and export.

Outputs under the run's ``save/``: ``it{step}-val.png`` (one view of every particle);
at test time ``it{step}-test/particle{i}.{gif,mp4}`` and ``all.gif`` (3-D) or ``particle{i}.png``
and ``particles.png`` (2-D), metrics in metrics.json; ``--export``: ``it{step}-export/``.
"""

from __future__ import annotations

import bisect
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf
from torch import Tensor

from scorestudio.data.augment import AugmentConfig, augment
from scorestudio.data.cameras import CameraBatch, CameraDistribution, cameras_from_angles, orbit_cameras, sample_cameras
from scorestudio.generators.base import BaseGenerator, RenderOut
from scorestudio.systems.base import BaseSystem
from scorestudio.utils.config import ConfigError, to_plain
from scorestudio.utils.registry import find, register
from scorestudio.utils.seeding import generator

GENERATOR_PREFIX = "generator."


@dataclass
class EvalConfig:
    """Validation and test renders, and what scores them."""

    evaluators: list = field(default_factory=lambda: ["probe"])   # registered evaluators run at test time
    resolution: int = 64            # 3-D: validation / test render size (square), px
    elevation: float = 15.0         # 3-D: degrees, validation view and test orbit
    distance: float = 2.5           # 3-D: camera distance, scene units
    fovy: float = 40.0              # 3-D: vertical field of view, degrees
    val_azimuth: float = 30.0       # 3-D: degrees, the validation view of every particle
    n_views: int = 24               # 3-D: test orbit frames per particle
    fps: int = 12                   # 3-D: orbit frame rate
    chunk_views: int = 6            # 3-D: views of every particle rendered in one batch


def particle_cameras(particles: Tensor, views: int, dist: CameraDistribution, seed: int, step: int) -> CameraBatch:
    """``K · views`` cameras of the particles ``particles`` (long ``[K]``), particle-major; particle
    i's come from the stream (seed, "camera", i, step), so they do not depend on the others."""
    batches = [sample_cameras(views, dist, generator(seed, "camera", i, step)) for i in particles.tolist()]
    return CameraBatch(**{f.name: torch.cat([getattr(b, f.name) for b in batches]) for f in fields(CameraBatch)})


@register("distillation")
class DistillationSystem(BaseSystem):
    """Builds ``self.prior``, ``self.prompt_processor``, ``self.guidance`` and ``self.generator``
    from the config and distils the prior into the generator's particles.

    The prior is a frozen submodule (moved with the system, left out of checkpoints); the
    guidance may add trainable parts of its own (VSD's LoRA), optimised in their own groups.
    Subclasses change defaults, or add task losses by extending :meth:`losses`.
    """

    shardable = True

    @dataclass
    class Config(BaseSystem.Config):
        generator_type: str = "latent"        # registered generator: nerf, svg, latent, ...
        generator: dict = field(default_factory=dict)
        prior_type: str = "embedded"          # registered prior: embedded, stable-diffusion, deepfloyd-if
        prior: dict = field(default_factory=dict)
        prompt_processor: dict = field(default_factory=dict)   # prompt, negative_prompt, view thresholds
        prompts: Optional[list] = None        # 2-D: one prompt per particle (len n_particles); None: the processor's
        guidance_type: str = "sds"            # registered guidance: sds, nfsd, vsd, ...
        guidance: dict = field(default_factory=dict)
        views_per_particle: int = 1           # 3-D: random cameras per particle and step
        cameras: CameraDistribution = field(default_factory=CameraDistribution)   # 3-D training cameras
        resolutions: list = field(default_factory=lambda: [64])   # 3-D: training render size of each phase, px
        resolution_milestones: list = field(default_factory=list)  # 3-D: steps where the next phase starts
        augment: AugmentConfig = field(default_factory=AugmentConfig)   # of the renders the guidance sees
        frame_every: int = 0                  # a progress frame every k steps (save/frames/, optimisation.gif); 0 = none
        evaluation: EvalConfig = field(default_factory=EvalConfig)
        probe_path: Optional[str] = None      # probe of the probe evaluator; None = the shipped one

    cfg: Config

    def __init__(self, cfg: Any = None, run: Any = None, data: Any = None) -> None:
        super().__init__(self.upgrade_config(cfg), run, data)

    @classmethod
    def upgrade_config(cls, cfg: Any) -> dict:
        """Move the generator's keys that older configs set directly under ``system`` (its
        ``system_keys``, e.g. ``system.geometry``) into ``system.generator``."""
        plain = dict(to_plain(cfg) or {})
        default_type = next(f.default for f in fields(cls.Config) if f.name == "generator_type")
        generator_cls = find(plain.get("generator_type", default_type), kind="generators")
        moved = {key: plain.pop(key) for key in generator_cls.system_keys if key in plain}
        if moved:   # a legacy key (say a command-line override) wins over the generator section
            merged = OmegaConf.merge(OmegaConf.create(plain.get("generator") or {}), OmegaConf.create(moved))
            plain["generator"] = OmegaConf.to_container(merged, resolve=True)
        return plain

    def configure(self) -> None:
        cfg = self.cfg
        if len(cfg.resolutions) != len(cfg.resolution_milestones) + 1:
            raise ConfigError(f"system.resolutions {cfg.resolutions} needs one more entry than "
                              f"system.resolution_milestones {cfg.resolution_milestones}")
        if list(cfg.resolution_milestones) != sorted(cfg.resolution_milestones):
            raise ConfigError(f"system.resolution_milestones must increase, got {cfg.resolution_milestones}")
        if cfg.frame_every < 0:
            raise ConfigError(f"system.frame_every={cfg.frame_every} must be ≥ 0 (0 = no progress frames)")
        generator_cls = find(cfg.generator_type, kind="generators")
        if cfg.prompts is not None and (generator_cls.is_3d or len(cfg.prompts) != cfg.n_particles):
            raise ConfigError(f"system.prompts gives one prompt per particle of a 2-D generator: it has "
                              f"{len(cfg.prompts)} prompts for {cfg.n_particles} particles of {cfg.generator_type!r}")
        self.build_distillation(rgb_as_latents=generator_cls.renders_latents)
        self.generator = self.build_generator(generator_cls)

    def build_distillation(self, **guidance_overrides) -> None:
        """The prior, prompt processor and guidance (built before the generator: libraries that
        initialise modules draw from the global RNG, so the order is part of a run's seed)."""
        cfg = self.cfg
        self.prior = find(cfg.prior_type, kind="priors")(cfg.prior, path="system.prior")
        self.prompt_processor = find("prompt-processor")(self.prompt_processor_config(), path="system.prompt_processor")
        self.prior.warn_unknown_prompts([self.prompt_processor.cfg.prompt, *map(str, cfg.prompts or [])])
        self.guidance = find(cfg.guidance_type, kind="guidance")(
            {**cfg.guidance, **guidance_overrides}, path="system.guidance")
        self.guidance.attach(self.prior)

    def prompt_processor_config(self) -> dict:
        """``system.prompt_processor`` as the prompt processor is built with it; a task may fill in
        what it knows (a caption of its data, a style suffix) without changing its own config."""
        return dict(self.cfg.prompt_processor)

    def build_generator(self, generator_cls: type, **overrides) -> BaseGenerator:
        """The generator of ``system.generator`` (``overrides`` win: e.g. a canvas set by the data)."""
        return generator_cls({**self.cfg.generator, **overrides}, self.cfg.n_particles, self.seed,
                             path="system.generator", prior=getattr(self, "prior", None))

    # ---- steps, cameras, prompts ----------------------------------------------------------------
    def resolution_at(self, step: int) -> int:
        return int(self.cfg.resolutions[bisect.bisect_right(self.cfg.resolution_milestones, step)])

    def training_cameras(self, step: int, particles: Tensor) -> Optional[CameraBatch]:
        """3-D: the ``views_per_particle`` cameras of each of ``particles`` at ``step``; else None."""
        if not self.generator.is_3d:
            return None
        return particle_cameras(particles, self.cfg.views_per_particle, self.cfg.cameras, self.seed, step).to(self.device)

    def prompt_batch(self, particles: Tensor, cameras: Optional[CameraBatch]):
        """Text conditioning of the render items: view-dependent prompts of the cameras (3-D),
        else each particle's prompt (``prompts``) or the processor's."""
        if cameras is not None:
            return self.prompt_processor(self.prior, cameras.elevation, cameras.azimuth)
        n = self.cfg.n_particles
        if self.cfg.prompts is None:
            return self.prompt_processor(self.prior, batch_size=n).index(particles)
        from scorestudio.priors.prompt_processor import PromptBatch

        prompts = [str(p) for p in self.cfg.prompts]
        cond = self.prior.encode_text(prompts)
        uncond = self.prior.encode_text([self.prompt_processor.cfg.negative_prompt]).expand_as(cond)
        return PromptBatch(cond=cond, uncond=uncond, prompts=prompts).index(particles)

    # ---- training ---------------------------------------------------------------------------------
    def render_step(self, step: int) -> tuple[Optional[CameraBatch], RenderOut]:
        """The training cameras of ``step`` (None for 2-D) and the renders of this process's
        particles (all unless sharded), with gradients."""
        ids = self.local_particles()
        cameras = self.training_cameras(step, ids)
        self.generator.update(step)
        return cameras, self.generator.render(ids, cameras, step, resolution=self.resolution_at(step), training=True)

    def guidance_losses(self, rendered: RenderOut, cameras: Optional[CameraBatch], step: int) -> dict[str, Tensor]:
        """The guidance's losses and logs of the (optionally augmented) renders."""
        ids, images = rendered.particle_ids, rendered.images
        if self.cfg.augment.enabled:
            images = augment(images, ids, step, self.seed, self.cfg.augment)
        prompts = self.prompt_batch(ids, cameras)
        item_ids = ids.repeat_interleave(len(images) // len(ids))
        return self.guidance(self.prior, images, prompts, item_ids, step, seed=self.seed, cameras=cameras)

    def losses(self, rendered: RenderOut, cameras: Optional[CameraBatch], step: int) -> dict[str, Tensor]:
        """Named losses (``loss_*`` are summed, in this order) and scalars to log at ``step``."""
        return {**self.guidance_losses(rendered, cameras, step), **self.generator.regularizers(rendered, step)}

    def distill_step(self, step: int) -> dict[str, Tensor]:
        """All losses of this process's particles at ``step``; ``"loss"`` is what to minimise."""
        cameras, rendered = self.render_step(step)
        out = self.losses(rendered, cameras, step)
        out["loss"] = sum(v for k, v in out.items() if k.startswith("loss_"))
        if self.cfg.frame_every and step % self.cfg.frame_every == 0 and self.writes_outputs:
            self.save_frame(self.frame_images(rendered), step)
        return out

    def training_step(self, batch, batch_idx):
        out = self.distill_step(self.global_step)
        self.log_scalars(out, prog_bar=lambda key: key.startswith("loss_") or key == "t")
        return out["loss"]

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        self.generator.after_optimizer_step()

    # ---- optimiser --------------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """The generator's own groups then the guidance's, or (generators without their own)
        :meth:`BaseSystem.param_groups`, where a ``system.optimizer.params`` prefix may leave out
        ``generator.``, as configs written before the generator layer do."""
        groups = self.generator.param_groups()
        if groups is None:
            return super().param_groups()
        if self.cfg.optimizer.params:
            raise ConfigError(f"system.optimizer.params does not apply to the {self.cfg.generator_type} generator, "
                              "which sets its own learning rates (see system.generator in docs/config-reference.md)")
        return groups + self.extra_param_groups()

    def parameter_prefix(self, prefix: str) -> str:
        names = [n for n, _ in self.named_parameters()]
        if any(n.startswith(prefix) for n in names) or not any(n.startswith(GENERATOR_PREFIX + prefix) for n in names):
            return prefix
        return GENERATOR_PREFIX + prefix

    def extra_param_groups(self) -> list[dict]:
        return self.guidance.param_groups() if self.guidance is not None else []

    # ---- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        self.generator.on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.upgrade_checkpoint(checkpoint)
        self.generator.on_load_checkpoint(checkpoint)

    def upgrade_checkpoint(self, checkpoint: dict) -> dict:
        """Rename the generator's parameters in a checkpoint written before the generator layer
        (``geometry.*`` → ``generator.geometry.*``, ``svg.points`` → ``generator.points``)."""
        ours = set(self.state_dict())
        state = checkpoint["state_dict"]
        prefixes = ("", *self.generator.legacy_state_prefixes)
        for key in [k for k in state if k not in ours]:
            new = next((GENERATOR_PREFIX + key.removeprefix(p) for p in prefixes
                        if key.startswith(p) and GENERATOR_PREFIX + key.removeprefix(p) in ours), None)
            if new is not None:
                state[new] = state.pop(key)
        return checkpoint

    # ---- evaluation renders -----------------------------------------------------------------------
    @torch.no_grad()
    def render_views(self, cameras: CameraBatch, resolution: int) -> tuple[Tensor, Tensor]:
        """3-D: every particle seen by the same V ``cameras``: images ``[N, V, 3, H, W]`` and
        their accumulated opacity ``[N, V, H, W]``."""
        n, chunk = self.cfg.n_particles, self.cfg.evaluation.chunk_views
        ids = self.generator.all_particles().to(self.device)
        frames, opacity = [], []
        for start in range(0, len(cameras), chunk):
            views = torch.arange(start, min(start + chunk, len(cameras)))
            cams = cameras.index(views.repeat(n)).to(self.device)
            out = self.generator.render(ids, cams, self.trained_steps, resolution=resolution, training=False)
            frames.append(out.images.view(n, len(views), 3, resolution, resolution).clamp(0, 1))
            opacity.append(out.alpha.view(n, len(views), resolution, resolution))
        return torch.cat(frames, dim=1), torch.cat(opacity, dim=1)

    @torch.no_grad()
    def render_images(self) -> Tensor:
        """One picture of every particle ``[N, 3, H, W]`` in [0, 1]: the validation view (3-D) or
        the evaluation render (2-D)."""
        if self.generator.is_3d:
            e = self.cfg.evaluation
            camera = cameras_from_angles(e.elevation, e.val_azimuth, e.distance, e.fovy)
            return self.render_views(camera, e.resolution)[0][:, 0]
        ids = self.generator.all_particles().to(self.device)
        return self.generator.render(ids, None, self.trained_steps, training=False).images

    def frame_images(self, rendered: RenderOut) -> Tensor:
        """A progress frame of every particle: the training renders themselves when they are
        pictures of all particles, else an evaluation render."""
        g = self.generator
        if g.is_3d or g.renders_latents or g.rows(rendered.particle_ids) is not None:
            return self.render_images()
        return rendered.images.detach()

    # ---- validation, test, export -----------------------------------------------------------------
    def validation_step(self, batch, batch_idx):
        from scorestudio.utils.images import save_grid

        if self.writes_outputs:
            save_grid(self.render_images(), self.save_path(f"it{self.trained_steps}-val.png"))

    def test_step(self, batch, batch_idx):
        if not self.writes_outputs:
            return
        if self.generator.is_3d:
            written, metrics = self.test_orbits()
        else:
            written, metrics = self.test_images()
        if self.generator.export_after_test:
            written += self.export()
        self.report_metrics({"step": self.trained_steps, **metrics})
        for path in written:
            print(f"[scorestudio] wrote {path}")

    def test_orbits(self) -> tuple[list[Path], dict]:
        """3-D: orbit GIFs (and MP4s) per particle, all particles side by side, and the evaluators'
        metrics of the orbit frames."""
        from scorestudio.utils.images import image_grid, mp4_available, save_animation

        e, n, step = self.cfg.evaluation, self.cfg.n_particles, self.trained_steps
        frames, opacity = self.render_views(orbit_cameras(e.n_views, e.elevation, e.distance, e.fovy), e.resolution)
        formats = ("gif", "mp4") if mp4_available() else ("gif",)
        if len(formats) == 1:
            warnings.warn("imageio-ffmpeg is not installed: orbits are written as GIF only (pip install imageio-ffmpeg for MP4)")
        written = [save_animation(frames[i], self.save_path(f"it{step}-test/particle{i}.{ext}"), fps=e.fps)
                   for i in range(n) for ext in formats]
        side_by_side = torch.stack([image_grid(frames[:, t], ncol=n) for t in range(frames.shape[1])])
        written.append(save_animation(side_by_side, self.save_path(f"it{step}-test/all.gif"), fps=e.fps))
        return written, self.evaluate(frames, opacity)

    @torch.no_grad()
    def test_images(self) -> tuple[list[Path], dict]:
        """2-D: ``particle{i}.png``, ``particles.png``, the generator's files (SVGs) and, with
        progress frames, ``optimisation.gif``; the evaluators' metrics of the final images."""
        from scorestudio.utils.images import load_image, save_animation, save_grid, save_image

        images = self.render_images()
        written = []
        if self.cfg.frame_every:
            self.save_frame(images, self.global_step)
        if self.generator.exports_assets:
            written += self.generator.export(self.generator.all_particles(), self.run.save_dir)[0]
        for i, image in enumerate(images):
            save_image(image, self.save_path(f"particle{i}.png"))
        written.append(save_grid(images, self.save_path("particles.png")))
        if self.cfg.frame_every:
            frames = sorted((self.run.save_dir / "frames").glob("it*.png"))
            written.append(save_animation(torch.stack([load_image(f) for f in frames]),
                                          self.save_path("optimisation.gif"), fps=8))
        return written, self.evaluate(images[:, None], None)

    def save_frame(self, images: Tensor, step: int) -> None:
        from scorestudio.utils.images import save_grid

        save_grid(images.detach(), self.save_path(f"frames/it{step:06d}.png"), ncol=len(images))

    def evaluate(self, frames: Tensor, alpha: Optional[Tensor]) -> dict:
        """The metrics of every evaluator in ``evaluation.evaluators`` for the test renders
        ``frames [N, T, 3, H, W]`` (T orbit views; T = 1 for 2-D) and their opacity ``[N, T, H, W]``."""
        metrics: dict = {}
        for name in self.cfg.evaluation.evaluators:
            result = find(str(name), kind="metrics")()(self, frames, alpha)
            reasons = {**metrics.get("null_reasons", {}), **result.pop("null_reasons", {})}
            metrics.update(result)
            if reasons:
                metrics["null_reasons"] = reasons
        return metrics

    def export(self) -> list[Path]:
        """The generator's assets of every particle under ``save/it{step}-export/``."""
        if not self.generator.exports_assets:
            return super().export()
        step = getattr(self, "export_step", None) or self.trained_steps
        paths, report = self.generator.export(self.generator.all_particles(), self.run.save_dir / f"it{step}-export")
        self.save_metrics(report)
        return paths
