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

Outputs under the run's ``save/``: ``it{step}-val.png`` (one view of every particle, labelled;
3-D: the ``evaluation.panels`` side by side); at test time ``it{step}-test/particle{i}.{gif,mp4}``
(turntables of the panels) and ``all.gif`` (3-D) or ``particle{i}.png`` and ``particles.png``
(2-D), metrics in metrics.json; ``--export``: ``it{step}-export/``. A --test or --export whose
settings (render size, mesh lattice, texture size) differ from the run's recorded ones writes to
a folder named after them (``it500-test-res512``, ``it500-export-mc128``), so no output replaces
another made with other settings. TensorBoard (when installed) gets the validation grids and the
turntables too.
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
from scorestudio.utils.config import ConfigError, parse_structured, to_plain
from scorestudio.utils.registry import find, register
from scorestudio.utils.seeding import generator

GENERATOR_PREFIX = "generator."
PANELS = ("rgb", "albedo", "normal", "opacity")   # what evaluation.panels may show


@dataclass
class EvalConfig:
    """Validation and test renders, and what scores them."""

    evaluators: list = field(default_factory=lambda: ["probe"])   # registered evaluators run at test time
    resolution: int = 256           # 3-D: test orbit render size (square), px
    val_resolution: int = 64        # 3-D: validation grid render size (square), px
    # 3-D: pictures of each particle side by side in validation grids and turntables, of
    # rgb (the render), albedo (colour without light), normal (scene-frame normals as colours), opacity
    panels: list = field(default_factory=lambda: ["rgb", "normal", "opacity"])
    elevation: float = 15.0         # 3-D: degrees, validation view and test orbit
    distance: float = 2.5           # 3-D: camera distance, scene units
    fovy: float = 40.0              # 3-D: vertical field of view, degrees
    val_azimuth: float = 30.0       # 3-D: degrees, the validation view of every particle
    n_views: int = 24               # 3-D: test orbit frames per particle
    fps: int = 12                   # 3-D: orbit frame rate
    chunk_views: int = 6            # 3-D: views of every particle rendered in one batch
    chunk_rays: int = 65536         # 3-D: at most this many rays per batch (then fewer views, fewer particles)

    def __post_init__(self) -> None:
        unknown = [p for p in self.panels if p not in PANELS]
        if unknown or not self.panels:
            raise ConfigError(f"system.evaluation.panels={list(self.panels)}: choose among {list(PANELS)}")


