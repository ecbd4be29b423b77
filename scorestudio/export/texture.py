"""UV atlases and textures baked from a field: xatlas charts, one albedo query per texel.

    atlas = uv_atlas(vertices, faces, size=1024)                 # charts cut along seams
    image, covered = bake_texture(atlas, vertices[atlas.vmapping], normals[atlas.vmapping], color_fn, size=1024)

Each texel whose centre falls inside a chart triangle gets the colour of the 3-D surface point at
the same barycentric coordinates, with the normal interpolated there (the field is queried there,
not interpolated from vertices, so a texture holds detail finer than the mesh). Texels outside the charts take the colour of the
nearest chart texel: bilinear filtering and mipmaps read across chart borders, and would
otherwise bleed the empty colour into the seams.

Image rows run top to bottom and ``uv`` follows the OBJ convention (v up): a texel in row r has
v = 1 − (r + ½) / size. trimesh flips v for glTF, whose origin is the top-left corner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

CANDIDATES_PER_BLOCK = 1 << 22   # texel candidates tested at once while rasterising (bounds memory)


@dataclass
class Atlas:
    """A UV parameterisation of a mesh, its vertices split along chart seams."""

    vmapping: np.ndarray   # long [V'], the mesh vertex of each atlas vertex
    faces: np.ndarray      # long [F, 3], triangles over the atlas vertices (same order as the mesh's)
    uv: np.ndarray         # float [V', 2] in [0, 1], v up


def uv_atlas(vertices: np.ndarray, faces: np.ndarray, size: int, padding: int = 2) -> Atlas:
    """Charts of the mesh ``vertices [V, 3]``, ``faces [F, 3]`` packed into a ``size``² texture
    with ``padding`` texels between them (xatlas)."""
    try:
        import xatlas
    except ImportError as err:
        raise ImportError("texture export needs xatlas (pip install xatlas), or set "
                          "system.generator.export.texture=false for vertex colours only") from err
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution, pack.padding, pack.bilinear = size, padding, True
    atlas.generate(pack_options=pack)
    vmapping, indices, uv = atlas[0]
    return Atlas(vmapping.astype(np.int64), indices.astype(np.int64), uv.astype(np.float64))


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """The texels of a ``size``² image whose centres lie in a triangle of ``uv [V, 2]``, ``faces
    [F, 3]``: flat texel index (row · size + column) ``[K]``, face ``[K]`` and barycentric
    coordinates ``[K, 3]``. A texel on an edge shared by two triangles is listed for one of them."""
    corners = torch.as_tensor(uv, dtype=torch.float64)[torch.as_tensor(faces)]          # [F, 3, 2]
    corners = torch.stack([corners[..., 0], 1 - corners[..., 1]], dim=-1) * size      # texel units, rows down
    lo = (corners.amin(1) - 0.5).ceil().clamp(0, size - 1).long()                      # first texel centre inside
    hi = (corners.amax(1) - 0.5).floor().clamp(0, size - 1).long()
    extent = (hi - lo + 1).clamp_min(0)
    counts = extent[:, 0] * extent[:, 1]
    texels, face_ids, barys = [], [], []
    for block in split_by_total(counts, CANDIDATES_PER_BLOCK):
        face = torch.repeat_interleave(block, counts[block])
        start = torch.cumsum(counts[block], 0) - counts[block]
        local = torch.arange(len(face)) - torch.repeat_interleave(start, counts[block])
        width = extent[face, 0]
        x, y = lo[face, 0] + local % width, lo[face, 1] + local // width
        bary = barycentric(torch.stack([x, y], -1).double() + 0.5, corners[face])
        inside = (bary >= -1e-9).all(-1)
        texels.append((y * size + x)[inside])
        face_ids.append(face[inside])
        barys.append(bary[inside])
    return torch.cat(texels), torch.cat(face_ids), torch.cat(barys).float()


def split_by_total(counts: Tensor, limit: int) -> list[Tensor]:
    """Consecutive index blocks of ``counts [F]`` whose sums stay ≤ ``limit`` (a single larger
    count gets a block of its own)."""
    blocks, start, total = [], 0, 0
    for i, c in enumerate(counts.tolist()):
        if total + c > limit and i > start:
            blocks.append(torch.arange(start, i))
            start, total = i, 0
        total += c
    blocks.append(torch.arange(start, len(counts)))
    return [b for b in blocks if len(b)]


def barycentric(points: Tensor, triangles: Tensor) -> Tensor:
    """Barycentric coordinates ``[K, 3]`` of 2-D ``points [K, 2]`` in ``triangles [K, 3, 2]``
    (all −1 for degenerate triangles, which then cover nothing)."""
    a, b, c = triangles.unbind(1)
    v0, v1, v2 = b - a, c - a, points - a
    det = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    ok = det.abs() > 1e-12
    det = torch.where(ok, det, torch.ones_like(det))
    w1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / det
    w2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / det
    bary = torch.stack([1 - w1 - w2, w1, w2], dim=-1)
    return torch.where(ok[:, None], bary, torch.full_like(bary, -1.0))


def dilate(image: Tensor, covered: Tensor) -> Tensor:
    """``image [3, H, W]`` with every texel outside ``covered [H, W]`` set to the colour of the
    nearest covered texel (Euclidean distance transform)."""
    from scipy.ndimage import distance_transform_edt

    if covered.all() or not covered.any():
        return image
    _, (rows, cols) = distance_transform_edt(~covered.numpy(), return_indices=True)
    return image[:, torch.from_numpy(rows), torch.from_numpy(cols)]


@torch.no_grad()
def bake_texture(atlas: Atlas, vertices: np.ndarray, normals: np.ndarray, color_fn: Callable[[Tensor, Tensor], Tensor],
                 size: int, chunk: int = 262144) -> tuple[Tensor, Tensor]:
    """The ``size``² texture ``[3, size, size]`` in [0, 1] of ``color_fn`` (points ``[P, 3]``,
    unit normals ``[P, 3]`` → colours ``[P, 3]``) on the atlas' surface, ``vertices`` and
    ``normals [V', 3]`` being the atlas vertices'; also the mask ``[size, size]`` of texels
    inside a chart (before dilation)."""
    texels, face, bary = rasterize_uv(atlas.uv, atlas.faces, size)
    corners = torch.as_tensor(atlas.faces)[face]                                         # [K, 3]
    points = (bary[..., None] * torch.as_tensor(vertices, dtype=torch.float32)[corners]).sum(1)
    normal = F.normalize((bary[..., None] * torch.as_tensor(normals, dtype=torch.float32)[corners]).sum(1), dim=-1)
    colors = torch.cat([color_fn(p, n).float().cpu() for p, n in zip(points.split(chunk), normal.split(chunk))]) \
        if len(points) else points
    flat = torch.zeros(3, size * size)
    flat[:, texels] = colors.clamp(0, 1).T
    covered = torch.zeros(size * size, dtype=torch.bool)
    covered[texels] = True
    image, covered = flat.view(3, size, size), covered.view(size, size)
    return dilate(image, covered), covered
