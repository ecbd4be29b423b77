"""dreamfusion: text-to-3D with N NeRF particles distilled from a prior, ± repulsion (RSD §6.1.3).

Each step renders ``views_per_particle`` random cameras of every particle in one batch (the
particles' fields are stacked, never looped over), feeds the B = N × V images to any guidance
(SDS, NFSD, VSD; RSD repulsion between particles on top) with view-dependent prompts, and adds
DreamFusion's regularisers. Particle i's cameras, sample jitter, shading and initialisation come
from streams keyed by i, so a particle does not depend on how many others run beside it.

Outputs: ``save/it{step}-val.png`` (one view of every particle), at test time
``save/it{step}-test/particle{i}.{gif,mp4}`` and ``all.gif`` (orbits) with probe metrics in
metrics.json, and with ``--export`` (or ``export.after_test``) meshes
``save/it{step}-export/particle{i}.{obj,glb,ply}``.
"""

from __future__ import annotations

import bisect
import warnings
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from scorestudio.data.cameras import CameraBatch, CameraDistribution, cameras_from_angles, get_rays, orbit_cameras, sample_cameras
from scorestudio.export.mesh import ExportConfig, extract_meshes, mesh_report, save_mesh
from scorestudio.renderers.nerf import (
    Background, BackgroundConfig, DiffuseMaterial, GeometryConfig, MaterialConfig, ParticleGeometry,
    RendererConfig, VolumeRenderer,
)
from scorestudio.systems.base import OptimizerConfig
from scorestudio.systems.distillation import DistillationSystem
from scorestudio.utils.config import ConfigError, ScheduledFloat, schedulable
from scorestudio.utils.registry import register
from scorestudio.utils.seeding import generator, per_particle_rand

EMPTY_SPACE_KEY = "empty_space_mask"   # checkpoint entry of the renderer's EmptySpaceMask


@dataclass
class LossConfig:
    """Regulariser weights (each a number or a [start_step, start, end, end_step] schedule)."""

    lambda_sparsity: ScheduledFloat = schedulable(0.0)  # mean sqrt(opacity² + 0.01): fewer floaters (threestudio)
    lambda_opaque: ScheduledFloat = schedulable(0.0)    # binary entropy of the opacity: pixels fully in or out
    lambda_orient: ScheduledFloat = schedulable(0.0)    # DreamFusion's orientation loss: no normals facing away
    lambda_tv: ScheduledFloat = schedulable(0.0)        # total variation of the feature grid (encoding=grid)


@dataclass
class EvalConfig:
    resolution: int = 64            # validation / test render size (square)
    elevation: float = 15.0         # degrees, validation view and test orbit
    distance: float = 2.5
    fovy: float = 40.0
    val_azimuth: float = 30.0       # validation view of every particle
    n_views: int = 24               # test orbit frames per particle
    fps: int = 12
    chunk_views: int = 6            # views of every particle rendered in one batch


def particle_cameras(particles: Tensor, views: int, dist: CameraDistribution, seed: int, step: int) -> CameraBatch:
    """``K · views`` cameras of the particles ``particles`` (long ``[K]``), particle-major; particle
    i's come from the stream (seed, "camera", i, step), so they do not depend on the others."""
    batches = [sample_cameras(views, dist, generator(seed, "camera", i, step)) for i in particles.tolist()]
    return CameraBatch(**{f.name: torch.cat([getattr(b, f.name) for b in batches]) for f in fields(CameraBatch)})


def is_active(weight) -> bool:
    """A scheduled weight that is nonzero at some step."""
    return weight.start_value != 0 or weight.end_value != 0


