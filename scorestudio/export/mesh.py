"""Density fields → coloured triangle meshes: marching cubes, floater removal, OBJ / GLB / PLY.

    meshes = extract_meshes(density_fn, color_fn, n_particles, radius, cfg)   # list of trimesh.Trimesh
    paths = save_mesh(meshes[0], "save/it500-export/particle0", ["obj", "glb", "ply"])
    mesh_report(meshes[0])   # {"watertight": ..., "boundary_edges": ..., ...}

The density is sampled on a ``resolution``³ lattice over [−radius, radius]³ (one zero-density
voxel of padding around it, so surfaces that touch the box still close), the ``threshold``
isosurface is extracted by PyMCubes (scikit-image as a fallback), small disconnected pieces are
dropped, and vertex colours come from the albedo at the vertices. Colours live in the vertices
of every format (OBJ ``v x y z r g b`` lines, GLB COLOR_0, PLY red/green/blue), so no texture or
MTL file is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

FORMATS = ("obj", "glb", "ply")


@dataclass
class ExportConfig:
    resolution: int = 96                # marching-cubes lattice points per axis over [-radius, radius]
    threshold: float = 5.0              # density of the isosurface (scene units⁻¹)
    min_component_fraction: float = 0.1  # keep pieces with ≥ this fraction of the largest piece's faces
    formats: list = field(default_factory=lambda: ["obj", "glb", "ply"])
    chunk: int = 262144                 # points per field evaluation
    after_test: bool = False            # also export at the end of --test (and so of --train)


def lattice(resolution: int, radius: float) -> Tensor:
    """Lattice points ``[resolution³, 3]`` over [−radius, radius]³, x slowest (index order i, j, k)."""
    axis = torch.linspace(-radius, radius, resolution)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def marching_cubes(volume: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``[V, 3]`` (in index units of ``volume``) and faces ``[F, 3]`` of the isosurface."""
    try:
        import mcubes

        return mcubes.marching_cubes(volume, threshold)
    except ImportError:
        from skimage.measure import marching_cubes as skimage_mc

        if not volume.min() < threshold < volume.max():
            return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
        verts, faces, _, _ = skimage_mc(volume, level=threshold)
        return verts, faces


def largest_components(mesh, min_fraction: float):
    """``mesh`` without connected pieces smaller than ``min_fraction`` × the largest (in faces);
    returns (mesh, number of pieces removed)."""
    import trimesh

    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh, 0
    biggest = max(len(p.faces) for p in parts)
    kept = [p for p in parts if len(p.faces) >= min_fraction * biggest]
    return trimesh.util.concatenate(kept), len(parts) - len(kept)


@torch.no_grad()
def extract_meshes(density_fn: Callable[[Tensor], Tensor], color_fn: Callable[[Tensor, Tensor], Tensor],
                   n_particles: int, radius: float, cfg: ExportConfig) -> list[tuple]:
    """One mesh per particle.

    density_fn: points ``[N, P, 3]`` → density ``[N, P]`` (all particles at once);
    color_fn: (points ``[1, P, 3]``, particle ids ``[1]``) → colours ``[1, P, 3]`` in [0, 1].
    Returns ``(trimesh.Trimesh, pieces removed)`` per particle (an empty mesh when the field
    never reaches the threshold).
    """
    import trimesh

    res = cfg.resolution
    points = lattice(res, radius)
    density = torch.cat([density_fn(chunk[None].expand(n_particles, -1, -1).contiguous()).cpu()
                         for chunk in points.split(cfg.chunk)], dim=1)                  # [N, res³]
    volumes = np.pad(density.view(n_particles, res, res, res).numpy(), ((0, 0), (1, 1), (1, 1), (1, 1)))
    out = []
    for i, volume in enumerate(volumes):
        verts, faces = marching_cubes(volume.astype(np.float64), cfg.threshold)
        verts = (np.asarray(verts) - 1) / (res - 1) * 2 * radius - radius     # index → scene units
        mesh = trimesh.Trimesh(verts, np.asarray(faces, dtype=np.int64), process=True)
        if len(mesh.faces) == 0:
            out.append((mesh, 0))
            continue
        if mesh.volume < 0:   # density grows inwards: make the normals point out
            mesh.invert()
        mesh, removed = largest_components(mesh, cfg.min_component_fraction)
        vertices = torch.as_tensor(mesh.vertices, dtype=torch.float32)
        colors = torch.cat([color_fn(chunk[None], torch.tensor([i]))[0].cpu() for chunk in vertices.split(cfg.chunk)])
        rgba = np.concatenate([colors.clamp(0, 1).mul(255).round().byte().numpy(),
                               np.full((len(colors), 1), 255, dtype=np.uint8)], axis=1)
        mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rgba)
        out.append((mesh, removed))
    return out


def boundary_edges(mesh) -> int:
    """Edges used by exactly one face (the rims of holes); 0 for a closed surface."""
    import trimesh

    if len(mesh.faces) == 0:
        return 0
    return int(len(trimesh.grouping.group_rows(mesh.edges_sorted, require_count=1)))


def mesh_report(mesh, removed: int = 0) -> dict:
    """Scalar facts about a mesh for metrics.json."""
    return {"vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)),
            "watertight": bool(len(mesh.faces) > 0 and mesh.is_watertight),
            "boundary_edges": boundary_edges(mesh), "components_removed": int(removed)}


def save_mesh(mesh, stem: str | Path, formats: list[str]) -> list[Path]:
    """Write ``stem.<format>`` for each of ``formats`` (obj, glb, ply); returns the paths."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown mesh formats {bad}: use {FORMATS}")
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        mesh.export(path)
        paths.append(path)
    return paths
