"""The generator interface: N particles' parameters and how to render them.

A generator is what a distillation system optimises: NeRFs, SVG scenes, latent images, ...
The system (:class:`scorestudio.systems.distillation.DistillationSystem`) draws the cameras
(when the generator is 3-D), calls the guidance, runs validation and tests, and asks the
generator only for what depends on its representation::

    out = generator.render(particle_ids, cameras, step, resolution=64)   # RenderOut
    losses = generator.regularizers(out, step)                           # {"loss_tv": ..., ...}

A new renderer is one generator file (``@register("name")`` on a :class:`BaseGenerator`
subclass) plus a config with ``system.generator_type: name``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

from scorestudio.utils.base import BaseModule

if TYPE_CHECKING:
    from scorestudio.data.cameras import CameraBatch
    from scorestudio.priors.base import DiffusionPrior


@dataclass
class RenderOut:
    """What a generator renders for a batch of B = particles × views items.

    images: ``[B, 3, H, W]`` in [0, 1], or model-space latents ``[B, C, h, w]`` when the
        generator's ``renders_latents`` and the render is a training one.
    alpha: ``[B, H, W]`` accumulated opacity in [0, 1], or None for opaque 2-D generators.
    particle_ids: long ``[B]``, the particle of each item.
    aux: anything the generator's own regularisers need (per-ray opacity, scenes, ...).
    normal, albedo: 3-D evaluation renders, where the generator renders them: the composited
        unit normals (scene frame, times the opacity) and albedo (no light, no background).
    """

    images: Tensor
    particle_ids: Tensor
    alpha: Optional[Tensor] = None
    aux: dict[str, Any] = field(default_factory=dict)
    normal: Optional[Tensor] = None   # [B, 3, H, W]
    albedo: Optional[Tensor] = None   # [B, 3, H, W]


class BaseGenerator(BaseModule):
    """N particles of one representation, stacked along the particle axis.

    Subclasses set ``is_3d`` (renders need cameras) and ``renders_latents`` (training renders
    are model-space latents, fed to the guidance without encoding), and implement
    :meth:`render`; the other hooks have neutral defaults. Randomness must come from streams
    keyed by particle (``scorestudio.utils.seeding``) so a particle does not depend on the others.
    """

    registry_kind = "generators"
    is_3d = False
    renders_latents = False
    exports_assets = False        # export() writes files (meshes, SVGs) beyond the system's pictures
    export_after_test = False     # the system also exports at the end of --test (and so of --train)
    system_keys: tuple[str, ...] = ()   # config keys older configs set under ``system``: moved to ``system.generator``
    legacy_state_prefixes: tuple[str, ...] = ()   # state-dict prefixes of older checkpoints, read as ``generator.``

    def __init__(self, cfg: Any = None, n_particles: int = 1, seed: int = 0, path: str = "system.generator",
                 prior: Optional["DiffusionPrior"] = None) -> None:
        self.n_particles = n_particles
        self.seed = seed
        # A plain list so the frozen prior is neither a submodule nor in the generator's state dict.
        self._prior = [prior]
        super().__init__(cfg, path)

    @property
    def prior(self) -> Optional["DiffusionPrior"]:
        return self._prior[0]

    # ---- to override ------------------------------------------------------------------------
    def render(self, particle_ids: Tensor, cameras: Optional["CameraBatch"] = None, step: int = 0, *,
               resolution: Optional[int] = None, training: bool = True) -> RenderOut:
        """Render the particles ``particle_ids`` (long ``[K]``), seen by ``cameras`` (3-D: K·V
        particle-major cameras) at ``resolution``² (3-D). ``training``: the renders the guidance
        sees at ``step`` (random shading, jitter); otherwise evaluation renders in [0, 1]."""
        raise NotImplementedError

    def update(self, step: int) -> None:
        """Called before the training render of ``step`` (empty-space masks, densification)."""

    def regularizers(self, out: RenderOut, step: int) -> dict[str, Tensor]:
        """Weighted ``loss_*`` terms of the training render ``out`` at ``step`` (means over particles)."""
        return {}

    def param_groups(self) -> Optional[list[dict]]:
        """Optimizer groups of the generator's parameters, or None for the system's default
        grouping by ``system.optimizer.params`` prefixes. A group may carry ``"lr_lambda"``, a
        function of the step scaling its lr (popped by the system into a LambdaLR)."""
        return None

    def after_optimizer_step(self) -> None:
        """Project parameters back to their domain after an optimizer step (e.g. colours to [0, 1])."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Add training state that is not a parameter or buffer (e.g. an empty-space mask)."""

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore what :meth:`on_save_checkpoint` added."""

    def export(self, particle_ids: Tensor, folder: Path) -> tuple[list[Path], dict]:
        """Write the particles' assets (meshes, SVG files) under ``folder``; returns the paths and
        scalar metrics about them. The default exports nothing."""
        return [], {}

    def export_settings(self, config: Optional[dict] = None) -> dict[str, Any]:
        """The settings that shape the exported files, by a short name (``{"mc": 96}``), of this
        generator or of the generator config ``config`` (a run's recorded ``system.generator``):
        an export whose settings differ from the run's is written to a folder named after them."""
        return {}

    # ---- shared ---------------------------------------------------------------------------------
    def rows(self, particle_ids: Optional[Tensor]) -> Optional[Tensor]:
        """``particle_ids`` for indexing stacked parameters, or None when they are all N (a
        process's particles are always in order: no copies of selected rows)."""
        return None if particle_ids is None or len(particle_ids) == self.n_particles else particle_ids

    def all_particles(self) -> Tensor:
        return torch.arange(self.n_particles, device=self.device_of())

    def device_of(self) -> torch.device:
        first = next(iter(self.parameters()), None)
        return first.device if first is not None else torch.device("cpu")
