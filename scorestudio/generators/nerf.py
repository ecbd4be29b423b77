"""nerf: N NeRF particles (grid or hash-grid fields, diffuse material, background, volume renderer).

The particles' fields are stacked and rendered in one batch, never looped over. Particle i's
initialisation, shading and sample jitter come from streams keyed by i, so a particle does not
depend on how many others are rendered beside it. Training renders add DreamFusion's
regularisers; ``export`` writes marching-cubes meshes with normals and the albedo baked into a
texture (:mod:`scorestudio.export.mesh`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from scorestudio.data.cameras import CameraBatch, get_rays
from scorestudio.export.mesh import (
    ExportConfig, check_export_config, extract_meshes, mesh_report, save_mesh, set_vertex_colors, texture_mesh,
)
from scorestudio.generators.base import BaseGenerator, RenderOut
from scorestudio.renderers.nerf import (
    Background, BackgroundConfig, DiffuseMaterial, GeometryConfig, MaterialConfig, ParticleGeometry,
    RendererConfig, VolumeRenderer,
)
from scorestudio.utils.config import ConfigError, ScheduledFloat, parse_structured, schedulable
from scorestudio.utils.registry import register
from scorestudio.utils.seeding import per_particle_rand

EMPTY_SPACE_KEY = "empty_space_mask"   # checkpoint entry of the renderer's EmptySpaceMask


@dataclass
class LossConfig:
    """Regulariser weights (each a number or a [start_step, start, end, end_step] schedule)."""

    lambda_sparsity: ScheduledFloat = schedulable(0.0)  # mean sqrt(opacity² + 0.01): fewer floaters (threestudio)
    lambda_opaque: ScheduledFloat = schedulable(0.0)    # binary entropy of the opacity: pixels fully in or out
    lambda_orient: ScheduledFloat = schedulable(0.0)    # DreamFusion's orientation loss: no normals facing away
    lambda_tv: ScheduledFloat = schedulable(0.0)        # total variation of the feature grid (encoding=grid)


@register("nerf")
class NerfGenerator(BaseGenerator):
    is_3d = True
    exports_assets = True
    # Keys that configs written before the generator layer set directly under ``system``.
    system_keys = ("geometry", "renderer", "material", "background", "loss", "export")

    @dataclass
    class Config:
        geometry: GeometryConfig = field(default_factory=GeometryConfig)
        renderer: RendererConfig = field(default_factory=RendererConfig)
        material: MaterialConfig = field(default_factory=MaterialConfig)
        background: BackgroundConfig = field(default_factory=BackgroundConfig)
        loss: LossConfig = field(default_factory=LossConfig)
        export: ExportConfig = field(default_factory=ExportConfig)

    cfg: Config

    def configure(self) -> None:
        cfg, n = self.cfg, self.n_particles
        if cfg.loss.lambda_tv.ever_nonzero() and cfg.geometry.encoding == "hashgrid":   # other names: the geometry's error
            raise ConfigError(f"{self.config_path}.loss.lambda_tv needs {self.config_path}.geometry.encoding=grid; "
                              "set it to 0")
        check_export_config(cfg.export, f"{self.config_path}.export")
        self.geometry = ParticleGeometry(cfg.geometry, n, self.seed, path=f"{self.config_path}.geometry")
        self.material = DiffuseMaterial(cfg.material, f"{self.config_path}.material")
        self.background = Background(cfg.background, n, self.seed, path=f"{self.config_path}.background")
        self.renderer = VolumeRenderer(cfg.renderer, n, cfg.geometry.radius, path=f"{self.config_path}.renderer")

    @property
    def export_after_test(self) -> bool:
        return self.cfg.export.after_test

    # ---- rendering ---------------------------------------------------------------------------
    def update(self, step: int) -> None:
        self.renderer.update(step, self.geometry.density, self.device_of())

    def render(self, particle_ids: Tensor, cameras: Optional[CameraBatch] = None, step: int = 0, *,
               resolution: Optional[int] = None, training: bool = True) -> RenderOut:
        """K·V particle-major ``cameras`` (V per particle) of ``particle_ids`` (long ``[K]``) at
        ``resolution``²: images ``[K·V, 3, H, W]``, alpha ``[K·V, H, W]``; ``aux`` holds the volume
        renderer's per-ray ``[K, V·H·W]`` and per-sample outputs and the ray ``dirs [K, V·H·W, 3]``.
        Training renders draw their shading and sample jitter from streams keyed by particle;
        evaluation renders also return the composited normals and albedo ``[K·V, 3, H, W]``."""
        if cameras is None or resolution is None:
            raise ValueError("the nerf generator renders through cameras at a resolution")
        if training:
            shading = self.material.training_shading(step, particle_ids, self.seed)
            jitter = None
            if self.cfg.renderer.stratified:
                rays = len(cameras) // len(particle_ids) * resolution * resolution
                jitter = per_particle_rand((rays, self.cfg.renderer.num_samples_per_ray), self.seed, particle_ids,
                                           "stratified", step, device=particle_ids.device)
            normals = self.material.needs_normals(shading) or self.cfg.loss.lambda_orient.at(step) != 0
        else:
            # Normals even for albedo shading (whose colour does not use them): the normal panel.
            shading, jitter, normals = self.material.eval_shading(step, len(particle_ids)), None, True
            self.renderer.prepare_evaluation(step, self.geometry.density, self.device_of())
        out = self.render_rays(cameras, resolution, shading, jitter, normals, self.rows(particle_ids))
        alpha = out["opacity"].reshape(-1, resolution, resolution)
        rendered = RenderOut(images=out.pop("rgb"), particle_ids=particle_ids, alpha=alpha, aux=out)
        if not training:
            rendered.normal, rendered.albedo = (out[k].reshape(-1, resolution, resolution, 3).permute(0, 3, 1, 2)
                                                for k in ("normal", "albedo"))
        return rendered

    def render_rays(self, cameras: CameraBatch, resolution: int, shading: Tensor, jitter: Optional[Tensor],
                    normals: bool, particles: Optional[Tensor]) -> dict:
        """The volume render of ``cameras`` over the background: ``rgb [K·V, 3, H, W]`` plus the
        renderer's outputs. particles: long ``[K]`` rows, None for all N in order; shading: long
        ``[K]`` (indices into ``material.SHADINGS``); jitter: ``[K, V·H·W, S]`` or None."""
        n = self.n_particles if particles is None else len(particles)
        origins, dirs = get_rays(cameras, resolution, resolution)                 # [K·V, H, W, 3]
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

    # ---- training ----------------------------------------------------------------------------
    def regularizers(self, out: RenderOut, step: int) -> dict[str, Tensor]:
        """Active regularisers at ``step``: ``loss_<name>`` = weight × mean over the rendered
        particles (like the guidance's 1/B)."""
        return {f"loss_{name}": w * value.mean() for name, (w, value) in self.regularizer_terms(out, step).items()}

    def regularizer_terms(self, out: RenderOut, step: int) -> dict[str, tuple[float, Tensor]]:
        """Active regularisers at ``step`` of the training render ``out``: name → (weight,
        per-particle value ``[K]``)."""
        loss, terms = self.cfg.loss, {}
        opacity = out.aux["opacity"]                                               # [K, R]
        if (w := loss.lambda_sparsity.at(step)) != 0:
            terms["sparsity"] = (w, (opacity ** 2 + 0.01).sqrt().mean(-1))
        if (w := loss.lambda_opaque.at(step)) != 0:
            o = opacity.clamp(1e-3, 1 - 1e-3)
            terms["opaque"] = (w, -(o * o.log() + (1 - o) * (1 - o).log()).mean(-1))
        if (w := loss.lambda_orient.at(step)) != 0:
            detail = out.aux["detail"]                                           # the visible samples
            dirs = out.aux["dirs"].gather(1, detail["rays"][..., None].expand(-1, -1, 3))
            facing_away = (detail["normal"] * dirs).sum(-1).clamp_min(0) ** 2
            hit = (opacity > 0).sum(-1).clamp_min(1)
            terms["orient"] = (w, (detail["weights"].detach() * facing_away).sum(-1) / hit)
        if (w := loss.lambda_tv.at(step)) != 0:
            terms["tv"] = (w, self.geometry.tv_loss()[out.particle_ids])
        return terms

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The CPU empty-space mask is training state (re-estimated only every update_every steps):
        # saved beside the weights, so a resumed run skips the same samples as an uninterrupted one.
        if self.renderer.empty_space.occupied is not None:
            checkpoint[EMPTY_SPACE_KEY] = self.renderer.empty_space.occupied.cpu()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.renderer.empty_space.occupied = checkpoint.get(EMPTY_SPACE_KEY)   # None: rebuilt at the next step
        self.renderer.eval_space_step = None                                    # other weights: re-estimated

    # ---- export ------------------------------------------------------------------------------
    def export_settings(self, config: Optional[dict] = None) -> dict:
        cfg = self.cfg.export if config is None else parse_structured(self.Config, config, self.config_path).export
        return {"mc": cfg.resolution, "tex": cfg.texture_size if cfg.texture else 0, "faces": cfg.max_faces}

    def surface_albedo(self, points: Tensor, normals: Tensor, particle: int, samples: int = 16) -> Tensor:
        """Particle ``particle``'s albedo ``[P, 3]`` as a render sees the surface at ``points``
        with outward unit ``normals`` (``[P, 3]``, scene frame): composited with volume-rendering
        weights along a ray through each point along −normal, from 4 lattice steps outside to 4
        inside (the isosurface can sit a few steps out of where the renders' weights pile up);
        what the ray leaves transparent takes the albedo at the point itself."""
        device, cfg = self.device_of(), self.cfg.export
        reach = 4 * (2 * self.cfg.geometry.radius / (cfg.resolution - 1))
        step = 2 * reach / samples
        offsets = reach - (torch.arange(samples, device=device) + 0.5) * step              # outside → inside
        ids = torch.tensor([particle], device=device)
        out = []
        for p, n in zip(points.to(device).split(max(1, cfg.chunk // (samples + 1))), normals.to(device).split(
                max(1, cfg.chunk // (samples + 1)))):
            ray = torch.cat([p[:, None] + n[:, None] * offsets[:, None], p[:, None]], dim=1)   # [P, S + 1, 3]
            fields = self.geometry(ray.reshape(1, -1, 3), ids)
            density = fields["density"].view(-1, samples + 1)[:, :samples]
            albedo = fields["albedo"].view(-1, samples + 1, 3)
            alpha = 1 - torch.exp(-density * step)
            weights = alpha * torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), 1)
            seen = (weights[..., None] * albedo[:, :samples]).sum(1)
            out.append(seen + (1 - weights.sum(1, keepdim=True)) * albedo[:, samples])
        return torch.cat(out)

    @torch.no_grad()
    def export(self, particle_ids: Tensor, folder: Path) -> tuple[list[Path], dict]:
        """Marching-cubes meshes ``folder/particle{i}.{obj,glb,ply}`` (with ``.mtl`` and ``.png``
        for a textured OBJ) for every particle of ``particle_ids``, and their mesh reports (with
        the mean texture colour ``texture_mean_rgb``, 0-255)."""
        cfg, device = self.cfg.export, self.device_of()
        meshes = extract_meshes(lambda p: self.geometry.density(p.to(device)), None, self.n_particles,
                                self.cfg.geometry.radius, cfg)
        paths, report = [], {}
        for i in particle_ids.tolist():
            mesh, removed = meshes[i]
            key = f"export/particle{i}"
            report.update({f"{key}/{k}": v for k, v in mesh_report(mesh, removed).items()})
            if len(mesh.faces) == 0:
                warnings.warn(f"particle {i}: the density never reaches export.threshold={cfg.threshold}; no mesh written")
                continue
            def albedo(points: Tensor, normals: Tensor, i: int = i) -> Tensor:
                return self.surface_albedo(points, normals, i).cpu()

            vertices, normals = (torch.tensor(np.array(a), dtype=torch.float32) for a in (mesh.vertices, mesh.vertex_normals))
            set_vertex_colors(mesh, albedo(vertices, normals).numpy())
            textured = None
            if cfg.texture and {"obj", "glb"} & set(cfg.formats):
                textured = texture_mesh(mesh, albedo, cfg)
                report[f"{key}/texture_mean_rgb"] = [round(255 * c, 1) for c in textured.mean_color.tolist()]
            folder.mkdir(parents=True, exist_ok=True)
            paths += save_mesh(mesh, folder / f"particle{i}", list(cfg.formats), cfg.up_axis, textured)
        return paths, report
