"""tiny-cuda-nn hash grids for the NeRF geometry (optional, CUDA only, installed by the user).

    pip install ninja "git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch"

(needs a CUDA toolkit matching your torch build; see tiny-cuda-nn's README). scorestudio never
requires it: ``system.geometry.hashgrid.backend: auto`` uses it when it imports and CUDA is
available, and falls back to the vectorised PyTorch hash grid otherwise.

tiny-cuda-nn has no batch axis over independent tables, so :class:`TcnnHashGrid` holds one fused
encoding per particle and calls them in turn (the only per-particle loop of the geometry).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from scorestudio.utils.seeding import derive_seed

INSTALL_HINT = ('tiny-cuda-nn is not installed: pip install ninja '
                '"git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch" (CUDA toolkit '
                'required), or set system.geometry.hashgrid.backend=torch')


def tcnn_available() -> bool:
    """True when tinycudann imports and a CUDA device exists."""
    if not torch.cuda.is_available():
        return False
    try:
        import tinycudann  # noqa: F401
    except ImportError:
        return False
    return True


class TcnnHashGrid(nn.Module):
    """Same interface and config as ``HashGridEncoding``: points ``[K, P, 3]`` in [-1, 1] →
    features ``[K, P, L · F]`` (float32)."""

    per_particle_modules = True   # one tcnn encoding (own parameters) per particle, not a stacked tensor

    def __init__(self, cfg, n_particles: int, seed: int) -> None:
        super().__init__()
        try:
            import tinycudann as tcnn
        except ImportError as err:
            raise ImportError(INSTALL_HINT) from err
        if not torch.cuda.is_available():
            raise RuntimeError("system.geometry.hashgrid.backend=tcnn needs a CUDA device; use backend=torch")
        config = {"otype": "HashGrid", "n_levels": cfg.n_levels, "n_features_per_level": cfg.n_features_per_level,
                  "log2_hashmap_size": cfg.log2_hashmap_size, "base_resolution": cfg.base_resolution,
                  "per_level_scale": cfg.per_level_scale}
        self.encodings = nn.ModuleList(
            tcnn.Encoding(3, config, seed=derive_seed(seed, "init", i, "hashgrid") % 2**32, dtype=torch.float32)
            for i in range(n_particles))
        self.out_dim = cfg.n_levels * cfg.n_features_per_level

    def forward(self, x: Tensor, particles: Optional[Tensor] = None) -> Tensor:
        ids = range(len(self.encodings)) if particles is None else particles.tolist()
        u = ((x + 1) / 2).clamp(0, 1)
        return torch.stack([self.encodings[i](u[k]).float() for k, i in enumerate(ids)])