@register("dreamfusion")
class DreamFusionSystem(DistillationSystem):
    shardable = True

    @dataclass
    class Config(DistillationSystem.Config):
        n_particles: int = 4
        views_per_particle: int = 1     # random cameras per particle and step
        cameras: CameraDistribution = field(default_factory=CameraDistribution)
        resolutions: list = field(default_factory=lambda: [64])   # training render size of each phase
        resolution_milestones: list = field(default_factory=list)  # steps where the next phase starts
        geometry: GeometryConfig = field(default_factory=GeometryConfig)
        renderer: RendererConfig = field(default_factory=RendererConfig)
        material: MaterialConfig = field(default_factory=MaterialConfig)
        background: BackgroundConfig = field(default_factory=BackgroundConfig)
        loss: LossConfig = field(default_factory=LossConfig)
        evaluation: EvalConfig = field(default_factory=EvalConfig)
        export: ExportConfig = field(default_factory=ExportConfig)
        probe_path: Optional[str] = None   # probe for the test metrics; None = the shipped one
        # RSD's 3-D runs scale the repulsion by σ_t² (c(t) in guidance.base); features = probe.
        guidance: dict = field(default_factory=lambda: {"repulsion": {"scale": "sigma2"}})
        optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(
            name="Adam", args={"lr": 0.01, "betas": [0.9, 0.99], "eps": 1e-15}))

    cfg: Config

    def configure(self) -> None:
        cfg = self.cfg
        if len(cfg.resolutions) != len(cfg.resolution_milestones) + 1:
            raise ConfigError(f"system.resolutions {cfg.resolutions} needs one more entry than "
                              f"system.resolution_milestones {cfg.resolution_milestones}")
        if list(cfg.resolution_milestones) != sorted(cfg.resolution_milestones):
            raise ConfigError(f"system.resolution_milestones must increase, got {cfg.resolution_milestones}")
        if is_active(cfg.loss.lambda_tv) and cfg.geometry.encoding == "hashgrid":   # other names: the geometry's error
            raise ConfigError("system.loss.lambda_tv needs system.geometry.encoding=grid; set it to 0")
        self.build_distillation()
        n = cfg.n_particles
        self.geometry = ParticleGeometry(cfg.geometry, n, self.seed)
        self.material = DiffuseMaterial(cfg.material, "system.material")
        self.background = Background(cfg.background, n, self.seed)
        self.renderer = VolumeRenderer(cfg.renderer, n, cfg.geometry.radius)
        self.loaded_step = 0

    # ---- steps, cameras ---------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        # The CPU empty-space mask is training state (re-estimated only every update_every steps):
        # saved beside the weights, so a resumed run skips the same samples as an uninterrupted one.
        if self.renderer.empty_space.occupied is not None:
            checkpoint[EMPTY_SPACE_KEY] = self.renderer.empty_space.occupied.cpu()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.loaded_step = int(checkpoint.get("global_step", 0))
        self.renderer.empty_space.occupied = checkpoint.get(EMPTY_SPACE_KEY)   # None: rebuilt at the next step

    @property
    def trained_steps(self) -> int:
        """Steps behind the current weights (also in --test / --export, where Lightning's
        global_step is not restored)."""
        return max(int(self.global_step), self.loaded_step)

    def resolution_at(self, step: int) -> int:
        return int(self.cfg.resolutions[bisect.bisect_right(self.cfg.resolution_milestones, step)])

    def training_cameras(self, step: int, particles: Tensor) -> CameraBatch:
        return particle_cameras(particles, self.cfg.views_per_particle, self.cfg.cameras, self.seed, step)

    # ---- rendering ---------------------------------------------------------------------------
    def render(self, cameras: CameraBatch, resolution: int, shading: Tensor, jitter: Optional[Tensor] = None,
               normals: bool = True, particles: Optional[Tensor] = None) -> dict:
        """Render N·V particle-major ``cameras`` (V per particle) at ``resolution``².

        particles: long ``[N]``, the particles to render (None: all, in order); shading: long ``[N]``
        (indices into ``material.SHADINGS``); jitter: ``[N, V·H·W, S]`` or None.
        Returns ``rgb`` ``[N·V, 3, H, W]`` plus the renderer's per-ray ``[N, V·H·W]`` and
        per-sample outputs, and the ray ``dirs`` ``[N, V·H·W, 3]``.
        """
        particles = self.row_selection(particles)
        n = self.cfg.n_particles if particles is None else len(particles)
        origins, dirs = get_rays(cameras, resolution, resolution)                 # [N·V, H, W, 3]
        origins, dirs = origins.reshape(n, -1, 3), dirs.reshape(n, -1, 3)
        pixels = resolution * resolution
        lights = cameras.light_position[:, None, :].expand(-1, pixels, -1).reshape(n, -1, 3)

        def field_fn(points: Tensor, samples) -> dict[str, Tensor]:
            geo = self.geometry(points, particles)
            return {"density": geo["density"], "raw": geo["raw"], "albedo": geo["albedo"],
                    "rgb": self.material.base_color(geo["albedo"], shading)}

        def detail_fn(points: Tensor, fields: dict[str, Tensor], rays: Tensor) -> dict[str, Tensor]:
            normal = self.geometry.normals(points, fields["raw"], particles)
            light = lights.gather(1, rays[..., None].expand(-1, -1, 3))
            rgb = self.material.diffuse_color(fields["albedo"], normal, points, light, shading)
            return {"rgb": rgb, "normal": normal}

        out = self.renderer(field_fn, origins, dirs, jitter, detail_fn if normals else None, particles)
        rgb = out["rgb"] + (1 - out["opacity"][..., None]) * self.background(dirs, particles)
        out["rgb"] = rgb.reshape(-1, resolution, resolution, 3).permute(0, 3, 1, 2)
        out["dirs"] = dirs
        return out

    @torch.no_grad()
    def render_views(self, cameras: CameraBatch, resolution: int) -> tuple[Tensor, Tensor]:
        """Every particle seen by the same V ``cameras``, evaluation shading: images
        ``[N, V, 3, H, W]`` and their accumulated opacity ``[N, V, H, W]``."""
        n, chunk = self.cfg.n_particles, self.cfg.evaluation.chunk_views
        shading = self.material.eval_shading(self.trained_steps, n)
        frames, opacity = [], []
        for start in range(0, len(cameras), chunk):
            views = torch.arange(start, min(start + chunk, len(cameras)))
            cams = cameras.index(views.repeat(n)).to(self.device)
            out = self.render(cams, resolution, shading, normals=self.material.needs_normals(shading))
            frames.append(out["rgb"].view(n, len(views), 3, resolution, resolution).clamp(0, 1))
            opacity.append(out["opacity"].view(n, len(views), resolution, resolution))
        return torch.cat(frames, dim=1), torch.cat(opacity, dim=1)

    # ---- training ----------------------------------------------------------------------------
    def regularizers(self, out: dict, step: int, particles: Tensor) -> dict[str, tuple[float, Tensor]]:
        """Active regularisers at ``step`` of the rendered ``particles`` (long ``[K]``): name →
        (weight, per-particle value ``[K]``)."""
        loss, terms = self.cfg.loss, {}
        opacity = out["opacity"]                                                   # [N, R]
        if (w := loss.lambda_sparsity.at(step)) != 0:
            terms["sparsity"] = (w, (opacity ** 2 + 0.01).sqrt().mean(-1))
        if (w := loss.lambda_opaque.at(step)) != 0:
            o = opacity.clamp(1e-3, 1 - 1e-3)
            terms["opaque"] = (w, -(o * o.log() + (1 - o) * (1 - o).log()).mean(-1))
        if (w := loss.lambda_orient.at(step)) != 0:
            detail = out["detail"]                                               # the visible samples
            dirs = out["dirs"].gather(1, detail["rays"][..., None].expand(-1, -1, 3))
            facing_away = (detail["normal"] * dirs).sum(-1).clamp_min(0) ** 2
            hit = (opacity > 0).sum(-1).clamp_min(1)
            terms["orient"] = (w, (detail["weights"].detach() * facing_away).sum(-1) / hit)
        if (w := loss.lambda_tv.at(step)) != 0:
            terms["tv"] = (w, self.geometry.tv_loss()[particles])
        return terms

    def render_step(self, step: int) -> tuple[CameraBatch, dict]:
        """The training cameras of ``step`` and the renders of them (with gradients) of this
        process's particles (all unless sharded; ``out["particles"]``)."""
        cfg, ids = self.cfg, self.local_particles()
        cameras = self.training_cameras(step, ids).to(self.device)
        resolution = self.resolution_at(step)
        shading = self.material.training_shading(step, ids, self.seed)
        jitter = None
        if cfg.renderer.stratified:
            rays = cfg.views_per_particle * resolution * resolution
            jitter = per_particle_rand((rays, cfg.renderer.num_samples_per_ray), self.seed, ids,
                                       "stratified", step, device=self.device)
        self.renderer.update(step, self.geometry.density, self.device)
        normals = self.material.needs_normals(shading) or cfg.loss.lambda_orient.at(step) != 0
        out = self.render(cameras, resolution, shading, jitter, normals=normals, particles=ids)
        return cameras, {**out, "particles": ids}

    def step_losses(self, cameras: CameraBatch, out: dict, step: int) -> dict[str, Tensor]:
        """Guidance and regulariser losses of the renders ``out``; ``"loss"`` is their sum."""
        particles = out["particles"]
        prompts = self.prompt_processor(self.prior, cameras.elevation, cameras.azimuth)
        ids = particles.repeat_interleave(self.cfg.views_per_particle)
        losses = self.guidance(self.prior, out["rgb"], prompts, ids, step, seed=self.seed, cameras=cameras)
        for name, (weight, value) in self.regularizers(out, step, particles).items():
            losses[f"loss_{name}"] = weight * value.mean()   # mean over particles, like the guidance's 1/B
        losses["loss"] = sum(v for k, v in losses.items() if k.startswith("loss_"))
        return losses

    def distill_step(self, step: int) -> dict[str, Tensor]:
        """All losses of this process's particles at ``step``; ``"loss"`` is what to minimise."""
        cameras, out = self.render_step(step)
        return self.step_losses(cameras, out, step)

    def training_step(self, batch, batch_idx):
        out = self.distill_step(self.global_step)
        self.log_scalars(out)
        return out["loss"]

    # ---- validation, test, export ------------------------------------------------------------
    def validation_step(self, batch, batch_idx):
        from scorestudio.utils.images import save_grid

        if not self.writes_outputs:
            return
        e = self.cfg.evaluation
        camera = cameras_from_angles(e.elevation, e.val_azimuth, e.distance, e.fovy)
        images = self.render_views(camera, e.resolution)[0][:, 0]
        save_grid(images, self.save_path(f"it{self.trained_steps}-val.png"))

    def test_step(self, batch, batch_idx):
        from scorestudio.utils.images import image_grid, mp4_available, save_animation

        if not self.writes_outputs:
            return
        e, n = self.cfg.evaluation, self.cfg.n_particles
        step = self.trained_steps
        frames, opacity = self.render_views(orbit_cameras(e.n_views, e.elevation, e.distance, e.fovy), e.resolution)
        formats = ("gif", "mp4") if mp4_available() else ("gif",)
        if len(formats) == 1:
            warnings.warn("imageio-ffmpeg is not installed: orbits are written as GIF only (pip install imageio-ffmpeg for MP4)")
        written = [save_animation(frames[i], self.save_path(f"it{step}-test/particle{i}.{ext}"), fps=e.fps)
                   for i in range(n) for ext in formats]
        side_by_side = torch.stack([image_grid(frames[:, t], ncol=n) for t in range(frames.shape[1])])
        written.append(save_animation(side_by_side, self.save_path(f"it{step}-test/all.gif"), fps=e.fps))
        if self.cfg.export.after_test:
            written += self.export()
        self.report_metrics({"step": step, **self.probe_metrics(frames), **self.opacity_metrics(opacity)})
        for path in written:
            print(f"[scorestudio] wrote {path}")

    def opacity_metrics(self, opacity: Tensor) -> dict:
        """Fog: per particle and on average, the fraction of orbit pixels that are neither
        background nor surface (``translucent_fraction`` of the opacity ``[N, T, H, W]``)."""
        from scorestudio.metrics.opacity import translucent_fraction

        fraction = translucent_fraction(opacity).tolist()
        return {"translucent_fraction": sum(fraction) / len(fraction),
                **{f"particle{i}/translucent_fraction": f for i, f in enumerate(fraction)}}

    @torch.no_grad()
    def probe_metrics(self, frames: Tensor) -> dict:
        """What the probe sees in the orbit frames ``[N, T, 3, H, W]``: per particle the fraction
        of frames showing the prompted shape / colour and the majority shape / colour; across
        particles the number of distinct majority colours and shapes, and the diversity of the
        particles' mean probe features. Empty (with a warning) when no probe is installed."""
        from scorestudio.metrics.attributes import prompt_attributes
        from scorestudio.metrics.probe import diversity, load_probe

        try:
            probe = load_probe(self.cfg.probe_path).to(frames.device)
        except FileNotFoundError as err:
            warnings.warn(f"no probe metrics: {err}")
            return {}
        wanted = prompt_attributes(self.prompt_processor.cfg.prompt)
        n, t = frames.shape[:2]
        flat = frames.flatten(0, 1)
        logits = probe(flat)
        metrics: dict = {}
        majority: dict[str, list[str]] = {"shape": [], "color": []}
        for head in ("shape", "color"):
            names = probe.names(head)
            pred = logits[head].argmax(-1).view(n, t)
            for i in range(n):
                labels = [names[j] for j in pred[i].tolist()]
                majority[head].append(Counter(labels).most_common(1)[0][0])
                metrics[f"particle{i}/majority_{head}"] = majority[head][-1]
                if wanted[head] is not None:
                    metrics[f"particle{i}/{head}_fraction"] = labels.count(wanted[head]) / t
            if wanted[head] is not None:
                metrics[f"{head}_fraction"] = sum(metrics[f"particle{i}/{head}_fraction"] for i in range(n)) / n
            metrics[f"distinct_majority_{head}s"] = len(set(majority[head]))
        if n >= 2:
            metrics["diversity"] = diversity(probe.features(flat).view(n, t, -1).mean(1))
        return metrics

    @torch.no_grad()
    def export(self) -> list[Path]:
        """Marching-cubes meshes of every particle with albedo vertex colours."""
        cfg, n = self.cfg.export, self.cfg.n_particles
        step = getattr(self, "export_step", None) or self.trained_steps
        device = self.device
        meshes = extract_meshes(
            lambda p: self.geometry.density(p.to(device)),
            lambda p, ids: self.geometry(p.to(device), ids.to(device))["albedo"],
            n, self.cfg.geometry.radius, cfg)
        paths, report = [], {}
        for i, (mesh, removed) in enumerate(meshes):
            report.update({f"export/particle{i}/{k}": v for k, v in mesh_report(mesh, removed).items()})
            if len(mesh.faces) == 0:
                warnings.warn(f"particle {i}: the density never reaches export.threshold={cfg.threshold}; no mesh written")
                continue
            paths += save_mesh(mesh, self.save_path(f"it{step}-export/particle{i}"), list(cfg.formats))
        self.save_metrics(report)
        return paths
