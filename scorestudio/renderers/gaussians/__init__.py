"""3-D Gaussian splats of N particles: projection, rasterization (PyTorch or gsplat), PLY files.

- :mod:`.projection`: quaternions, covariances, EWA projection with the shared camera
  conventions, spherical-harmonic colours;
- :mod:`.rasterizer`: :func:`rasterize` (tile-binned, depth-sorted, front-to-back compositing in
  PyTorch; gsplat's CUDA kernels with ``backend: gsplat`` or ``auto``);
- :mod:`.ply`: the 3DGS splat PLY that splat viewers open.
"""

from scorestudio.renderers.gaussians.ply import read_splat_ply, write_splat_ply
from scorestudio.renderers.gaussians.projection import covariance_3d, project, quaternion_to_rotation, sh_to_rgb
from scorestudio.renderers.gaussians.rasterizer import RasterizerConfig, RasterOut, Splats, rasterize

__all__ = ["RasterOut", "RasterizerConfig", "Splats", "covariance_3d", "project", "quaternion_to_rotation",
           "rasterize", "read_splat_ply", "sh_to_rgb", "write_splat_ply"]
