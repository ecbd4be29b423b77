"""NeRF of N particles for text-to-3D: batched fields, volume rendering, shading, background.

- :mod:`.encodings`: dense grid and hash grid encodings with a particle axis;
- :mod:`.geometry`: :class:`ParticleGeometry`, density + albedo + finite-difference normals;
- :mod:`.volume`: :class:`VolumeRenderer`, ray samples and compositing (dense on CPU,
  nerfacc occupancy grids on CUDA);
- :mod:`.material`: :class:`DiffuseMaterial` (DreamFusion shading) and :class:`Background`.
"""

from scorestudio.renderers.nerf.geometry import GeometryConfig, ParticleGeometry
from scorestudio.renderers.nerf.material import Background, BackgroundConfig, DiffuseMaterial, MaterialConfig
from scorestudio.renderers.nerf.volume import RendererConfig, VolumeRenderer

__all__ = ["Background", "BackgroundConfig", "DiffuseMaterial", "GeometryConfig", "MaterialConfig",
           "ParticleGeometry", "RendererConfig", "VolumeRenderer"]