def panel_pictures(maps: dict[str, Tensor], names: list[str]) -> tuple[Tensor, list[str]]:
    """The panels ``names`` of the render maps of :meth:`DistillationSystem.render_views` as
    pictures on white ``[N, V, P, 3, H, W]`` in [0, 1], and the names of the P panels shown (a
    panel the generator does not render is left out)."""
    alpha = maps["opacity"][:, :, None]                                       # [N, V, 1, H, W]
    pictures = {"rgb": lambda: maps["rgb"],
                "albedo": lambda: maps["albedo"] + (1 - alpha),
                "normal": lambda: (torch.nn.functional.normalize(maps["normal"], dim=2) + 1) / 2 * alpha + (1 - alpha),
                "opacity": lambda: alpha.expand(-1, -1, 3, -1, -1)}
    shown = [name for name in names if name == "rgb" or name == "opacity" or name in maps]
    return torch.stack([pictures[name]().clamp(0, 1) for name in shown], dim=2), shown


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
    def render_views(self, cameras: CameraBatch, resolution: int) -> dict[str, Tensor]:
        """3-D: every particle seen by the same V ``cameras``, in batches of at most
        ``evaluation.chunk_rays`` rays: ``rgb`` ``[N, V, 3, H, W]`` in [0, 1], ``opacity``
        ``[N, V, H, W]`` and, where the generator renders them, ``normal`` and ``albedo``
        ``[N, V, 3, H, W]`` (see :class:`RenderOut`)."""
        e, n = self.cfg.evaluation, self.cfg.n_particles
        ids = self.generator.all_particles().to(self.device)
        per_view = resolution * resolution
        particles = max(1, min(n, e.chunk_rays // per_view))
        views = max(1, min(e.chunk_views, e.chunk_rays // (particles * per_view)))
        blocks = [[self.render_block(ids[p: p + particles], cameras, torch.arange(v, min(v + views, len(cameras))),
                                     resolution) for v in range(0, len(cameras), views)]
                  for p in range(0, n, particles)]
        return {key: torch.cat([torch.cat([b[key] for b in row], dim=1) for row in blocks]) for key in blocks[0][0]}

    def render_block(self, ids: Tensor, cameras: CameraBatch, views: Tensor, resolution: int) -> dict[str, Tensor]:
        """The evaluation render of the particles ``ids`` (long ``[K]``) by ``cameras[views]``
        as :meth:`render_views` maps ``[K, len(views), ...]`` (on the CPU)."""
        k, v = len(ids), len(views)
        out = self.generator.render(ids, cameras.index(views.repeat(k)).to(self.device), self.trained_steps,
                                    resolution=resolution, training=False)
        maps = {"rgb": out.images.clamp(0, 1), "opacity": out.alpha, "normal": out.normal, "albedo": out.albedo}
        return {key: m.reshape(k, v, *m.shape[1:]).cpu() for key, m in maps.items() if m is not None}

    def validation_camera(self) -> CameraBatch:
        e = self.cfg.evaluation
        return cameras_from_angles(e.elevation, e.val_azimuth, e.distance, e.fovy)

    @torch.no_grad()
    def render_images(self) -> Tensor:
        """One picture of every particle ``[N, 3, H, W]`` in [0, 1]: the validation view (3-D) or
        the evaluation render (2-D)."""
        if self.generator.is_3d:
            return self.render_views(self.validation_camera(), self.cfg.evaluation.val_resolution)["rgb"][:, 0]
        ids = self.generator.all_particles().to(self.device)
        return self.generator.render(ids, None, self.trained_steps, training=False).images

    def frame_images(self, rendered: RenderOut) -> Tensor:
        """A progress frame of every particle: the training renders themselves when they are
        pictures of all particles, else an evaluation render."""
        g = self.generator
        if g.is_3d or g.renders_latents or g.rows(rendered.particle_ids) is not None:
            return self.render_images()
        return rendered.images.detach()

    # ---- labels -----------------------------------------------------------------------------------
    def particle_prompts(self) -> list[str]:
        """The prompt of each particle (``prompts``, else the prompt processor's)."""
        if self.cfg.prompts is not None:
            return [str(p) for p in self.cfg.prompts]
        return [str(self.prompt_processor.cfg.prompt)] * self.cfg.n_particles

    def grid_labels(self, panels: list[str]) -> tuple[list[str], Optional[str]]:
        """Labels of a grid of every particle's ``panels`` (particle-major; ``[""]``: one
        picture each) and its title: the prompt when all particles share it, else each label
        holds its particle's prompt."""
        prompts = self.particle_prompts()
        shared = len(set(prompts)) == 1
        # "#i panel" rather than "particle i · panel": it fits above a 64-px picture
        labels = [" · ".join(filter(None, (f"#{i} {panel}" if panel else f"particle {i}", None if shared else prompts[i])))
                  for i in range(self.cfg.n_particles) for panel in panels]
        return labels, (prompts[0] if shared else None)

    # ---- validation, test, export -----------------------------------------------------------------
    def validation_step(self, batch, batch_idx):
        from scorestudio.utils.images import labelled_grid, save_image
        from scorestudio.utils.tensorboard import log_image

        if not self.writes_outputs:
            return
        step, e = self.trained_steps, self.cfg.evaluation
        if self.generator.is_3d:
            maps = self.render_views(self.validation_camera(), e.val_resolution)
            pictures, shown = panel_pictures(maps, list(e.panels))
            images, ncol = pictures[:, 0].flatten(0, 1), len(shown)
        else:
            images, shown, ncol = self.render_images(), [""], None
        labels, title = self.grid_labels(shown)
        grid = labelled_grid(images, labels, ncol=ncol, title=f"{title or ''} · step {step}".lstrip(" ·"))
        save_image(grid, self.save_path(f"it{step}-val.png"))
        log_image(self.loggers, "validation", grid, step)

    def test_step(self, batch, batch_idx):
        if not self.writes_outputs:
            return
        if self.generator.is_3d:
            written, metrics = self.test_orbits()
        else:
            written, metrics = self.test_images()
        if self.generator.export_after_test:
            written += self.export(self.output_folder("test"))
        self.report_metrics({"step": self.trained_steps, **metrics})
        for path in written:
            if path.exists():   # pictures with NaN are not written (utils.images.all_finite warns instead)
                print(f"[scorestudio] wrote {path}")

    def test_orbits(self) -> tuple[list[Path], dict]:
        """3-D: turntables (GIF, and MP4 with imageio-ffmpeg) of each particle's panels, all
        particles' panels in one labelled grid (``all.gif``), the mean albedo of each particle's
        orbit (``particle{i}/albedo_mean_rgb``, 0-255, over the opacity) and the evaluators'
        metrics of the orbit frames."""
        from scorestudio.utils.images import labelled_grid, mp4_available, save_animation
        from scorestudio.utils.tensorboard import log_animation

        e, n, step = self.cfg.evaluation, self.cfg.n_particles, self.trained_steps
        folder = self.output_folder("test")
        maps = self.render_views(orbit_cameras(e.n_views, e.elevation, e.distance, e.fovy), e.resolution)
        pictures, shown = panel_pictures(maps, list(e.panels))                      # [N, T, P, 3, H, W]
        formats = ("gif", "mp4") if mp4_available() else ("gif",)
        if len(formats) == 1:
            warnings.warn("imageio-ffmpeg is not installed: orbits are written as GIF only (pip install imageio-ffmpeg for MP4)")
        prompts, written = self.particle_prompts(), []
        for i in range(n):
            frames = [labelled_grid(views, shown, ncol=len(shown), title=f"particle {i} · {prompts[i]}")
                      for views in pictures[i]]
            written += [save_animation(frames, folder / f"particle{i}.{ext}", fps=e.fps) for ext in formats]
        labels, title = self.grid_labels(shown)
        grids = [labelled_grid(pictures[:, t].flatten(0, 1), labels, ncol=len(shown), title=title)
                 for t in range(pictures.shape[1])]
        written.append(save_animation(grids, folder / "all.gif", fps=e.fps))
        for path in written:
            if path.suffix == ".gif":
                log_animation(self.loggers, f"test/{path.stem}", path, step)
        metrics = self.evaluate(maps["rgb"], maps["opacity"])
        if "albedo" in maps:
            mean = maps["albedo"].sum((1, 3, 4)) / maps["opacity"].sum((1, 2, 3))[:, None].clamp_min(1e-6)
            metrics.update({f"particle{i}/albedo_mean_rgb": [round(255 * c, 1) for c in mean[i].tolist()]
                            for i in range(n)})
        return written, metrics

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

    def export(self, folder: Optional[Path] = None) -> list[Path]:
        """The generator's assets of every particle under ``folder`` (default the export folder
        :meth:`output_folder`)."""
        if not self.generator.exports_assets:
            return super().export()
        folder = folder or self.output_folder("export")
        paths, report = self.generator.export(self.generator.all_particles(), folder)
        self.save_metrics(report)
        return paths

    # ---- output folders -----------------------------------------------------------------------------
    def output_folder(self, mode: str) -> Path:
        """``save/it{step}-{mode}`` (``mode``: test, export), with ``-{name}{value}`` for each
        setting that shapes its files (:meth:`output_settings`) and differs from the run's
        recorded config (``configs/parsed.yaml``): outputs of a --test or --export with other
        settings never replace the run's."""
        step = (getattr(self, "export_step", None) if mode == "export" else None) or self.trained_steps
        ours, recorded = self.output_settings(mode), self.recorded_output_settings(mode)
        suffix = "".join(f"-{k}{v}" for k, v in ours.items() if recorded is not None and recorded.get(k) != v)
        return self.run.save_dir / f"it{step}-{mode}{suffix}"

    def output_settings(self, mode: str, system: Optional[dict] = None) -> dict:
        """The settings that shape the files of a ``mode`` output folder, of this run or of the
        ``system`` config ``system`` (plain, already upgraded): the test render size (3-D) and the
        generator's :meth:`~BaseGenerator.export_settings` when the folder holds exports."""
        settings = {}
        if mode == "test" and self.generator.is_3d:
            evaluation = self.cfg.evaluation if system is None else parse_structured(
                EvalConfig, system.get("evaluation"), "system.evaluation")
            settings["res"] = evaluation.resolution
        if mode == "export" or self.generator.export_after_test:
            settings.update(self.generator.export_settings(None if system is None else dict(system.get("generator") or {})))
        return settings

    def recorded_output_settings(self, mode: str) -> Optional[dict]:
        """:meth:`output_settings` of the config the run was trained with, or None when the run
        folder has no record of it (a system used outside a run)."""
        path = self.run.root / "configs" / "parsed.yaml"
        if not path.is_file():
            return None
        recorded = OmegaConf.load(path).get("system")
        system = OmegaConf.to_container(recorded, resolve=True) if recorded is not None else {}
        return self.output_settings(mode, self.upgrade_config(system))
